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
    /// Trailer fields that ended the response (an HTTP/2 upstream's; gRPC sends its status in
    /// them). Before `exchangeFinished`.
    func exchangeTrailers(_ ex: UpstreamExchange, _ trailers: HTTPHeaders)
}

extension ExchangeSink {
    func exchangeReadDone(_ ex: UpstreamExchange) {}
    func exchangeTrailers(_ ex: UpstreamExchange, _ trailers: HTTPHeaders) {}
}

/// One request forwarded to one upstream: the driver of an `ExchangeMachine`. It connects (or
/// takes a pooled connection), writes what the machine says to write, parses response heads,
/// hands response bytes to the machine and its sink, and records the outcome in stats and the
/// access log. The rules (framing, reuse, retry, abort, timeouts) are the machine's; this class
/// only carries them out on sockets. Loop-confined; used by both the HTTP/1.1 and the HTTP/2
/// client side.
final class UpstreamExchange: UpstreamOwner, @unchecked Sendable {
    /// A request for a client, or a copy of one for the mirror pool (counted apart, never logged
    /// as an access, its answer thrown away).
    enum Role { case live, mirror }

    let role: Role
    /// The client's request head.
    var head: HTTPRequestHead { upstreamRequest.head }
    /// What goes upstream (kept to send again on a retry).
    let upstreamRequest: UpstreamRequest
    let startTime: UInt64
    let clientIP: String
    let setCookie: String?
    let routeReason: RouteDecision.Reason
    private(set) var poolName: String
    /// The endpoint the request goes to (another after a retry). Held here; the calls that only
    /// count or record on it read `endpointRef`, without a reference count, which follows it.
    private(set) var endpoint: UpstreamEndpoint { didSet { endpointRef = Unretained(endpoint) } }
    private var endpointRef: Unretained<UpstreamEndpoint>
    /// Loops live as long as the process serves: held and read without a reference count.
    private let loopRef: Unretained<EventLoop>
    /// The loop's time for deadlines (`EventLoop.coarseNow`), read without counting the loop.
    private var now: UInt64 { loopRef.with { $0.coarseNow } }
    /// The proxy's context and the loop's upstream pool and counters: made with the loops and
    /// kept as long as they are (`ProxyServer`), so held like the loop, without a count.
    private let contextRef: Unretained<ProxyContext>
    private let poolRef: Unretained<UpstreamPool>
    private let statsRef: Unretained<LoopStats>
    /// The pool's `viewRef`: the settings and routing table, read without a reference count.
    private let viewRef: Unretained<LoopView>
    /// Where the response goes: the client connection (HTTP/1.1) or stream (HTTP/2) that owns
    /// this exchange. Held strongly until the exchange is over, then let go: a weak reference
    /// would give every HTTP/2 stream a side table, and make each retain and release of the sink
    /// take the slow path. The sink drops the exchange when it ends or cancels it.
    private(set) var sink: ExchangeSink?

    /// The request's life: what happened so far and what is allowed next.
    private(set) var machine: ExchangeMachine
    /// The connection (HTTP/1.1) or stream (HTTP/2) the request goes on.
    private var upstream: UpstreamLink?
    /// The start of a response head that has not fully arrived.
    private var headBuffer: [UInt8] = []
    private(set) var attempts = 1
    /// The request id that went upstream (`X-Request-Id`), for the access log.
    var requestID: String? { upstreamRequest.requestID }
    /// When the request head last went to an endpoint, and when its answer's first byte came
    /// (0: not yet), for the access log's upstream times.
    private var headSentAt: UInt64 = 0
    private var firstByteAt: UInt64 = 0
    /// Bytes the sink sent to the client for this exchange (it adds them).
    var bytesToClient: Int64 = 0
    /// HTTP/2 upstreams: the request body sent so far (at most `maxReplayBytes`), kept until the
    /// response head comes, so that a stream the upstream refused can go again whole. Nil when not
    /// kept (HTTP/1.1, or more body than that).
    private var replayBody: [UInt8]?
    static let maxReplayBytes = 64 * 1024
    /// The `grpc-status` the answer ended with (its trailers, or a trailers-only head).
    private var grpcStatus: Int?
    /// The copy of this request for the mirror pool, collecting the body as it goes upstream.
    private var tee: MirrorTee?
    private var mirrors: MirrorRunner?

    /// Largest response head accepted from an upstream.
    static let maxResponseHead = 64 * 1024

    var isOver: Bool { machine.isOver }
    var requestComplete: Bool { machine.requestComplete }
    var status: Int { machine.status }

    init(upstream: UpstreamRequest, poolName: String, endpoint: UpstreamEndpoint,
         reason: RouteDecision.Reason, setCookie: String?, clientIP: String,
         context: ProxyContext, pool: UpstreamPool, stats: LoopStats, sink: ExchangeSink, upgrade: Bool = false,
         role: Role = .live) {
        self.role = role
        self.upstreamRequest = upstream
        self.poolName = poolName
        self.endpoint = endpoint
        self.endpointRef = Unretained(endpoint)
        self.routeReason = reason
        self.setCookie = setCookie
        self.clientIP = clientIP
        self.loopRef = pool.loopRef  // the pool's loop is the exchange's
        self.contextRef = Unretained(context)
        self.poolRef = Unretained(pool)
        self.statsRef = Unretained(stats)
        self.viewRef = pool.viewRef
        self.sink = sink
        self.startTime = EventLoop.now()
        let t = pool.viewRef.with { $0.timeouts }
        // A mirror copy is fed its body as bytes already taken from the client (never framed
        // by a client, never waiting for 100 Continue).
        let request = role == .live
            ? ExchangeMachine.Request(upstream.head, upgrade: upgrade)
            : ExchangeMachine.Request(method: upstream.head.method, framing: upstream.head.framing, framedByClient: false,
                                      idempotent: upstream.head.isIdempotent)
        machine = ExchangeMachine(request, timeouts: .init(connectNanos: UInt64(t.connectMs) * 1_000_000,
                                                           responseNanos: UInt64(t.upstreamResponseMs) * 1_000_000))
    }

    /// Copies this request to the mirror pool: the body is collected as it goes upstream, and the
    /// copy leaves once the request is whole. Before `start`.
    func mirror(_ tee: MirrorTee, runner: MirrorRunner) {
        self.tee = tee
        self.mirrors = runner
    }

    /// Sends the request on its way.
    func start() {
        endpointRef.with { $0.requestStarted(at: startTime) }
        machine.start()
        teeCompleted()
        connect(fresh: false)
    }

    // MARK: the mirror copy

    private func teeBody(_ bytes: UnsafeRawBufferPointer) {
        if replayBody != nil {
            if replayBody!.count + bytes.count <= Self.maxReplayBytes {
                replayBody!.append(contentsOf: bytes)
            } else {
                replayBody = nil
            }
        }
        guard let t = tee, !t.append(bytes) else { return }
        tee = nil
        mirrors?.giveUp(t, .bodyTooLarge)
    }

    /// Once the request is whole, its copy goes to the mirror pool.
    private func teeCompleted() {
        guard let t = tee, machine.requestComplete else { return }
        tee = nil
        mirrors?.launch(t)
    }

    /// The request will not be whole (refused, or the client went away): no copy.
    private func teeAbandoned() {
        guard let t = tee else { return }
        tee = nil
        mirrors?.giveUp(t, .incomplete)
    }

    // MARK: request body

    /// The upstream is connected and not backed up: request body now goes straight to its socket.
    var canSendBody: Bool {
        guard !machine.requestComplete, machine.isConnected, let u = upstream, !u.isClosed else { return false }
        return u.pendingRequestBytes <= SocketChannel.highWatermark
    }

    /// Moves the client's framed body (HTTP/1.1) from `buffer[index..<end]` upstream while the
    /// upstream takes it, keeping the client's chunks. Returns the framing error when the
    /// client's body is malformed (nothing of the bad bytes went upstream).
    func pumpClientBody(_ buffer: [UInt8], index: inout Int, end: Int) -> String? {
        guard let u = upstream else { return nil }
        let now = self.now
        // Size lines and CRLFs wait here to go out with the data behind them.
        var framing: [UInt8] = []
        defer { if !framing.isEmpty { u.sendFraming(framing) } }
        return buffer.withUnsafeBytes { raw -> String? in
            while canSendBody {
                switch machine.clientBody(raw, index: &index, end: end, now: now) {
                case .forward(let r):
                    let bytes = UnsafeRawBufferPointer(rebasing: raw[r])
                    teeBody(bytes)
                    if framing.isEmpty {
                        u.sendBody(bytes)
                    } else {
                        u.sendBody(framing: framing, then: bytes)
                        framing.removeAll(keepingCapacity: true)
                    }
                case .chunkHeader(let n):
                    framing.append(contentsOf: ChunkedEncoder.chunkHeader(size: Int(n)))
                case .chunkEnd:
                    framing.append(contentsOf: ChunkedEncoder.chunkTrailer)
                case .end(let lastChunk):
                    u.endBody(framing: framing, lastChunk: lastChunk)
                    framing.removeAll()
                    teeCompleted()
                    return nil
                case .needMore:
                    return nil
                case .invalid(let message):
                    return message
                }
            }
            return nil
        }
    }

    /// Forwards request body bytes that came without framing (HTTP/2 DATA). Only while
    /// `canSendBody`. Returns the error when the bytes overrun the declared Content-Length.
    func sendData(_ bytes: UnsafeRawBufferPointer) -> String? {
        guard let u = upstream, !bytes.isEmpty else { return nil }
        switch machine.requestData(count: bytes.count, now: now) {
        case .forward:
            teeBody(bytes)
            u.sendBody(bytes)
        case .forwardChunk:
            teeBody(bytes)
            u.sendChunk(bytes)
        case .invalid(let message):
            return message
        }
        return nil
    }

    /// The client's unframed body (HTTP/2) is complete. Only while `canSendBody`. Returns the
    /// error when it ended short of its Content-Length.
    func endData() -> String? {
        switch machine.requestDataEnded(now: now) {
        case .end(let lastChunk):
            upstream?.endBody(framing: [], lastChunk: lastChunk)
            teeCompleted()
            return nil
        case .invalid(let message):
            return message
        }
    }

    // MARK: client side flow control

    /// The client's send queue went below the watermark: read the upstream again.
    func clientDrained() {
        guard !isOver else { return }
        upstream?.resumeResponse()
    }

    // MARK: timeouts

    /// Called from the owner's timer tick.
    func checkTimeouts(now: UInt64) {
        guard let action = machine.tick(now: now) else { return }
        switch action {
        case .connectTimedOut:
            failed(.connectTimedOut, error: nil)
        case .respond(let status, let message):
            contextRef.with { $0.outliers.failed(endpoint) }
            respond(status: status, message: message)
        case .abort(let reason):
            // The response stalled mid-body: the client must not mistake it for complete.
            abort(reason: reason)
        }
    }

    // MARK: connecting

    private func connect(fresh: Bool) {
        let endpointID = endpointRef.with { $0.id }
        if viewRef.with({ $0.settings.upstreamProtocol(ofEndpoint: endpointID) }) != .http1 {
            do {
                // Hold the body from its first byte (a body partly sent and not held cannot go again).
                if replayBody == nil && machine.bodyBytesSent == 0 && !machine.requestComplete { replayBody = [] }
                let s = try poolRef.tryWith { (p) throws(SystemError) in try p.h2Stream(endpoint, owner: self) }
                // Read before the stream moves into `upstream` (after it, each read is a count).
                let ready = s.isReady, pooled = s.sessionWasOpen
                upstream = consume s
                if ready {
                    connected(pooled: pooled)
                } else {
                    machine.connecting(now: now)
                }
            } catch {
                failed(.connectFailed, error: error)
            }
            return
        }
        if !fresh, let u = poolRef.with({ $0.acquire(endpoint) }) {
            u.owner = self
            upstream = u
            connected(pooled: true)
            return
        }
        do {
            let u = try poolRef.tryWith { (p) throws(SystemError) in try p.connect(endpoint, owner: self) }
            upstream = u
            if u.isConnected {
                connected(pooled: false)
            } else {
                machine.connecting(now: now)
            }
        } catch {
            failed(.connectFailed, error: error)
        }
    }

    /// The upstream answered something (the response's first byte, or more).
    @inline(__always)
    private func heard() {
        machine.heardFromUpstream(now: now)
        if firstByteAt == 0 && headSentAt != 0 { firstByteAt = EventLoop.now() }
    }

    private func connected(pooled: Bool) {
        guard let u = upstream else { return }
        switch machine.connected(pooled: pooled, now: now) {
        case .sendHead(let wantBody):
            if contextRef.with({ $0.accessLog != nil }) {
                headSentAt = EventLoop.now()
                firstByteAt = 0
            }
            // Sent again after an HTTP/2 upstream refused the stream: the body that had gone, first.
            let held = replayBody ?? []
            u.sendHead(upstreamRequest, endStream: !wantBody && held.isEmpty)
            if !held.isEmpty {
                held.withUnsafeBytes { u.sendBody($0) }
                if !wantBody { u.endBody(framing: [], lastChunk: false) }
            }
            if wantBody { sink?.exchangeWantsBody(self) }
        case .none:
            break
        }
    }

    // MARK: upstream events

    func upstreamConnected(_ upstream: UpstreamConnection) {
        guard !isOver, self.upstream === upstream else { return }
        connected(pooled: false)
    }

    func upstreamDrained(_ upstream: UpstreamConnection) {
        guard !isOver, self.upstream === upstream, !machine.requestComplete else { return }
        sink?.exchangeWantsBody(self)
    }

    func upstreamRead(_ upstream: UpstreamConnection, _ bytes: UnsafeRawBufferPointer) {
        guard !isOver, self.upstream === upstream, let sink else {
            upstream.abandon()
            return
        }
        defer { sink.exchangeReadDone(self) }
        if case .responding = machine.state {
            deliverBody(bytes, from: 0, to: sink)
            return
        }
        heard()
        if headBuffer.isEmpty {
            // A read that starts a response: its heads are parsed straight from the read buffer
            // (a head keeps one copy of its fields), and the body bytes behind them go to the
            // client from there too.
            if let bodyStart = readHeads(bytes, sink: sink) { deliverBody(bytes, from: bodyStart, to: sink) }
        } else {
            var buffered = headBuffer
            headBuffer = []
            buffered.append(contentsOf: bytes)
            buffered.withUnsafeBytes { all in
                if let bodyStart = readHeads(all, sink: sink) { deliverBody(all, from: bodyStart, to: sink) }
            }
        }
    }

    /// Reads response heads from `bytes`: interim ones go to the sink, a 101 opens a tunnel, the
    /// final one starts the response. Returns where its body starts, or nil when a head is
    /// incomplete (kept in `headBuffer`) or the exchange ended or switched.
    private func readHeads(_ bytes: UnsafeRawBufferPointer, sink: ExchangeSink) -> Int? {
        var start = 0
        while !isOver {
            let headEnd = HTTPHeadParser.scanHeadEnd(bytes, from: start, to: min(bytes.count, start + Self.maxResponseHead))
            guard let headEnd else {
                if bytes.count - start >= Self.maxResponseHead {
                    if case .fail(let status, let message) = machine.malformedResponse("the upstream's response head is too large") {
                        respond(status: status, message: message)
                    }
                } else {
                    headBuffer.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[start...]))
                }
                return nil
            }
            let parsed: HTTPResponseHead
            do throws(HTTPParseError) {
                parsed = try bytes.withMemoryRebound(to: UInt8.self) { b throws(HTTPParseError) in
                    try HTTPHeadParser.parseResponse(b, start: start, end: headEnd)
                }
            } catch {
                if case .fail(let status, let message) = machine.malformedResponse("the upstream sent a malformed response: \(error.message)") {
                    respond(status: status, message: message)
                }
                return nil
            }
            start = headEnd
            switch takeHead(parsed, sink: sink) {
            case .interim: continue
            case .body: return start
            case .ended: return nil
            case .switchProtocols:
                switchProtocols(parsed, leftover: ArraySlice(UnsafeRawBufferPointer(rebasing: bytes[start...])))
                return nil
            }
        }
        return nil
    }

    private enum HeadOutcome { case interim, body, ended, switchProtocols }

    /// One response head, whatever the upstream speaks: interim ones go to the sink, the final one
    /// starts the response.
    private func takeHead(_ parsed: HTTPResponseHead, sink: ExchangeSink) -> HeadOutcome {
        switch machine.responseHead(parsed, now: now) {
        case .interim:
            sink.exchangeInformational(self, parsed)
            return .interim
        case .dropInterim, .none:
            return .interim
        case .respond(let framing):
            endpointRef.with { e in contextRef.with { $0.outliers.responded(e, status: parsed.status) } }
            sink.exchangeResponseHead(self, parsed, framing: framing)
            return isOver ? .ended : .body
        case .switchProtocols:
            return .switchProtocols
        case .fail(let status, let message):
            respond(status: status, message: message)
            return .ended
        }
    }

    /// Response body in `bytes[from...]`: to the client as the machine reads it, then the
    /// response ends or the upstream is paused while the client is backed up. All of one read is
    /// delivered (a read is bounded), so nothing of the body is ever buffered here.
    private func deliverBody(_ bytes: UnsafeRawBufferPointer, from: Int, to sink: ExchangeSink) {
        var index = from
        while !isOver {
            switch machine.responseBody(bytes, index: &index, end: bytes.count, now: now) {
            case .deliver(let r):
                sink.exchangeResponseBody(self, UnsafeRawBufferPointer(rebasing: bytes[r]))
            case .needMore:
                if sink.sinkPendingBytes > SocketChannel.highWatermark {
                    upstream?.pauseResponse()
                } else {
                    upstream?.resumeResponse()
                }
                return
            case .complete(let reusable):
                finish(reusable: reusable)
                return
            case .abort(let reason):
                abort(reason: reason)
                return
            }
        }
    }

    func upstreamClosed(_ upstream: UpstreamConnection, error: SystemError?) {
        guard !isOver, self.upstream === upstream else { return }
        if case .connecting = machine.state {
            failed(.connectFailed, error: error)
        } else {
            failed(.closed(error: error != nil), error: error)
        }
    }

    /// Carries out what the machine decides about a failed connection: retry elsewhere, answer
    /// with Turnout's own error, break the transfer, or end a close-delimited response.
    private func failed(_ failure: ExchangeMachine.Failure, error: SystemError?) {
        let (action, counts) = machine.upstreamFailed(failure)
        if counts { contextRef.with { $0.outliers.failed(endpoint) } }
        switch action {
        case .retry where role == .mirror:
            // A copy is not worth a second connection: it fails as it is.
            dropUpstream()
            if case .respond(let s) = machine.noRetryTarget(status: failure == .connectTimedOut ? 504 : 502) {
                respond(status: s, message: Self.failureMessage(failure, error: error, endpoint: endpoint))
            }
        case .retry(let sameEndpoint):
            dropUpstream()
            let table = viewRef.with { $0.table }
            var next: UpstreamEndpoint?
            if let p = table.poolIndex(named: poolName) {
                next = table.pools[p].pickEndpoint(excluding: endpoint.id)
            }
            // The keep-alive race: the pooled connection was closed under us. A fresh connection
            // to the same endpoint is the retry.
            if next == nil && sameEndpoint { next = endpoint }
            guard let next else {
                let status = failure == .connectTimedOut ? 504 : 502
                if case .respond(let s) = machine.noRetryTarget(status: status) {
                    respond(status: s, message: Self.failureMessage(failure, error: error, endpoint: endpoint))
                }
                return
            }
            attempts += 1
            if next !== endpoint {
                endpoint.requestEnded()
                next.requestStarted(at: now)
                endpoint = next
            }
            connect(fresh: true)
        case .respond:
            respond(status: machine.status, message: Self.failureMessage(failure, error: error, endpoint: endpoint))
        case .abort(let reason):
            abort(reason: reason)
        case .complete:
            finish(reusable: false)
        case .none:
            break
        }
    }

    private static func failureMessage(_ failure: ExchangeMachine.Failure, error: SystemError?, endpoint: UpstreamEndpoint) -> String {
        if failure == .connectTimedOut { return "connecting to the upstream timed out" }
        let why = error.map { "\($0)" } ?? "the upstream closed the connection"
        return "upstream \(endpoint.address) failed: \(why)"
    }

    /// Hands the upstream connection to the sink for a tunnel. The endpoint keeps counting it in
    /// flight until the tunnel ends.
    private func switchProtocols(_ parsed: HTTPResponseHead, leftover: ArraySlice<UInt8>) {
        guard let u = upstream as? UpstreamConnection, let sink else {
            // An HTTP/2 upstream cannot switch protocols on a stream.
            return respond(status: 502, message: "the upstream answered 101 on an HTTP/2 stream")
        }
        upstream = nil
        u.owner = nil
        statsRef.with { $0.record(endpoint: endpoint, pool: poolName, status: 101, startedAt: startTime, proxyGenerated: false) }
        logAccess(note: nil)
        self.sink = nil
        sink.exchangeUpgraded(self, parsed, upstream: u, leftover: leftover)
    }

    // MARK: ending

    /// The response is complete: the upstream connection goes back to the pool or is closed.
    private func finish(reusable: Bool) {
        if let u = upstream {
            upstream = nil
            u.finished(reusable: reusable)
        }
        ended(note: nil)
        let sink = self.sink
        self.sink = nil
        sink?.exchangeFinished(self)
    }

    /// Answers with Turnout's own error (the machine has ended the exchange with it).
    private func respond(status: Int, message: String) {
        dropUpstream()
        // A mirror's failures are counted, not logged one by one (a dead mirror fails every copy).
        if role == .live { contextRef.object.logger.warning("\(status) for \(head.method) \(head.target): \(message)") }
        sink?.exchangeFailed(self, status: status, message: message)
        finish(reusable: false)
    }

    /// The client's request turned out bad mid-body (a 400): Turnout answers when no response
    /// started, else the transfer is broken.
    func fail(status: Int, message: String) {
        switch machine.requestInvalid(status: status) {
        case .respond(let s): respond(status: s, message: message)
        case .abort: abort(reason: message)
        default: break
        }
    }

    /// Ends the exchange at once (the machine says the transfer broke).
    private func abort(reason: String) {
        dropUpstream()
        ended(note: reason)
        let sink = self.sink
        self.sink = nil
        sink?.exchangeAborted(self, reason: reason)
    }

    /// The client went away (closed, reset the stream, timed out mid-body): stop without telling it.
    func cancel(reason: String) {
        guard machine.clientGone() else { return }
        dropUpstream()
        ended(note: reason)
        sink = nil
    }

    private func dropUpstream() {
        guard let u = upstream else { return }
        upstream = nil
        u.abandon()
    }

    /// Stats and the access log, once, when the machine has ended.
    private func ended(note: String?) {
        teeAbandoned()
        endpointRef.with { $0.requestEnded() }
        if machine.recordsOutcome {
            let proxyGenerated = machine.proxyGenerated || machine.recordedStatus != machine.status
            switch role {
            case .live:
                let grpcError = grpcStatus.map { code in viewRef.with { $0.settings.config.routing.grpcErrorCodes.contains(code) } } ?? false
                endpointRef.with { e in
                    statsRef.with {
                        $0.record(endpoint: e, pool: poolName, status: machine.recordedStatus, startedAt: startTime,
                                  proxyGenerated: proxyGenerated, grpcError: grpcError)
                    }
                }
            case .mirror:
                statsRef.with {
                    $0.recordMirror(pool: poolName, status: machine.recordedStatus, startedAt: startTime, proxyGenerated: proxyGenerated)
                }
            }
        }
        logAccess(note: note)
    }

    private func logAccess(note: String?) {
        guard role == .live, let access = contextRef.with({ $0.accessLog }) else { return }
        access.write(AccessRecord(clientIP: clientIP,
                                  kind: .request(method: head.method, target: head.target, version: head.version.text,
                                                 status: status, bytes: bytesToClient),
                                  pool: poolName, endpoint: "\(endpoint.address)", durationNanos: EventLoop.now() - startTime,
                                  attempts: attempts, route: routeReason == .weighted ? nil : routeReason.rawValue, error: note,
                                  requestID: requestID, bytesIn: Int64(machine.bodyBytesSent),
                                  upstreamConnectNanos: headSentAt == 0 ? nil : headSentAt - startTime,
                                  upstreamResponseNanos: firstByteAt == 0 || headSentAt == 0 ? nil : firstByteAt - headSentAt))
    }
}

/// The events of an HTTP/2 upstream stream (`protocol: h2c | h2`): the same life as over an
/// HTTP/1.1 connection, told in frames rather than bytes.
extension UpstreamExchange: H2StreamOwner {
    func h2Ready(_ s: H2UpstreamStream) {
        guard !isOver, upstream === s else { return }
        connected(pooled: s.sessionWasOpen)
    }

    func h2Drained(_ s: H2UpstreamStream) {
        guard !isOver, upstream === s, !machine.requestComplete else { return }
        sink?.exchangeWantsBody(self)
    }

    func h2Head(_ s: H2UpstreamStream, _ parsed: HTTPResponseHead) {
        guard !isOver, upstream === s, let sink else { return }
        defer { sink.exchangeReadDone(self) }
        heard()
        replayBody = nil  // answered: never sent again
        if parsed.status >= 200, let g = parsed.headers.first("grpc-status") { grpcStatus = Int(g) }
        switch takeHead(parsed, sink: sink) {
        case .switchProtocols:
            switchProtocols(parsed, leftover: [])
        case .body:
            // No bytes yet: a body of length 0 is complete now (as over HTTP/1.1, where the bytes
            // after a head are delivered at once, none or some).
            deliverBody(UnsafeRawBufferPointer(start: nil, count: 0), from: 0, to: sink)
        case .interim, .ended:
            break
        }
    }

    func h2Data(_ s: H2UpstreamStream, _ bytes: UnsafeRawBufferPointer) {
        guard !isOver, upstream === s, let sink, case .responding = machine.state else { return }
        defer { sink.exchangeReadDone(self) }
        deliverBody(bytes, from: 0, to: sink)
    }

    /// END_STREAM: a body delimited by the stream is complete; one that declared a length and
    /// fell short was cut.
    func h2Ended(_ s: H2UpstreamStream, trailers: HTTPHeaders?) {
        guard !isOver, upstream === s else { return }
        if let trailers, case .responding = machine.state {
            if let g = trailers.first("grpc-status") { grpcStatus = Int(g) }
            sink?.exchangeTrailers(self, trailers)
        }
        failed(.closed(error: false), error: nil)
    }

    /// The stream was reset or its connection failed. `refused`: the upstream did not process it
    /// (REFUSED_STREAM, or above a GOAWAY's last stream), so it may be sent again.
    func h2Failed(_ s: H2UpstreamStream, error: SystemError?, refused: Bool) {
        guard !isOver, upstream === s else { return }
        if case .connecting = machine.state {
            failed(.connectFailed, error: error)
        } else if refused {
            failed(.refused(bodyHeld: replayBody != nil), error: error)
        } else {
            failed(.closed(error: true), error: error)
        }
    }
}
