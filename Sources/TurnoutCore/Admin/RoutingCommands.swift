import Foundation

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

    /// Refuses routing changes while a ramp runs, unless forced (which aborts the ramp).
    static func checkNoRamp(_ state: RoutingState, force: Bool, what: String) throws(AdminError) -> RoutingState {
        guard state.rampIsActive else { return state }
        guard force else {
            throw AdminError(409, "ramp_running", "a ramp of \(state.ramp!.plan.pool) is running; abort it first (turnout ramp abort) or force the \(what)")
        }
        var s = state
        endMirroring(&s, verdict: "aborted", observed: nil, pools: nil)
        s.ramp?.status = .aborted
        s.ramp?.reason = "overridden by a forced \(what)"
        return s
    }

    /// Ends a ramp's mirroring step (when it is in one): records its verdict and puts back the
    /// mirror from before the ramp (or none, when that mirror's pool is gone).
    static func endMirroring(_ state: inout RoutingState, verdict: String, observed: RampStepRecord?, pools: [String]?) {
        guard var ramp = state.ramp, ramp.isMirroring else { return }
        var record = observed ?? ramp.mirrorRecord ?? RampStepRecord(weight: 0)
        record.verdict = verdict
        ramp.mirrorRecord = record
        var restored = ramp.preRampMirror?.spec
        if let spec = restored, let pools, spec.problem(pools: pools) != nil { restored = nil }
        state.mirror = restored
        state.ramp = ramp
    }

    /// Atomic cutover: 100% to `pool`, which becomes live.
    public static func switchTo(_ pool: String, force: Bool, state: RoutingState, pools: PoolView) throws(AdminError) -> RoutingState {
        let settled = state.settled
        let state = try checkNoRamp(state, force: force, what: "switch")
        guard pools.names.contains(pool) else {
            throw AdminError(404, "unknown_pool", "no pool named \"\(pool)\" (pools: \(pools.names.joined(separator: ", ")))")
        }
        if !force && !pools.healthy.contains(pool) {
            throw AdminError(409, "pool_unhealthy", "pool \(pool) has no healthy endpoint; pass force to switch anyway")
        }
        var weights: [String: Int] = [:]
        for name in pools.names { weights[name] = name == pool ? Percent.whole : 0 }
        return transition(state, weights: weights, live: pool, previous: settled)
    }

    /// A new split. Pools not named get 0; the pool at 100%, if any, becomes live.
    public static func setWeights(_ requested: [String: Int], force: Bool = false, state: RoutingState, pools: PoolView) throws(AdminError) -> RoutingState {
        let settled = state.settled
        let state = try checkNoRamp(state, force: force, what: "weights change")
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
        return transition(state, weights: weights,
                          live: RoutingState.liveAfter(weights: weights, currentLive: state.live, order: pools.names),
                          previous: settled)
    }

    /// Restores the weights in force before the last change. The state rolled back from becomes
    /// the new "previous", so a second rollback undoes the first. A ramp counts as one change: after
    /// it completed, rollback restores the weights from before its first step. A ramp that rolled
    /// back (gate, health, abort) already restored them, and leaves nothing to roll back to.
    public static func rollback(state: RoutingState, pools: PoolView) throws(AdminError) -> RoutingState {
        if state.rampIsActive { return try abortRamp(state: state, pools: pools, reason: "rolled back by the operator") }
        guard let previous = state.previousWeights else {
            if let ramp = state.ramp, ramp.status == .rolledBack || ramp.status == .aborted {
                let current = pools.names.map { "\($0)=\(Percent.format(basisPoints: state.weights[$0] ?? 0))" }.joined(separator: " ")
                throw AdminError(409, "nothing_to_roll_back",
                                 "the ramp of \(ramp.plan.pool) was already rolled back (\(ramp.reason ?? "rolled back")); the weights from before it are in force: \(current)")
            }
            throw AdminError(409, "nothing_to_roll_back", "there is no earlier state to roll back to")
        }
        var weights: [String: Int] = [:]
        for name in pools.names { weights[name] = previous[name] ?? 0 }
        let remembered = state.previousLive.flatMap { pools.names.contains($0) ? $0 : nil } ?? state.live
        let live = RoutingState.liveAfter(weights: weights, currentLive: remembered, order: pools.names)
        return transition(state, weights: weights, live: live)
    }

    /// The next state: a new generation, with the settled state it replaces remembered for
    /// rollback (`previous`, by default `state.settled`: while a ramp runs, the weights from before
    /// it, so that no step of a ramp is ever what a rollback restores). A change that changes
    /// nothing returns the state unchanged (no new generation).
    static func transition(_ state: RoutingState, weights: [String: Int], live: String,
                           previous: (weights: [String: Int], live: String)? = nil) -> RoutingState {
        if weights == state.weights && live == state.live { return state }
        let previous = previous ?? state.settled
        return RoutingState(generation: state.generation + 1, live: live, weights: weights,
                            previousWeights: previous.weights, previousLive: previous.live, ramp: state.ramp,
                            endpoints: state.endpoints, mirror: state.mirror)
    }

    // MARK: mirroring

    /// Turns mirroring on (or changes it) with `spec`, or off with nil. A new generation; the
    /// weights and any ramp are untouched. Setting what is already in force changes nothing.
    public static func setMirror(_ spec: MirrorSpec?, state: RoutingState, pools: PoolView) throws(AdminError) -> RoutingState {
        if let spec, let problem = spec.problem(pools: pools.names) {
            if !pools.names.contains(spec.pool) { throw AdminError(404, "unknown_pool", problem) }
            throw .badRequest(problem, code: "invalid_mirror")
        }
        if let ramp = state.ramp, ramp.isMirroring {
            throw AdminError(409, "ramp_mirroring",
                             "the ramp of \(ramp.plan.pool) is in its mirroring step and owns the mirror until it ends; abort the ramp first (turnout ramp abort)")
        }
        if spec == state.mirror { return state }
        var next = state
        next.mirror = spec
        next.generation += 1
        return next
    }

    // MARK: ramps

    public static func startRamp(_ plan: RampPlan, state: RoutingState, pools: PoolView, now: Date) throws(AdminError) -> RoutingState {
        try plan.validate()
        if state.rampIsActive {
            throw AdminError(409, "ramp_running", "a ramp of \(state.ramp!.plan.pool) is already running")
        }
        guard pools.names.contains(plan.pool) else {
            throw AdminError(404, "unknown_pool", "no pool named \"\(plan.pool)\" (pools: \(pools.names.joined(separator: ", ")))")
        }
        guard plan.pool != state.live else {
            throw AdminError(409, "already_live", "pool \(plan.pool) is already live; ramp another pool up")
        }
        guard pools.healthy.contains(plan.pool) else {
            throw AdminError(409, "pool_unhealthy", "pool \(plan.pool) has no healthy endpoint")
        }
        let ramp = RampState(plan: plan, status: .running, step: 0, stepStartedAt: now, preRampWeights: state.weights,
                             preRampLive: state.live, records: [RampStepRecord(weight: plan.steps[0])], reason: nil,
                             mirrorRecord: plan.mirror.map { _ in RampStepRecord(weight: state.weights[plan.pool] ?? 0) },
                             preRampMirror: plan.mirror.map { _ in MirrorSetting(state.mirror) })
        if let m = plan.mirror {
            // The mirroring step: the weights stay; copies go to the canary.
            var next = state
            next.generation += 1
            next.mirror = m.spec(pool: plan.pool)
            next.ramp = ramp
            return next
        }
        return enterFirstStep(state, ramp: ramp, pools: pools)
    }

    /// The first weighted step: the canary gets its first share, and the weights before it are
    /// what a rollback (of the whole ramp) restores.
    static func enterFirstStep(_ state: RoutingState, ramp: RampState, pools: PoolView) -> RoutingState {
        let weights = RampEngine.weights(for: ramp, step: 0, pools: pools.names)
        var next = transition(state, weights: weights,
                              live: RoutingState.liveAfter(weights: weights, currentLive: state.live, order: pools.names))
        if next.generation == state.generation { next.generation += 1 }
        next.previousWeights = ramp.preRampWeights
        next.previousLive = ramp.preRampLive
        next.ramp = ramp
        return next
    }

    /// Moves to the next step, recording what the finished step saw.
    public static func advanceRamp(state: RoutingState, pools: PoolView, observed: RampStepRecord, now: Date) -> RoutingState {
        guard var ramp = state.ramp, ramp.status == .running else { return state }
        if ramp.isMirroring {
            var s = state
            endMirroring(&s, verdict: observed.verdict, observed: observed, pools: pools.names)
            ramp = s.ramp!
            ramp.stepStartedAt = now
            return enterFirstStep(s, ramp: ramp, pools: pools)
        }
        ramp.records[ramp.step] = observed
        ramp.step += 1
        ramp.stepStartedAt = now
        ramp.records.append(RampStepRecord(weight: ramp.plan.steps[ramp.step]))
        let weights = RampEngine.weights(for: ramp, step: ramp.step, pools: pools.names)
        var next = transition(state, weights: weights,
                              live: RoutingState.liveAfter(weights: weights, currentLive: state.live, order: pools.names))
        next.ramp = ramp
        return next
    }

    /// The last step passed: at 100% the target pool becomes live. The pre-ramp weights stay the
    /// ones a rollback restores.
    public static func completeRamp(state: RoutingState, pools: PoolView, observed: RampStepRecord) -> RoutingState {
        guard var ramp = state.ramp, ramp.status == .running else { return state }
        ramp.records[ramp.step] = observed
        ramp.status = .completed
        ramp.reason = "all steps passed"
        let weights = RampEngine.weights(for: ramp, step: ramp.step, pools: pools.names)
        var next = transition(state, weights: weights,
                              live: RoutingState.liveAfter(weights: weights, currentLive: state.live, order: pools.names))
        next.ramp = ramp
        if next.generation == state.generation { next.generation += 1 }
        return next
    }

    /// Restores the pre-ramp weights at once (a gate breached, or the canary lost its health).
    /// The ramp is undone as a whole, so nothing is left to roll back to (no step of it is ever
    /// restored by a later rollback).
    public static func rollbackRamp(state: RoutingState, pools: PoolView, observed: RampStepRecord?, reason: String) -> RoutingState {
        guard state.ramp?.isActive == true else { return state }
        var state = state
        let wasMirroring = state.ramp!.isMirroring
        if wasMirroring {
            endMirroring(&state, verdict: observed?.verdict ?? "aborted", observed: observed, pools: pools.names)
        } else if let observed {
            state.ramp!.records[state.ramp!.step] = observed
        }
        var ramp = state.ramp!
        ramp.status = .rolledBack
        ramp.reason = reason
        var weights: [String: Int] = [:]
        for n in pools.names { weights[n] = ramp.preRampWeights[n] ?? 0 }
        let live = pools.names.contains(ramp.preRampLive) ? ramp.preRampLive : state.live
        return RoutingState(generation: state.generation + 1, live: RoutingState.liveAfter(weights: weights, currentLive: live, order: pools.names),
                            weights: weights,
                            // A ramp stopped in its mirroring step never changed the weights: what
                            // a rollback restores stays as it was.
                            previousWeights: wasMirroring ? state.previousWeights : nil,
                            previousLive: wasMirroring ? state.previousLive : nil,
                            ramp: ramp, endpoints: state.endpoints, mirror: state.mirror)
    }

    public static func abortRamp(state: RoutingState, pools: PoolView, reason: String = "aborted by the operator") throws(AdminError) -> RoutingState {
        guard let ramp = state.ramp, ramp.isActive else { throw AdminError(409, "no_ramp", "no ramp is running") }
        var next = rollbackRamp(state: state, pools: pools, observed: nil, reason: reason)
        next.ramp?.status = .aborted
        if !ramp.isMirroring { next.ramp?.records[ramp.step].verdict = "aborted" }
        return next
    }

    public static func pauseRamp(state: RoutingState) throws(AdminError) -> RoutingState {
        guard var ramp = state.ramp, ramp.status == .running else { throw AdminError(409, "no_ramp", "no ramp is running") }
        ramp.status = .paused
        var next = state
        next.ramp = ramp
        next.generation += 1
        return next
    }

    public static func resumeRamp(state: RoutingState, now: Date) throws(AdminError) -> RoutingState {
        guard var ramp = state.ramp, ramp.status == .paused else { throw AdminError(409, "not_paused", "no ramp is paused") }
        ramp.status = .running
        ramp.stepStartedAt = now
        var next = state
        next.ramp = ramp
        next.generation += 1
        return next
    }
}
