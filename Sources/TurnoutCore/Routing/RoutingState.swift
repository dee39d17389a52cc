/// The operator-controlled part of routing: which pool is live and the current split. This is
/// what the state file persists and what admin mutations change.
public struct RoutingState: Sendable, Equatable, Codable {
    public var generation: UInt64
    public var live: String
    /// Weights in basis points by pool name; every configured pool is present.
    public var weights: [String: Int]
    /// The state before the last change, for rollback.
    public var previousWeights: [String: Int]?
    public var previousLive: String?
    /// The current or most recent ramp.
    public var ramp: RampState?
    /// Run-time endpoint changes (added, removed, drained, in maintenance, weighted), by pool and
    /// address. Only non-neutral overrides are kept.
    public var endpoints: [String: [String: EndpointOverride]]
    /// Traffic mirroring, nil when off. Not touched by switches, weights, rollbacks or ramps.
    public var mirror: MirrorSpec?

    public init(generation: UInt64, live: String, weights: [String: Int],
                previousWeights: [String: Int]? = nil, previousLive: String? = nil, ramp: RampState? = nil,
                endpoints: [String: [String: EndpointOverride]] = [:], mirror: MirrorSpec? = nil) {
        self.generation = generation
        self.live = live
        self.weights = weights
        self.previousWeights = previousWeights
        self.previousLive = previousLive
        self.ramp = ramp
        self.endpoints = endpoints
        self.mirror = mirror
    }

    /// The override of one endpoint, neutral when none is set.
    public func override(pool: String, address: String) -> EndpointOverride {
        endpoints[pool]?[address] ?? EndpointOverride()
    }

    /// Sets (or, when neutral, forgets) the override of one endpoint.
    public mutating func setOverride(_ o: EndpointOverride, pool: String, address: String) {
        if o.isNeutral {
            endpoints[pool]?[address] = nil
            if endpoints[pool]?.isEmpty == true { endpoints[pool] = nil }
        } else {
            endpoints[pool, default: [:]][address] = o
        }
    }

    public var rampIsActive: Bool { ramp?.isActive == true }

    /// The state a config file starts with when no state file exists. The live pool is the one at
    /// 100%, or else the one with the largest weight (config order breaks ties).
    public static func initial(from config: TurnoutConfig) -> RoutingState {
        let weights = config.routing.weights
        var live = config.pools[0].name
        var best = -1
        for p in config.pools {
            let w = weights[p.name] ?? 0
            if w > best { best = w; live = p.name }
        }
        return RoutingState(generation: 1, live: live, weights: weights, mirror: config.routing.mirror)
    }

    /// The live pool after weights change: a pool at 100% becomes live; otherwise live stays while
    /// it keeps some weight. A live pool left with no weight gives way to the pool with the largest
    /// weight (`order`, config order, breaks ties), so `live` never names a pool that takes no traffic.
    public static func liveAfter(weights: [String: Int], currentLive: String, order: [String]) -> String {
        for name in order where weights[name] == Percent.whole { return name }
        if (weights[currentLive] ?? 0) > 0 { return currentLive }
        var best = currentLive
        var bestWeight = 0
        for name in order where (weights[name] ?? 0) > bestWeight {
            best = name
            bestWeight = weights[name] ?? 0
        }
        return best
    }

    /// The state an operator settled on: the current weights and live pool, or, while a ramp runs,
    /// those in force before it began (a ramp's steps are one release, undone as a whole).
    public var settled: (weights: [String: Int], live: String) {
        if let ramp, ramp.isActive { return (ramp.preRampWeights, ramp.preRampLive) }
        return (weights, live)
    }
}
