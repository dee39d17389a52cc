import TurnoutCore

/// The traffic counters of one event loop. Only that loop writes them (no lock, no atomic);
/// readers copy them on the loop's queue and add the loops up.
final class LoopStats: @unchecked Sendable {
    unowned let loop: EventLoop
    private(set) var stats = TrafficStats()

    init(loop: EventLoop) { self.loop = loop }

    @inline(__always)
    func record(endpoint: UpstreamEndpoint?, pool: String, status: Int, startedAt: UInt64, proxyGenerated: Bool) {
        let micros = (EventLoop.now() &- startedAt) / 1000
        if let endpoint {
            stats.endpoints[endpoint.id, default: EndpointStats()].record(status: status, micros: micros, proxyGenerated: proxyGenerated)
        } else {
            stats.poolOnly[pool, default: EndpointStats()].record(status: status, micros: micros, proxyGenerated: proxyGenerated)
        }
    }

    /// A copy of the counters, taken on the loop.
    func snapshot() -> TrafficStats { loop.queue.sync { stats } }
}
