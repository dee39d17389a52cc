import CNghttp2
import TurnoutCore

/// Receives one HTTP/2 upstream stream's events: the `UpstreamExchange` that sends its request on it.
protocol H2StreamOwner: AnyObject {
    /// The stream's connection is up: the request head may go.
    func h2Ready(_ s: H2UpstreamStream)
    /// The request body queue has room again.
    func h2Drained(_ s: H2UpstreamStream)
    /// A response head (interim or final).
    func h2Head(_ s: H2UpstreamStream, _ head: HTTPResponseHead)
    func h2Data(_ s: H2UpstreamStream, _ bytes: UnsafeRawBufferPointer)
    /// END_STREAM, with the trailers that carried it, if any.
    func h2Ended(_ s: H2UpstreamStream, trailers: HTTPHeaders?)
    /// Reset, or its connection failed; `refused`: the upstream did not process the request.
    func h2Failed(_ s: H2UpstreamStream, error: SystemError?, refused: Bool)
}

/// One request on a shared HTTP/2 upstream connection: the `UpstreamLink` of an exchange whose
/// pool speaks `h2c` or `h2`. It holds the request body until nghttp2 frames it (bounded: the
/// exchange stops at `SocketChannel.highWatermark`) and collects the response's fields.
/// Loop-confined.
final class H2UpstreamStream: UpstreamLink {
    let endpoint: UpstreamEndpoint
    /// The connection it belongs to; nil once the stream is over.
    private(set) var session: H2UpstreamSession?
    var owner: H2StreamOwner?
    /// The nghttp2 stream id, once the request was submitted.
    var id: Int32 = -1
    /// The connection was already open when this stream joined it.
    let sessionWasOpen: Bool

    /// The request's fields, until nghttp2 has framed them (it reads them where they lie).
    var requestFields: HTTP2RequestFields?

    // The request body, on its way into DATA frames.
    private var out = HTTP2DataQueue()
    private var bodyEnded = false
    /// nghttp2 asked for body bytes and none were there.
    var dataDeferred = false

    // The response as it arrives (its fields collect in the session's `receiving`).
    var status = 0
    var sawFinalHead = false
    /// The upstream ended its side (END_STREAM), or the stream's end was reported already.
    var remoteEnded = false
    private(set) var over = false
    /// Response bytes delivered but not yet acknowledged to the upstream (while paused).
    var unconsumed = 0
    private(set) var paused = false

    init(endpoint: UpstreamEndpoint, session: H2UpstreamSession, owner: H2StreamOwner, sessionWasOpen: Bool) {
        self.endpoint = endpoint
        self.session = session
        self.owner = owner
        self.sessionWasOpen = sessionWasOpen
    }

    /// The request may be submitted now (the connection is up).
    var isReady: Bool { session?.isOpen == true }

    var isClosed: Bool { over || session == nil }

    var pendingRequestBytes: Int { out.count }

    // MARK: UpstreamLink

    func sendHead(_ request: UpstreamRequest, endStream: Bool) {
        guard let session, !over else { return }
        let teTrailers = request.head.headers.hasToken("te", "trailers")
        bodyEnded = endStream
        session.submit(self, request: request, teTrailers: teTrailers, endStream: endStream)
    }

    func sendBody(_ bytes: UnsafeRawBufferPointer) { queue(bytes) }
    func sendBody(framing: [UInt8], then bytes: UnsafeRawBufferPointer) { queue(bytes) }
    func sendChunk(_ bytes: UnsafeRawBufferPointer) { queue(bytes) }
    func sendFraming(_ bytes: [UInt8]) {}

    func endBody(framing: [UInt8], lastChunk: Bool) {
        guard !bodyEnded else { return }
        bodyEnded = true
        wake()
    }

    private func queue(_ bytes: UnsafeRawBufferPointer) {
        guard !over, !bytes.isEmpty else { return }
        out.append(bytes)
        wake()
    }

    private func wake() {
        guard let session, id > 0 else { return }
        if dataDeferred {
            dataDeferred = false
            session.resumeData(id)
        } else {
            session.scheduleFlush()
        }
    }

    func pauseResponse() { paused = true }

    func resumeResponse() {
        guard paused else { return }
        paused = false
        if unconsumed > 0, let session, id > 0 {
            session.consume(id, unconsumed)
            unconsumed = 0
        }
    }

    func finished(reusable: Bool) { detach() }

    func abandon() { detach() }

    /// The exchange lets go: the stream is reset (CANCEL) if it is still open.
    private func detach() {
        owner = nil
        guard let session else {
            over = true
            return
        }
        self.session = nil
        over = true
        // A stream still open either way is reset; one the upstream ended while the request body
        // was still going is reset too, so that the body stops.
        if !remoteEnded || !bodyEnded { session.cancel(self) }
    }

    // MARK: nghttp2's data source

    func readBody(into buf: UnsafeMutablePointer<UInt8>, length: Int, flags: UnsafeMutablePointer<UInt32>) -> Int {
        let n = out.take(into: buf, length: length)
        if out.isEmpty {
            if bodyEnded {
                flags.pointee |= NGHTTP2_DATA_FLAG_EOF.rawValue
                return n
            }
            if n == 0 {
                dataDeferred = true
                return Int(NGHTTP2_ERR_DEFERRED.rawValue)
            }
        }
        return n
    }

    /// Called by the session after it framed body bytes: the exchange may send more.
    func bodyTaken() {
        if pendingRequestBytes <= SocketChannel.highWatermark { owner?.h2Drained(self) }
    }

    /// The stream is over for the session (closed, reset, or the connection is gone).
    func sessionEnded() {
        over = true
        session = nil
    }
}
