import Dispatch
import Foundation
import TurnoutCore

/// The traffic history the dashboard draws: every 2 s, per pool, the requests, 5xx answers and
/// p99 of the interval, kept for 5 minutes. Sampled on the admin loop from the loops' counters
/// (the same ones `/metrics` reads), so it costs the data path nothing.
final class DashboardStats: @unchecked Sendable {
    static let intervalMs = 2000
    static let keep = 150

    struct Sample {
        var atUnixMs: Int64
        var seconds: Double
        /// pool: (requests, server errors, p99 ms or nil)
        var pools: [String: (requests: UInt64, errors: UInt64, p99Ms: Double?)]
    }

    private let loop: EventLoop
    private let store: RoutingStore
    private let collect: () -> TrafficStats
    private var samples: [Sample] = []
    private var previous: TrafficStats?
    private var previousAt: UInt64 = 0
    private var timer: DispatchSourceTimer?

    init(loop: EventLoop, store: RoutingStore, collect: @escaping () -> TrafficStats) {
        self.loop = loop
        self.store = store
        self.collect = collect
    }

    func start() {
        loop.execute { [self] in
            sample()
            let t = DispatchSource.makeTimerSource(queue: loop.queue)
            t.schedule(deadline: .now() + .milliseconds(Self.intervalMs), repeating: .milliseconds(Self.intervalMs), leeway: .milliseconds(50))
            t.setEventHandler { [weak self] in self?.sample() }
            t.activate()
            timer = t
        }
    }

    func stop() {
        loop.execute { [self] in
            timer?.cancel()
            timer = nil
        }
    }

    private func sample() {
        let now = EventLoop.now()
        let current = collect()
        defer {
            previous = current
            previousAt = now
        }
        guard let previous else { return }
        let delta = current.since(previous)
        var pools: [String: (UInt64, UInt64, Double?)] = [:]
        for (pool, endpoints) in store.endpoints {
            let s = delta.pool(pool.name, endpointIDs: endpoints.map(\.id))
            pools[pool.name] = (s.requests, s.errors, s.requests > 0 ? s.latency.quantile(0.99).map { Double($0) / 1000 } : nil)
        }
        samples.append(Sample(atUnixMs: Int64(Date().timeIntervalSince1970 * 1000), seconds: Double(now - previousAt) / 1e9, pools: pools))
        if samples.count > Self.keep { samples.removeFirst(samples.count - Self.keep) }
    }

    /// `GET /v1/stats`: the samples, and the last 10 s summed per pool (rate, error rate, share of
    /// all requests), for the page's charts and its set-versus-observed split.
    /// Called on the admin loop (the router runs there), which owns the samples.
    func json(probes: [Int: HealthProber.LastProbe]) -> String {
        dispatchPrecondition(condition: .onQueue(loop.queue))
        let (list, order) = (samples, store.poolNames)
        func num(_ d: Double?) -> String { d.map { String(format: "%.4g", $0) } ?? "null" }
        var out = "{\"interval_ms\":\(Self.intervalMs),\"samples\":["
        out += list.map { s in
            "{\"t\":\(s.atUnixMs),\"pools\":{" + order.compactMap { name -> String? in
                guard let p = s.pools[name] else { return nil }
                let rps = s.seconds > 0 ? Double(p.requests) / s.seconds : 0
                let rate: Double? = p.requests > 0 ? Double(p.errors) / Double(p.requests) : nil
                return "\(JSONWriter.quote(name)):{\"requests\":\(p.requests),\"rps\":\(num(rps)),\"error_rate\":\(num(rate)),\"p99_ms\":\(num(p.p99Ms))}"
            }.joined(separator: ",") + "}}"
        }.joined(separator: ",")
        out += "],\"window\":{"
        let recent = list.suffix(5)
        let seconds = recent.reduce(0) { $0 + $1.seconds }
        var total: UInt64 = 0
        for s in recent { for (_, p) in s.pools { total += p.requests } }
        out += order.map { name -> String in
            let req = recent.reduce(UInt64(0)) { $0 + ($1.pools[name]?.requests ?? 0) }
            let err = recent.reduce(UInt64(0)) { $0 + ($1.pools[name]?.errors ?? 0) }
            let share: Double? = total > 0 ? Double(req) * 100 / Double(total) : nil
            return "\(JSONWriter.quote(name)):{\"requests\":\(req),\"rps\":\(num(seconds > 0 ? Double(req) / seconds : 0)),\"error_rate\":\(num(req > 0 ? Double(err) / Double(req) : nil)),\"observed_share\":\(num(share))}"
        }.joined(separator: ",")
        out += "},\"window_seconds\":\(num(seconds)),\"probes\":{"
        out += store.endpoints.map { entry in
            "\(JSONWriter.quote(entry.pool.name)):{" + entry.endpoints.compactMap { e -> String? in
                guard let p = probes[e.id] else { return nil }
                return "\(JSONWriter.quote(e.address.description)):{\"passed\":\(p.passed),\"detail\":\(JSONWriter.quote(p.detail)),\"latency_ms\":\(num(p.latencyMs)),\"at\":\(p.atUnixMs)}"
            }.joined(separator: ",") + "}"
        }.joined(separator: ",")
        return out + "}}"
    }
}
