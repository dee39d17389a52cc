import TurnoutCore

/// The traffic counters of one event loop. Only that loop writes them; they are published as
/// relaxed atomics (`CounterBlock`), so the ramp judge, `/metrics` and the dashboard read them
/// from their own threads without entering the loop, and a busy loop delays none of them.
final class LoopStats: @unchecked Sendable {
    /// The loop that owns the stats (`unowned(unsafe)`: no reference count per use).
    unowned(unsafe) let loop: EventLoop
    /// Slots of a block: responses by status class (1...5; 0 unused), Turnout's own errors, the
    /// latency histogram's sum and buckets.
    enum Slot {
        static let proxyErrors = 6
        static let sumMicros = 7
        static let grpcErrors = 8
        static let buckets = 9
        static let count = buckets + LatencyHistogram.bucketCount
    }

    /// Per endpoint id.
    private let endpoints = EndpointCounterTable(slots: Slot.count)
    /// Per pool, for requests that found no endpoint.
    private let poolOnly = CounterTable<String>(slots: Slot.count)
    /// Per mirror pool: the mirror copies' outcomes, and the copies not made by reason.
    private let mirror = CounterTable<String>(slots: Slot.count)
    private let mirrorDrops = CounterTable<String>(slots: MirrorDrop.allCases.count)

    init(loop: EventLoop) { self.loop = loop }

    @inline(__always)
    func record(endpoint: UpstreamEndpoint?, pool: String, status: Int, startedAt: UInt64, proxyGenerated: Bool, grpcError: Bool = false) {
        if let id = endpoint?.id {
            endpoints.withBlock(id) {
                Self.count($0, status: status, startedAt: startedAt, proxyGenerated: proxyGenerated, grpcError: grpcError)
            }
        } else {
            Self.count(poolOnly.block(pool), status: status, startedAt: startedAt, proxyGenerated: proxyGenerated, grpcError: grpcError)
        }
    }

    @inline(__always)
    private static func count(_ block: CounterBlock, status: Int, startedAt: UInt64, proxyGenerated: Bool, grpcError: Bool = false) {
        let micros = (EventLoop.now() &- startedAt) / 1000
        block.add(min(max(status / 100, 1), 5))
        if proxyGenerated { block.add(Slot.proxyErrors) }
        if grpcError { block.add(Slot.grpcErrors) }
        block.add(Slot.sumMicros, micros)
        block.add(Slot.buckets + LatencyHistogram.index(micros: micros))
    }

    /// A mirror copy ended (answered, or failed with Turnout's own `status`).
    func recordMirror(pool: String, status: Int, startedAt: UInt64, proxyGenerated: Bool) {
        Self.count(mirror.block(pool), status: status, startedAt: startedAt, proxyGenerated: proxyGenerated)
    }

    func mirrorDropped(pool: String, _ reason: MirrorDrop) {
        mirrorDrops.block(pool).add(reason.rawValue)
    }

    /// The counters so far, from any thread.
    func snapshot() -> TrafficStats {
        var out = TrafficStats()
        for (id, b) in endpoints.blocks() { out.endpoints[id] = Self.read(b) }
        for (pool, b) in poolOnly.blocks() { out.poolOnly[pool] = Self.read(b) }
        for (pool, b) in mirror.blocks() { out.mirror[pool] = Self.read(b) }
        for (pool, b) in mirrorDrops.blocks() { out.mirrorDropped[pool] = MirrorDrop.allCases.map { b.load($0.rawValue) } }
        return out
    }

    private static func read(_ b: CounterBlock) -> EndpointStats {
        var s = EndpointStats()
        for c in 1...5 { s.byClass[c] = b.load(c) }
        s.proxyErrors = b.load(Slot.proxyErrors)
        s.grpcErrors = b.load(Slot.grpcErrors)
        let counts = (0..<LatencyHistogram.bucketCount).map { b.load(Slot.buckets + $0) }
        // The total is the buckets' sum, so that quantiles agree with the buckets read.
        s.latency = LatencyHistogram(counts: counts, total: counts.reduce(0, &+), sumMicros: b.load(Slot.sumMicros))
        return s
    }
}
