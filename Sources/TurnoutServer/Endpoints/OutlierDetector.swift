import Dispatch
import Logging
import Synchronization
import TurnoutCore

/// Passive outlier detection (`pools.NAME.outlier_detection`): the data path counts connect
/// failures, resets, timeouts and 5xx in a row on each endpoint (atomics on the endpoint); when a
/// run reaches its pool's threshold, the endpoint is ejected from the rotation for a time that
/// grows with each ejection in a row, unless that would take more than `max_ejected_percent` of
/// the pool out. An ejection ends by time, or (for one caused by failures, not 5xx) by a passing
/// health probe.
final class OutlierDetector: Sendable {
    enum Reason: String, Sendable {
        case failures = "consecutive_failures"
        case serverErrors = "consecutive_5xx"
    }

    private struct Record {
        var streak = 0
        var ejected: (reason: Reason, until: UInt64, token: UInt64)?
        var readmittedAt: UInt64?
        var ejections: [String: UInt64] = [:]
    }

    private let store: RoutingStore
    private let events: EventBus
    private let logger: Logger
    private let config: @Sendable () -> TurnoutConfig
    private let queue = DispatchQueue(label: "turnout.outliers")
    private let records = Mutex<(byID: [Int: Record], nextToken: UInt64, refused: [String: UInt64])>(([:], 1, [:]))

    init(store: RoutingStore, events: EventBus, logger: Logger, config: @escaping @Sendable () -> TurnoutConfig) {
        self.store = store
        self.events = events
        self.logger = logger
        self.config = config
    }

    // MARK: data path

    /// A response with a status: a 5xx extends the endpoint's run of 5xx; anything else ends both runs.
    @inline(__always)
    func responded(_ endpoint: UpstreamEndpoint, status: Int) {
        if status >= 500 {
            let run = endpoint.serverErrorRun.wrappingAdd(1, ordering: .relaxed).newValue
            let threshold = config().pool(named: endpoint.pool)?.outlierDetection.consecutive5xx ?? 0
            if threshold > 0 && run >= threshold { trip(endpoint, .serverErrors, run: run) }
        } else {
            if endpoint.serverErrorRun.load(ordering: .relaxed) != 0 { endpoint.serverErrorRun.store(0, ordering: .relaxed) }
            if endpoint.failureRun.load(ordering: .relaxed) != 0 { endpoint.failureRun.store(0, ordering: .relaxed) }
        }
    }

    /// A connect failure, reset or timeout.
    func failed(_ endpoint: UpstreamEndpoint) {
        let run = endpoint.failureRun.wrappingAdd(1, ordering: .relaxed).newValue
        let threshold = config().pool(named: endpoint.pool)?.outlierDetection.consecutiveFailures ?? 0
        if threshold > 0 && run >= threshold { trip(endpoint, .failures, run: run) }
    }

    // MARK: ejection

    private func trip(_ endpoint: UpstreamEndpoint, _ reason: Reason, run: Int) {
        guard let pool = config().pool(named: endpoint.pool) else { return }
        let od = pool.outlierDetection
        let now = DispatchTime.now().uptimeNanoseconds
        let members = store.members.first { $0.pool.name == endpoint.pool }?.members.filter { !$0.leaving } ?? []
        let ejectedIDs = store.ejectedIDs
        let outNow = members.filter { ejectedIDs.contains($0.endpoint.id) }.count
        enum Outcome { case none, refused, ejected(ms: Int64, token: UInt64, nth: Int) }
        let outcome: Outcome = records.withLock { r in
            var rec = r.byID[endpoint.id] ?? Record()
            if rec.ejected != nil { return .none }
            guard OutlierPolicy.mayEject(poolSize: members.count, ejected: outNow, maxPercent: od.maxEjectedPercent) else {
                r.refused[endpoint.pool, default: 0] += 1
                return .refused
            }
            let since = rec.readmittedAt.map { Int64((now - min(now, $0)) / 1_000_000) }
            rec.streak = OutlierPolicy.streak(previous: rec.streak, sinceReadmittedMs: since, baseMs: od.baseEjectionMs) + 1
            let ms = OutlierPolicy.duration(nth: rec.streak, baseMs: od.baseEjectionMs)
            let token = r.nextToken
            r.nextToken += 1
            rec.ejected = (reason, now + UInt64(ms) * 1_000_000, token)
            rec.ejections[reason.rawValue, default: 0] += 1
            r.byID[endpoint.id] = rec
            return .ejected(ms: ms, token: token, nth: rec.streak)
        }
        switch outcome {
        case .none:
            return
        case .refused:
            // Counted; the run goes on, so the next failure asks again.
            if run == (reason == .failures ? od.consecutiveFailures : od.consecutive5xx) {
                logger.warning("endpoint \(endpoint.address) of pool \(endpoint.pool) failed \(run) requests in a row but is not ejected: pool \(endpoint.pool) already has \(outNow) of \(members.count) endpoint(s) ejected (max_ejected_percent \(od.maxEjectedPercent))")
            }
        case .ejected(let ms, let token, let nth):
            endpoint.failureRun.store(0, ordering: .relaxed)
            endpoint.serverErrorRun.store(0, ordering: .relaxed)
            store.setEjected(endpointID: endpoint.id, true)
            let what = reason == .failures ? "\(run) connect failures, resets or timeouts in a row" : "\(run) 5xx answers in a row"
            logger.warning("endpoint \(endpoint.address) of pool \(endpoint.pool) ejected for \(DurationParser.format(milliseconds: ms)) after \(what) (ejection \(nth) in a row)")
            events.publish(TurnoutEvent(kind: "ejected", generation: store.state.generation, reason: what,
                                        fields: [("pool", JSONWriter.quote(endpoint.pool)), ("endpoint", JSONWriter.quote(endpoint.address.description)),
                                                 ("trigger", JSONWriter.quote(reason.rawValue)), ("duration_ms", "\(ms)")]))
            queue.asyncAfter(deadline: .now() + .milliseconds(Int(ms))) { [self] in
                readmit(endpoint, token: token, why: "its ejection time is over")
            }
        }
    }

    /// A passing health probe: ends an ejection caused by failures (the endpoint answers again).
    func probePassed(_ endpoint: UpstreamEndpoint) {
        let token: UInt64? = records.withLock { r in
            guard let e = r.byID[endpoint.id]?.ejected, e.reason == .failures else { return nil }
            return e.token
        }
        if let token { readmit(endpoint, token: token, why: "a health probe passed") }
    }

    private func readmit(_ endpoint: UpstreamEndpoint, token: UInt64, why: String) {
        let now = DispatchTime.now().uptimeNanoseconds
        let current: Bool = records.withLock { r in
            guard let e = r.byID[endpoint.id]?.ejected, e.token == token else { return false }
            r.byID[endpoint.id]?.ejected = nil
            r.byID[endpoint.id]?.readmittedAt = now
            return true
        }
        guard current else { return }
        store.setEjected(endpointID: endpoint.id, false)
        logger.notice("endpoint \(endpoint.address) of pool \(endpoint.pool) readmitted: \(why)")
        events.publish(TurnoutEvent(kind: "readmitted", generation: store.state.generation, reason: why,
                                    fields: [("pool", JSONWriter.quote(endpoint.pool)), ("endpoint", JSONWriter.quote(endpoint.address.description))]))
    }

    /// Endpoints that left: forget them.
    func forget(_ ids: [Int]) {
        records.withLock { r in for id in ids { r.byID[id] = nil } }
    }

    /// Ejections so far per endpoint id and trigger, and ejections refused per pool (for /metrics).
    func counts() -> (ejections: [Int: [String: UInt64]], refused: [String: UInt64]) {
        records.withLock { r in (r.byID.mapValues(\.ejections), r.refused) }
    }
}
