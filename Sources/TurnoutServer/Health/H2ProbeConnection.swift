import CNghttp2
import TurnoutCore

/// One health probe of an HTTP/2 endpoint (`protocol: h2c`, or `h2` over TLS): connect (and shake
/// hands), send the connection preface and one request, read the response (head, body, trailers),
/// close.
/// Used for `GET health.path` (2xx passes) and for the gRPC health check
/// (`grpc.health.v1.Health/Check`, which passes on SERVING). Loop-confined, on the health loop.
final class H2ProbeConnection: ChannelDelegate, LoopTimed, @unchecked Sendable {
    struct Request {
        var method = "GET"
        var path: String
        var authority: String
        var fields: [(String, String)] = []
        var body: [UInt8] = []
    }

    struct Response {
        var status = 0
        var fields: [(String, String)] = []
        var body: [UInt8] = []
        var trailers: [(String, String)] = []
    }

    private let loop: EventLoop
    private let address: SocketAddress
    private let request: Request
    private let deadline: UInt64
    /// For `protocol: h2`: the pool's TLS context, the endpoint's host and the name to ask for.
    private let tls: (context: TLSClientContext, host: String, serverName: String?)?
    private var transport: ClientTransport?
    private var session: OpaquePointer?
    private var response = Response()
    private var sawHead = false
    private var bodySent = 0
    private var completion: ((Result<Response, ProbeFailure>) -> Void)?

    struct ProbeFailure: Error, CustomStringConvertible {
        let description: String
    }

    /// Bodies and header blocks larger than this fail the probe.
    static let maxBytes = 64 * 1024

    init(loop: EventLoop, address: SocketAddress, request: Request, timeoutMs: Int64,
         tls: (context: TLSClientContext, host: String, serverName: String?)? = nil,
         completion: @escaping (Result<Response, ProbeFailure>) -> Void) {
        self.tls = tls
        self.loop = loop
        self.address = address
        self.request = request
        self.deadline = EventLoop.now() + UInt64(timeoutMs) * 1_000_000
        self.completion = completion
    }

    deinit {
        if let session { nghttp2_session_del(session) }
    }

    func start() {
        loop.register(self)
        guard nghttp2_session_client_new(&session, Self.callbacks, Unmanaged.passUnretained(self).toOpaque()) == 0, let session else {
            return finish(.failure(ProbeFailure(description: "cannot create an HTTP/2 session")))
        }
        var settings = [nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_ENABLE_PUSH.rawValue), value: 0)]
        nghttp2_submit_settings(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), &settings, settings.count)
        var fields: [(String, String)] = [(":method", request.method), (":scheme", tls == nil ? "http" : "https"), (":authority", request.authority),
                                          (":path", request.path), ("user-agent", "turnout-health")]
        fields += request.fields
        submit(fields, session: session)
        do {
            let (fd, inProgress) = try Sockets.connect(to: address)
            let ch = SocketChannel(fd: fd, loop: loop, connecting: inProgress)
            if let tls {
                let t = TLSTransport(clientChannel: ch, loop: loop, context: tls.context, host: tls.host, serverName: tls.serverName,
                                     handshakeTimeoutMs: Int64((deadline - min(deadline, EventLoop.now())) / 1_000_000),
                                     onHandshake: { [self] t, alpn in
                                         guard alpn == "h2" else {
                                             return finish(.failure(ProbeFailure(description: "TLS: the endpoint did not choose h2 by ALPN")))
                                         }
                                         t.delegate = self
                                         flush()
                                     },
                                     onFailure: { [self] reason in finish(.failure(ProbeFailure(description: reason))) })
                transport = t
                t.beginHandshake()
            } else {
                transport = ch
                ch.delegate = self
                ch.start()
                if !inProgress { flush() }
            }
        } catch {
            finish(.failure(ProbeFailure(description: "\(error)")))
        }
    }

    private func submit(_ fields: [(String, String)], session: OpaquePointer) {
        let block = HTTP2HeaderBlock(trailers: HTTPHeaders())
        for (name, value) in fields { block.append(name, value) }
        let withBody = !request.body.isEmpty
        block.withNV { nva, count in
            if withBody {
                var provider = nghttp2_data_provider()
                provider.read_callback = Self.readCallback
                _ = nghttp2_submit_request(session, nil, nva, count, &provider, nil)
            } else {
                _ = nghttp2_submit_request(session, nil, nva, count, nil, nil)
            }
        }
    }

    func checkTimeouts(now: UInt64) {
        if now >= deadline { finish(.failure(ProbeFailure(description: "probe timed out"))) }
    }

    func channelConnected(_ channel: SocketChannel) { if tls == nil { flush() } }

    func channelRead(_ channel: SocketChannel, _ bytes: UnsafeRawBufferPointer) {
        guard let session else { return }
        let n = nghttp2_session_mem_recv(session, bytes.baseAddress?.assumingMemoryBound(to: UInt8.self), bytes.count)
        if n < 0 { return finish(.failure(ProbeFailure(description: "HTTP/2: \(String(cString: nghttp2_strerror(Int32(n))))"))) }
        flush()
    }

    func channelEOF(_ channel: SocketChannel) { finish(.failure(ProbeFailure(description: "connection closed before a response"))) }

    func channelError(_ channel: SocketChannel, _ error: SystemError) { finish(.failure(ProbeFailure(description: "\(error)"))) }

    func channelDrained(_ channel: SocketChannel) {}

    private func flush() {
        guard let session, let transport, completion != nil else { return }
        // A probe's request is far below the watermark: everything nghttp2 has goes out.
        let rc = HTTP2Output.send(session, to: transport, loop: loop)
        if rc < 0 { finish(.failure(ProbeFailure(description: "HTTP/2: \(String(cString: nghttp2_strerror(Int32(rc))))"))) }
    }

    private func finish(_ result: Result<Response, ProbeFailure>) {
        guard let completion else { return }
        self.completion = nil
        loop.unregister(self)
        transport?.close()
        transport = nil
        completion(result)
    }

    // MARK: nghttp2

    fileprivate func header(name: String, value: String) {
        if !sawHead {
            if name == ":status" { response.status = Int(value) ?? 0 } else if !name.hasPrefix(":") { response.fields.append((name, value)) }
        } else {
            response.trailers.append((name, value))
        }
    }

    fileprivate func headersDone(endStream: Bool) {
        if !sawHead && response.status >= 200 { sawHead = true }
        if endStream { finish(.success(response)) }
    }

    fileprivate func data(_ bytes: UnsafeRawBufferPointer) {
        guard response.body.count + bytes.count <= Self.maxBytes else {
            return finish(.failure(ProbeFailure(description: "response body larger than \(Self.maxBytes) bytes")))
        }
        response.body.append(contentsOf: bytes)
    }

    fileprivate func streamClosed(errorCode: UInt32) {
        finish(.failure(ProbeFailure(description: "stream reset (error code \(errorCode))")))
    }

    fileprivate func readBody(_ buf: UnsafeMutablePointer<UInt8>, _ length: Int, _ flags: UnsafeMutablePointer<UInt32>) -> Int {
        let n = min(length, request.body.count - bodySent)
        request.body.withUnsafeBytes { src in
            UnsafeMutableRawPointer(buf).copyMemory(from: src.baseAddress! + bodySent, byteCount: n)
        }
        bodySent += n
        if bodySent == request.body.count { flags.pointee |= NGHTTP2_DATA_FLAG_EOF.rawValue }
        return n
    }

    private static func probe(_ user: UnsafeMutableRawPointer?) -> H2ProbeConnection? {
        user.map { Unmanaged<H2ProbeConnection>.fromOpaque($0).takeUnretainedValue() }
    }

    nonisolated(unsafe) static let callbacks: OpaquePointer = {
        var cbs: OpaquePointer?
        nghttp2_session_callbacks_new(&cbs)
        nghttp2_session_callbacks_set_on_header_callback(cbs) { _, _, name, namelen, value, valuelen, _, user in
            guard let name, let value else { return 0 }
            probe(user)?.header(name: String(decoding: UnsafeBufferPointer(start: name, count: namelen), as: UTF8.self),
                                value: String(decoding: UnsafeBufferPointer(start: value, count: valuelen), as: UTF8.self))
            return 0
        }
        nghttp2_session_callbacks_set_on_frame_recv_callback(cbs) { _, frame, user in
            guard let frame else { return 0 }
            let hd = frame.pointee.hd
            let endStream = hd.flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0
            if hd.type == UInt8(NGHTTP2_HEADERS.rawValue) {
                probe(user)?.headersDone(endStream: endStream)
            } else if hd.type == UInt8(NGHTTP2_DATA.rawValue) && endStream {
                probe(user)?.headersDone(endStream: true)
            }
            return 0
        }
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs) { _, _, _, data, len, user in
            guard let data else { return 0 }
            probe(user)?.data(UnsafeRawBufferPointer(start: data, count: len))
            return 0
        }
        nghttp2_session_callbacks_set_on_stream_close_callback(cbs) { _, _, errorCode, user in
            probe(user)?.streamClosed(errorCode: errorCode)
            return 0
        }
        return cbs!
    }()

    static let readCallback: nghttp2_data_source_read_callback = { _, _, buf, length, flags, _, user in
        guard let buf, let flags, let p = probe(user) else { return Int(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue) }
        return p.readBody(buf, length, flags)
    }
}
