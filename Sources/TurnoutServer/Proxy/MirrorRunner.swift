import TurnoutCore

/// A copy of one request on its way to the mirror pool: the head as it went to the live upstream
/// (marked `X-Turnout-Mirror: 1`, its last field), and the body as the live upstream took it, held
/// up to the mirror's `max_body_bytes`. Filled by the live exchange; launched once the request is
/// whole.
final class MirrorTee {
    let upstream: UpstreamRequest
    let pool: String
    let clientIP: String
    let maxBody: Int
    private(set) var body: [UInt8] = []

    init(live: UpstreamRequest, pool: String, clientIP: String, maxBody: Int) {
        self.upstream = live.mirrored()
        self.pool = pool
        self.clientIP = clientIP
        self.maxBody = maxBody
    }

    /// Keeps body bytes; false when the body outgrew `maxBody` (the copy is then given up).
    func append(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard body.count + bytes.count <= maxBody else {
            body = []
            return false
        }
        body.append(contentsOf: bytes)
        return true
    }
}

/// The mirror copies of one event loop: decides at routing time which requests are copied (the
/// routing table's `MirrorRoute`), starts each copy once its request is whole, holds the copies in
/// flight (at most `max_in_flight`, counting those still collecting their body) and ticks their
/// timeouts. A copy is an `UpstreamExchange` in the mirror role whose sink throws the answer away;
/// nothing of it ever reaches the client or delays it. Loop-confined.
final class MirrorRunner: LoopTimed, @unchecked Sendable {
    unowned let loop: EventLoop
    let context: ProxyContext
    let pool: UpstreamPool
    let stats: LoopStats
    /// Copies sent and not yet answered.
    private var inFlight: [ObjectIdentifier: MirrorSink] = [:]
    /// Copies still collecting their request body.
    private var collecting = 0

    /// Per mirror pool: copies that got no answer in a row, and the pause they caused. A dead or
    /// refusing mirror pool would otherwise cost a connect attempt per request until its probes
    /// fail (outlier ejection cannot take the last endpoint out).
    private struct Breaker {
        var failures = 0
        var pauses = 0
        var until: UInt64 = 0
    }
    private var breakers: [String: Breaker] = [:]
    static let failuresBeforePause = 3
    static let firstPauseNanos: UInt64 = 1_000_000_000
    static let longestPauseNanos: UInt64 = 30_000_000_000

    init(loop: EventLoop, context: ProxyContext, pool: UpstreamPool, stats: LoopStats) {
        self.loop = loop
        self.context = context
        self.pool = pool
        self.stats = stats
        loop.execute { [self] in loop.register(self) }
    }

    var inFlightCount: Int { inFlight.count }

    /// At routing time: a tee when this request is to be copied, else nil (a copy that cannot be
    /// made is counted as dropped, with why).
    func tee(for head: HTTPRequestHead, plan: RequestPlan.Forward, table: RoutingTable, clientIP: String) -> MirrorTee? {
        guard let mirror = table.mirror, !plan.upgrade,
              mirror.selects(method: head.method, servingPool: plan.poolIndex)
        else { return nil }
        let spec = mirror.spec
        if inFlight.count + collecting >= spec.maxInFlight {
            stats.mirrorDropped(pool: spec.pool, .busy)
            return nil
        }
        if case .length(let n) = head.framing, n > Int64(spec.maxBodyBytes) {
            stats.mirrorDropped(pool: spec.pool, .bodyTooLarge)
            return nil
        }
        if !table.pools[mirror.pool].hasHealthyEndpoint {
            stats.mirrorDropped(pool: spec.pool, .unavailable)
            return nil
        }
        if let b = breakers[spec.pool], b.until != 0, loop.coarseNow < b.until {
            stats.mirrorDropped(pool: spec.pool, .failing)
            return nil
        }
        collecting += 1
        return MirrorTee(live: plan.upstream, pool: spec.pool, clientIP: clientIP,
                         maxBody: spec.maxBodyBytes)
    }

    /// The live request could not be copied whole (body too large, client gone, request refused).
    func giveUp(_ tee: MirrorTee, _ reason: MirrorDrop) {
        collecting -= 1
        stats.mirrorDropped(pool: tee.pool, reason)
    }

    /// The request is whole: the copy goes to an endpoint of the mirror pool.
    func launch(_ tee: MirrorTee) {
        collecting -= 1
        let table = pool.view.table
        guard let index = table.poolIndex(named: tee.pool), let endpoint = table.pools[index].pickEndpoint(excluding: nil) else {
            stats.mirrorDropped(pool: tee.pool, .unavailable)
            return
        }
        let sink = MirrorSink(runner: self, body: tee.body)
        let ex = UpstreamExchange(upstream: tee.upstream, poolName: tee.pool, endpoint: endpoint,
                                  reason: .weighted, setCookie: nil, clientIP: tee.clientIP, context: context,
                                  pool: pool, stats: stats, sink: sink, role: .mirror)
        sink.exchange = ex
        inFlight[ObjectIdentifier(sink)] = sink
        ex.start()
    }

    fileprivate func done(_ sink: MirrorSink, pool: String, answered: Bool) {
        sink.exchange = nil
        inFlight.removeValue(forKey: ObjectIdentifier(sink))
        var b = breakers[pool] ?? Breaker()
        if answered {
            b = Breaker()
        } else {
            b.failures += 1
            if b.failures >= Self.failuresBeforePause {
                b.failures = 0
                let pause = min(Self.longestPauseNanos, Self.firstPauseNanos << UInt64(min(b.pauses, 5)))
                b.pauses += 1
                b.until = loop.coarseNow + pause
            }
        }
        breakers[pool] = b
    }

    func checkTimeouts(now: UInt64) {
        guard !inFlight.isEmpty else { return }
        for sink in Array(inFlight.values) { sink.exchange?.checkTimeouts(now: now) }
    }
}

/// Where a mirror copy's answer goes: nowhere. It feeds the copy its body and ends the copy's
/// life in the runner; the exchange counts the outcome in the mirror's own counters.
final class MirrorSink: ExchangeSink {
    private unowned let runner: MirrorRunner
    var exchange: UpstreamExchange?
    private let body: [UInt8]
    private var sent = 0
    private var ended = false
    /// The most body bytes handed to the exchange at once.
    private static let slice = 16 * 1024

    init(runner: MirrorRunner, body: [UInt8]) {
        self.runner = runner
        self.body = body
    }

    /// The answer is discarded as it arrives: never a reason to stop reading the mirror.
    var sinkPendingBytes: Int { 0 }

    func exchangeWantsBody(_ ex: UpstreamExchange) {
        guard !ended else { return }
        while sent < body.count && ex.canSendBody {
            let n = min(Self.slice, body.count - sent)
            let error = body.withUnsafeBytes { ex.sendData(UnsafeRawBufferPointer(rebasing: $0[sent..<sent + n])) }
            if let error { return ex.fail(status: 400, message: error) }
            sent += n
        }
        if sent == body.count && ex.canSendBody {
            ended = true
            if let error = ex.endData() { ex.fail(status: 400, message: error) }
        }
    }

    func exchangeInformational(_ ex: UpstreamExchange, _ head: HTTPResponseHead) {}
    func exchangeResponseHead(_ ex: UpstreamExchange, _ head: HTTPResponseHead, framing: BodyFraming) {}
    func exchangeResponseBody(_ ex: UpstreamExchange, _ bytes: UnsafeRawBufferPointer) {}
    func exchangeFailed(_ ex: UpstreamExchange, status: Int, message: String) {}
    func exchangeFinished(_ ex: UpstreamExchange) { runner.done(self, pool: ex.poolName, answered: !ex.machine.proxyGenerated) }
    func exchangeAborted(_ ex: UpstreamExchange, reason: String) { runner.done(self, pool: ex.poolName, answered: true) }

    func exchangeUpgraded(_ ex: UpstreamExchange, _ head: HTTPResponseHead, upstream: UpstreamConnection, leftover: ArraySlice<UInt8>) {
        // Upgrades are never mirrored; a 101 anyway ends the copy.
        upstream.endpoint.requestEnded()
        upstream.close()
        runner.done(self, pool: ex.poolName, answered: true)
    }
}
