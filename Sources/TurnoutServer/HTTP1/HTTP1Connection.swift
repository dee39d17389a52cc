import Logging
import TurnoutCore

/// An HTTP/1.1 client connection: parses requests, routes each one on the current routing
/// snapshot and hands it to an `UpstreamExchange`, then writes the response back in HTTP/1.1
/// framing, one exchange at a time (pipelined requests wait in the input buffer and are answered
/// in order). A plain connection that opens with the HTTP/2 preface becomes an `HTTP2Connection`.
/// Loop-confined.
final class HTTP1Connection: ChannelDelegate, ExchangeSink, ClientSession, ClientEnvironmentHolder, @unchecked Sendable {
    enum ClientDeadline { case none, idle, header, body }

    let transport: ClientTransport
    let env: ClientEnvironment
    /// A plain listener: the HTTP/2 connection preface switches this connection to HTTP/2.
    let acceptsPriorKnowledgeH2: Bool

    private var input: [UInt8] = []
    private var inputStart = 0
    private var exchange: UpstreamExchange?
    /// The client gets the response body chunked (HTTP/1.1 client, length unknown upfront).
    private var chunkToClient = false
    /// Close the connection once the current exchange is over.
    private var closeAfter = false
    private var requestsSeen = 0
    private(set) var deadlineKind = ClientDeadline.idle
    private var deadline: UInt64 = 0
    private var closed = false
    private var clientEOF = false
    private var draining = false
    private var handedOff = false

    private var limits: LimitsConfig { view.limits }
    private var timeouts: TimeoutConfig { view.timeouts }

    init(transport: ClientTransport, env: ClientEnvironment, acceptsPriorKnowledgeH2: Bool) {
        self.transport = transport
        self.env = env
        self.acceptsPriorKnowledgeH2 = acceptsPriorKnowledgeH2
    }

    /// Starts reading. `initial` holds bytes already read from the client (after a TLS handshake).
    func start(initial: [UInt8] = []) {
        loop.register(self)
        transport.delegate = self
        transport.start()
        setDeadline(.idle)
        if !initial.isEmpty {
            input = initial
            setDeadline(.header)
            processInput()
        }
    }

    // MARK: deadlines

    private func setDeadline(_ kind: ClientDeadline) {
        deadlineKind = kind
        let ms: Int64
        switch kind {
        case .none: deadline = 0; return
        case .idle: ms = timeouts.idleMs
        case .header: ms = timeouts.clientHeaderMs
        case .body: ms = timeouts.idleMs
        }
        deadline = loop.coarseNow + UInt64(ms) * 1_000_000
    }

    /// Whether the connection is over: closed, and its socket too (not still lingering).
    var isFinished: Bool { closed && transport.isClosed }

    func checkTimeouts(now: UInt64) {
        if isFinished {
            unregister()
            return
        }
        if transport.isLingering {
            if now >= transport.lingerDeadline { teardown() }
            return
        }
        guard !closed else { return }
        if let ex = exchange {
            ex.checkTimeouts(now: now)
            if exchange === ex && deadlineKind == .body && now >= deadline && !ex.requestComplete {
                ex.cancel(reason: "client stalled mid-request-body")
                exchange = nil
                teardown()
            }
            return
        }
        guard deadlineKind != .none, now >= deadline else { return }
        if deadlineKind == .header {
            sendErrorAndClose(status: 408, message: "the request head did not arrive within \(DurationParser.format(milliseconds: timeouts.clientHeaderMs))")
        } else {
            teardown()
        }
    }

    // MARK: client channel events

    func channelRead(_ channel: SocketChannel, _ bytes: UnsafeRawBufferPointer) {
        guard !closed else { return }
        if let ex = exchange, !ex.requestComplete { setDeadline(.body) }
        if exchange == nil && inputStart == input.count && deadlineKind != .header {
            setDeadline(.header)
        }
        input.append(contentsOf: bytes)
        processInput()
    }

    func channelEOF(_ channel: SocketChannel) {
        guard !closed else { return }
        clientEOF = true
        if let ex = exchange {
            if !ex.requestComplete {
                ex.cancel(reason: "client closed mid-request")
                exchange = nil
                teardown()
            }
            // Otherwise let the response finish; the connection closes after it.
        } else {
            teardown()
        }
    }

    func channelError(_ channel: SocketChannel, _ error: SystemError) {
        guard !closed else { return }
        if let ex = exchange {
            ex.cancel(reason: "client connection failed: \(error)")
            exchange = nil
        }
        teardown()
    }

    func channelDrained(_ channel: SocketChannel) {
        guard !closed, let ex = exchange else { return }
        ex.clientDrained()
    }

    // MARK: requests

    private func processInput() {
        guard !closed else { return }
        if exchange == nil {
            if requestsSeen == 0 && acceptsPriorKnowledgeH2 && startsWithH2Preface() {
                if input.count - inputStart < HTTP2Connection.preface.count { return }
                handOffToHTTP2()
                return
            }
            startNextRequest()
        }
        if let ex = exchange, !ex.requestComplete, ex.canSendBody {
            pumpRequestBody(ex)
        }
        compactInput()
        updateClientReading()
    }

    private func startsWithH2Preface() -> Bool {
        let p = HTTP2Connection.preface
        let n = min(p.count, input.count - inputStart)
        for i in 0..<n where input[inputStart + i] != p[i] { return false }
        return true
    }

    private func handOffToHTTP2() {
        handedOff = true
        closed = true
        loop.unregister(self)
        let h2 = HTTP2Connection(transport: transport, env: env)
        let bytes = Array(input[inputStart...])
        input = []
        inputStart = 0
        h2.start(initial: bytes, transportStarted: true)
        if draining || context.isDraining { h2.beginDrain() }
    }

    private func compactInput() {
        if inputStart == input.count {
            input.removeAll(keepingCapacity: input.capacity <= 256 * 1024)
            inputStart = 0
        } else if inputStart > 64 * 1024 {
            input.removeFirst(inputStart)
            inputStart = 0
        }
    }

    private func updateClientReading() {
        guard !closed else { return }
        let buffered = input.count - inputStart
        var pause = false
        if let ex = exchange {
            if !ex.requestComplete {
                if !ex.canSendBody && buffered >= 64 * 1024 { pause = true }
            } else if buffered >= limits.maxRequestHeadBytes {
                pause = true
            }
        }
        if pause { transport.pauseReading() } else { transport.resumeReading() }
    }

    private func startNextRequest() {
        guard inputStart < input.count else { return }
        let headEnd: Int?
        do {
            headEnd = try HTTPHeadParser.findHeadEnd(input, start: inputStart, end: input.count, limit: limits.maxRequestHeadBytes)
        } catch {
            sendErrorAndClose(status: error.status, message: error.message)
            return
        }
        guard let headEnd else {
            if !HTTPHeadParser.requestPrefixIsPlausible(input, start: inputStart, end: input.count) {
                sendErrorAndClose(status: 400, message: "this is not an HTTP/1.1 request")
                return
            }
            if deadlineKind != .header { setDeadline(.header) }
            return
        }
        let head: HTTPRequestHead
        do {
            head = try HTTPHeadParser.parseRequest(input, start: inputStart, end: headEnd, maxHeaderCount: limits.maxHeaderCount)
        } catch {
            sendErrorAndClose(status: error.status, message: error.message)
            return
        }
        inputStart = headEnd
        requestsSeen += 1
        if let max = limits.maxBodyBytes, case .length(let n) = head.framing, n > max {
            sendErrorAndClose(status: 413, message: "the request body is larger than \(max) bytes")
            return
        }
        route(head)
    }

    private func route(_ head: consuming HTTPRequestHead) {
        let table = view.table
        switch RequestPlan.make(head, table: table, clientIP: clientIP, scheme: scheme,
                                upgrade: HeaderRewriter.requestedUpgrade(head)) {
        case .unavailable(let poolName, let head):
            respondWithoutUpstream(head, status: 503, message: "no healthy endpoint in pool \(poolName)",
                                   extra: [("Retry-After", "\(context.retryAfterSeconds)")], pool: poolName)
        case .forward(let plan):
            let head = plan.upstream.head
            // A body whose bad bytes came with the head is refused before anything goes upstream.
            if let error = BodyReader.firstError(head.framing, in: input, from: inputStart, to: input.count) {
                RequestRouter.recordUnforwarded(head, status: 400, pool: plan.poolName, bytes: 0, clientIP: clientIP,
                                                context: context, stats: stats)
                sendErrorAndClose(status: 400, message: error.message)
                return
            }
            chunkToClient = false
            closeAfter = false
            let ex = RequestRouter.exchange(plan, table: table, env: env, sink: self)
            exchange = ex
            setDeadline(ex.requestComplete ? .none : .body)
            ex.start()
        }
    }

    /// Moves buffered request body bytes to the upstream (the exchange keeps the client's chunks).
    private func pumpRequestBody(_ ex: UpstreamExchange) {
        guard exchange === ex, !ex.requestComplete else { return }
        if let message = ex.pumpClientBody(input, index: &inputStart, end: input.count) {
            closeAfter = true
            ex.fail(status: 400, message: message)
            return
        }
        if exchange === ex && ex.requestComplete {
            setDeadline(.none)
        }
    }

    // MARK: the exchange's events

    var sinkPendingBytes: Int { transport.pendingBytes }

    func exchangeWantsBody(_ ex: UpstreamExchange) {
        guard exchange === ex else { return }
        pumpRequestBody(ex)
        compactInput()
        updateClientReading()
    }

    func exchangeInformational(_ ex: UpstreamExchange, _ head: HTTPResponseHead) {
        transport.write(HeaderRewriter.informational(head))
    }

    func exchangeResponseHead(_ ex: UpstreamExchange, _ head: HTTPResponseHead, framing: BodyFraming) {
        let clientFraming: BodyFraming
        switch framing {
        case .none: clientFraming = .none
        case .length(let n): clientFraming = .length(n)
        case .chunked, .untilClose:
            chunkToClient = ex.head.version == .http11
            clientFraming = chunkToClient ? .chunked : .untilClose
        }
        let keepAlive = ex.head.keepAlive && !draining && !clientEOF && ex.requestComplete
            && clientFraming != .untilClose && !context.isDraining
        if !keepAlive { closeAfter = true }
        // Built in the loop's scratch array (no allocation) and held until the first body bytes or
        // the end of this upstream read: a small response then leaves in one write of one buffer.
        var out = loop.takeScratch()
        HeaderRewriter.clientResponse(head, clientFraming: clientFraming, keepAlive: keepAlive,
                                      clientVersion: ex.head.version, setCookie: ex.setCookie, into: &out)
        heldHead = out
    }

    /// Body bytes up to this size are copied behind a held head and sent with it by `send`:
    /// cheaper than handing the kernel two buffers with `sendmsg`.
    static let coalesceLimit = 8 * 1024

    func exchangeResponseBody(_ ex: UpstreamExchange, _ bytes: UnsafeRawBufferPointer) {
        if chunkToClient {
            var framed = takeHeldHead()
            framed.append(contentsOf: ChunkedEncoder.chunkHeader(size: bytes.count))
            framed.append(contentsOf: bytes)
            framed.append(contentsOf: ChunkedEncoder.chunkTrailer)
            transport.write(framed)
            loop.returnScratch(framed)
        } else if !heldHead.isEmpty {
            var out = takeHeldHead()
            if bytes.count <= Self.coalesceLimit {
                out.append(contentsOf: bytes)
                transport.write(out)
            } else {
                transport.write(out, then: bytes)
            }
            loop.returnScratch(out)
        } else {
            transport.write(bytes)
        }
        ex.bytesToClient += Int64(bytes.count)
    }

    func exchangeReadDone(_ ex: UpstreamExchange) {
        flushHeldHead()
    }

    /// The response head not written yet (see `exchangeResponseHead`), in the loop's scratch
    /// array; empty when there is none.
    private var heldHead: [UInt8] = []

    /// Takes the held head, or the loop's scratch array (empty) when none is held; the caller
    /// appends what goes with it and gives the array back with `loop.returnScratch`.
    private func takeHeldHead() -> [UInt8] {
        guard !heldHead.isEmpty else { return loop.takeScratch() }
        let h = heldHead
        heldHead = []
        return h
    }

    private func flushHeldHead() {
        guard !heldHead.isEmpty else { return }
        let h = takeHeldHead()
        transport.write(h)
        loop.returnScratch(h)
    }

    func exchangeFailed(_ ex: UpstreamExchange, status: Int, message: String) {
        let close = closeAfter || !ex.requestComplete || !ex.head.keepAlive || draining || context.isDraining
        closeAfter = close
        let bytes = HeaderRewriter.errorResponse(status: status, message: message, close: close)
        transport.write(bytes)
        ex.bytesToClient += Int64(bytes.count)
    }

    func exchangeFinished(_ ex: UpstreamExchange) {
        guard exchange === ex else { return }
        if chunkToClient {
            var out = takeHeldHead()
            out.append(contentsOf: ChunkedEncoder.lastChunk)
            transport.write(out)
            loop.returnScratch(out)
        } else {
            flushHeldHead()
        }
        // An answer that came before the whole request did: the rest of the body cannot be told
        // apart from a next request, so the connection ends here.
        if !ex.requestComplete { closeAfter = true }
        exchange = nil
        if closeAfter || clientEOF || draining || context.isDraining {
            // A client that asked to close, whose request was read whole and who sent nothing
            // after it, has nothing more to send: no need to wait for its FIN.
            closeGracefully(linger: ex.head.keepAlive || !ex.requestComplete || inputStart < input.count || draining || context.isDraining)
            return
        }
        setDeadline(inputStart < input.count ? .header : .idle)
        processInput()
    }

    func exchangeAborted(_ ex: UpstreamExchange, reason: String) {
        guard exchange === ex else { return }
        flushHeldHead()
        exchange = nil
        teardown()
    }

    func exchangeUpgraded(_ ex: UpstreamExchange, _ head: HTTPResponseHead, upstream: UpstreamConnection, leftover: ArraySlice<UInt8>) {
        guard exchange === ex else { return }
        exchange = nil
        transport.write(HeaderRewriter.switchingProtocols(head))
        // From here on the connection is a byte pipe owned by the tunnel.
        handedOff = true
        closed = true
        loop.unregister(self)
        let tunnel = Tunnel(client: transport, upstream: upstream, env: env, poolName: ex.poolName, target: ex.head.target)
        tunnel.requestID = ex.requestID
        let fromClient = input[inputStart...]
        tunnel.start(fromClient: fromClient, fromUpstream: leftover)
        input = []
        inputStart = 0
    }

    // MARK: answers of our own

    /// Answers a request that never got an upstream (503).
    private func respondWithoutUpstream(_ head: HTTPRequestHead, status: Int, message: String, extra: [(String, String)], pool: String) {
        let close = head.hasBody || !head.keepAlive || draining || context.isDraining
        let bytes = HeaderRewriter.errorResponse(status: status, message: message, close: close, extraHeaders: extra)
        transport.write(bytes)
        RequestRouter.recordUnforwarded(head, status: status, pool: pool, bytes: bytes.count, clientIP: clientIP,
                                        context: context, stats: stats)
        if close {
            closeGracefully()
        } else {
            setDeadline(inputStart < input.count ? .header : .idle)
            processInput()
        }
    }

    private func sendErrorAndClose(status: Int, message: String) {
        transport.write(HeaderRewriter.errorResponse(status: status, message: message, close: true))
        context.logger.info("\(status) to \(clientIP): \(message)")
        closeGracefully()
    }

    // MARK: closing

    /// Stops reading requests and closes once everything queued is written.
    private func closeGracefully(linger: Bool = true) {
        guard !closed else { return }
        closed = true
        deadlineKind = .none
        transport.finish(linger: linger)
        if transport.isClosed { unregister() }
    }

    /// Closes at once.
    private func teardown() {
        if let ex = exchange {
            exchange = nil
            ex.cancel(reason: "connection closed")
        }
        closed = true
        transport.close()
        unregister()
    }

    private var unregistered = false
    private func unregister() {
        guard !unregistered, !handedOff else { return }
        unregistered = true
        loop.unregister(self)
        env.onClose()
    }

    /// Called on this connection's loop when the proxy starts draining.
    func beginDrain() {
        draining = true
        if exchange == nil && !closed {
            if inputStart < input.count { return }  // a request is arriving; it is answered, then we close
            teardown()
        }
    }
}
