import CNghttp2
import TurnoutCore

/// The C callbacks of every HTTP/2 server session. Each one finds its `HTTP2Connection` through
/// the session's user data (an unretained reference: the connection deletes the session before
/// it goes away) and forwards the event.
enum HTTP2Callbacks {
    nonisolated(unsafe) static let shared: OpaquePointer = {
        var cbs: OpaquePointer?
        nghttp2_session_callbacks_new(&cbs)
        nghttp2_session_callbacks_set_on_begin_headers_callback(cbs) { _, frame, user in
            guard let frame, let user else { return 0 }
            if frame.pointee.hd.type == UInt8(NGHTTP2_HEADERS.rawValue) && frame.pointee.headers.cat == NGHTTP2_HCAT_REQUEST {
                connection(user) { $0.beginHeaders(streamID: frame.pointee.hd.stream_id) }
            }
            return 0
        }
        nghttp2_session_callbacks_set_on_header_callback(cbs) { _, frame, name, namelen, value, valuelen, _, user in
            guard let frame, let user, let name, let value else { return 0 }
            connection(user) { $0.header(streamID: frame.pointee.hd.stream_id,
                                    name: UnsafeBufferPointer(start: name, count: namelen),
                                    value: UnsafeBufferPointer(start: value, count: valuelen)) }
            return 0
        }
        nghttp2_session_callbacks_set_on_frame_recv_callback(cbs) { _, frame, user in
            guard let frame, let user else { return 0 }
            let hd = frame.pointee.hd
            let endStream = hd.flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0
            switch hd.type {
            case UInt8(NGHTTP2_HEADERS.rawValue):
                connection(user) { $0.headersComplete(streamID: hd.stream_id, endStream: endStream) }
            case UInt8(NGHTTP2_DATA.rawValue):
                connection(user) { $0.dataComplete(streamID: hd.stream_id, endStream: endStream) }
            default:
                break
            }
            return 0
        }
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs) { _, _, streamID, data, len, user in
            guard let user, let data else { return 0 }
            connection(user) { $0.dataReceived(streamID: streamID, UnsafeRawBufferPointer(start: data, count: len)) }
            return 0
        }
        nghttp2_session_callbacks_set_on_frame_send_callback(cbs) { _, frame, user in
            guard let frame, let user else { return 0 }
            if frame.pointee.hd.type == UInt8(NGHTTP2_HEADERS.rawValue) {
                connection(user) { $0.headersFramed(streamID: frame.pointee.hd.stream_id) }
            }
            return 0
        }
        nghttp2_session_callbacks_set_on_frame_not_send_callback(cbs) { _, frame, _, user in
            guard let frame, let user else { return 0 }
            if frame.pointee.hd.type == UInt8(NGHTTP2_HEADERS.rawValue) {
                connection(user) { $0.headersFramed(streamID: frame.pointee.hd.stream_id) }
            }
            return 0
        }
        nghttp2_session_callbacks_set_on_stream_close_callback(cbs) { _, streamID, errorCode, user in
            guard let user else { return 0 }
            connection(user) { $0.streamClosed(streamID: streamID, errorCode: errorCode) }
            return 0
        }
        return cbs!
    }()

    static let readCallback: nghttp2_data_source_read_callback = { _, streamID, buf, length, flags, _, user in
        guard let user, let buf, let flags else { return Int(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue) }
        return connection(user) { $0.readResponse(streamID: streamID, into: buf, length: length, flags: flags) }
    }

    /// Calls `body` with the connection of `user`, without retaining it: nghttp2 calls back only from
    /// inside a call the connection makes, which holds it.
    @inline(__always)
    private static func connection<R>(_ user: UnsafeMutableRawPointer, _ body: (HTTP2Connection) -> R) -> R {
        Unmanaged<HTTP2Connection>.fromOpaque(user)._withUnsafeGuaranteedRef(body)
    }
}
