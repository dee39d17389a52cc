import CNghttp2

/// Moving what a libnghttp2 session (server or client side) has to send onto its transport.
enum HTTP2Output {
    /// Writes the frames nghttp2 has ready while the transport stays below its watermark. nghttp2
    /// hands out one frame per call, so they are gathered (in the loop's scratch array, borrowed
    /// for the call) and written 64 KiB at a time. Returns 0, or nghttp2's (negative) error code.
    /// The caller marks itself inside the session around the call: callbacks may run.
    static func send(_ session: OpaquePointer, to transport: ClientTransport, loop: EventLoop) -> Int {
        var out = loop.takeScratch()
        defer { loop.returnScratch(out) }
        while transport.pendingBytes + out.count <= SocketChannel.highWatermark {
            var data: UnsafePointer<UInt8>?
            let n = nghttp2_session_mem_send(session, &data)
            if n < 0 { return n }  // the caller tears the connection down; nothing more is written
            if n == 0 { break }
            out.append(contentsOf: UnsafeBufferPointer(start: data, count: n))
            if out.count >= 64 * 1024 {
                transport.write(out)
                out.removeAll(keepingCapacity: true)
            }
        }
        if !out.isEmpty { transport.write(out) }
        return 0
    }
}
