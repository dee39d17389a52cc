import CNghttp2
import Logging
import TurnoutCore

/// An HTTP/2 client connection (h2 over TLS via ALPN, or h2c with prior knowledge), framed by a
/// libnghttp2 server session fed from memory: bytes read from the transport go into
/// `nghttp2_session_mem_recv`, frames to send come out of `nghttp2_session_mem_send`. Each stream
/// is routed on its own and forwarded as one `UpstreamExchange` to the pool's HTTP/1.1 upstreams.
///
/// Flow control follows backpressure both ways: request DATA is acknowledged (WINDOW_UPDATE) only
/// once the upstream took it, and a stream's response stops being read from its upstream while
/// more than `SocketChannel.highWatermark` bytes of it wait for the client's window or socket.
/// Loop-confined.
final class HTTP2Connection: ChannelDelegate, ClientSession, ClientEnvironmentHolder, LoopFlushable, @unchecked Sendable {
    static let preface: [UInt8] = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
    /// The rules on client frames that libnghttp2 leaves to us.
    private var frameRules = HTTP2FrameRules(prefaceLength: preface.count)

    /// What the server announces and enforces (README "HTTP/2").
    enum Limits {
        /// Per-stream receive window: request body bytes buffered per stream at most.
        static let streamWindow: UInt32 = 256 * 1024
        /// Connection receive window.
        static let connectionWindow: Int32 = 1 << 20
        /// RST_STREAM frames from the client: burst, then per second (rapid reset, CVE-2023-44487).
        static let resetBurst: UInt64 = 200
        static let resetRate: UInt64 = 100
        /// CONTINUATION frames after one HEADERS frame (CVE-2024-27316/28182 floods).
        static let maxContinuations = 8
        /// Queued SETTINGS/PING acknowledgements before the peer counts as flooding.
        static let maxOutboundAcks = 1000
        /// Entries in one SETTINGS frame.
        static let maxSettingsEntries = 32
    }

    let transport: ClientTransport
    let env: ClientEnvironment
    /// The loop's settings and routing table (`UpstreamPool.viewRef`), read without a reference count.
    let viewRef: Unretained<LoopView>

    private var session: OpaquePointer?
    /// The streams by id; a callback's stream is found with `lookup`, which remembers it for the
    /// callbacks that follow about the same stream.
    private(set) var streams = StreamMap<HTTP2Stream>()
    /// Inside a call into nghttp2 (its callbacks may submit, but must not send).
    private var inSession = false
    private var closed = false
    private var draining = false
    private var goawaySent = false
    private var idleDeadline: UInt64 = 0
    /// Streams whose exchange waits for the client side to drain.
    private var waitingForDrain: Set<Int32> = []

    private var limits: LimitsConfig { viewRef.with { $0.limits } }

    init(transport: ClientTransport, env: ClientEnvironment) {
        self.transport = transport
        self.env = env
        self.viewRef = env.pool.viewRef
    }

    deinit {
        if let session { nghttp2_session_del(session) }
    }

    /// Creates the session, sends SETTINGS and processes `initial` (bytes already read).
    func start(initial: [UInt8], transportStarted: Bool) {
        loop.register(self)
        headerLimits = (limits.maxRequestHeadBytes, limits.maxHeaderCount)
        transport.delegate = self
        var option: OpaquePointer?
        nghttp2_option_new(&option)
        nghttp2_option_set_no_auto_window_update(option, 1)
        // Closed streams are forgotten at once: nghttp2 keeps them only for RFC 7540 priorities,
        // which Turnout turns off (the setting below).
        nghttp2_option_set_no_closed_streams(option, 1)
        nghttp2_option_set_stream_reset_rate_limit(option, Limits.resetBurst, Limits.resetRate)
        nghttp2_option_set_max_continuations(option, Limits.maxContinuations)
        nghttp2_option_set_max_outbound_ack(option, Limits.maxOutboundAcks)
        nghttp2_option_set_max_settings(option, Limits.maxSettingsEntries)
        let rc = nghttp2_session_server_new2(&session, HTTP2Callbacks.shared, Unmanaged.passUnretained(self).toOpaque(), option)
        nghttp2_option_del(option)
        guard rc == 0, let session else {
            context.logger.error("cannot create an HTTP/2 session: \(String(cString: nghttp2_strerror(rc)))")
            teardown()
            return
        }
        var settings = [
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS.rawValue),
                                   value: UInt32(limits.h2MaxConcurrentStreams)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue), value: Limits.streamWindow),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE.rawValue),
                                   value: UInt32(limits.maxRequestHeadBytes)),
            // WebSocket over HTTP/2 (RFC 8441).
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL.rawValue), value: 1),
            // No RFC 7540 priority tree (RFC 9113 5.3.2 deprecates its scheme; a reverse proxy
            // has nothing to order by it): nghttp2 schedules streams without inserting each into
            // a dependency tree.
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES.rawValue), value: 1),
        ]
        nghttp2_submit_settings(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), &settings, settings.count)
        nghttp2_session_set_local_window_size(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, Limits.connectionWindow)
        idleDeadline = loop.coarseNow + UInt64(view.timeouts.idleMs) * 1_000_000
        if !transportStarted { transport.start() }
        if !initial.isEmpty {
            initial.withUnsafeBytes { receive($0) }
        } else {
            flush()
        }
    }

    // MARK: transport events

    func channelRead(_ channel: SocketChannel, _ bytes: UnsafeRawBufferPointer) {
        guard !closed else { return }
        receive(bytes)
    }

    func channelEOF(_ channel: SocketChannel) {
        guard !closed else { return }
        teardown()
    }

    func channelError(_ channel: SocketChannel, _ error: SystemError) {
        guard !closed else { return }
        teardown()
    }

    func channelDrained(_ channel: SocketChannel) {
        guard !closed else { return }
        flush()
    }

    private func receive(_ bytes: UnsafeRawBufferPointer) {
        guard let session, !closed else { return }
        // A frame breaking a rule libnghttp2 does not check (a HEADERS on a stream the client
        // skipped, DATA or HEADERS after the client ended the stream, a PRIORITY on stream 0 or on
        // itself): what comes before it is processed, then the connection ends with the rule's
        // error code (RFC 9113 5.1.1, 5.1, 6.3, 5.3.1).
        let violation = frameRules.scan(bytes)
        let feed = violation.map { UnsafeRawBufferPointer(rebasing: bytes[..<$0.offset]) } ?? bytes
        inSession = true
        let n = nghttp2_session_mem_recv(session, feed.baseAddress?.assumingMemoryBound(to: UInt8.self), feed.count)
        inSession = false
        if let violation, n >= 0 {
            context.logger.info("HTTP/2 session with \(clientIP) ended: \(Self.describe(violation.violation, stream: violation.stream, highest: frameRules.highestOpened))")
            nghttp2_session_terminate_session(session, violation.violation.errorCode)
            flush()
            closeGracefully()
            return
        }
        if n < 0 {
            context.logger.info("HTTP/2 session with \(clientIP) ended: \(String(cString: nghttp2_strerror(Int32(n))))")
            // nghttp2 queued a GOAWAY for protocol errors; send it, then close.
            flush()
            closeGracefully()
            return
        }
        flush()
    }

    /// The log line's words for a broken frame rule.
    static func describe(_ v: HTTP2FrameRules.Violation, stream: UInt32, highest: UInt32) -> String {
        switch v {
        case .skippedStream: return "HEADERS on stream \(stream), below stream \(highest) and never opened"
        case .afterEnd(let type):
            return "\(type == 0 ? "DATA" : "HEADERS") on stream \(stream) after the client ended or reset it (STREAM_CLOSED)"
        case .priorityOnConnection: return "PRIORITY on stream 0"
        case .dependsOnItself: return "PRIORITY making stream \(stream) depend on itself"
        }
    }

    /// Writes what nghttp2 has to send while the socket keeps up, then wakes streams that waited.
    func flush() {
        guard let session, !closed, !inSession else { return }
        inSession = true
        let rc = HTTP2Output.send(session, to: transport, loop: loop)
        inSession = false
        if rc < 0 {
            context.logger.info("HTTP/2 session with \(clientIP) failed: \(String(cString: nghttp2_strerror(Int32(rc))))")
            teardown()
            return
        }
        // Reading more input only makes sense while our output keeps moving.
        if transport.pendingBytes > SocketChannel.highWatermark {
            transport.pauseReading()
        } else {
            transport.resumeReading()
            wakeWaitingStreams()
        }
        if nghttp2_session_want_read(session) == 0 && nghttp2_session_want_write(session) == 0 {
            closeGracefully()
        }
    }

    private var flushScheduled = false

    /// Flushes once the current turn of the loop is done, so that what one event produces (a
    /// response head, its body, its end) leaves in as few frames and writes as possible.
    func scheduleFlush() {
        guard !flushScheduled, !closed else { return }
        flushScheduled = true
        loop.flushAfterTurn(self)
    }

    func flushAtTurnEnd() {
        flushScheduled = false
        flush()
    }

    private func wakeWaitingStreams() {
        guard !waitingForDrain.isEmpty else { return }
        let ids = waitingForDrain
        waitingForDrain.removeAll()
        for id in ids {
            guard let s = streams[id] else { continue }
            if s.sinkPendingBytes > SocketChannel.highWatermark {
                waitingForDrain.insert(id)
            } else {
                s.clientDrained()
            }
        }
    }

    func waitForDrain(_ stream: HTTP2Stream) { waitingForDrain.insert(stream.id) }

    // MARK: session callbacks (called from HTTP2Callbacks)

    /// Calls `body` with a callback's stream, without retaining it. The table's reference keeps
    /// it alive throughout: a stream leaves the table in `streamClosed` (a callback of its own,
    /// never inside another) or when the connection closes (`cancelStreams`), which nothing inside
    /// nghttp2's read reaches (`flush` does not run inside the session, and the socket's end and
    /// errors, the tick and a drain come from the loop, not from a callback).
    @inline(__always)
    private func withStream<R>(_ id: Int32, _ body: (HTTP2Stream) -> R) -> R? {
        streams.unretained(id)?._withUnsafeGuaranteedRef(body)
    }

    /// The limits for the header block being received, read once per request block (and at the
    /// start, for trailers): nghttp2 hands over one block at a time (its CONTINUATION frames
    /// cannot interleave with other streams).
    private var headerLimits = (bytes: 0, count: 0)

    func beginHeaders(streamID: Int32) {
        let l = limits
        headerLimits = (l.maxRequestHeadBytes, l.maxHeaderCount)
        guard streams[streamID] == nil else { return }
        let s = HTTP2Stream(id: streamID, connection: self)
        streams[streamID] = s
        idleDeadline = 0
    }

    func header(streamID: Int32, name: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>) {
        // Reached unretained (one callback per field): `addHeader` only collects the field.
        streams.withEntry(streamID) { s in
            s.addHeader(name: name, value: value, maxBytes: headerLimits.bytes, maxCount: headerLimits.count)
        }
    }

    func headersComplete(streamID: Int32, endStream: Bool) {
        withStream(streamID) { s in
            if s.exchange != nil || s.answered {
                // Trailers: not forwarded (HTTP/1.1 upstreams get chunked bodies without them).
                if endStream { s.requestBodyEnded() }
                return
            }
            s.requestHeadComplete(endStream: endStream)
        }
    }

    func dataReceived(streamID: Int32, _ bytes: UnsafeRawBufferPointer) {
        if withStream(streamID, { s in s.bodyReceived(bytes) }) == nil { consume(streamID, bytes.count) }
    }

    func dataComplete(streamID: Int32, endStream: Bool) {
        if endStream { withStream(streamID) { s in s.requestBodyEnded() } }
    }

    func streamClosed(streamID: Int32, errorCode: UInt32) {
        if !heldBlocks.isEmpty { heldBlocks.removeAll { $0.stream == streamID } }
        guard let s = streams.removeValue(forKey: streamID) else { return }
        if !waitingForDrain.isEmpty { waitingForDrain.remove(streamID) }  // no hashing in the common case
        // A stream closing while its exchange still runs was reset (by the client, or by nghttp2
        // for a protocol error in it).
        s.closed(reason: "stream reset (error code \(errorCode))")
        if streams.isEmpty {
            idleDeadline = loop.coarseNow + UInt64(view.timeouts.idleMs) * 1_000_000
        }
    }

    /// Copies up to `length` response bytes of a stream into nghttp2's frame buffer.
    func readResponse(streamID: Int32, into buf: UnsafeMutablePointer<UInt8>, length: Int, flags: UnsafeMutablePointer<UInt32>) -> Int {
        // Reached unretained, as in `header`: the stream only copies bytes out (and may submit its
        // trailers, which nghttp2 frames later), so it stays in `streams` throughout.
        streams.withEntry(streamID) { s in s.readResponse(into: buf, length: length, flags: flags) }
            ?? Int(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue)
    }

    // MARK: operations for streams

    var sessionPointer: OpaquePointer? { session }

    /// Acknowledges request body bytes (WINDOW_UPDATE once enough accumulate).
    func consume(_ streamID: Int32, _ n: Int) {
        guard let session, n > 0 else { return }
        nghttp2_session_consume(session, streamID, n)
    }

    func resetStream(_ streamID: Int32, code: nghttp2_error_code) {
        guard let session else { return }
        nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), streamID, code.rawValue)
        scheduleFlush()
    }

    /// Header blocks submitted and not yet framed, by stream: nghttp2 reads them where they lie
    /// (`NO_COPY`) when it frames them. Let go when the frame went out or could not go
    /// (`headersFramed`), or the stream closed (nghttp2 frames nothing of a closed stream).
    private var heldBlocks: [(stream: Int32, block: HTTP2HeaderBlock)] = []
    /// Blocks already framed, for the next responses.
    private var spareBlocks: [HTTP2HeaderBlock] = []
    private static let maxSpareBlocks = 32
    private static let maxSpareBlockBytes = 4096

    /// The memory of finished streams' response queues, for the next streams' (at most
    /// `maxSpareDataBuffers` of at most `maxSpareDataBytes` each).
    private var spareDataBuffers: [[UInt8]] = []
    private static let maxSpareDataBuffers = 16
    static let maxSpareDataBytes = 16 * 1024

    func spareDataBuffer() -> [UInt8]? { spareDataBuffers.popLast() }

    func keepDataBuffer(_ buffer: [UInt8]) {
        if spareDataBuffers.count < Self.maxSpareDataBuffers { spareDataBuffers.append(buffer) }
    }

    /// An empty header block for a response, with the memory of an earlier one when there is one.
    func headerBlock(status: Int) -> HTTP2HeaderBlock {
        guard let block = spareBlocks.popLast() else { return HTTP2HeaderBlock(status: status) }
        block.reset(status: status)
        return block
    }

    private func hold(_ block: HTTP2HeaderBlock, for streamID: Int32, submitted rc: Int32) {
        if rc == 0 { heldBlocks.append((streamID, block)) } else { recycle(block) }
    }

    private func recycle(_ block: HTTP2HeaderBlock) {
        if spareBlocks.count < Self.maxSpareBlocks && block.capacity <= Self.maxSpareBlockBytes { spareBlocks.append(block) }
    }

    /// A HEADERS frame of `streamID` went out, or was dropped: its block (the stream's oldest
    /// held one: a stream's HEADERS go in order) is free.
    func headersFramed(streamID: Int32) {
        guard let i = heldBlocks.firstIndex(where: { $0.stream == streamID }) else { return }
        recycle(heldBlocks.remove(at: i).block)
    }

    /// Submits a response head (and a data source unless `endStream`).
    func submitResponse(_ streamID: Int32, _ block: HTTP2HeaderBlock, endStream: Bool) {
        guard let session else { return recycle(block) }
        let rc = block.withNV(noCopy: true) { nva, count -> Int32 in
            if endStream { return nghttp2_submit_response(session, streamID, nva, count, nil) }
            var provider = nghttp2_data_provider()
            provider.read_callback = HTTP2Callbacks.readCallback
            return nghttp2_submit_response(session, streamID, nva, count, &provider)
        }
        hold(block, for: streamID, submitted: rc)
        scheduleFlush()
    }

    func submitInformational(_ streamID: Int32, _ block: HTTP2HeaderBlock) {
        guard let session else { return recycle(block) }
        let rc = block.withNV(noCopy: true) { nva, count in
            nghttp2_submit_headers(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), streamID, nil, nva, count, nil)
        }
        hold(block, for: streamID, submitted: rc < 0 ? rc : 0)
        scheduleFlush()
    }

    /// Submits a stream's trailers (from its data source's last read: nghttp2 allows it there).
    func submitTrailers(_ streamID: Int32, _ block: HTTP2HeaderBlock) {
        guard let session else { return }
        let rc = block.withNV(noCopy: true) { nva, count in nghttp2_submit_trailer(session, streamID, nva, count) }
        hold(block, for: streamID, submitted: rc)
    }

    func resumeData(_ streamID: Int32) {
        guard let session else { return }
        nghttp2_session_resume_data(session, streamID)
        scheduleFlush()
    }

    var isDrainingNow: Bool { draining || context.isDraining }

    // MARK: timers, drain, closing

    func checkTimeouts(now: UInt64) {
        if closed && transport.isClosed {
            unregister()
            return
        }
        if transport.isLingering {
            if now >= transport.lingerDeadline { teardown() }
            return
        }
        guard !closed else { return }
        for s in Array(streams.values) {
            s.exchange?.checkTimeouts(now: now)
            s.tunnel?.checkTimeouts(now: now)
        }
        if streams.isEmpty && idleDeadline != 0 && now >= idleDeadline {
            sendGoaway()
            closeGracefully()
        }
    }

    func beginDrain() {
        draining = true
        guard !closed else { return }
        sendGoaway()
        if streams.isEmpty { closeGracefully() }
    }

    private func sendGoaway() {
        guard let session, !goawaySent else { return }
        goawaySent = true
        let last = nghttp2_session_get_last_proc_stream_id(session)
        nghttp2_submit_goaway(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), last, NGHTTP2_NO_ERROR.rawValue, nil, 0)
        flush()
    }

    private func closeGracefully() {
        guard !closed else { return }
        cancelStreams(reason: "connection closed")
        closed = true
        transport.finish()
        if transport.isClosed { unregister() }
    }

    private func teardown() {
        cancelStreams(reason: "client connection closed")
        closed = true
        transport.close()
        unregister()
    }

    private func cancelStreams(reason: String) {
        let all = streams.values
        streams.removeAll()
        waitingForDrain.removeAll()
        for s in all { s.closed(reason: reason) }
    }

    private var unregistered = false
    private func unregister() {
        guard !unregistered else { return }
        unregistered = true
        loop.unregister(self)
        if let session {
            nghttp2_session_del(session)
            self.session = nil
        }
        env.onClose()
    }
}
