import Logging
import TurnoutCore

/// An HTTP/1.1 client connection: parses requests, routes each one on the current routing
/// snapshot, streams it to an upstream and streams the response back, one exchange at a time
/// (pipelined requests wait in the input buffer and are answered in order). Loop-confined.
final class ClientConnection: ChannelDelegate, UpstreamOwner, LoopTimed, @unchecked Sendable {
    enum ClientDeadline { case none, idle, header, body }

    let channel: SocketChannel
    unowned let loop: EventLoop
    let context: ProxyContext
    let pool: UpstreamPool
    let stats: LoopStats
    let clientIP: String
    private let onClose: (ClientConnection) -> Void

    private var input: [UInt8] = []
    private var inputStart = 0
    private var exchange: Exchange?
    private var deadlineKind = ClientDeadline.idle
    private var deadline: UInt64 = 0
    private var closed = false
    private var clientEOF = false
    private var draining = false

    private var limits: LimitsConfig { context.config.limits }
    private var timeouts: TimeoutConfig { context.config.timeouts }

    init(channel: SocketChannel, loop: EventLoop, context: ProxyContext, pool: UpstreamPool, stats: LoopStats,
         clientIP: String, onClose: @escaping (ClientConnection) -> Void) {
        self.channel = channel
        self.loop = loop
        self.context = context
        self.pool = pool
        self.stats = stats
        self.clientIP = clientIP
        self.onClose = onClose
    }

    func start() {
        loop.register(self)
        channel.delegate = self
        channel.start()
        setDeadline(.idle)
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
        deadline = EventLoop.now() + UInt64(ms) * 1_000_000
    }

    func checkTimeouts(now: UInt64) {
        if closed && channel.isClosed {
            unregister()
            return
        }
        if channel.isLingering {
            if now >= channel.lingerDeadline { teardown() }
            return
        }
        guard !closed else { return }
        if let ex = exchange {
            if ex.upstreamDeadline != 0 && now >= ex.upstreamDeadline {
                if ex.connecting {
                    upstreamFailed(ex, connectFailed: true, error: nil, timedOut: true)
                } else if ex.responseHead == nil {
                    failExchange(ex, status: 504, message: "the upstream did not answer within \(DurationParser.format(milliseconds: timeouts.upstreamResponseMs))")
                } else {
                    // The response stalled mid-body: the client must not mistake it for complete.
                    ex.upstreamCut = true
                    abortExchange(ex, reason: "upstream stalled mid-response")
                }
                return
            }
            if deadlineKind == .body && now >= deadline && !ex.requestComplete {
                abortExchange(ex, reason: "client stalled mid-request-body")
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
                abortExchange(ex, reason: "client closed mid-request")
            }
            // Otherwise let the response finish; the connection closes after it.
        } else {
            teardown()
        }
    }

    func channelError(_ channel: SocketChannel, _ error: SystemError) {
        guard !closed else { return }
        if let ex = exchange { abortExchange(ex, reason: "client connection failed: \(error)") } else { teardown() }
    }

    func channelDrained(_ channel: SocketChannel) {
        guard !closed, let ex = exchange else { return }
        ex.upstream?.channel.resumeReading()
        if ex.responseHead != nil { pumpResponse(ex) }
    }

    // MARK: requests

    private func processInput() {
        guard !closed else { return }
        if exchange == nil {
            startNextRequest()
        }
        if let ex = exchange, !ex.requestComplete, ex.upstreamReady {
            pumpRequestBody(ex)
        }
        compactInput()
        updateClientReading()
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
                if !ex.upstreamReady && buffered >= 64 * 1024 { pause = true }
                if let u = ex.upstream, u.channel.pendingBytes > SocketChannel.highWatermark { pause = true }
            } else if buffered >= limits.maxRequestHeadBytes {
                pause = true
            }
        }
        if pause { channel.pauseReading() } else { channel.resumeReading() }
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
        if let max = limits.maxBodyBytes, case .length(let n) = head.framing, n > max {
            sendErrorAndClose(status: 413, message: "the request body is larger than \(max) bytes")
            return
        }
        route(head)
    }

    private func route(_ head: HTTPRequestHead) {
        let table = context.store.table
        var stickyKey: String?
        var newCookie: String?
        switch table.sticky {
        case .cookie(let name):
            if let v = HeaderRewriter.cookie(name, in: head.headers) {
                stickyKey = v
            } else {
                let key = Self.randomCohortKey()
                stickyKey = key
                newCookie = "\(name)=\(key); Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax"
            }
        case .header(let name):
            if let v = head.headers.first(name), !v.isEmpty { stickyKey = v }
        case nil:
            break
        }
        let preview = table.previewHeader.flatMap { head.headers.first($0) }
        let decision = table.route(stickyKey: stickyKey, previewPool: preview)
        guard let endpoint = decision.endpoint else {
            let poolName = table.pools[decision.pool].name
            respondWithoutUpstream(head, status: 503, message: "no healthy endpoint in pool \(poolName)",
                                   extra: [("Retry-After", "\(context.retryAfterSeconds)")], pool: poolName)
            return
        }
        let requestBody: Exchange.RequestBody
        switch head.framing {
        case .none, .untilClose, .length(0): requestBody = .none
        case .length(let n): requestBody = .length(remaining: n)
        case .chunked: requestBody = .chunked(ChunkedDecoder())
        }
        let upstreamHead = HeaderRewriter.upstreamRequest(head, clientIP: clientIP, scheme: "http",
                                                          fallbackHost: endpoint.address.description)
        let ex = Exchange(head: head, upstreamHead: upstreamHead, requestBody: requestBody,
                          poolName: table.pools[decision.pool].name, endpoint: endpoint, reason: decision.reason)
        ex.setCookie = newCookie
        exchange = ex
        endpoint.requestStarted()
        setDeadline(ex.requestComplete ? .none : .body)
        connectUpstream(ex, fresh: false)
    }

    static func randomCohortKey() -> String {
        var g = SystemRandomNumberGenerator()
        let a = g.next() as UInt64
        return String(a, radix: 16).leftPadded(to: 16)
    }

    private func connectUpstream(_ ex: Exchange, fresh: Bool) {
        if !fresh, let u = pool.acquire(ex.endpoint) {
            u.owner = self
            ex.upstream = u
            ex.reusedConnection = true
            upstreamIsReady(ex)
            return
        }
        do {
            let u = try pool.connect(ex.endpoint, owner: self)
            ex.upstream = u
            ex.reusedConnection = false
            if u.isConnected {
                upstreamIsReady(ex)
            } else {
                ex.connecting = true
                ex.upstreamDeadline = EventLoop.now() + UInt64(timeouts.connectMs) * 1_000_000
            }
        } catch {
            upstreamFailed(ex, connectFailed: true, error: error, timedOut: false)
        }
    }

    private func upstreamIsReady(_ ex: Exchange) {
        guard let u = ex.upstream else { return }
        ex.connecting = false
        ex.upstreamReady = true
        ex.upstreamDeadline = EventLoop.now() + UInt64(timeouts.upstreamResponseMs) * 1_000_000
        u.channel.write(ex.upstreamHead)
        if !ex.requestComplete { pumpRequestBody(ex) }
        updateClientReading()
    }

    /// Moves buffered request body bytes to the upstream, re-framing chunked bodies.
    private func pumpRequestBody(_ ex: Exchange) {
        guard let u = ex.upstream, ex.upstreamReady, !ex.requestComplete, !u.isClosed else { return }
        while inputStart < input.count && u.channel.pendingBytes <= SocketChannel.highWatermark && !ex.requestComplete {
            switch ex.requestBody {
            case .none:
                ex.requestComplete = true
            case .length(let remaining):
                let n = Int(min(Int64(input.count - inputStart), remaining))
                u.channel.write(input[inputStart..<(inputStart + n)])
                inputStart += n
                ex.bodyBytesSent += Int64(n)
                let left = remaining - Int64(n)
                ex.requestBody = .length(remaining: left)
                if left == 0 { ex.requestComplete = true }
            case .chunked(var decoder):
                var index = inputStart
                let event: ChunkedDecoder.Event
                do {
                    event = try decoder.next(input, index: &index, end: input.count)
                } catch {
                    ex.requestBody = .chunked(decoder)
                    inputStart = index
                    failExchange(ex, status: 400, message: error.message, closeClient: true)
                    return
                }
                ex.requestBody = .chunked(decoder)
                inputStart = index
                switch event {
                case .data(let range):
                    var framed = ChunkedEncoder.chunkHeader(size: range.count)
                    framed.append(contentsOf: input[range])
                    framed.append(contentsOf: ChunkedEncoder.chunkTrailer)
                    u.channel.write(framed)
                    ex.bodyBytesSent += Int64(range.count)
                case .end:
                    u.channel.write(ChunkedEncoder.lastChunk)
                    ex.requestComplete = true
                case .needMore:
                    break
                }
                if case .needMore = event { break }
            }
        }
        if ex.upstreamReady && !ex.connecting {
            ex.upstreamDeadline = EventLoop.now() + UInt64(timeouts.upstreamResponseMs) * 1_000_000
        }
        if ex.requestComplete {
            setDeadline(.none)
            if ex.responseComplete { finishExchange(ex) }
        }
    }

    // MARK: upstream events

    func upstreamConnected(_ upstream: UpstreamConnection) {
        guard let ex = exchange, ex.upstream === upstream else { return }
        upstreamIsReady(ex)
    }

    func upstreamDrained(_ upstream: UpstreamConnection) {
        guard let ex = exchange, ex.upstream === upstream else { return }
        pumpRequestBody(ex)
        compactInput()
        updateClientReading()
    }

    func upstreamRead(_ upstream: UpstreamConnection, _ bytes: UnsafeRawBufferPointer) {
        guard let ex = exchange, ex.upstream === upstream else {
            upstream.close()
            return
        }
        ex.anyUpstreamByte = true
        // Fast path: body bytes of a length- or close-delimited response go straight to the client.
        if ex.responseHead != nil && ex.responseStart == ex.responseBuffer.count {
            switch ex.responseBody {
            case .length(let remaining):
                let n = Int(min(Int64(bytes.count), remaining))
                channel.write(UnsafeRawBufferPointer(rebasing: bytes[0..<n]))
                ex.bytesToClient += Int64(n)
                ex.responseBody = .length(remaining: remaining - Int64(n))
                if n < bytes.count { ex.upstreamUnreusable = true }
                afterResponseBytes(ex)
                return
            case .untilClose:
                channel.write(bytes)
                ex.bytesToClient += Int64(bytes.count)
                afterResponseBytes(ex)
                return
            default:
                break
            }
        }
        ex.responseBuffer.append(contentsOf: bytes)
        if ex.responseHead == nil {
            parseResponseHead(ex)
        } else {
            pumpResponse(ex)
        }
    }

    func upstreamClosed(_ upstream: UpstreamConnection, error: SystemError?) {
        guard let ex = exchange, ex.upstream === upstream else { return }
        if ex.responseHead == nil {
            upstreamFailed(ex, connectFailed: ex.connecting, error: error, timedOut: false)
            return
        }
        if case .untilClose = ex.responseBody, error == nil {
            ex.upstreamUnreusable = true
            responseDone(ex)
            return
        }
        if !ex.responseComplete {
            ex.upstreamCut = true
            abortExchange(ex, reason: "upstream closed mid-response")
        }
    }

    private func parseResponseHead(_ ex: Exchange) {
        while ex.responseHead == nil {
            let end: Int?
            do {
                end = try HTTPHeadParser.findHeadEnd(ex.responseBuffer, start: ex.responseStart, end: ex.responseBuffer.count, limit: 64 * 1024)
            } catch {
                failExchange(ex, status: 502, message: "the upstream's response head is too large")
                return
            }
            guard let end else { return }
            let head: HTTPResponseHead
            let framing: BodyFraming
            do {
                head = try HTTPHeadParser.parseResponse(ex.responseBuffer, start: ex.responseStart, end: end)
                framing = try head.framing(requestMethod: ex.head.method)
            } catch {
                failExchange(ex, status: 502, message: "the upstream sent a malformed response: \(error.message)")
                return
            }
            ex.responseStart = end
            if (100..<200).contains(head.status) {
                if head.status == 101 {
                    failExchange(ex, status: 502, message: "the upstream switched protocols without an upgrade request")
                    return
                }
                if ex.head.version == .http11 {
                    channel.write(HeaderRewriter.informational(head))
                }
                continue
            }
            startResponse(ex, head: head, framing: framing)
        }
        pumpResponse(ex)
    }

    private func startResponse(_ ex: Exchange, head: HTTPResponseHead, framing: BodyFraming) {
        ex.responseHead = head
        ex.status = head.status
        let clientFraming: BodyFraming
        switch framing {
        case .none:
            ex.responseBody = .none
            clientFraming = .none
        case .length(let n):
            ex.responseBody = .length(remaining: n)
            clientFraming = .length(n)
        case .chunked:
            ex.responseBody = .chunked(ChunkedDecoder())
            ex.chunkToClient = ex.head.version == .http11
            clientFraming = ex.chunkToClient ? .chunked : .untilClose
        case .untilClose:
            ex.responseBody = .untilClose
            ex.chunkToClient = ex.head.version == .http11
            clientFraming = ex.chunkToClient ? .chunked : .untilClose
        }
        if !head.keepAlive { ex.upstreamUnreusable = true }
        let keepAlive = ex.head.keepAlive && !draining && !clientEOF && ex.requestComplete
            && !(clientFraming == .untilClose) && !context.isDraining
        if !keepAlive { ex.closeClientAfter = true }
        channel.write(HeaderRewriter.clientResponse(head, clientFraming: clientFraming, keepAlive: keepAlive,
                                                    clientVersion: ex.head.version, setCookie: ex.setCookie))
        ex.responseHeadSent = true
        ex.upstreamDeadline = EventLoop.now() + UInt64(timeouts.upstreamResponseMs) * 1_000_000
    }

    /// Moves buffered response body bytes to the client.
    private func pumpResponse(_ ex: Exchange) {
        guard !ex.responseComplete, ex.responseHead != nil else { return }
        loop: while channel.pendingBytes <= SocketChannel.highWatermark {
            switch ex.responseBody {
            case .none:
                break loop
            case .length(let remaining):
                let avail = ex.responseBuffer.count - ex.responseStart
                if avail == 0 || remaining == 0 { break loop }
                let n = Int(min(Int64(avail), remaining))
                channel.write(ex.responseBuffer[ex.responseStart..<(ex.responseStart + n)])
                ex.responseStart += n
                ex.bytesToClient += Int64(n)
                ex.responseBody = .length(remaining: remaining - Int64(n))
            case .untilClose:
                let avail = ex.responseBuffer.count - ex.responseStart
                if avail == 0 { break loop }
                writeBody(ex, ex.responseBuffer[ex.responseStart...])
                ex.responseStart = ex.responseBuffer.count
            case .chunked(var decoder):
                if ex.responseStart == ex.responseBuffer.count && !decoder.isDone { break loop }
                var index = ex.responseStart
                let event: ChunkedDecoder.Event
                do {
                    event = try decoder.next(ex.responseBuffer, index: &index, end: ex.responseBuffer.count)
                } catch {
                    ex.responseStart = index
                    ex.upstreamCut = true
                    abortExchange(ex, reason: "upstream sent malformed chunked framing: \(error.message)")
                    return
                }
                ex.responseBody = .chunked(decoder)
                ex.responseStart = index
                switch event {
                case .data(let range):
                    writeBody(ex, ex.responseBuffer[range])
                case .end:
                    if ex.chunkToClient { channel.write(ChunkedEncoder.lastChunk) }
                    if ex.responseStart < ex.responseBuffer.count { ex.upstreamUnreusable = true }
                    ex.responseComplete = true
                    break loop
                case .needMore:
                    break loop
                }
            }
        }
        if ex.responseStart == ex.responseBuffer.count {
            ex.responseBuffer.removeAll(keepingCapacity: true)
            ex.responseStart = 0
        } else if ex.responseStart > 64 * 1024 {
            ex.responseBuffer.removeFirst(ex.responseStart)
            ex.responseStart = 0
        }
        afterResponseBytes(ex)
    }

    private func writeBody(_ ex: Exchange, _ bytes: ArraySlice<UInt8>) {
        guard !bytes.isEmpty else { return }
        bytes.withUnsafeBytes { writeBody(ex, $0) }
    }

    private func writeBody(_ ex: Exchange, _ bytes: UnsafeRawBufferPointer) {
        if ex.chunkToClient {
            var framed = ChunkedEncoder.chunkHeader(size: bytes.count)
            framed.append(contentsOf: bytes)
            framed.append(contentsOf: ChunkedEncoder.chunkTrailer)
            channel.write(framed)
        } else {
            channel.write(bytes)
        }
        ex.bytesToClient += Int64(bytes.count)
    }

    private func afterResponseBytes(_ ex: Exchange) {
        guard exchange === ex, !closed else { return }
        ex.upstreamDeadline = EventLoop.now() + UInt64(timeouts.upstreamResponseMs) * 1_000_000
        switch ex.responseBody {
        case .none: ex.responseComplete = true
        case .length(let remaining) where remaining == 0: ex.responseComplete = true
        default: break
        }
        if ex.responseComplete {
            responseDone(ex)
            return
        }
        if channel.pendingBytes > SocketChannel.highWatermark {
            ex.upstream?.channel.pauseReading()
        } else {
            ex.upstream?.channel.resumeReading()
        }
    }

    private func responseDone(_ ex: Exchange) {
        ex.responseComplete = true
        if case .untilClose = ex.responseBody, ex.chunkToClient { channel.write(ChunkedEncoder.lastChunk) }
        if !ex.requestComplete {
            // The upstream answered before reading the whole request: the rest of the body cannot be
            // told apart from a next request, so the connection ends here.
            ex.closeClientAfter = true
            ex.upstreamUnreusable = true
        }
        finishExchange(ex)
    }

    // MARK: finishing and failing

    private func finishExchange(_ ex: Exchange) {
        guard exchange === ex else { return }
        if let u = ex.upstream {
            let reusable = !ex.upstreamUnreusable && ex.requestComplete && !u.isClosed
                && ex.responseStart == ex.responseBuffer.count
            if reusable { pool.release(u) } else { u.owner = nil; u.close() }
        }
        ex.upstream = nil
        ex.endpoint.requestEnded()
        stats.record(endpoint: ex.endpoint, pool: ex.poolName, status: ex.status, startedAt: ex.startTime,
                     proxyGenerated: ex.proxyGenerated)
        logAccess(ex, note: nil)
        exchange = nil
        if ex.closeClientAfter || clientEOF || draining || context.isDraining {
            closeGracefully()
            return
        }
        setDeadline(inputStart < input.count ? .header : .idle)
        processInput()
    }

    /// Tries another endpoint when that is safe, else answers 502/504.
    private func upstreamFailed(_ ex: Exchange, connectFailed: Bool, error: SystemError?, timedOut: Bool) {
        let replayable = connectFailed
            || (!ex.anyUpstreamByte && ex.bodyBytesSent == 0 && !ex.head.hasBody && ex.head.isIdempotent)
        if let u = ex.upstream {
            u.owner = nil
            u.close()
            ex.upstream = nil
        }
        ex.upstreamReady = false
        ex.connecting = false
        if replayable && ex.attempts < 2 && !ex.anyUpstreamByte {
            let table = context.store.table
            var next: UpstreamEndpoint?
            if let p = table.poolIndex(named: ex.poolName) {
                next = table.pools[p].pickEndpoint(excluding: ex.endpoint.id)
            }
            if next == nil && ex.reusedConnection && !connectFailed {
                // The keep-alive race: the pooled connection was closed under us. A fresh
                // connection to the same endpoint is the retry.
                next = ex.endpoint
            }
            if let next {
                ex.attempts += 1
                if next !== ex.endpoint {
                    ex.endpoint.requestEnded()
                    next.requestStarted()
                    ex.endpoint = next
                }
                connectUpstream(ex, fresh: true)
                return
            }
        }
        if timedOut {
            failExchange(ex, status: 504, message: "connecting to the upstream timed out")
        } else {
            let why = error.map { "\($0)" } ?? "the upstream closed the connection"
            failExchange(ex, status: 502, message: "upstream \(ex.endpoint.address) failed: \(why)")
        }
    }

    /// Answers the exchange with an error when no response has started, else cuts the connection.
    private func failExchange(_ ex: Exchange, status: Int, message: String, closeClient: Bool = false) {
        guard exchange === ex else { return }
        if ex.responseHeadSent {
            abortExchange(ex, reason: message)
            return
        }
        if let u = ex.upstream {
            u.owner = nil
            u.close()
            ex.upstream = nil
        }
        let close = closeClient || !ex.requestComplete || !ex.head.keepAlive || draining || context.isDraining
        ex.closeClientAfter = close
        ex.status = status
        ex.proxyGenerated = true
        let bytes = HeaderRewriter.errorResponse(status: status, message: message, close: close)
        channel.write(bytes)
        ex.bytesToClient += Int64(bytes.count)
        ex.responseHeadSent = true
        ex.responseComplete = true
        ex.upstreamUnreusable = true
        context.logger.warning("\(status) for \(ex.head.method) \(ex.head.target): \(message)")
        finishExchange(ex)
    }

    /// Ends the exchange and the client connection abruptly: used when a response was cut short
    /// (so the client sees a broken transfer, never one that looks complete) or the client left.
    private func abortExchange(_ ex: Exchange, reason: String) {
        guard exchange === ex else { return }
        if let u = ex.upstream {
            u.owner = nil
            u.close()
            ex.upstream = nil
        }
        ex.endpoint.requestEnded()
        if ex.status == 0 { ex.status = 499 }
        if ex.responseHeadSent {
            // A response cut short by the upstream counts as a server error of that endpoint.
            stats.record(endpoint: ex.endpoint, pool: ex.poolName, status: ex.upstreamCut ? 502 : ex.status,
                         startedAt: ex.startTime, proxyGenerated: ex.upstreamCut)
        }
        logAccess(ex, note: reason)
        exchange = nil
        teardown()
    }

    /// Answers a request that never got an upstream (503, or an error found before routing).
    private func respondWithoutUpstream(_ head: HTTPRequestHead, status: Int, message: String, extra: [(String, String)], pool: String) {
        let close = head.hasBody || !head.keepAlive || draining || context.isDraining
        let bytes = HeaderRewriter.errorResponse(status: status, message: message, close: close, extraHeaders: extra)
        channel.write(bytes)
        stats.record(endpoint: nil, pool: pool, status: status, startedAt: EventLoop.now(), proxyGenerated: status >= 500)
        if let access = context.accessLogger {
            access.info("\(clientIP) \"\(head.method) \(head.target) \(head.version.text)\" \(status) pool=\(pool) endpoint=- bytes=\(bytes.count) duration_ms=0.00")
        }
        if close {
            closeGracefully()
        } else {
            setDeadline(inputStart < input.count ? .header : .idle)
            processInput()
        }
    }

    private func sendErrorAndClose(status: Int, message: String) {
        channel.write(HeaderRewriter.errorResponse(status: status, message: message, close: true))
        context.logger.info("\(status) to \(clientIP): \(message)")
        closeGracefully()
    }

    private func logAccess(_ ex: Exchange, note: String?) {
        guard let access = context.accessLogger else { return }
        let ms = Double(EventLoop.now() - ex.startTime) / 1_000_000
        var line = "\(clientIP) \"\(ex.head.method) \(ex.head.target) \(ex.head.version.text)\" \(ex.status) pool=\(ex.poolName) endpoint=\(ex.endpoint.address) bytes=\(ex.bytesToClient) duration_ms=\(String(format: "%.2f", ms))"
        if ex.attempts > 1 { line += " attempts=\(ex.attempts)" }
        if ex.routeReason != .weighted { line += " route=\(ex.routeReason.rawValue)" }
        if let note { line += " error=\"\(note)\"" }
        access.info("\(line)")
    }

    // MARK: closing

    /// Stops reading requests and closes once everything queued is written.
    private func closeGracefully() {
        guard !closed else { return }
        closed = true
        deadlineKind = .none
        channel.finish()
        if channel.isClosed { unregister() }
    }

    /// Closes at once.
    private func teardown() {
        if let ex = exchange {
            exchange = nil
            if let u = ex.upstream { u.owner = nil; u.close() }
            ex.endpoint.requestEnded()
        }
        closed = true
        channel.close()
        unregister()
    }

    private var unregistered = false
    private func unregister() {
        guard !unregistered else { return }
        unregistered = true
        loop.unregister(self)
        onClose(self)
    }

    /// Called on this connection's loop when the proxy starts draining.
    func beginDrain() {
        draining = true
        if exchange == nil && !closed {
            if inputStart < input.count { return }  // a request is arriving; it is answered, then we close
            teardown()
        }
    }

    var isIdle: Bool { exchange == nil }
    var isFinished: Bool { unregistered }
}

extension String {
    func leftPadded(to n: Int) -> String {
        count >= n ? self : String(repeating: "0", count: n - count) + self
    }
}
