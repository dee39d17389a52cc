/// The routing mutations of the admin API as pure functions: each takes the current state (and
/// endpoint health) and returns the next state or an `AdminError`. They never touch I/O; the
/// routing store runs them under its lock and persists what they return.
public enum RoutingCommands {
    /// What the commands need to know about pools: names in config order, and which have a
    /// healthy endpoint right now.
    public struct PoolView: Sendable {
        public var names: [String]
        public var healthy: Set<String>
        public init(names: [String], healthy: Set<String>) {
            self.names = names
            self.healthy = healthy
        }
    }

    /// Checks `If-Match` against the current generation.
    public static func checkGeneration(_ expected: UInt64?, _ state: RoutingState) throws(AdminError) {
        if let expected, expected != state.generation {
            throw AdminError(412, "generation_mismatch",
                             "the state is at generation \(state.generation), not \(expected); read it again and retry")
        }
    }

    /// Atomic cutover: 100% to `pool`, which becomes live.
    public static func switchTo(_ pool: String, force: Bool, state: RoutingState, pools: PoolView) throws(AdminError) -> RoutingState {
        guard pools.names.contains(pool) else {
            throw AdminError(404, "unknown_pool", "no pool named \"\(pool)\" (pools: \(pools.names.joined(separator: ", ")))")
        }
        if !force && !pools.healthy.contains(pool) {
            throw AdminError(409, "pool_unhealthy", "pool \(pool) has no healthy endpoint; pass force to switch anyway")
        }
        var weights: [String: Int] = [:]
        for name in pools.names { weights[name] = name == pool ? Percent.whole : 0 }
        return transition(state, weights: weights, live: pool)
    }

    /// A new split. Pools not named get 0; the pool at 100%, if any, becomes live.
    public static func setWeights(_ requested: [String: Int], state: RoutingState, pools: PoolView) throws(AdminError) -> RoutingState {
        if requested.isEmpty { throw .badRequest("weights must name at least one pool", code: "invalid_weights") }
        for name in requested.keys.sorted() where !pools.names.contains(name) {
            throw AdminError(400, "unknown_pool", "no pool named \"\(name)\" (pools: \(pools.names.joined(separator: ", ")))")
        }
        for (name, w) in requested where w < 0 || w > Percent.whole {
            throw .badRequest("weight of \(name) must be between 0 and 100", code: "invalid_weights")
        }
        let sum = requested.values.reduce(0, +)
        guard sum == Percent.whole else {
            throw .badRequest("weights must sum to 100, they sum to \(Percent.format(basisPoints: sum))", code: "invalid_weights")
        }
        var weights: [String: Int] = [:]
        for name in pools.names { weights[name] = requested[name] ?? 0 }
        return transition(state, weights: weights, live: RoutingState.liveAfter(weights: weights, currentLive: state.live))
    }

    /// Restores the weights in force before the last change. The state rolled back from becomes
    /// the new "previous", so a second rollback undoes the first.
    public static func rollback(state: RoutingState, pools: PoolView) throws(AdminError) -> RoutingState {
        guard let previous = state.previousWeights else {
            throw AdminError(409, "nothing_to_roll_back", "there is no earlier state to roll back to")
        }
        var weights: [String: Int] = [:]
        for name in pools.names { weights[name] = previous[name] ?? 0 }
        let live = state.previousLive.flatMap { pools.names.contains($0) ? $0 : nil }
            ?? RoutingState.liveAfter(weights: weights, currentLive: state.live)
        return transition(state, weights: weights, live: live)
    }

    /// The next state: a new generation, with the current weights remembered for rollback.
    /// A change that changes nothing returns the state unchanged (no new generation).
    static func transition(_ state: RoutingState, weights: [String: Int], live: String) -> RoutingState {
        if weights == state.weights && live == state.live { return state }
        return RoutingState(generation: state.generation + 1, live: live, weights: weights,
                            previousWeights: state.weights, previousLive: state.live)
    }
}
