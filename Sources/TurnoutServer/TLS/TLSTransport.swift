#if canImport(Glibc)
import Glibc
#endif
import COpenSSL

/// TLS as a transform over a `SocketChannel` (../shared/STYLE.md item 7): ciphertext read from the
/// socket goes into a memory BIO, OpenSSL decrypts from it, and whatever OpenSSL writes to the
/// outgoing memory BIO is queued on the channel. The handshake runs on the loop's read events and
/// never blocks. After it, the protocol chosen by ALPN decides which connection takes over, and
/// that connection sees plaintext through the same `ClientTransport` calls as a plain socket.
/// Loop-confined.
final class TLSTransport: ClientTransport, ChannelDelegate, LoopTimed, @unchecked Sendable {
    let channel: SocketChannel
    unowned let loop: EventLoop
    /// The listener's contexts (a client connection of ours), or nil for a connection we open.
    private let tls: TLSContext?
    /// A connection Turnout opens (to an HTTP/2 upstream): its context and who the server must be.
    private let client: (context: TLSClientContext, host: String, serverName: String?)?
    private var ssl: OpaquePointer?
    private var rbio: OpaquePointer?
    private var wbio: OpaquePointer?
    var delegate: ChannelDelegate?

    private var handshakeDone = false
    private var handshakeDeadline: UInt64
    private var onHandshake: ((TLSTransport, _ alpn: String?) -> Void)?
    private var onFailure: ((String) -> Void)?
    private var readPaused = false
    private var readScheduled = false
    private var finished = false
    private var transportClosed = false
    private var eofDelivered = false

    /// `onHandshake` must install the connection that takes over (it becomes the delegate);
    /// `onFailure` is told once if the handshake fails or times out (the socket is closed by then).
    init(channel: SocketChannel, loop: EventLoop, tls: TLSContext, handshakeTimeoutMs: Int64,
         onHandshake: @escaping (TLSTransport, String?) -> Void, onFailure: @escaping (String) -> Void) {
        self.channel = channel
        self.loop = loop
        self.tls = tls
        self.handshakeDeadline = EventLoop.now() + UInt64(handshakeTimeoutMs) * 1_000_000
        self.onHandshake = onHandshake
        self.onFailure = onFailure
        self.client = nil
    }

    /// The client side, over a socket that may still be connecting: the handshake starts once it
    /// is connected. `host` is the endpoint's host; `serverName` overrides the SNI and the name
    /// the certificate must carry.
    init(clientChannel channel: SocketChannel, loop: EventLoop, context: TLSClientContext, host: String, serverName: String?,
         handshakeTimeoutMs: Int64, onHandshake: @escaping (TLSTransport, String?) -> Void, onFailure: @escaping (String) -> Void) {
        self.channel = channel
        self.loop = loop
        self.tls = nil
        self.client = (context, host, serverName)
        self.handshakeDeadline = EventLoop.now() + UInt64(handshakeTimeoutMs) * 1_000_000
        self.onHandshake = onHandshake
        self.onFailure = onFailure
    }

    deinit {
        if let ssl { SSL_free(ssl) }  // frees both BIOs too
    }

    /// Starts reading the client's hello.
    func beginHandshake() {
        guard let context = client?.context.context ?? tls?.defaultContext, let ssl = SSL_new(context) else {
            fail("cannot create a TLS session: \(TLSContext.opensslError())")
            return
        }
        self.ssl = ssl
        rbio = BIO_new(BIO_s_mem())
        wbio = BIO_new(BIO_s_mem())
        SSL_set_bio(ssl, rbio, wbio)
        if let client {
            client.context.prepare(ssl, host: client.host, serverName: client.serverName)
            SSL_set_connect_state(ssl)
        } else {
            SSL_set_accept_state(ssl)
        }
        loop.register(self)
        channel.delegate = self
        channel.start()
        // A client speaks first, once connected.
        if client != nil && !channel.isConnecting { advanceHandshake() }
    }

    func channelConnected(_ channel: SocketChannel) {
        if client != nil && !handshakeDone { advanceHandshake() }
    }

    /// Who is at the other end, for messages.
    private var peer: String { client == nil ? "the client" : "the upstream" }

    // MARK: ClientTransport

    var pendingBytes: Int { channel.pendingBytes }
    var isClosed: Bool { channel.isClosed }
    var isLingering: Bool { channel.isLingering }
    var lingerDeadline: UInt64 { channel.lingerDeadline }

    /// The socket is already running (since the handshake); nothing to do.
    func start() {}

    func write(_ bytes: UnsafeRawBufferPointer) {
        guard let ssl, handshakeDone, !finished, !channel.isClosed, !bytes.isEmpty else { return }
        ERR_clear_error()
        var offset = 0
        while offset < bytes.count {
            // Memory BIOs grow as needed, so a write only fails on a real error.
            let chunk = min(bytes.count - offset, Int(Int32.max))
            let n = SSL_write(ssl, bytes.baseAddress! + offset, Int32(chunk))
            if n <= 0 {
                failAfterHandshake("TLS write failed: \(TLSContext.opensslError())")
                return
            }
            offset += Int(n)
        }
        flushCiphertext()
    }

    func write(_ bytes: [UInt8]) { bytes.withUnsafeBytes { write($0) } }
    func write(_ bytes: ArraySlice<UInt8>) { bytes.withUnsafeBytes { write($0) } }

    func pauseReading() {
        readPaused = true
        channel.pauseReading()
    }

    func resumeReading() {
        guard readPaused else { return }
        readPaused = false
        channel.resumeReading()
        // Records already decrypted-ready in the BIO do not make the socket readable again.
        scheduleRead()
    }

    /// Always lingers: the peer may answer close_notify with its own, and unread bytes at close
    /// would turn into a reset that can cut the response.
    func finish(linger: Bool) {
        guard !finished, !channel.isClosed else { return }
        if let ssl, handshakeDone {
            ERR_clear_error()
            _ = SSL_shutdown(ssl)  // queues close_notify
            flushCiphertext()
        }
        finished = true
        channel.finish()
    }

    func close() {
        transportClosed = true
        channel.close(reset: false)
        loop.unregister(self)
        // Closed by its owner during the handshake: the callbacks (which may hold the owner) go.
        onHandshake = nil
        onFailure = nil
    }

    // MARK: the socket's events

    func channelRead(_ channel: SocketChannel, _ bytes: UnsafeRawBufferPointer) {
        guard let rbio else { return }
        _ = BIO_write(rbio, bytes.baseAddress, Int32(bytes.count))
        if !handshakeDone {
            advanceHandshake()
        } else {
            readPlaintext()
        }
    }

    func channelEOF(_ channel: SocketChannel) {
        if !handshakeDone {
            fail("\(peer) closed during the TLS handshake")
            return
        }
        // Drain what is still buffered, then report the end.
        readPlaintext()
        if !channel.isClosed && !eofDelivered {
            eofDelivered = true
            delegate?.channelEOF(channel)
        }
    }

    func channelError(_ channel: SocketChannel, _ error: SystemError) {
        if !handshakeDone {
            fail("the connection failed during the TLS handshake: \(error)")
            return
        }
        delegate?.channelError(channel, error)
    }

    func channelDrained(_ channel: SocketChannel) {
        if handshakeDone { delegate?.channelDrained(channel) }
    }

    /// The socket is gone: let go of the connection above, which holds this transport. (A
    /// socket closes itself at the end of a lingering close, without telling anyone else.)
    func channelClosed(_ channel: SocketChannel) {
        delegate = nil
    }

    func checkTimeouts(now: UInt64) {
        if !handshakeDone && now >= handshakeDeadline {
            fail("the TLS handshake did not finish in time")
        }
    }

    // MARK: TLS

    private func advanceHandshake() {
        guard let ssl else { return }
        ERR_clear_error()
        let r = SSL_do_handshake(ssl)
        flushCiphertext()
        if r == 1 {
            handshakeDone = true
            loop.unregister(self)
            var proto: UnsafePointer<UInt8>?
            var len: UInt32 = 0
            SSL_get0_alpn_selected(ssl, &proto, &len)
            let alpn = proto.map { String(decoding: UnsafeBufferPointer(start: $0, count: Int(len)), as: UTF8.self) }
            let next = onHandshake
            onHandshake = nil
            onFailure = nil
            next?(self, alpn)
            // Application data may have arrived with the last handshake flight.
            readPlaintext()
            return
        }
        let err = SSL_get_error(ssl, r)
        if err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE { return }
        if client != nil, let refused = TLSClientContext.verifyFailure(ssl) {
            return fail("TLS handshake with the upstream failed: \(refused)")
        }
        fail("TLS handshake failed: \(TLSContext.opensslError())")
    }

    private func readPlaintext() {
        guard let ssl, handshakeDone else { return }
        let buf = loop.plaintextBuffer
        while !readPaused && !channel.isClosed && !transportClosed, let d = delegate {
            ERR_clear_error()
            let n = SSL_read(ssl, buf.baseAddress, Int32(buf.count))
            if n > 0 {
                d.channelRead(channel, UnsafeRawBufferPointer(rebasing: buf[0..<Int(n)]))
                continue
            }
            let err = SSL_get_error(ssl, n)
            if err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE { break }
            if err == SSL_ERROR_ZERO_RETURN {
                // close_notify: the client is done sending.
                flushCiphertext()
                if !eofDelivered {
                    eofDelivered = true
                    d.channelEOF(channel)
                }
                return
            }
            failAfterHandshake("TLS read failed: \(TLSContext.opensslError())")
            return
        }
        flushCiphertext()
    }

    private func scheduleRead() {
        guard !readScheduled else { return }
        readScheduled = true
        loop.queue.async { [self] in
            readScheduled = false
            readPlaintext()
        }
    }

    /// Moves what OpenSSL produced to the socket's send queue.
    private func flushCiphertext() {
        guard let wbio, !channel.isClosed else { return }
        var pending = turnout_bio_pending(wbio)
        while pending > 0 {
            var chunk = [UInt8](repeating: 0, count: pending)
            let n = chunk.withUnsafeMutableBytes { BIO_read(wbio, $0.baseAddress, Int32($0.count)) }
            guard n > 0 else { return }
            if Int(n) < chunk.count { chunk.removeLast(chunk.count - Int(n)) }
            channel.write(chunk)
            pending = turnout_bio_pending(wbio)
        }
    }

    private func fail(_ reason: String) {
        guard !transportClosed else { return }
        transportClosed = true
        flushCiphertext()  // a TLS alert, when OpenSSL made one (the kernel takes it at once)
        channel.close(reset: false)
        loop.unregister(self)
        let f = onFailure
        onFailure = nil
        onHandshake = nil
        f?(reason)
    }

    private func failAfterHandshake(_ reason: String) {
        let d = delegate
        channel.close(reset: true)
        d?.channelError(channel, SystemError(reason, errno: EPROTO))
    }
}
