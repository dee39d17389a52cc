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
                connection(user).beginHeaders(streamID: frame.pointee.hd.stream_id)
            }
            return 0
        }
        nghttp2_session_callbacks_set_on_header_callback(cbs) { _, frame, name, namelen, value, valuelen, _, user in
            guard let frame, let user, let name, let value else { return 0 }
            connection(user).header(streamID: frame.pointee.hd.stream_id,
                                    name: UnsafeBufferPointer(start: name, count: namelen),
                                    value: UnsafeBufferPointer(start: value, count: valuelen))
            return 0
        }
        nghttp2_session_callbacks_set_on_frame_recv_callback(cbs) { _, frame, user in
            guard let frame, let user else { return 0 }
            let hd = frame.pointee.hd
            let endStream = hd.flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0
            switch hd.type {
            case UInt8(NGHTTP2_HEADERS.rawValue):
                connection(user).headersComplete(streamID: hd.stream_id, endStream: endStream)
            case UInt8(NGHTTP2_DATA.rawValue):
                connection(user).dataComplete(streamID: hd.stream_id, endStream: endStream)
            default:
                break
            }
            return 0
        }
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs) { _, _, streamID, data, len, user in
            guard let user, let data else { return 0 }
            connection(user).dataReceived(streamID: streamID, UnsafeRawBufferPointer(start: data, count: len))
            return 0
        }
        nghttp2_session_callbacks_set_on_stream_close_callback(cbs) { _, streamID, errorCode, user in
            guard let user else { return 0 }
            connection(user).streamClosed(streamID: streamID, errorCode: errorCode)
            return 0
        }
        return cbs!
    }()

    static let readCallback: nghttp2_data_source_read_callback = { _, streamID, buf, length, flags, _, user in
        guard let user, let buf, let flags else { return Int(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue) }
        return connection(user).readResponse(streamID: streamID, into: buf, length: length, flags: flags)
    }

    @inline(__always)
    private static func connection(_ user: UnsafeMutableRawPointer) -> HTTP2Connection {
        Unmanaged<HTTP2Connection>.fromOpaque(user).takeUnretainedValue()
    }
}

/// Header fields in and out of HTTP/2 form: lowercase names, no connection-specific fields.
enum HTTP2Fields {
    /// The response fields for an HTTP/2 client, from an HTTP/1.1 upstream response.
    static func response(_ head: HTTPResponseHead, setCookie: String?, keepLength: Bool) -> [(String, String)] {
        var out: [(String, String)] = []
        out.reserveCapacity(head.headers.count + 2)
        var via: [String] = []
        HeaderRewriter.forEachEndToEndField(head.headers, keepLength: keepLength, via: &via) {
            out.append(($0.name.lowercased(), $0.value))
        }
        via.append(head.version.viaToken + " turnout")
        out.append(("via", via.joined(separator: ", ")))
        if let setCookie { out.append(("set-cookie", setCookie)) }
        return out
    }

    /// Calls `body` with an nghttp2_nv array for `:status` plus `fields` (valid only during the call;
    /// nghttp2 copies it).
    static func withNV(status: Int, fields: [(String, String)], _ body: (UnsafePointer<nghttp2_nv>, Int) -> Void) {
        var storage: [UInt8] = []
        var spans: [(Int, Int, Int, Int)] = []
        func add(_ name: String, _ value: String) {
            let ns = storage.count
            storage.append(contentsOf: name.utf8)
            let vs = storage.count
            storage.append(contentsOf: value.utf8)
            spans.append((ns, vs - ns, vs, storage.count - vs))
        }
        add(":status", String(status))
        for (n, v) in fields { add(n, v) }
        storage.append(0)
        storage.withUnsafeMutableBufferPointer { buf in
            let base = buf.baseAddress!
            var nva = spans.map { s in
                nghttp2_nv(name: base + s.0, value: base + s.2, namelen: s.1, valuelen: s.3, flags: UInt8(NGHTTP2_NV_FLAG_NONE.rawValue))
            }
            nva.withUnsafeMutableBufferPointer { body(UnsafePointer($0.baseAddress!), $0.count) }
        }
    }
}
