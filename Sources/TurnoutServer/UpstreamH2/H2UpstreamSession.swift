import CNghttp2
import Glibc
import Logging
import TurnoutCore

/// One HTTP/2 connection to an upstream endpoint (`protocol: h2c`, or `h2` over TLS), shared by
/// many streams: a libnghttp2 client session fed from memory over a non-blocking socket (or the
/// TLS transport on it), owned by its loop's
/// `UpstreamPool`. Streams join while it has room (the upstream's SETTINGS_MAX_CONCURRENT_STREAMS);
/// after a GOAWAY it takes none and closes once its streams are over. Response DATA is
/// acknowledged (WINDOW_UPDATE) as the client takes it, so a slow client holds back its own stream
/// only. Loop-confined.
final class H2UpstreamSession: ChannelDelegate, LoopFlushable, @unchecked Sendable {
    let endpoint: UpstreamEndpoint
    /// The pool, which owns the session and outlives it (`unowned(unsafe)`: no reference count per use).
    unowned(unsafe) let pool: UpstreamPool
    let transport: ClientTransport
    /// "http" for h2c, "https" for h2 (the `:scheme` of requests).
    let scheme: String
    private var session: OpaquePointer?
    /// The connection is up (TCP connected; for TLS, the handshake done with `h2` chosen).
    private(set) var isOpen = false
    /// The upstream sent GOAWAY (or the connection failed): no new streams.
    private(set) var goingAway = false
    private(set) var closed = false
    /// `close` is under way (its last flush must not close again).
    private var closing = false
    /// Submitted streams by id.
    private var streams = StreamMap<H2UpstreamStream>()
    /// Streams that joined before the connection was up.
    private var waiting: [H2UpstreamStream] = []
    /// Streams joined and not over.
    private(set) var active = 0
    /// Streams this connection carried.
    private(set) var served = 0
    /// When the last stream ended (for the idle timeout); 0 while streams are active.
    var idleSince: UInt64 = 0
    /// When the connection was started (for the connect timeout).
    let startedAt: UInt64
    /// When the upstream last sent anything, and when a PING went out that nothing answered yet.
    private var lastHeard: UInt64 = 0
    private var pingSentAt: UInt64 = 0
    /// After this long without a byte from the upstream, a PING asks whether it is still there.
    static let pingAfterNanos: UInt64 = 5_000_000_000
    private var inSession = false
    /// Inside `nghttp2_session_mem_recv` (see `cancel`).
    private var reading = false
    /// Streams let go while nghttp2 was reading, by id: reset after the read if still open.
    private var cancelAfterRead: [Int32] = []
    /// Fields of requests already framed, for the next ones (at most `Limits.spareFields`).
    private var spareFields: [HTTP2RequestFields] = []
    private var flushScheduled = false
    /// Streams that took request body during the last send: told after it.
    private var tookBody: [H2UpstreamStream] = []

    /// What Turnout announces to its HTTP/2 upstreams.
    enum Limits {
        /// Per-stream receive window: response bytes an upstream may send ahead of the client.
        static let streamWindow: UInt32 = 256 * 1024
        static let connectionWindow: Int32 = 4 << 20
        /// Streams per connection when the upstream announces no limit.
        static let defaultStreams = 100
        /// Largest response header block accepted (as for HTTP/1.1 upstreams).
        static let maxHeaderBytes = 64 * 1024
        /// Request field buffers kept for reuse, and the largest one kept.
        static let spareFields = 64
        static let spareFieldBytes = 4096
    }

    init(endpoint: UpstreamEndpoint, pool: UpstreamPool, transport: ClientTransport, scheme: String, connected: Bool) {
        self.endpoint = endpoint
        self.pool = pool
        self.transport = transport
        self.scheme = scheme
        self.isOpen = connected
        self.startedAt = pool.loop.coarseNow
        var option: OpaquePointer?
        nghttp2_option_new(&option)
        nghttp2_option_set_no_auto_window_update(option, 1)
        // Closed streams are forgotten at once (kept only for RFC 7540 priorities, turned off
        // with the setting below).
        nghttp2_option_set_no_closed_streams(option, 1)
        nghttp2_option_set_peer_max_concurrent_streams(option, UInt32(Limits.defaultStreams))
        let rc = nghttp2_session_client_new2(&session, H2UpstreamCallbacks.shared, Unmanaged.passUnretained(self).toOpaque(), option)
        nghttp2_option_del(option)
        if rc == 0, let session {
            var settings = [
                nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_ENABLE_PUSH.rawValue), value: 0),
                nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue), value: Limits.streamWindow),
                nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE.rawValue), value: UInt32(Limits.maxHeaderBytes)),
                // No RFC 7540 priority tree, as on the client side (HTTP2Connection).
                nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES.rawValue), value: 1),
            ]
            nghttp2_submit_settings(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), &settings, settings.count)
            nghttp2_session_set_local_window_size(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, Limits.connectionWindow)
        } else {
            session = nil
            goingAway = true
        }
    }

    deinit {
        if let session { nghttp2_session_del(session) }
    }

    /// Streams it takes at once: the upstream's limit (100 until it says), at most `cap`.
    func capacity(cap: Int) -> Int {
        guard let session else { return 0 }
        let remote = Int(nghttp2_session_get_remote_settings(session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS))
        return min(cap, max(1, remote))
    }

    func hasRoom(cap: Int) -> Bool { !goingAway && !closed && active < capacity(cap: cap) }

    /// A new stream joins. Returns it; it is ready at once when the connection is up.
    func join(owner: H2StreamOwner) -> H2UpstreamStream {
        // A stream on a connection already up is like a request on a pooled connection: if the
        // connection breaks before any answer, the same endpoint is worth a fresh connection.
        let s = H2UpstreamStream(endpoint: endpoint, session: self, owner: owner, sessionWasOpen: isOpen)
        active += 1
        idleSince = 0
        if !isOpen { waiting.append(s) }
        return s
    }

    // MARK: requests

    /// Submits a stream's request: its head as HTTP/2 fields, and the body from the stream's queue
    /// unless `endStream`.
    func submit(_ s: H2UpstreamStream, request: UpstreamRequest, teTrailers: Bool, endStream: Bool) {
        // Never sent, so never processed: the request may go on another connection.
        guard let session, !closed else { return fail(s, error: nil, refused: true) }
        // nghttp2 reads the names and values where they lie, when it frames the HEADERS: the
        // stream holds its fields until then (`headersSent`).
        let fields = spareFields.popLast() ?? HTTP2RequestFields()
        fields.set(request, scheme: scheme, teTrailers: teTrailers)
        let id: Int32 = NGHTTP2Fields.withNV(fields.buffer, noCopy: true) { nva, count in
            if endStream { return nghttp2_submit_request(session, nil, nva, count, nil, nil) }
            var provider = nghttp2_data_provider()
            provider.read_callback = H2UpstreamCallbacks.readCallback
            return nghttp2_submit_request(session, nil, nva, count, &provider, nil)
        }
        guard id > 0 else {
            recycle(fields)
            // Stream ids ran out: this connection takes no more, the request goes on another.
            goingAway = true
            return fail(s, error: nil, refused: true)
        }
        s.requestFields = consume fields
        s.id = id
        streams[id] = s
        scheduleFlush()
    }

    /// The exchange let go of a stream that is still open: reset it (CANCEL), or forget it when it
    /// was never submitted. While nghttp2 is reading, the reset waits until the read is done: an
    /// exchange whose response came whole by its length lets go on the last DATA, before nghttp2
    /// has taken that frame's END_STREAM; the stream is closed by then and needs no reset (each
    /// request used to cost the upstream an RST_STREAM on a stream it had ended).
    func cancel(_ s: H2UpstreamStream) {
        if s.id > 0 {
            if reading {
                cancelAfterRead.append(s.id)
            } else {
                reset(s.id)
            }
        } else {
            waiting.removeAll { $0 === s }
            streamOver()
        }
    }

    /// Resets a submitted stream nghttp2 has not closed yet (CANCEL).
    private func reset(_ id: Int32) {
        guard let session, streams[id] != nil else { return }
        nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), id, NGHTTP2_CANCEL.rawValue)
        scheduleFlush()
    }

    func resumeData(_ id: Int32) {
        guard let session else { return }
        nghttp2_session_resume_data(session, id)
        scheduleFlush()
    }

    /// Acknowledges response bytes a stream's client took.
    func consume(_ id: Int32, _ n: Int) {
        guard let session, n > 0 else { return }
        nghttp2_session_consume(session, id, n)
        scheduleFlush()
    }

    private func fail(_ s: H2UpstreamStream, error: SystemError?, refused: Bool) {
        let owner = s.owner
        s.sessionEnded()
        if s.id > 0 { streams.removeValue(forKey: s.id) }
        streamOver()
        owner?.h2Failed(s, error: error, refused: refused)
    }

    private func streamOver() {
        active -= 1
        served += 1
        if active == 0 { idleSince = pool.loop.coarseNow }
        if active == 0 && goingAway { close(.upstreamClosed) }
    }

    // MARK: the socket

    func channelConnected(_ channel: SocketChannel) { transportReady() }

    /// The TLS handshake failed (or chose another protocol than h2): the streams fail as a connect
    /// failure would.
    func handshakeFailed(_ reason: String) {
        failAll(error: SystemError("TLS to \(endpoint.address): \(reason)", errno: EPROTO), reason: .upstreamClosed)
    }

    /// The connection can carry frames: the streams that waited for it are ready.
    func transportReady() {
        isOpen = true
        let ready = waiting
        waiting.removeAll()
        for s in ready where !s.isClosed { s.owner?.h2Ready(s) }
        flush()
    }

    func channelRead(_ channel: SocketChannel, _ bytes: UnsafeRawBufferPointer) {
        guard let session, !closed else { return }
        lastHeard = pool.loop.coarseNow
        pingSentAt = 0
        inSession = true
        reading = true
        let n = nghttp2_session_mem_recv(session, bytes.baseAddress?.assumingMemoryBound(to: UInt8.self), bytes.count)
        reading = false
        inSession = false
        if !cancelAfterRead.isEmpty {
            let pending = cancelAfterRead
            cancelAfterRead.removeAll(keepingCapacity: true)
            // Those nghttp2 closed meanwhile are gone from `streams`: no reset for them.
            if n >= 0 { for id in pending { reset(id) } }
        }
        if n < 0 {
            pool.context.logger.warning("HTTP/2 connection to \(endpoint.address) failed: \(String(cString: nghttp2_strerror(Int32(n))))")
            return failAll(error: nil, reason: .upstreamClosed)
        }
        flush()
    }

    func channelEOF(_ channel: SocketChannel) { failAll(error: nil, reason: .upstreamClosed) }

    func channelError(_ channel: SocketChannel, _ error: SystemError) { failAll(error: error, reason: .upstreamClosed) }

    func channelDrained(_ channel: SocketChannel) { flush() }

    func scheduleFlush() {
        guard !flushScheduled, !closed else { return }
        flushScheduled = true
        pool.loop.flushAfterTurn(self)
    }

    func flushAtTurnEnd() {
        flushScheduled = false
        flush()
    }

    /// Writes what nghttp2 has to send while the socket keeps up.
    func flush() {
        guard let session, !closed, !inSession, isOpen else { return }
        inSession = true
        let rc = HTTP2Output.send(session, to: transport, loop: pool.loop)
        inSession = false
        if rc < 0 {
            pool.context.logger.warning("HTTP/2 connection to \(endpoint.address) failed: \(String(cString: nghttp2_strerror(Int32(rc))))")
            return failAll(error: nil, reason: .upstreamClosed)
        }
        if !tookBody.isEmpty {
            let took = tookBody
            tookBody.removeAll(keepingCapacity: true)
            for s in took { s.bodyTaken() }
        }
        if goingAway && active == 0 { close(.upstreamClosed) }
    }

    // MARK: nghttp2 callbacks (from H2UpstreamCallbacks)

    /// Calls `body` with a callback's stream, without retaining it. The table's reference keeps it
    /// alive throughout: a stream leaves the table in `streamClosed` (a callback of its own, never
    /// inside another), in `failAll` (never reached while nghttp2 reads: the session writes only
    /// in `flush`, which does not run inside the session) or in `fail` of a stream being
    /// submitted, never one nghttp2 is reading for; `cancel` during a read waits for the read's
    /// end. A response's HEADERS, its fields, its DATA and its end come one after another, and
    /// the table remembers the last one found (no hashing for the rest of the run).
    @inline(__always)
    private func withStream<R>(_ id: Int32, _ body: (H2UpstreamStream) -> R) -> R? {
        streams.unretained(id)?._withUnsafeGuaranteedRef(body)
    }

    private var headerBytes = 0
    /// The fields of the header block being received (nghttp2 delivers one block at a time: its
    /// CONTINUATION frames cannot interleave with other streams'). Handed on in the head or the
    /// trailers; a holder that keeps them gets its own copy when the next block empties this one.
    private var receiving = HTTPHeaders()

    func beginHeaders(_ id: Int32) {
        // Reached unretained, as in `header`: only the stream's status is reset.
        guard streams.withEntry(id, { s in s.status = 0 }) != nil else { return }
        // Emptied, not replaced: once the last head built on it is gone, its memory is kept.
        receiving.removeAll()
        receiving.reserveCapacity(bytes: 512, fields: 12)
        headerBytes = 0
    }

    func header(_ id: Int32, name: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>) {
        // Reached unretained (one callback per field): taking a field changes no stream table.
        streams.withEntry(id) { s in take(s, name: name, value: value) }
    }

    @inline(__always)
    private func take(_ s: H2UpstreamStream, name: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>) {
        headerBytes += name.count + value.count + 32
        if name.first == 58 {  // ':'
            if name.equals(":status") { s.status = Self.statusCode(value) }
            return
        }
        guard headerBytes <= Limits.maxHeaderBytes else { return }
        receiving.append(name: name, value: value)
    }

    /// `:status` as a number: exactly three digits (RFC 9113 8.3.2 via RFC 9110 15), else 0.
    @inline(__always)
    static func statusCode(_ v: UnsafeBufferPointer<UInt8>) -> Int {
        guard v.count == 3 else { return 0 }
        var n = 0
        for c in v {
            guard c >= 48 && c <= 57 else { return 0 }
            n = n * 10 + Int(c - 48)
        }
        return n
    }

    func headersReceived(_ id: Int32, endStream: Bool) {
        withStream(id) { s in headersReceived(s, endStream: endStream) }
    }

    private func headersReceived(_ s: H2UpstreamStream, endStream: Bool) {
        if headerBytes > Limits.maxHeaderBytes {
            return resetAndFail(s, why: "the upstream's response header block is larger than \(Limits.maxHeaderBytes) bytes")
        }
        if !s.sawFinalHead {
            if s.status < 100 || s.status > 999 { return resetAndFail(s, why: "the upstream's response has no valid :status") }
            if s.status >= 200 {
                s.sawFinalHead = true
                // A final head that ends the stream has no body: said as a length of 0, so that
                // the client too gets one frame (a gRPC trailers-only answer stays one).
                if endStream && !receiving.contains("content-length") { receiving.append("content-length", "0") }
            }
            let head = HTTPResponseHead(version: .http2, status: s.status, reason: HeaderRewriter.reasonPhrase(s.status), headers: receiving, keepAlive: true)
            s.owner?.h2Head(s, head)
            if endStream { streamEnded(s, trailers: nil) }
        } else if endStream {
            streamEnded(s, trailers: receiving)
        }
    }

    func dataReceived(_ id: Int32, _ bytes: UnsafeRawBufferPointer) {
        let known: Void? = withStream(id) { s in
            if s.paused {
                s.unconsumed += bytes.count
            } else if let session {
                nghttp2_session_consume(session, id, bytes.count)
            }
            s.owner?.h2Data(s, bytes)
        }
        if known == nil, let session { nghttp2_session_consume(session, id, bytes.count) }
    }

    func dataEnded(_ id: Int32) {
        withStream(id) { s in streamEnded(s, trailers: nil) }
    }

    private func streamEnded(_ s: H2UpstreamStream, trailers: HTTPHeaders?) {
        s.remoteEnded = true
        s.owner?.h2Ended(s, trailers: trailers)
    }

    /// A request's HEADERS went out: nghttp2 is done with its fields.
    func headersSent(_ id: Int32) {
        // Reached unretained: the fields are taken from the stream, which stays where it is.
        guard let fields = streams.withEntry(id, { s in s.requestFields.take() }) ?? nil else { return }
        recycle(fields)
    }

    private func recycle(_ fields: HTTP2RequestFields) {
        if spareFields.count < Limits.spareFields && fields.buffer.capacity <= Limits.spareFieldBytes { spareFields.append(fields) }
    }

    /// A request's HEADERS were never sent: it can go on another connection.
    func notSent(_ id: Int32) {
        guard let s = streams[id], !s.remoteEnded else { return }
        goingAway = true
        fail(s, error: nil, refused: true)
    }

    /// The last stream id of the latest GOAWAY received.
    private(set) var goawayLastStream: Int32?

    func goaway(lastStream: Int32) {
        goingAway = true
        goawayLastStream = lastStream
    }

    func streamClosed(_ id: Int32, errorCode: UInt32) {
        guard let s = streams.removeValue(forKey: id) else { return }
        let owner = s.owner
        let ended = s.remoteEnded
        s.sessionEnded()
        streamOver()
        guard !ended, let owner else { return }
        let refused = errorCode == NGHTTP2_REFUSED_STREAM.rawValue
        owner.h2Failed(s, error: refused ? nil : SystemError("HTTP/2 stream reset by \(endpoint.address) (error code \(errorCode))", errno: ECONNRESET),
                       refused: refused)
    }

    func readBody(_ id: Int32, into buf: UnsafeMutablePointer<UInt8>, length: Int, flags: UnsafeMutablePointer<UInt32>) -> Int {
        withStream(id) { s in
            let n = s.readBody(into: buf, length: length, flags: flags)
            if n > 0 { tookBody.append(s) }
            return n
        } ?? Int(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue)
    }

    private func resetAndFail(_ s: H2UpstreamStream, why: String) {
        pool.context.logger.warning("\(endpoint.address): \(why)")
        if let session { nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), s.id, NGHTTP2_PROTOCOL_ERROR.rawValue) }
        s.remoteEnded = true  // no failure report from the close that follows: it is reported here
        let owner = s.owner
        owner?.h2Failed(s, error: SystemError(why, errno: EPROTO), refused: false)
    }

    // MARK: closing

    /// Liveness, from the pool's tick: after `pingAfterNanos` of silence a PING goes out; an
    /// upstream that sends nothing back within `answerNanos` is taken for dead, and the streams on
    /// the connection fail (those not yet answered are sent again where the rules allow).
    func checkLiveness(now: UInt64, answerNanos: UInt64) {
        guard isOpen, !closed, let session else { return }
        if lastHeard == 0 { lastHeard = now }
        if pingSentAt != 0 {
            if now >= pingSentAt + answerNanos {
                pool.context.logger.warning("HTTP/2 connection to \(endpoint.address): no answer to PING in \((now - pingSentAt) / 1_000_000) ms; closing it")
                failAll(error: SystemError("no answer to PING from \(endpoint.address)", errno: ETIMEDOUT), reason: .upstreamClosed)
            }
        } else if now >= lastHeard + Self.pingAfterNanos {
            pingSentAt = now
            nghttp2_submit_ping(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), nil)
            flush()
        }
    }

    /// The connection did not come up within the connect timeout: its streams fail as a connect
    /// failure would.
    func connectTimedOut() {
        failAll(error: SystemError("connecting to \(endpoint.address) timed out", errno: ETIMEDOUT), reason: .upstreamClosed)
    }

    /// Every stream fails and the connection closes (it broke, or nghttp2 gave up on it).
    private func failAll(error: SystemError?, reason: UpstreamCloseReason) {
        guard !closed else { return }
        goingAway = true
        let all = waiting + Array(streams.values)
        waiting.removeAll()
        streams.removeAll()
        let open = all.filter { !$0.remoteEnded }
        if !open.isEmpty {
            pool.context.logger.warning("HTTP/2 connection to \(endpoint.address) lost with \(open.count) stream(s) open (ids \(open.map(\.id).sorted().prefix(8)); GOAWAY received: \(goawayLastStream.map(String.init) ?? "no"))\(error.map { ": \($0)" } ?? "")")
        }
        close(reason)
        for s in all {
            let owner = s.owner
            let ended = s.remoteEnded
            // A request never submitted, or above the last stream a GOAWAY promised to process,
            // never reached the upstream's application.
            let unprocessed = s.id <= 0 || (goawayLastStream.map { s.id > $0 } ?? false)
            s.sessionEnded()
            if !ended { owner?.h2Failed(s, error: error, refused: unprocessed) }
        }
        active = 0
    }

    /// Closes the connection: GOAWAY first when it is up and idle.
    func close(_ reason: UpstreamCloseReason) {
        guard !closed, !closing else { return }
        closing = true
        if let session, isOpen, active == 0 {
            nghttp2_session_terminate_session(session, NGHTTP2_NO_ERROR.rawValue)
            flush()
        }
        closed = true
        goingAway = true
        if !transport.isClosed { transport.close() }
        pool.h2SessionClosed(self, reason)
    }
}
