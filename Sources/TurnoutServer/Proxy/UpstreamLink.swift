import TurnoutCore

/// What an `UpstreamExchange` sends its request on: an HTTP/1.1 connection of its own
/// (`UpstreamConnection`), or one stream of a shared HTTP/2 connection (`H2UpstreamStream`). The
/// exchange speaks in HTTP/1.1 terms for the body (body bytes, chunk framing); an HTTP/2 stream
/// leaves the framing out, which DATA frames carry instead. The head goes as what the rewriter
/// decided (`UpstreamRequest`), written by each link in its own protocol. Loop-confined.
protocol UpstreamLink: AnyObject {
    var isClosed: Bool { get }
    /// Request bytes queued and not yet taken by the upstream's socket (or stream window).
    var pendingRequestBytes: Int { get }
    /// The request head. `endStream`: no body follows.
    func sendHead(_ request: UpstreamRequest, endStream: Bool)
    /// Body bytes as they are.
    func sendBody(_ bytes: UnsafeRawBufferPointer)
    /// Chunk framing, then body bytes (HTTP/1.1 sends both; HTTP/2 only the bytes).
    func sendBody(framing: [UInt8], then bytes: UnsafeRawBufferPointer)
    /// Body bytes as one chunk of a chunked body (HTTP/1.1), or as they are (HTTP/2).
    func sendChunk(_ bytes: UnsafeRawBufferPointer)
    /// Chunk framing alone (HTTP/1.1; nothing for HTTP/2).
    func sendFraming(_ bytes: [UInt8])
    /// The body is complete: `framing` still to go and, for a chunked body, the last chunk
    /// (HTTP/1.1), or the end of the stream (HTTP/2).
    func endBody(framing: [UInt8], lastChunk: Bool)
    /// Stop and start taking the response (backpressure from the client).
    func pauseResponse()
    func resumeResponse()
    /// The exchange ended with the response complete: an HTTP/1.1 connection goes back to the idle
    /// pool when `reusable`, else closes; an HTTP/2 stream is done.
    func finished(reusable: Bool)
    /// The exchange gave up on the request: the connection closes, the stream is reset.
    func abandon()
}

extension UpstreamConnection: UpstreamLink {
    var pendingRequestBytes: Int { channel.pendingBytes }

    func sendHead(_ request: UpstreamRequest, endStream: Bool) { channel.write(request.http1Head()) }

    func sendBody(_ bytes: UnsafeRawBufferPointer) { channel.write(bytes) }

    func sendBody(framing: [UInt8], then bytes: UnsafeRawBufferPointer) { channel.write(framing, then: bytes) }

    func sendChunk(_ bytes: UnsafeRawBufferPointer) {
        var framed = ChunkedEncoder.chunkHeader(size: bytes.count)
        framed.append(contentsOf: bytes)
        framed.append(contentsOf: ChunkedEncoder.chunkTrailer)
        channel.write(framed)
    }

    func sendFraming(_ bytes: [UInt8]) { channel.write(bytes) }

    func endBody(framing: [UInt8], lastChunk: Bool) {
        if framing.isEmpty {
            if lastChunk { channel.write(ChunkedEncoder.lastChunk) }
        } else if lastChunk {
            channel.write(framing + ChunkedEncoder.lastChunk)
        } else {
            channel.write(framing)
        }
    }

    func pauseResponse() { channel.pauseReading() }
    func resumeResponse() { channel.resumeReading() }

    func finished(reusable: Bool) {
        if reusable && !isClosed {
            pool.release(self)
        } else {
            owner = nil
            close()
        }
    }

    func abandon() {
        owner = nil
        close()
    }
}
