import CNghttp2
import Foundation
import TurnoutCore

/// One HTTP/2 request stream: collects the request head, routes it, feeds its body to the
/// `UpstreamExchange` and buffers the response for nghttp2's data source. Owned by its
/// `HTTP2Connection`, loop-confined.
final class HTTP2Stream: ExchangeSink {
    let id: Int32
    /// The connection, which owns the stream and outlives it: held without a reference count, and
    /// reached without one on the paths every request takes (`connectionRef.with`).
    private let connectionRef: Unretained<HTTP2Connection>
    var connection: HTTP2Connection { connectionRef.object }

    // The request as it arrives.
    private var method: String?
    private var path: String?
    private var authority: String?
    /// `:protocol` of an extended CONNECT (RFC 8441), e.g. "websocket".
    private var connectProtocol: String?
    private var fields = HTTPHeaders()
    /// `fields` starts with a Host field written from `:authority`.
    private var hostFromAuthority = false
    private var cookies: [String] = []
    private var headerBytes = 0
    private var headerProblem: (status: Int, message: String)?
    private(set) var requestEnded = false
    /// The request is a gRPC call: Turnout's own answers are gRPC statuses.
    private var isGRPC = false

    private(set) var exchange: UpstreamExchange?
    /// After an extended CONNECT was accepted: the WebSocket bridged to its upstream.
    private(set) var tunnel: HTTP2Tunnel?
    /// Answered without (or no longer needing) an upstream: further request body is discarded.
    private(set) var answered = false
    /// Request body received but not yet taken by the upstream (bounded by the stream window).
    private var body: [UInt8] = []
    private var bodyStart = 0

    // The response on its way out.
    private var out = HTTP2DataQueue()
    private var responseEnded = false
    private var dataDeferred = false
    /// Trailers of the upstream's response, sent after the last DATA.
    private var trailers: HTTP2HeaderBlock?

    init(id: Int32, connection: HTTP2Connection) {
        self.id = id
        self.connectionRef = Unretained(connection)
    }

    // MARK: request head

    func addHeader(name: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>, maxBytes: Int, maxCount: Int) {
        guard headerProblem == nil else { return }
        if headerBytes == 0 { fields.reserveCapacity(bytes: 256, fields: 12) }
        headerBytes += name.count + value.count + 32
        if headerBytes > maxBytes || fields.count - (hostFromAuthority ? 1 : 0) >= maxCount {
            headerProblem = (431, "the request's header fields are larger than the limit")
            fields = HTTPHeaders()
            hostFromAuthority = false
            return
        }
        if name.first == 58 {  // ':' a pseudo-header (nghttp2 refuses unknown ones before here)
            switch name.count {
            case 7 where name.equals(":method"): method = String(decoding: value, as: UTF8.self)
            case 5 where name.equals(":path"): path = String(decoding: value, as: UTF8.self)
            case 10 where name.equals(":authority"):
                authority = String(decoding: value, as: UTF8.self)
                // HTTP/1.1 upstreams need Host (RFC 9113 8.3.1): the authority, as the first
                // field (pseudo-headers come before all others), unless the client sends Host.
                if !hostFromAuthority {
                    ("host" as StaticString).withUTF8Buffer { fields.append(name: $0, value: value) }
                    hostFromAuthority = true
                }
            case 9 where name.equals(":protocol"): connectProtocol = String(decoding: value, as: UTF8.self)
            default: break  // :scheme: the scheme upstream is the listener's
            }
        } else if name.count == 6 && name.equals("cookie") {
            cookies.append(String(decoding: value, as: UTF8.self))
        } else {
            if hostFromAuthority && name.count == 4 && name.equals("host") {
                // The client's Host goes as it came, instead of the authority.
                fields.remove("host")
                hostFromAuthority = false
            }
            fields.append(name: name, value: value)
        }
    }

    /// The request's head is whole (from the connection's nghttp2 callback, which the connection
    /// is inside of: it is alive throughout, and reached without a count).
    func requestHeadComplete(endStream: Bool) {
        connectionRef.with { c in requestHeadComplete(endStream: endStream, on: c) }
    }

    private func requestHeadComplete(endStream: Bool, on c: HTTP2Connection) {
        if endStream { requestEnded = true }
        if let problem = headerProblem {
            answer(status: problem.status, message: problem.message)
            return
        }
        // The request's parts move into its head (taken, not copied: no reference counts).
        guard let method = method.take() else {
            answer(status: 400, message: "the request has no :method")
            return
        }
        let websocket = method == "CONNECT" && connectProtocol?.equalsIgnoringASCIICase("websocket") == true
        if method == "CONNECT" && !websocket {
            if connectProtocol != nil {
                answer(status: 501, message: "extended CONNECT supports only the websocket protocol")
            } else {
                answer(status: 405, message: "CONNECT is not supported: Turnout is a reverse proxy, not a forward proxy")
            }
            return
        }
        guard let path = path.take(), !path.isEmpty else {
            answer(status: 400, message: "the request has no :path")
            return
        }
        // HTTP/1.1 upstreams need one Host field and one Cookie field (RFC 9113 8.3.1, 8.2.3).
        // Moved out, not copied: the stream's reference would make the first change below copy
        // both arrays of the fields.
        var headers = HTTPHeaders()
        swap(&headers, &fields)
        // The fields the request's handling reads, the first of each, found in one walk.
        // Host (written from :authority by `addHeader` when the client sent none) is for the
        // upstream; the request's host is the authority, else the client's Host.
        var host = authority.take()
        let wantHost = host == nil
        var contentLength: String?
        var grpc = false, expectsContinue = false
        var seen: UInt8 = 0  // content-type 1, host 2, content-length 4, expect 8
        headers.forEach { name, value in
            switch name.count {
            case 4 where wantHost && seen & 2 == 0 && name.equalsIgnoringASCIICase("host"):
                seen |= 2
                host = String(decoding: value, as: UTF8.self)
            case 6 where seen & 8 == 0 && name.equalsIgnoringASCIICase("expect"):
                seen |= 8
                expectsContinue = value.equalsIgnoringASCIICase("100-continue")
            case 12 where seen & 1 == 0 && name.equalsIgnoringASCIICase("content-type"):
                seen |= 1
                grpc = GRPCStatus.isGRPC(contentType: value)
            case 14 where seen & 4 == 0 && name.equalsIgnoringASCIICase("content-length"):
                seen |= 4
                contentLength = String(decoding: value, as: UTF8.self)
            default: break
            }
        }
        isGRPC = grpc
        if !cookies.isEmpty { headers.append("cookie", cookies.joined(separator: "; ")) }
        let framing: BodyFraming
        if websocket {
            // The HTTP/1.1 upgrade the upstream understands (RFC 8441 section 5): a GET with a key
            // of its own; what follows on the stream is the tunnel, not a body.
            headers.remove("sec-websocket-key")
            headers.remove("content-length")
            headers.append("sec-websocket-key", Self.websocketKey())
            framing = .none
        } else if endStream {
            framing = .none
        } else if let cl = contentLength, let n = Int64(cl), n >= 0 {
            framing = .length(n)
        } else {
            framing = .chunked
        }
        if let max = c.viewRef.with({ $0.limits.maxBodyBytes }), case .length(let n) = framing, n > max {
            answer(status: 413, message: "the request body is larger than \(max) bytes")
            return
        }
        // The parts move into the head (`consume`: the last use of each), and the head into the
        // plan, made in the call: a head held in a local first was copied into the call and the
        // local destroyed (four reference counts per request, with the retains of the parts).
        let table = c.viewRef.with { $0.table }
        switch RequestPlan.make(HTTPRequestHead(method: websocket ? "GET" : method, target: consume path, version: .http2,
                                                headers: consume headers, host: consume host, framing: framing,
                                                keepAlive: true, expectsContinue: expectsContinue),
                                table: table, clientIP: c.clientIP, scheme: c.scheme, upgrade: websocket ? "websocket" : nil) {
        case .unavailable(let poolName, let head):
            RequestRouter.recordUnforwarded(head, status: 503, pool: poolName, bytes: 0, clientIP: c.clientIP,
                                            context: c.context, stats: c.stats)
            answer(status: 503, message: "no healthy endpoint in pool \(poolName)",
                   extra: [("retry-after", "\(c.context.retryAfterSeconds)")])
        case .forward(let plan):
            let ex = RequestRouter.exchange(plan, table: table, env: c.env, sink: self)
            exchange = ex
            ex.start()
        }
    }

    // MARK: request body

    static func websocketKey() -> String {
        var g = SystemRandomNumberGenerator()
        return Data((0..<16).map { _ in UInt8.random(in: 0...255, using: &g) }).base64EncodedString()
    }

    func bodyReceived(_ bytes: UnsafeRawBufferPointer) {
        if let tunnel {
            tunnel.fromClient(bytes)
            return
        }
        guard let ex = exchange, !ex.isOver else {
            connection.consume(id, bytes.count)
            return
        }
        if bodyStart == body.count && ex.canSendBody {
            if let message = ex.sendData(bytes) {
                ex.fail(status: 400, message: message)
                return
            }
            connection.consume(id, bytes.count)
            return
        }
        body.append(contentsOf: bytes)
    }

    func requestBodyEnded() {
        requestEnded = true
        if let tunnel {
            tunnel.clientEnded()
            return
        }
        pumpBody()
    }

    private func pumpBody() {
        guard let ex = exchange, !ex.isOver else { return }
        if bodyStart < body.count && ex.canSendBody {
            let n = body.count - bodyStart
            if let message = body.withUnsafeBytes({ ex.sendData(UnsafeRawBufferPointer(rebasing: $0[bodyStart...])) }) {
                ex.fail(status: 400, message: message)
                return
            }
            body.removeAll(keepingCapacity: true)
            bodyStart = 0
            connection.consume(id, n)
            connection.scheduleFlush()
        }
        if requestEnded && bodyStart == body.count && !ex.requestComplete && ex.canSendBody {
            if let message = ex.endData() {
                ex.fail(status: 400, message: message)
            }
        }
    }

    // MARK: the exchange's events

    var pendingToClient: Int { out.count }

    var sinkPendingBytes: Int { pendingToClient + connectionRef.with { $0.transport.pendingBytes } }

    func exchangeWantsBody(_ ex: UpstreamExchange) { pumpBody() }

    func exchangeInformational(_ ex: UpstreamExchange, _ head: HTTPResponseHead) {
        let block = connection.headerBlock(status: head.status)
        block.appendResponse(head, setCookie: nil, keepLength: false)
        connection.submitInformational(id, block)
    }

    func exchangeResponseHead(_ ex: UpstreamExchange, _ head: HTTPResponseHead, framing: BodyFraming) {
        let endStream: Bool
        switch framing {
        case .none: endStream = true
        case .length(let n): endStream = n == 0
        default: endStream = false
        }
        var keepLength = false
        if case .length = framing { keepLength = true }
        if case .none = framing { keepLength = true }
        if endStream { responseEnded = true }
        connectionRef.with { c in
            let block = c.headerBlock(status: head.status)
            block.appendResponse(head, setCookie: ex.setCookie, keepLength: keepLength)
            c.submitResponse(id, block, endStream: endStream)
        }
    }

    func exchangeResponseBody(_ ex: UpstreamExchange, _ bytes: UnsafeRawBufferPointer) {
        guard !responseEnded else { return }
        connectionRef.with { c in
            if !out.hasMemory, let spare = c.spareDataBuffer() { out.adopt(spare) }
            out.append(bytes)
            ex.bytesToClient += Int64(bytes.count)
            // The exchange stops reading its upstream past the watermark; wake it when below again.
            if sinkPendingBytes > SocketChannel.highWatermark { c.waitForDrain(self) }
        }
        wakeDataSource()
    }

    func exchangeTrailers(_ ex: UpstreamExchange, _ fields: HTTPHeaders) {
        let block = HTTP2HeaderBlock(trailers: fields)
        if !block.isEmpty { trailers = block }
    }

    func exchangeFailed(_ ex: UpstreamExchange, status: Int, message: String) {
        let body = HeaderRewriter.errorBody(status: status, message: message)
        ex.bytesToClient += Int64(body.count)
        respondWithError(status: status, body: body, extra: [])
    }

    func exchangeFinished(_ ex: UpstreamExchange) {
        if !requestEnded {
            // Answered before the whole request arrived: the rest of the body is read and dropped.
            answered = true
            connection.consume(id, body.count - bodyStart)
            body = []
            bodyStart = 0
        }
        if !responseEnded {
            responseEnded = true
            wakeDataSource()
        }
    }

    func exchangeAborted(_ ex: UpstreamExchange, reason: String) {
        connection.resetStream(id, code: NGHTTP2_INTERNAL_ERROR)
    }

    /// HTTP/2 requests never ask for an upgrade (nghttp2 refuses `Upgrade` fields), so this only
    /// guards against an upstream that switches anyway.
    /// The upstream accepted a WebSocket (extended CONNECT): the client gets 200 and the stream
    /// becomes the tunnel.
    func exchangeUpgraded(_ ex: UpstreamExchange, _ head: HTTPResponseHead, upstream: UpstreamConnection, leftover: ArraySlice<UInt8>) {
        let block = connection.headerBlock(status: 200)
        block.appendResponse(head, setCookie: ex.setCookie, keepLength: false, except: "sec-websocket-accept")
        connection.submitResponse(id, block, endStream: false)
        let t = HTTP2Tunnel(stream: self, upstream: upstream, context: connection.context, clientIP: connection.clientIP,
                            poolName: ex.poolName, target: ex.head.target)
        t.requestID = ex.requestID
        tunnel = t
        let early = Array(body[bodyStart...])
        body = []
        bodyStart = 0
        t.start(fromClient: early, fromUpstream: leftover)
    }

    /// Bytes from the tunnel's upstream, on their way out as DATA.
    func tunnelBytes(_ bytes: UnsafeRawBufferPointer) {
        guard !responseEnded else { return }
        out.append(bytes)
        wakeDataSource()
    }

    /// The tunnel's upstream closed: what it sent goes out, then END_STREAM.
    func endTunnelOutput() {
        guard !responseEnded else { return }
        responseEnded = true
        wakeDataSource()
    }

    /// The client's side has room again.
    func clientDrained() {
        if let tunnel { tunnel.clientDrained() } else { exchange?.clientDrained() }
    }

    // MARK: answers of our own

    private func answer(status: Int, message: String, extra: [(String, String)] = []) {
        answered = true
        respondWithError(status: status, body: HeaderRewriter.errorBody(status: status, message: message), extra: extra)
        responseEnded = true
    }

    private func respondWithError(status: Int, body: [UInt8], extra: [(String, String)]) {
        if isGRPC {
            // A gRPC client reads a status, not a page: a trailers-only answer (RFC-less, per the
            // gRPC HTTP/2 protocol) with the HTTP status mapped to its gRPC code.
            let block = connection.headerBlock(status: 200)
            block.append("content-type", "application/grpc")
            block.append("grpc-status", String(GRPCStatus.code(forHTTP: status)))
            let text = String(decoding: body, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            block.append("grpc-message", GRPCStatus.encodeMessage(text))
            for (name, value) in extra { block.append(name, value) }
            responseEnded = true
            out.replace(with: [])
            connection.submitResponse(id, block, endStream: true)
            return
        }
        out.replace(with: body)
        let block = connection.headerBlock(status: status)
        block.append("content-type", "text/plain; charset=utf-8")
        block.append("content-length", String(body.count))
        block.append("cache-control", "no-store")
        for (name, value) in extra { block.append(name, value) }
        responseEnded = true
        connection.submitResponse(id, block, endStream: false)
    }

    // MARK: nghttp2's data source

    private func wakeDataSource() {
        if dataDeferred {
            dataDeferred = false
            connectionRef.with { $0.resumeData(id) }
        } else {
            connectionRef.with { $0.scheduleFlush() }
        }
    }

    func readResponse(into buf: UnsafeMutablePointer<UInt8>, length: Int, flags: UnsafeMutablePointer<UInt32>) -> Int {
        let n = out.take(into: buf, length: length)
        if out.isEmpty {
            if responseEnded {
                flags.pointee |= NGHTTP2_DATA_FLAG_EOF.rawValue
                if let t = trailers {
                    // The stream ends with the trailers' HEADERS frame instead of this DATA.
                    trailers = nil
                    flags.pointee |= NGHTTP2_DATA_FLAG_NO_END_STREAM.rawValue
                    connection.submitTrailers(id, t)
                }
                return n
            }
            if n == 0 {
                dataDeferred = true
                return Int(NGHTTP2_ERR_DEFERRED.rawValue)
            }
        }
        return n
    }

    /// The stream is gone: closed normally, reset by the client, or its connection ended.
    /// The stream is gone; `reason` (made only when something still runs) says why.
    func closed(reason: @autoclosure () -> String) {
        if let tunnel, !tunnel.ended {
            tunnel.end(reason: reason(), resetStream: false)
        }
        if let ex = exchange, !ex.isOver {
            ex.cancel(reason: reason())
        }
        exchange = nil
        // The response queue's memory serves the connection's next stream.
        if let memory = out.releaseMemory(maxKept: HTTP2Connection.maxSpareDataBytes) { connectionRef.with { $0.keepDataBuffer(memory) } }
    }
}
