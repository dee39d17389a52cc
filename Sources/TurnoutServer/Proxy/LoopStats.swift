import TurnoutCore

/// The traffic counters of one event loop. Only that loop writes them (no lock, no atomic);
/// readers copy them on the loop's queue and add the loops up.
final class LoopStats: @unchecked Sendable {
    unowned let loop: EventLoop
    /// Per endpoint id (ids are small and dense: numbered from 0 as endpoints are configured), so
    /// that counting a request indexes an array instead of hashing into a dictionary.
    private var endpoints: [EndpointStats?] = []
    private var poolOnly: [String: EndpointStats] = [:]

    init(loop: EventLoop) { self.loop = loop }

    @inline(__always)
    func record(endpoint: UpstreamEndpoint?, pool: String, status: Int, startedAt: UInt64, proxyGenerated: Bool) {
        let micros = (EventLoop.now() &- startedAt) / 1000
        if let endpoint {
            let id = endpoint.id
            endpoints.grow(toInclude: id, with: nil)
            if endpoints[id] == nil { endpoints[id] = EndpointStats() }
            endpoints[id]!.record(status: status, micros: micros, proxyGenerated: proxyGenerated)
        } else {
            poolOnly[pool, default: EndpointStats()].record(status: status, micros: micros, proxyGenerated: proxyGenerated)
        }
    }

    /// The counters so far; on the loop.
    var stats: TrafficStats {
        var out = TrafficStats()
        for (id, e) in endpoints.enumerated() { if let e { out.endpoints[id] = e } }
        out.poolOnly = poolOnly
        return out
    }

    /// A copy of the counters, taken on the loop.
    func snapshot() -> TrafficStats { loop.queue.sync { stats } }
}
