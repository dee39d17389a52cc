import CNghttp2

/// The C callbacks of every HTTP/2 upstream (client) session. Each finds its `H2UpstreamSession`
/// through the session's user data (unretained: the session object deletes the nghttp2 session
/// before it goes away) and forwards the event.
enum H2UpstreamCallbacks {
    nonisolated(unsafe) static let shared: OpaquePointer = {
        var cbs: OpaquePointer?
        nghttp2_session_callbacks_new(&cbs)
        nghttp2_session_callbacks_set_on_begin_headers_callback(cbs) { _, frame, user in
            guard let frame, let user else { return 0 }
            if frame.pointee.hd.type == UInt8(NGHTTP2_HEADERS.rawValue) {
                session(user) { $0.beginHeaders(frame.pointee.hd.stream_id) }
            }
            return 0
        }
        nghttp2_session_callbacks_set_on_header_callback(cbs) { _, frame, name, namelen, value, valuelen, _, user in
            guard let frame, let user, let name, let value else { return 0 }
            session(user) { $0.header(frame.pointee.hd.stream_id, name: UnsafeBufferPointer(start: name, count: namelen),
                                 value: UnsafeBufferPointer(start: value, count: valuelen)) }
            return 0
        }
        nghttp2_session_callbacks_set_on_frame_recv_callback(cbs) { _, frame, user in
            guard let frame, let user else { return 0 }
            let hd = frame.pointee.hd
            let endStream = hd.flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0
            switch hd.type {
            case UInt8(NGHTTP2_HEADERS.rawValue):
                session(user) { $0.headersReceived(hd.stream_id, endStream: endStream) }
            case UInt8(NGHTTP2_DATA.rawValue):
                if endStream { session(user) { $0.dataEnded(hd.stream_id) } }
            case UInt8(NGHTTP2_GOAWAY.rawValue):
                session(user) { $0.goaway(lastStream: frame.pointee.goaway.last_stream_id) }
            default:
                break
            }
            return 0
        }
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs) { _, _, streamID, data, len, user in
            guard let user, let data else { return 0 }
            session(user) { $0.dataReceived(streamID, UnsafeRawBufferPointer(start: data, count: len)) }
            return 0
        }
        nghttp2_session_callbacks_set_on_frame_send_callback(cbs) { _, frame, user in
            guard let frame, let user else { return 0 }
            if frame.pointee.hd.type == UInt8(NGHTTP2_HEADERS.rawValue) { session(user) { $0.headersSent(frame.pointee.hd.stream_id) } }
            return 0
        }
        nghttp2_session_callbacks_set_on_frame_not_send_callback(cbs) { _, frame, _, user in
            guard let frame, let user else { return 0 }
            // A request whose HEADERS could not go (the connection is going away): never processed.
            if frame.pointee.hd.type == UInt8(NGHTTP2_HEADERS.rawValue) { session(user) { $0.notSent(frame.pointee.hd.stream_id) } }
            return 0
        }
        nghttp2_session_callbacks_set_on_stream_close_callback(cbs) { _, streamID, errorCode, user in
            guard let user else { return 0 }
            session(user) { $0.streamClosed(streamID, errorCode: errorCode) }
            return 0
        }
        return cbs!
    }()

    static let readCallback: nghttp2_data_source_read_callback = { _, streamID, buf, length, flags, _, user in
        guard let user, let buf, let flags else { return Int(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue) }
        return session(user) { $0.readBody(streamID, into: buf, length: length, flags: flags) }
    }

    /// Calls `body` with the session of `user`, without retaining it: nghttp2 calls back only from
    /// inside a call the session makes, which holds it.
    @inline(__always)
    private static func session<R>(_ user: UnsafeMutableRawPointer, _ body: (H2UpstreamSession) -> R) -> R {
        Unmanaged<H2UpstreamSession>.fromOpaque(user)._withUnsafeGuaranteedRef(body)
    }
}
