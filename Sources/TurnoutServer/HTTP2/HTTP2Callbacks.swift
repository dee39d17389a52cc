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

/// A response header block for nghttp2, built as bytes: `:status` first, then the fields with their
/// names lowercased as they are copied (HTTP/2 field names are lowercase), no Strings in between.
struct HTTP2HeaderBlock {
    private var storage: [UInt8] = []
    private var spans: [(name: Int, nameLength: Int, value: Int, valueLength: Int)] = []

    init(status: Int) {
        storage.reserveCapacity(512)
        spans.reserveCapacity(12)
        reset(status: status)
    }

    /// A trailer block: the fields as they are (names lowercased), no pseudo-header.
    init(trailers: HTTPHeaders) {
        trailers.forEach { name, value in append(name: name, value: value) }
    }

    /// Whether the block holds no field (a trailer block may be empty; nghttp2 needs one).
    var isEmpty: Bool { spans.isEmpty }

    /// Empties the block for another response, keeping its capacity (see
    /// `HTTP2Connection.headerBlock`).
    mutating func reset(status: Int) {
        storage.removeAll(keepingCapacity: true)
        spans.removeAll(keepingCapacity: true)
        storage.append(literal: ":status")
        HeaderRewriter.appendDecimal(&storage, status)
        spans.append((0, 7, 7, storage.count - 7))
    }

    init(status: Int, response head: HTTPResponseHead, setCookie: String?, keepLength: Bool, except: StaticString? = nil) {
        self.init(status: status)
        appendResponse(head, setCookie: setCookie, keepLength: keepLength, except: except)
    }

    /// The fields of an HTTP/1.1 upstream response an HTTP/2 client gets: end-to-end fields only,
    /// `via` extended, and the cohort cookie when one is set. `except` names a field (lowercase)
    /// to leave out.
    mutating func appendResponse(_ head: HTTPResponseHead, setCookie: String?, keepLength: Bool, except: StaticString? = nil) {
        let hasVia = HeaderRewriter.forEachEndToEndField(head.headers, keepLength: keepLength, skipVia: true) { name, value in
            if let except, name.equalsIgnoringASCIICase(except) { return }
            append(name: name, value: value)
        }
        // via: the received entries, then Turnout's own.
        let nameStart = storage.count
        storage.append(literal: "via")
        let valueStart = storage.count
        if hasVia {
            head.headers.forEachValue("via") { v in
                storage.append(contentsOf: v)
                storage.append(literal: ", ")
                return true
            }
        }
        storage.appendUTF8(head.version.viaToken)
        storage.append(literal: " turnout")
        spans.append((nameStart, 3, valueStart, storage.count - valueStart))
        if let setCookie { append("set-cookie", setCookie) }
    }

    mutating func append(_ name: String, _ value: String) {
        var name = name, value = value
        name.withUTF8 { n in value.withUTF8 { v in append(name: n, value: v) } }
    }

    mutating func append(name: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>) {
        let nameStart = storage.count
        for b in name { storage.append(b >= 65 && b <= 90 ? b | 0x20 : b) }
        let valueStart = storage.count
        storage.append(contentsOf: value)
        spans.append((nameStart, valueStart - nameStart, valueStart, storage.count - valueStart))
    }

    /// Calls `body` with the nghttp2_nv array (valid only during the call; nghttp2 copies names
    /// and values, and does not write to them). Not for an empty block.
    func withNV(_ body: (UnsafePointer<nghttp2_nv>, Int) -> Void) {
        storage.withUnsafeBufferPointer { buf in
            guard let start = buf.baseAddress else { return }
            let base = UnsafeMutablePointer(mutating: start)
            withUnsafeTemporaryAllocation(of: nghttp2_nv.self, capacity: spans.count) { nva in
                for (i, s) in spans.enumerated() {
                    nva.initializeElement(at: i, to: nghttp2_nv(name: base + s.name, value: base + s.value, namelen: s.nameLength,
                                                                valuelen: s.valueLength, flags: UInt8(NGHTTP2_NV_FLAG_NONE.rawValue)))
                }
                body(UnsafePointer(nva.baseAddress!), spans.count)
            }
        }
    }
}
