import Dispatch
import Foundation
import Logging
import Synchronization
import TurnoutCore

/// Drives a running ramp: every 50 ms it reads the canary's traffic since the step began (summed
/// over the event loops), asks `RampEngine` what to do, and carries it out through the routing
/// store (persisted like any mutation), reporting each step and verdict on the event bus.
/// Runs on the admin loop. After a restart, a persisted ramp resumes at its step with the step
/// clock restarted.
///
/// In cluster mode every replica keeps the window of the current step (and publishes it through
/// the cluster agent), but only the replica that holds the ramp-driver key judges: on the sum of
/// every replica's window, committing each transition as a compare-and-swap through etcd (off the
/// admin loop). A new driver continues from the step the routing document records.
final class RampController: @unchecked Sendable {
    let loop: EventLoop
    let store: RoutingStore
    let stateFile: StateFileWriter?
    let events: EventBus
    let logger: Logger
    let collectStats: @Sendable () -> TrafficStats
    private var timer: DispatchSourceTimer?
    /// How often a running ramp is judged; a breach is acted on within one tick.
    static let tickMs = 50

    /// The step being watched: (generation when the step started, step index, wall-clock start).
    private var stepKey: (step: Int, startedAt: Date)?
    private var baseline = TrafficStats()
    private var stepStartMono: UInt64 = 0
    private var lastHold: UInt64 = 0
    /// The current step's observations, for `GET /v1/ramp` (in cluster mode: every replica's).
    private let shown = Mutex<RampWindow?>(nil)
    /// This replica's own window of the current step, with the ramp it belongs to (what cluster
    /// mode publishes).
    private let local = Mutex<(RampState, RampWindow)?>(nil)
    /// Cluster mode: the agent that knows the driver and the other replicas' windows.
    var cluster: ClusterAgent?
    /// A transition is being committed through etcd; no new decision until it is.
    private var committing = false

    init(loop: EventLoop, store: RoutingStore, stateFile: StateFileWriter?, events: EventBus, logger: Logger,
         collectStats: @escaping @Sendable () -> TrafficStats) {
        self.loop = loop
        self.store = store
        self.stateFile = stateFile
        self.events = events
        self.logger = logger
        self.collectStats = collectStats
    }

    func start() {
        loop.execute { [self] in
            let t = DispatchSource.makeTimerSource(queue: loop.queue)
            t.schedule(deadline: .now() + .milliseconds(Self.tickMs), repeating: .milliseconds(Self.tickMs), leeway: .milliseconds(5))
            t.setEventHandler { [unowned self] in self.tick() }
            t.activate()
            timer = t
        }
    }

    func stop() {
        loop.queue.sync {
            timer?.cancel()
            timer = nil
        }
    }

    /// The window of the running step.
    func window() -> RampWindow? { shown.withLock { $0 } }

    /// This replica's own window and the ramp step it belongs to (nil when no ramp runs).
    func localWindow() -> (RampState, RampWindow)? { local.withLock { $0 } }

    private func canaryIDs(_ pool: String) -> [Int] {
        store.endpoints.first { $0.pool.name == pool }?.endpoints.map(\.id) ?? []
    }

    private func tick() {
        let state = store.state
        guard let ramp = state.ramp, ramp.status == .running else {
            stepKey = nil
            shown.withLock { $0 = nil }
            local.withLock { $0 = nil }
            return
        }
        let now = EventLoop.now()
        if stepKey == nil || stepKey!.step != ramp.step || stepKey!.startedAt != ramp.stepStartedAt {
            stepKey = (ramp.step, ramp.stepStartedAt)
            baseline = collectStats()
            stepStartMono = now
            lastHold = 0
            shown.withLock { $0 = RampWindow(requests: 0, errors: 0, p99Micros: nil) }
            local.withLock { $0 = (ramp, RampWindow(requests: 0, errors: 0, latency: LatencyHistogram(), totalRequests: 0)) }
            return
        }
        let delta = collectStats().since(baseline)
        // In the mirroring step the canary is judged on the copies' answers; after it, on the
        // live requests it serves.
        let observed = ramp.isMirroring ? delta.mirror[ramp.plan.pool] ?? EndpointStats()
                                        : delta.pool(ramp.plan.pool, endpointIDs: canaryIDs(ramp.plan.pool))
        var total: UInt64 = 0
        for entry in store.endpoints { total += delta.pool(entry.pool.name, endpointIDs: entry.endpoints.map(\.id)).requests }
        let mine = RampWindow(requests: observed.requests, errors: observed.errors,
                              latency: observed.latency, totalRequests: total)
        local.withLock { $0 = (ramp, mine) }
        let window = cluster?.remoteWindow(for: ramp).map { mine.adding($0) } ?? mine
        shown.withLock { $0 = window }
        if let cluster, !cluster.drivesRamp { return }
        if committing { return }
        // Health rolls a ramp back only once every canary endpoint was probed and none passed;
        // endpoints not probed yet (just after a restart) do not count as failed.
        let (_, health) = store.snapshot()
        let ids = canaryIDs(ramp.plan.pool)
        let healthy = ids.contains { health[$0] == .healthy } || ids.contains { (health[$0] ?? .unknown) == .unknown }
        let elapsedMs = Int64((now - stepStartMono) / 1_000_000)
        let decision = RampEngine.decide(ramp, window: window, stepElapsedMs: elapsedMs, canaryHealthy: healthy)
        let record = { @Sendable (verdict: String) in
            RampStepRecord(weight: ramp.currentWeight, requests: window.requests, errors: window.errors, p99Ms: window.p99Ms, verdict: verdict)
        }
        switch decision {
        case .none:
            return
        case .hold(let why):
            if lastHold == 0 || now - lastHold >= UInt64(ramp.currentIntervalMs) * 1_000_000 {
                lastHold = now
                publishVerdict(ramp, window: window, verdict: "held", reason: why, generation: state.generation)
            }
        case .advance:
            apply(ramp, verdict: "passed", window: window) { s, view in
                RoutingCommands.advanceRamp(state: s, pools: view, observed: record("passed"), now: Date())
            }
        case .complete:
            apply(ramp, verdict: "passed", window: window) { s, view in
                RoutingCommands.completeRamp(state: s, pools: view, observed: record("passed"))
            }
        case .rollback(let reason, let verdict):
            apply(ramp, verdict: verdict, window: window, reason: reason) { s, view in
                RoutingCommands.rollbackRamp(state: s, pools: view, observed: record(verdict), reason: reason)
            }
        }
    }

    /// Applies a ramp transition if the ramp is still at the step it was judged on.
    private func apply(_ judged: RampState, verdict: String, window: RampWindow, reason: String? = nil,
                       _ change: @escaping @Sendable (RoutingState, RoutingCommands.PoolView) -> RoutingState) {
        let guarded: @Sendable (RoutingState, RoutingCommands.PoolView) -> RoutingState = { s, view in
            guard let r = s.ramp, r.status == .running, r.step == judged.step, r.stepStartedAt == judged.stepStartedAt else {
                return s  // an operator (or another driver) got there first
            }
            return change(s, view)
        }
        if let cluster {
            let (kind, text): (String, String)
            switch verdict {
            case "passed" where judged.isMirroring:
                let firstWeight = Percent.format(basisPoints: judged.plan.steps[0])
                (kind, text) = ("ramp_step", "ramp of \(judged.plan.pool): mirroring step passed; step 1 of \(judged.plan.steps.count) at \(firstWeight)%")
            case "passed" where judged.step + 1 < judged.plan.steps.count:
                let nextWeight = Percent.format(basisPoints: judged.plan.steps[judged.step + 1])
                (kind, text) = ("ramp_step", "ramp of \(judged.plan.pool): step \(judged.step + 2) of \(judged.plan.steps.count) at \(nextWeight)%")
            case "passed":
                (kind, text) = ("ramp_completed", "ramp of \(judged.plan.pool) completed: all steps passed")
            default:
                (kind, text) = ("rollback", "ramp of \(judged.plan.pool) rolled back: \(reason ?? verdict)")
            }
            committing = true
            let loop = self.loop
            cluster.writeAsync(expected: nil, kind: kind, reason: text, { s, view throws(AdminError) in guarded(s, view) }) { [weak self] result in
                loop.execute { [weak self] in
                    guard let self else { return }
                    self.committing = false
                    switch result {
                    case .success(let next):
                        if next.ramp?.step != judged.step || next.ramp?.status != .running || next.ramp?.stepStartedAt != judged.stepStartedAt
                            || next.ramp?.isMirroring != judged.isMirroring {
                            self.publishVerdict(judged, window: window, verdict: verdict, reason: reason ?? "gates passed", generation: next.generation)
                        }
                    case .failure(let e):
                        self.logger.error("ramp: cannot commit \(verdict) through etcd: \(e.message); will retry")
                    }
                }
            }
            return
        }
        let stateFile = self.stateFile
        let store = self.store
        let next: RoutingState
        do {
            next = try store.mutate({ (s: RoutingState, health: [Int: HealthStatus]) throws(AdminError) -> RoutingState in
                guarded(s, store.poolView())
            }, persist: { (n: RoutingState) throws(AdminError) in
                guard let stateFile else { return }
                do { try stateFile.write(n) } catch {
                    throw AdminError(500, "state_write_failed", "\(error)")
                }
            })
        } catch {
            logger.error("ramp: cannot apply \(verdict): \(error); will retry")
            return
        }
        guard let ramp = next.ramp else { return }
        publishVerdict(judged, window: window, verdict: verdict, reason: reason ?? "gates passed", generation: next.generation)
        let weights = store.poolNames.map { "\($0)=\(Percent.format(basisPoints: next.weights[$0] ?? 0))" }.joined(separator: " ")
        switch ramp.status {
        case .running:
            logger.notice("ramp \(ramp.plan.pool): step \(ramp.step + 1)/\(ramp.plan.steps.count) at \(Percent.format(basisPoints: ramp.currentWeight))%, weights \(weights)")
            events.publish(TurnoutEvent(kind: "ramp_step", generation: next.generation,
                                        reason: "step \(ramp.step + 1) of \(ramp.plan.steps.count)",
                                        fields: [("pool", JSONWriter.quote(ramp.plan.pool)), ("step", "\(ramp.step + 1)"),
                                                 ("weight", Percent.format(basisPoints: ramp.currentWeight)),
                                                 ("weights", JSONWriter.weights(next.weights, order: store.poolNames))]))
        case .completed:
            logger.notice("ramp \(ramp.plan.pool) completed: live \(next.live), weights \(weights)")
            events.publish(TurnoutEvent(kind: "ramp_completed", generation: next.generation, reason: "all steps passed",
                                        fields: [("pool", JSONWriter.quote(ramp.plan.pool)), ("live", JSONWriter.quote(next.live)),
                                                 ("weights", JSONWriter.weights(next.weights, order: store.poolNames))]))
        case .rolledBack:
            logger.warning("ramp \(ramp.plan.pool) rolled back: \(ramp.reason ?? "")")
            events.publish(TurnoutEvent(kind: "rollback", generation: next.generation, reason: ramp.reason ?? verdict,
                                        fields: [("pool", JSONWriter.quote(ramp.plan.pool)), ("cause", JSONWriter.quote(verdict)),
                                                 ("weights", JSONWriter.weights(next.weights, order: store.poolNames))]))
        default:
            break
        }
    }

    private func publishVerdict(_ ramp: RampState, window: RampWindow, verdict: String, reason: String, generation: UInt64) {
        var fields: [(String, String)] = [
            ("pool", JSONWriter.quote(ramp.plan.pool)), ("step", ramp.isMirroring ? "0" : "\(ramp.step + 1)"),
            ("phase", ramp.isMirroring ? "\"mirror\"" : "\"weights\""),
            ("weight", Percent.format(basisPoints: ramp.currentWeight)), ("verdict", JSONWriter.quote(verdict)),
            ("requests", "\(window.requests)"), ("errors", "\(window.errors)"), ("total_requests", "\(window.totalRequests)"),
            ("error_rate", String(format: "%.6f", window.errorRate)),
            ("p99_ms", window.p99Ms.map { String(format: "%.3f", $0) } ?? "null"),
        ]
        fields.append(("max_error_rate", ramp.plan.gates.maxErrorRate.map { "\($0)" } ?? "null"))
        fields.append(("max_p99_ms", ramp.plan.gates.maxP99Ms.map { "\($0)" } ?? "null"))
        fields.append(("min_requests", "\(ramp.plan.gates.minRequests)"))
        events.publish(TurnoutEvent(kind: "gate", generation: generation, reason: reason, fields: fields))
    }
}
