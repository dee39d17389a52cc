import Logging
import TurnoutCore

/// The client side of an exchange: an HTTP/1.1 client connection or one HTTP/2 stream. It feeds
/// the request body in and turns the response into its own protocol's framing. Called on the loop
/// that owns both.
protocol ExchangeSink: AnyObject {
    /// Bytes queued toward the client and not yet written. Above `SocketChannel.highWatermark`
    /// the exchange stops reading its upstream until the sink calls `clientDrained()`.
    var sinkPendingBytes: Int { get }
    /// The upstream can take request body: push what is buffered with `sendBody` while `canSendBody`.
    func exchangeWantsBody(_ ex: UpstreamExchange)
    /// An interim (1xx, not 101) response.
    func exchangeInformational(_ ex: UpstreamExchange, _ head: HTTPResponseHead)
    /// The final response head; `framing` is how the upstream delimits the body.
    func exchangeResponseHead(_ ex: UpstreamExchange, _ head: HTTPResponseHead, framing: BodyFraming)
    func exchangeResponseBody(_ ex: UpstreamExchange, _ bytes: UnsafeRawBufferPointer)
    /// The exchange failed before a response head reached the client: answer with this error
    /// (`exchangeFinished` follows).
    func exchangeFailed(_ ex: UpstreamExchange, status: Int, message: String)
    /// The response (or the error) is complete; the exchange is over and its upstream released.
    func exchangeFinished(_ ex: UpstreamExchange)
    /// The exchange broke after the response head was sent: the client must see a broken
    /// transfer, never one that looks complete. The exchange is over.
    func exchangeAborted(_ ex: UpstreamExchange, reason: String)
    /// The upstream accepted the requested protocol switch (101). The exchange is over and hands
    /// over its upstream connection (still counted in flight on its endpoint) and the bytes the
    /// upstream sent after the 101 head.
    func exchangeUpgraded(_ ex: UpstreamExchange, _ head: HTTPResponseHead, upstream: UpstreamConnection, leftover: ArraySlice<UInt8>)
    /// One read from the upstream has been delivered: what the sink held back to write together
    /// (a response head waiting for its first body bytes) must go out now.
    func exchangeReadDone(_ ex: UpstreamExchange)
}

extension ExchangeSink {
    func exchangeReadDone(_ ex: UpstreamExchange) {}
}

/// One request forwarded to one upstream: connects (or takes a pooled connection), sends the
/// head and body, parses the response and streams it to its sink, retries on another endpoint
/// when that is safe, and records the outcome in stats and the access log. Loop-confined; used by
/// both the HTTP/1.1 and the HTTP/2 client side.
final class UpstreamExchange: UpstreamOwner, @unchecked Sendable {
    enum ResponseBody {
        case none
        case length(remaining: Int64)
        case chunked(ChunkedDecoder)
        case untilClose
    }

    let head: HTTPRequestHead
    /// The request head exactly as sent upstream (kept to replay on a retry).
    let upstreamHead: [UInt8]
    let startTime: UInt64
    let clientIP: String
    let setCookie: String?
    let routeReason: RouteDecision.Reason
    /// The request asked for a protocol switch (a 101 answer opens a tunnel).
    let upgrade: Bool
    private(set) var poolName: String
    private(set) var endpoint: UpstreamEndpoint
    unowned let loop: EventLoop
    private let context: ProxyContext
    private let pool: UpstreamPool
    private let stats: LoopStats
    /// Where the response goes: the client connection (HTTP/1.1) or stream (HTTP/2) that owns
    /// this exchange. Held strongly until the exchange is over, then let go: a weak reference
    /// would give every HTTP/2 stream a side table, and make each retain and release of the sink
    /// take the slow path. The sink drops the exchange when it ends or cancels it.
    private(set) var sink: ExchangeSink?

    /// How the request body goes upstream, and how much of a declared length is left.
    private var requestFraming: BodyFraming
    private var requestRemaining: Int64 = 0
    private(set) var requestComplete: Bool
    private(set) var bodyBytesSent: Int64 = 0

    private var upstream: UpstreamConnection?
    private var upstreamReady = false
    private var connecting = false
    private var reusedConnection = false
    private(set) var attempts = 1
    /// Connect deadline while connecting, then response/inactivity deadline.
    private var upstreamDeadline: UInt64 = 0

    private var responseBuffer: [UInt8] = []
    private var responseStart = 0
    private(set) var responseHead: HTTPResponseHead?
    private var responseBody: ResponseBody = .none
    private var anyUpstreamByte = false
    private(set) var responseHeadSent = false
    private(set) var responseComplete = false
    /// Extra bytes after the response, or a framing problem: never reuse this upstream connection.
    private var upstreamUnreusable = false
    /// The answer is Turnout's own error (502, 504, ...), not the upstream's.
    private var proxyGenerated = false
    /// The upstream failed after the response head was sent.
    private var upstreamCut = false
    private(set) var status = 0
    /// Bytes the sink sent to the client for this exchange (it adds them).
    var bytesToClient: Int64 = 0
    /// Over: finished, failed or aborted. Nothing more reaches the sink.
    private(set) var isOver = false

    private var timeouts: TimeoutConfig { pool.view.timeouts }

    init(head: HTTPRequestHead, upstreamHead: [UInt8], poolName: String, endpoint: UpstreamEndpoint,
         reason: RouteDecision.Reason, setCookie: String?, clientIP: String, loop: EventLoop,
         context: ProxyContext, pool: UpstreamPool, stats: LoopStats, sink: ExchangeSink, upgrade: Bool = false) {
        self.head = head
        self.upgrade = upgrade
        self.upstreamHead = upstreamHead
        self.poolName = poolName
        self.endpoint = endpoint
        self.routeReason = reason
        self.setCookie = setCookie
        self.clientIP = clientIP
        self.loop = loop
        self.context = context
        self.pool = pool
        self.stats = stats
        self.sink = sink
        self.startTime = EventLoop.now()
        self.requestFraming = head.framing
        switch head.framing {
        case .none, .untilClose, .length(0): requestComplete = true
        case .length(let n): requestComplete = false; requestRemaining = n
        case .chunked: requestComplete = false
        }
    }

    /// Sends the request on its way.
    func start() {
        endpoint.requestStarted(at: startTime)
        connectUpstream(fresh: false)
    }

    // MARK: request body

    /// The upstream is connected and not backed up: `sendBody` now goes straight to its socket.
    var canSendBody: Bool {
        guard !isOver, !requestComplete, upstreamReady, let u = upstream, !u.isClosed else { return false }
        return u.channel.pendingBytes <= SocketChannel.highWatermark
    }

    /// Whether the request body is declared with a length and how much of it is still due.
    var requestBodyRemaining: Int64? {
        if case .length = requestFraming { return requestRemaining }
        return nil
    }

    /// Forwards request body bytes (already without the client's framing). Only while `canSendBody`.
    /// Returns false when the bytes overrun the declared Content-Length.
    @discardableResult
    func sendBody(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard let u = upstream, !requestComplete, !bytes.isEmpty else { return true }
        switch requestFraming {
        case .length:
            guard Int64(bytes.count) <= requestRemaining else { return false }
            u.channel.write(bytes)
            requestRemaining -= Int64(bytes.count)
            if requestRemaining == 0 { requestComplete = true }
        case .chunked:
            var framed = ChunkedEncoder.chunkHeader(size: bytes.count)
            framed.append(contentsOf: bytes)
            framed.append(contentsOf: ChunkedEncoder.chunkTrailer)
            u.channel.write(framed)
        case .none, .untilClose:
            return false
        }
        bodyBytesSent += Int64(bytes.count)
        bodyProgressed()
        return true
    }

    /// The client's body is complete. Returns false when it ended short of its Content-Length.
    @discardableResult
    func endBody() -> Bool {
        guard !requestComplete else { return true }
        switch requestFraming {
        case .length:
            return requestRemaining == 0
        case .chunked:
            upstream?.channel.write(ChunkedEncoder.lastChunk)
        case .none, .untilClose:
            break
        }
        requestComplete = true
        bodyProgressed()
        return true
    }

    private func bodyProgressed() {
        if upstreamReady && !connecting {
            upstreamDeadline = loop.coarseNow + UInt64(timeouts.upstreamResponseMs) * 1_000_000
        }
    }

    // MARK: client side flow control

    /// The client's send queue went below the watermark: deliver what is buffered, read again.
    func clientDrained() {
        guard !isOver else { return }
        upstream?.channel.resumeReading()
        if responseHead != nil { pumpResponse() }
    }

    // MARK: timeouts

    /// Called from the owner's timer tick.
    func checkTimeouts(now: UInt64) {
        guard !isOver, upstreamDeadline != 0, now >= upstreamDeadline else { return }
        if connecting {
            upstreamFailed(connectFailed: true, error: nil, timedOut: true)
        } else if responseHead == nil {
            context.outliers.failed(endpoint)
            fail(status: 504, message: "the upstream did not answer within \(DurationParser.format(milliseconds: timeouts.upstreamResponseMs))")
        } else {
            // The response stalled mid-body: the client must not mistake it for complete.
            upstreamCut = true
            abort(reason: "upstream stalled mid-response")
        }
    }

    // MARK: connecting

    private func connectUpstream(fresh: Bool) {
        if !fresh, let u = pool.acquire(endpoint) {
            u.owner = self
            upstream = u
            reusedConnection = true
            upstreamIsReady()
            return
        }
        do {
            let u = try pool.connect(endpoint, owner: self)
            upstream = u
            reusedConnection = false
            if u.isConnected {
                upstreamIsReady()
            } else {
                connecting = true
                upstreamDeadline = loop.coarseNow + UInt64(timeouts.connectMs) * 1_000_000
            }
        } catch {
            upstreamFailed(connectFailed: true, error: error, timedOut: false)
        }
    }

    private func upstreamIsReady() {
        guard let u = upstream else { return }
        connecting = false
        upstreamReady = true
        upstreamDeadline = loop.coarseNow + UInt64(timeouts.upstreamResponseMs) * 1_000_000
        u.channel.write(upstreamHead)
        if !requestComplete { sink?.exchangeWantsBody(self) }
    }

    // MARK: upstream events

    func upstreamConnected(_ upstream: UpstreamConnection) {
        guard !isOver, self.upstream === upstream else { return }
        upstreamIsReady()
    }

    func upstreamDrained(_ upstream: UpstreamConnection) {
        guard !isOver, self.upstream === upstream, !requestComplete else { return }
        sink?.exchangeWantsBody(self)
    }

    func upstreamRead(_ upstream: UpstreamConnection, _ bytes: UnsafeRawBufferPointer) {
        guard !isOver, self.upstream === upstream, let sink else {
            upstream.close()
            return
        }
        defer { sink.exchangeReadDone(self) }
        anyUpstreamByte = true
        if deliverDirectly(bytes, to: sink) { return }
        var bytes = bytes
        // A read that starts a response: its heads are parsed straight from the read buffer (a
        // head keeps one copy of its fields), and the body bytes behind them go to the client from
        // there too when the framing allows. (Not for upgrades: a 101 hands the buffered bytes
        // after its head to the tunnel.)
        if responseHead == nil && !upgrade && responseStart == responseBuffer.count {
            while responseHead == nil, let headEnd = HTTPHeadParser.scanHeadEnd(bytes, from: 0, to: bytes.count) {
                let parsed = bytes.withMemoryRebound(to: UInt8.self) { parseHead($0, start: 0, end: headEnd) }
                guard handleHead(parsed) else { return }
                bytes = UnsafeRawBufferPointer(rebasing: bytes[headEnd...])
            }
            // The response is not over before the bytes after its head are buffered or delivered:
            // bytes after a response that ends within its head (204, 304, a 0 length...) are
            // then seen, and the upstream connection is not reused (`finish`).
            if !bytes.isEmpty && deliverDirectly(bytes, to: sink) { return }
        }
        responseBuffer.append(contentsOf: bytes)
        if responseHead == nil {
            parseResponseHead()
        } else {
            pumpResponse()
        }
    }

    /// Body bytes of a length- or close-delimited response, with nothing buffered before them,
    /// go to the client without a copy. False when the bytes need the buffer.
    private func deliverDirectly(_ bytes: UnsafeRawBufferPointer, to sink: ExchangeSink) -> Bool {
        guard responseHead != nil && responseStart == responseBuffer.count else { return false }
        switch responseBody {
        case .length(let remaining):
            let n = Int(min(Int64(bytes.count), remaining))
            sink.exchangeResponseBody(self, UnsafeRawBufferPointer(rebasing: bytes[0..<n]))
            responseBody = .length(remaining: remaining - Int64(n))
            if n < bytes.count { upstreamUnreusable = true }
            afterResponseBytes()
            return true
        case .untilClose:
            sink.exchangeResponseBody(self, bytes)
            afterResponseBytes()
            return true
        default:
            return false
        }
    }

    func upstreamClosed(_ upstream: UpstreamConnection, error: SystemError?) {
        guard !isOver, self.upstream === upstream else { return }
        if responseHead == nil {
            upstreamFailed(connectFailed: connecting, error: error, timedOut: false)
            return
        }
        if case .untilClose = responseBody, error == nil {
            upstreamUnreusable = true
            responseDone()
            return
        }
        if !responseComplete {
            upstreamCut = true
            context.outliers.failed(endpoint)
            abort(reason: "upstream closed mid-response")
        }
    }

    // MARK: the response

    /// Parses the heads buffered in `responseBuffer`, then moves on to the body.
    private func parseResponseHead() {
        while responseHead == nil {
            let end: Int?
            do {
                end = try HTTPHeadParser.findHeadEnd(responseBuffer, start: responseStart, end: responseBuffer.count, limit: 64 * 1024)
            } catch {
                fail(status: 502, message: "the upstream's response head is too large")
                return
            }
            guard let end else { return }
            let parsed = responseBuffer.withUnsafeBufferPointer { parseHead($0, start: responseStart, end: end) }
            responseStart = end
            guard handleHead(parsed) else { return }
        }
        pumpResponse()
    }

    /// One response head in `b[start..<end]` and the framing of its body.
    private func parseHead(_ b: UnsafeBufferPointer<UInt8>, start: Int, end: Int) -> Result<(HTTPResponseHead, BodyFraming), HTTPParseError> {
        do throws(HTTPParseError) {
            let parsed = try HTTPHeadParser.parseResponse(b, start: start, end: end)
            return .success((parsed, try parsed.framing(requestMethod: head.method)))
        } catch {
            return .failure(error)
        }
    }

    /// Acts on a parsed head: an interim one goes to the sink, a 101 opens a tunnel, a final one
    /// starts the response. False when the exchange is over or switched (stop reading heads).
    private func handleHead(_ result: Result<(HTTPResponseHead, BodyFraming), HTTPParseError>) -> Bool {
        let parsed: HTTPResponseHead
        let framing: BodyFraming
        switch result {
        case .failure(let error):
            fail(status: 502, message: "the upstream sent a malformed response: \(error.message)")
            return false
        case .success(let r):
            (parsed, framing) = r
        }
        if (100..<200).contains(parsed.status) {
            if parsed.status == 101 {
                if upgrade {
                    switchProtocols(parsed)
                } else {
                    fail(status: 502, message: "the upstream switched protocols without an upgrade request")
                }
                return false
            }
            sink?.exchangeInformational(self, parsed)
            return !isOver
        }
        startResponse(parsed, framing: framing)
        return !isOver
    }

    private func startResponse(_ parsed: HTTPResponseHead, framing: BodyFraming) {
        responseHead = parsed
        status = parsed.status
        context.outliers.responded(endpoint, status: parsed.status)
        switch framing {
        case .none: responseBody = .none
        case .length(let n): responseBody = .length(remaining: n)
        case .chunked: responseBody = .chunked(ChunkedDecoder())
        case .untilClose: responseBody = .untilClose
        }
        if !parsed.keepAlive { upstreamUnreusable = true }
        responseHeadSent = true
        sink?.exchangeResponseHead(self, parsed, framing: framing)
        upstreamDeadline = loop.coarseNow + UInt64(timeouts.upstreamResponseMs) * 1_000_000
    }

    /// Moves buffered response body bytes to the sink.
    private func pumpResponse() {
        guard !isOver, !responseComplete, responseHead != nil, let sink else { return }
        loop: while sink.sinkPendingBytes <= SocketChannel.highWatermark && !isOver {
            switch responseBody {
            case .none:
                break loop
            case .length(let remaining):
                let avail = responseBuffer.count - responseStart
                if avail == 0 || remaining == 0 { break loop }
                let n = Int(min(Int64(avail), remaining))
                deliver(responseStart..<(responseStart + n))
                responseStart += n
                responseBody = .length(remaining: remaining - Int64(n))
            case .untilClose:
                let avail = responseBuffer.count - responseStart
                if avail == 0 { break loop }
                deliver(responseStart..<responseBuffer.count)
                responseStart = responseBuffer.count
            case .chunked(var decoder):
                if responseStart == responseBuffer.count && !decoder.isDone { break loop }
                var index = responseStart
                let event: ChunkedDecoder.Event
                do {
                    event = try decoder.next(responseBuffer, index: &index, end: responseBuffer.count)
                } catch {
                    responseStart = index
                    upstreamCut = true
                    abort(reason: "upstream sent malformed chunked framing: \(error.message)")
                    return
                }
                responseBody = .chunked(decoder)
                responseStart = index
                switch event {
                case .data(let range):
                    deliver(range)
                case .end:
                    if responseStart < responseBuffer.count { upstreamUnreusable = true }
                    responseComplete = true
                    break loop
                case .needMore:
                    break loop
                }
            }
        }
        guard !isOver else { return }
        if responseStart == responseBuffer.count {
            responseBuffer.removeAll(keepingCapacity: true)
            responseStart = 0
        } else if responseStart > 64 * 1024 {
            responseBuffer.removeFirst(responseStart)
            responseStart = 0
        }
        afterResponseBytes()
    }

    private func deliver(_ range: Range<Int>) {
        guard !range.isEmpty, let sink else { return }
        responseBuffer.withUnsafeBytes { all in
            sink.exchangeResponseBody(self, UnsafeRawBufferPointer(rebasing: all[range]))
        }
    }

    private func afterResponseBytes() {
        guard !isOver, let sink else { return }
        upstreamDeadline = loop.coarseNow + UInt64(timeouts.upstreamResponseMs) * 1_000_000
        switch responseBody {
        case .none: responseComplete = true
        case .length(let remaining) where remaining == 0: responseComplete = true
        default: break
        }
        if responseComplete {
            responseDone()
            return
        }
        if sink.sinkPendingBytes > SocketChannel.highWatermark {
            upstream?.channel.pauseReading()
        } else {
            upstream?.channel.resumeReading()
        }
    }

    private func responseDone() {
        responseComplete = true
        // An upstream that answered before reading the whole request cannot be reused: the rest
        // of the body would be taken for a next request.
        if !requestComplete { upstreamUnreusable = true }
        finish()
    }

    /// Hands the upstream connection to the sink for a tunnel. The endpoint keeps counting it in
    /// flight until the tunnel ends.
    private func switchProtocols(_ parsed: HTTPResponseHead) {
        guard let u = upstream, let sink else { return }
        isOver = true
        status = 101
        responseHead = parsed
        responseHeadSent = true
        upstream = nil
        u.owner = nil
        let leftover = responseBuffer[responseStart...]
        stats.record(endpoint: endpoint, pool: poolName, status: 101, startedAt: startTime, proxyGenerated: false)
        logAccess(note: nil)
        self.sink = nil
        sink.exchangeUpgraded(self, parsed, upstream: u, leftover: leftover)
    }

    // MARK: finishing and failing

    private func finish() {
        guard !isOver else { return }
        isOver = true
        if let u = upstream {
            let reusable = !upstreamUnreusable && requestComplete && !u.isClosed
                && responseStart == responseBuffer.count
            if reusable { pool.release(u) } else { u.owner = nil; u.close() }
        }
        upstream = nil
        endpoint.requestEnded()
        stats.record(endpoint: endpoint, pool: poolName, status: status, startedAt: startTime, proxyGenerated: proxyGenerated)
        logAccess(note: nil)
        let sink = self.sink
        self.sink = nil
        sink?.exchangeFinished(self)
    }

    /// Tries another endpoint when that is safe, else answers 502/504.
    private func upstreamFailed(connectFailed: Bool, error: SystemError?, timedOut: Bool) {
        // A pooled connection the upstream closed just before it was reused is the keep-alive
        // race, not the endpoint failing.
        if connectFailed || !reusedConnection || anyUpstreamByte { context.outliers.failed(endpoint) }
        let replayable = connectFailed
            || (!anyUpstreamByte && bodyBytesSent == 0 && !head.hasBody && head.isIdempotent)
        if let u = upstream {
            u.owner = nil
            u.close()
            upstream = nil
        }
        upstreamReady = false
        connecting = false
        if replayable && attempts < 2 && !anyUpstreamByte {
            let table = pool.view.table
            var next: UpstreamEndpoint?
            if let p = table.poolIndex(named: poolName) {
                next = table.pools[p].pickEndpoint(excluding: endpoint.id)
            }
            if next == nil && reusedConnection && !connectFailed {
                // The keep-alive race: the pooled connection was closed under us. A fresh
                // connection to the same endpoint is the retry.
                next = endpoint
            }
            if let next {
                attempts += 1
                if next !== endpoint {
                    endpoint.requestEnded()
                    next.requestStarted(at: loop.coarseNow)
                    endpoint = next
                }
                connectUpstream(fresh: true)
                return
            }
        }
        if timedOut {
            fail(status: 504, message: "connecting to the upstream timed out")
        } else {
            let why = error.map { "\($0)" } ?? "the upstream closed the connection"
            fail(status: 502, message: "upstream \(endpoint.address) failed: \(why)")
        }
    }

    /// Ends the exchange with Turnout's own error when no response has started, else aborts it.
    /// Also used by the client side when the request itself turns out bad (a 400 mid-body).
    func fail(status: Int, message: String) {
        guard !isOver else { return }
        if responseHeadSent {
            abort(reason: message)
            return
        }
        if let u = upstream {
            u.owner = nil
            u.close()
            upstream = nil
        }
        self.status = status
        proxyGenerated = true
        responseHeadSent = true
        responseComplete = true
        upstreamUnreusable = true
        context.logger.warning("\(status) for \(head.method) \(head.target): \(message)")
        sink?.exchangeFailed(self, status: status, message: message)
        finish()
    }

    /// Ends the exchange at once because the upstream broke mid-response.
    private func abort(reason: String) {
        guard !isOver else { return }
        end(reason: reason)
        let sink = self.sink
        self.sink = nil
        sink?.exchangeAborted(self, reason: reason)
    }

    /// The client went away (closed, reset the stream, timed out mid-body): stop without telling it.
    func cancel(reason: String) {
        guard !isOver else { return }
        end(reason: reason)
        sink = nil
    }

    private func end(reason: String) {
        isOver = true
        if let u = upstream {
            u.owner = nil
            u.close()
            upstream = nil
        }
        endpoint.requestEnded()
        if status == 0 { status = 499 }
        if responseHeadSent {
            // A response cut short by the upstream counts as a server error of that endpoint.
            stats.record(endpoint: endpoint, pool: poolName, status: upstreamCut ? 502 : status,
                         startedAt: startTime, proxyGenerated: upstreamCut)
        }
        logAccess(note: reason)
    }

    private func logAccess(note: String?) {
        guard let access = context.accessLogger else { return }
        let ms = Double(EventLoop.now() - startTime) / 1_000_000
        var line = "\(clientIP) \"\(head.method) \(head.target) \(head.version.text)\" \(status) pool=\(poolName) endpoint=\(endpoint.address) bytes=\(bytesToClient) duration_ms=\(String(format: "%.2f", ms))"
        if attempts > 1 { line += " attempts=\(attempts)" }
        if routeReason != .weighted { line += " route=\(routeReason.rawValue)" }
        if let note { line += " error=\"\(note)\"" }
        access.info("\(line)")
    }
}
