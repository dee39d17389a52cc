import CNghttp2
import TurnoutCore

/// Fields in a `FieldBuffer` as the `nghttp2_nv` array nghttp2 takes.
enum NGHTTP2Fields {
    /// Calls `body` with the array (valid only during the call). `noCopy`: nghttp2 is told not to
    /// copy the names and values (nor lowercase the names: they are lowercase already) but to read
    /// them where they lie when it frames them, so the buffer must live until then.
    @inline(__always)
    static func withNV<R>(_ fields: FieldBuffer, noCopy: Bool, _ body: (UnsafePointer<nghttp2_nv>, Int) -> R) -> R {
        let copy = noCopy ? NGHTTP2_NV_FLAG_NO_COPY_NAME.rawValue | NGHTTP2_NV_FLAG_NO_COPY_VALUE.rawValue : 0
        let base = fields.bytes
        return withUnsafeTemporaryAllocation(of: nghttp2_nv.self, capacity: max(fields.spanCount, 1)) { nva in
            for i in 0..<fields.spanCount {
                let f = fields.spans[i]
                let flags = f.indexed ? copy : copy | NGHTTP2_NV_FLAG_NO_INDEX.rawValue
                nva.initializeElement(at: i, to: nghttp2_nv(name: base + f.name, value: base + f.value, namelen: f.nameLength,
                                                            valuelen: f.valueLength, flags: UInt8(flags)))
            }
            return body(UnsafePointer(nva.baseAddress!), fields.spanCount)
        }
    }
}

/// A response header block for nghttp2, built as bytes: `:status` first, then the fields with
/// their names lowercased as they are copied (HTTP/2 field names are lowercase), no Strings in
/// between. A class that owns its memory: a block submitted to a session is held by its
/// connection until nghttp2 has framed it (`HTTP2Connection.headersFramed`), since nghttp2 reads
/// it where it lies; then the connection reuses it for another response.
final class HTTP2HeaderBlock {
    private(set) var buffer = FieldBuffer(bytes: 512, fields: 12)

    init(status: Int) {
        reset(status: status)
    }

    /// A trailer block: the fields as they are (names lowercased), no pseudo-header.
    init(trailers: HTTPHeaders) {
        trailers.forEach { name, value in append(name: name, value: value) }
    }

    convenience init(status: Int, response head: HTTPResponseHead, setCookie: String?, keepLength: Bool, except: StaticString? = nil) {
        self.init(status: status)
        appendResponse(head, setCookie: setCookie, keepLength: keepLength, except: except)
    }

    deinit { buffer.deallocate() }

    /// Whether the block holds no field (a trailer block may be empty; nghttp2 needs one).
    var isEmpty: Bool { buffer.isEmpty }

    /// The memory it keeps (a connection keeps small blocks only).
    var capacity: Int { buffer.capacity }

    /// Empties the block for another response, keeping its memory.
    func reset(status: Int) {
        buffer.removeAll()
        buffer.write(":status")
        HeaderRewriter.withDecimal(status) { buffer.write($0) }
        buffer.addSpan((0, 7, 7, buffer.count - 7, true))
    }

    /// The fields of an HTTP/1.1 upstream response an HTTP/2 client gets: end-to-end fields only,
    /// `via` extended, and the cohort cookie when one is set. `except` names a field (lowercase)
    /// to leave out.
    func appendResponse(_ head: HTTPResponseHead, setCookie: String?, keepLength: Bool, except: StaticString? = nil) {
        // Written through a local copy of the buffer (the same memory), stored back at the end:
        // the closures below then capture no reference to the block (a retain and a release
        // each, `Benchmarks/h2up_counts.py --by-type`).
        var b = buffer
        defer { buffer = b }
        let hasVia = HeaderRewriter.forEachEndToEndField(head.headers, keepLength: keepLength, skipVia: true) { name, value in
            if let except, name.equalsIgnoringASCIICase(except) { return }
            b.append(name: name, value: value)
        }
        // via: the received entries, then Turnout's own.
        let nameStart = b.count
        b.write("via" as StaticString)
        let valueStart = b.count
        HeaderRewriter.viaValue(received: hasVia ? head.headers : nil, version: head.version) { b.write($0) }
        b.addSpan((nameStart, 3, valueStart, b.count - valueStart, true))
        if let setCookie { b.append("set-cookie", setCookie) }
    }

    func append(_ name: String, _ value: String) { buffer.append(name, value) }

    func append(name: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>) {
        buffer.append(name: name, value: value)
    }

    /// Calls `body` with the nghttp2_nv array (valid only during the call). Without `noCopy`
    /// nghttp2 copies names and values; with it, the block must outlive the frame. Not for an
    /// empty block.
    func withNV<R>(noCopy: Bool = false, _ body: (UnsafePointer<nghttp2_nv>, Int) -> R) -> R {
        NGHTTP2Fields.withNV(buffer, noCopy: noCopy, body)
    }
}
