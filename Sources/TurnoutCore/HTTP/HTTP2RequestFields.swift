/// The request an HTTP/2 upstream (`protocol: h2c | h2`) gets, as HTTP/2 fields, written by
/// `HeaderRewriter.writeUpstreamRequest` (the rewriter HTTP/1.1 upstreams get theirs from) in
/// HTTP/2's form (RFC 9113 8.3.1): the request line becomes `:method`, `:scheme`, `:path`, `Host`
/// becomes `:authority`, names are lowercase, and the connection-specific fields (`Connection`,
/// `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`, `Upgrade`, `TE`) are left out; `te:
/// trailers` is sent when the client asked for trailers (gRPC does).
///
/// A class that owns its memory (a `FieldBuffer`): nghttp2 is given the names and values where
/// they lie (`NGHTTP2_NV_FLAG_NO_COPY_*`: no copy, and no second pass to lowercase them) and reads
/// them when it frames the HEADERS, so the fields live as long as the request's stream holds
/// them; a session keeps the buffers of requests already framed for the next ones.
public final class HTTP2RequestFields: @unchecked Sendable {
    /// The fields, pseudo-headers first. A span's `indexed` is false for a field whose value is
    /// new on every request (`x-request-id`): HPACK must not put it in the dynamic table (RFC 7541
    /// 6.2.2), where each request's id would push out an entry that repeats (the forwarded fields,
    /// `via`, `user-agent`), and make both ends insert, evict and search for nothing.
    public private(set) var buffer = FieldBuffer(bytes: 512, fields: 16)

    /// `scheme`: "http" (h2c) or "https" (h2). `teTrailers`: the client sent `TE: trailers`.
    public convenience init(_ request: UpstreamRequest, scheme: String, teTrailers: Bool) {
        self.init()
        set(request, scheme: scheme, teTrailers: teTrailers)
    }

    /// Empty, to be filled by `set` (and refilled: the memory is kept).
    public init() {}

    deinit { buffer.deallocate() }

    /// The fields of `request`, replacing what was there.
    public func set(_ request: UpstreamRequest, scheme: String, teTrailers: Bool) {
        buffer.removeAll()
        var w = Writer(buffer: buffer, scheme: scheme, teTrailers: teTrailers)
        HeaderRewriter.writeUpstreamRequest(request, into: &w)
        buffer = w.buffer
    }

    /// The fields as (name, value) strings, in order (for tests and logs).
    public var pairs: [(String, String)] { buffer.pairs }

    /// Whether each field may be indexed, in order (for tests).
    public var indexed: [Bool] { (0..<buffer.spanCount).map { buffer.spans[$0].indexed } }

    /// `HeaderRewriter`'s sink for HTTP/2.
    private struct Writer: UpstreamHeadSink {
        var buffer: FieldBuffer
        let scheme: String
        let teTrailers: Bool
        /// Where `:authority` goes: after `:path`, the order nghttp2 likes.
        var authorityIndex = 0
        var sawAuthority = false
        // The field `beginField` opened.
        var fieldStart = 0
        var valueStart = 0
        var fieldIsAuthority = false
        var skipping = false

        init(buffer: FieldBuffer, scheme: String, teTrailers: Bool) {
            self.buffer = buffer
            self.scheme = scheme
            self.teTrailers = teTrailers
        }

        mutating func requestLine(method: String, target: String) {
            whole(":method", method)
            whole(":scheme", scheme)
            whole(":path", target)
            authorityIndex = buffer.spanCount
        }

        /// A field written whole, its name already lowercase.
        private mutating func whole(_ name: StaticString, _ value: String) {
            let n = buffer.count
            buffer.write(name)
            let v = buffer.count
            buffer.write(value)
            buffer.addSpan((n, v - n, v, buffer.count - v, true))
        }

        /// Opens `:authority`, for the first `Host`; false for any later one (left out).
        private mutating func startAuthority() -> Bool {
            if sawAuthority { return false }
            fieldIsAuthority = true
            fieldStart = buffer.count
            buffer.write(":authority")
            valueStart = buffer.count
            return true
        }

        /// Opens a field and writes its name, lowercased.
        private mutating func startField(_ name: UnsafeBufferPointer<UInt8>) {
            fieldIsAuthority = false
            fieldStart = buffer.count
            buffer.writeLowercased(name)
            valueStart = buffer.count
        }

        private mutating func close() {
            let nameLength = valueStart - fieldStart
            let indexed = !(nameLength == 12
                            && UnsafeBufferPointer(start: buffer.bytes + fieldStart, count: nameLength).equals("x-request-id"))
            let span: FieldBuffer.Span = (fieldStart, nameLength, valueStart, buffer.count - valueStart, indexed)
            if fieldIsAuthority {
                sawAuthority = true
                buffer.insertSpan(span, at: authorityIndex)
            } else {
                buffer.addSpan(span)
            }
        }

        mutating func field(_ name: UnsafeBufferPointer<UInt8>, _ value: UnsafeBufferPointer<UInt8>, kind: HeaderRewriter.FieldKind) {
            switch kind {
            case .hopByHop: return
            case .host: guard startAuthority() else { return }
            default: startField(name)
            }
            buffer.write(value)
            close()
        }

        mutating func beginField(_ name: StaticString, kind: HeaderRewriter.FieldKind) {
            switch kind {
            case .hopByHop: skipping = true
            case .host: skipping = !startAuthority()
            default:
                skipping = false
                name.withUTF8Buffer { startField($0) }
            }
        }

        mutating func value(_ bytes: UnsafeBufferPointer<UInt8>) { if !skipping { buffer.write(bytes) } }
        mutating func value(_ text: String) { if !skipping { buffer.write(text) } }
        mutating func value(_ literal: StaticString) { if !skipping { buffer.write(literal) } }

        mutating func decimal(_ n: Int64) {
            guard !skipping else { return }
            HeaderRewriter.withDecimal(n) { buffer.write($0) }
        }

        mutating func endField() {
            if !skipping { close() }
            skipping = false
        }

        mutating func end() {
            if teTrailers { whole("te", "trailers") }
        }
    }
}
