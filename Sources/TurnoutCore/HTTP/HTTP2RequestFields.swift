/// The request an HTTP/2 upstream (`protocol: h2c | h2`) gets, as HTTP/2 fields, written by
/// `HeaderRewriter.writeUpstreamRequest` (the rewriter HTTP/1.1 upstreams get theirs from) in
/// HTTP/2's form (RFC 9113 8.3.1): the request line becomes `:method`, `:scheme`, `:path`, `Host`
/// becomes `:authority`, names are lowercase, and the connection-specific fields (`Connection`,
/// `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`, `Upgrade`, `TE`) are left out; `te:
/// trailers` is sent when the client asked for trailers (gRPC does).
///
/// A class that owns its memory: nghttp2 is given the names and values where they lie here
/// (`NGHTTP2_NV_FLAG_NO_COPY_*`: no copy, and no second pass to lowercase them) and reads them
/// when it frames the HEADERS, so the fields live as long as the request's stream holds them; a
/// session keeps the buffers of requests already framed for the next ones. Written through raw
/// pointers: a request's dozen fields cost no uniqueness or capacity check per byte appended.
public final class HTTP2RequestFields: @unchecked Sendable {
    /// Each field as offsets into `bytes`, pseudo-headers first. `indexed` is false for a field
    /// whose value is new on every request (`x-request-id`): HPACK must not put it in the dynamic
    /// table (RFC 7541 6.2.2), where each request's id would push out an entry that repeats (the
    /// forwarded fields, `via`, `user-agent`), and make both ends insert, evict and search for
    /// nothing.
    public typealias Span = (name: Int, nameLength: Int, value: Int, valueLength: Int, indexed: Bool)

    /// Names and values, one after another (`byteCount` of them written).
    public private(set) var bytes: UnsafeMutablePointer<UInt8>
    public private(set) var byteCount = 0
    public private(set) var byteCapacity: Int
    /// The fields (`count` of them).
    public private(set) var spans: UnsafeMutablePointer<Span>
    public private(set) var count = 0
    private var spanCapacity: Int

    /// `scheme`: "http" (h2c) or "https" (h2). `teTrailers`: the client sent `TE: trailers`.
    public convenience init(_ request: UpstreamRequest, scheme: String, teTrailers: Bool) {
        self.init()
        set(request, scheme: scheme, teTrailers: teTrailers)
    }

    /// Empty, to be filled by `set` (and refilled: the buffers are kept).
    public init() {
        byteCapacity = 512
        bytes = .allocate(capacity: byteCapacity)
        spanCapacity = 16
        spans = .allocate(capacity: spanCapacity)
    }

    deinit {
        bytes.deallocate()
        spans.deallocate()
    }

    /// The fields of `request`, replacing what was there.
    public func set(_ request: UpstreamRequest, scheme: String, teTrailers: Bool) {
        var w = Writer(bytes: bytes, byteCapacity: byteCapacity, spans: spans, spanCapacity: spanCapacity,
                       scheme: scheme, teTrailers: teTrailers)
        HeaderRewriter.writeUpstreamRequest(request, into: &w)
        (bytes, byteCapacity, byteCount) = (w.bytes, w.byteCapacity, w.count)
        (spans, spanCapacity, count) = (w.spans, w.spanCapacity, w.spanCount)
    }

    /// The fields as (name, value) strings, in order (for tests and logs).
    public var pairs: [(String, String)] {
        (0..<count).map { i in
            let s = spans[i]
            return (String(decoding: UnsafeBufferPointer(start: bytes + s.name, count: s.nameLength), as: UTF8.self),
                    String(decoding: UnsafeBufferPointer(start: bytes + s.value, count: s.valueLength), as: UTF8.self))
        }
    }

    /// Whether each field may be indexed, in order (for tests).
    public var indexed: [Bool] { (0..<count).map { spans[$0].indexed } }

    /// `HeaderRewriter`'s sink for HTTP/2: appends to raw buffers it grows (doubling, copied)
    /// when a write would not fit.
    private struct Writer: UpstreamHeadSink {
        var bytes: UnsafeMutablePointer<UInt8>
        var byteCapacity: Int
        var count = 0
        var spans: UnsafeMutablePointer<Span>
        var spanCapacity: Int
        var spanCount = 0
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

        init(bytes: UnsafeMutablePointer<UInt8>, byteCapacity: Int, spans: UnsafeMutablePointer<Span>, spanCapacity: Int,
             scheme: String, teTrailers: Bool) {
            self.bytes = bytes
            self.byteCapacity = byteCapacity
            self.spans = spans
            self.spanCapacity = spanCapacity
            self.scheme = scheme
            self.teTrailers = teTrailers
        }

        @inline(__always)
        private mutating func write(_ source: UnsafeBufferPointer<UInt8>) {
            let n = source.count
            if count + n > byteCapacity { grow(to: count + n) }
            if n > 0 { (bytes + count).update(from: source.baseAddress!, count: n) }
            count += n
        }

        private mutating func grow(to needed: Int) {
            var capacity = byteCapacity * 2
            while capacity < needed { capacity *= 2 }
            let b = UnsafeMutablePointer<UInt8>.allocate(capacity: capacity)
            b.update(from: bytes, count: count)
            bytes.deallocate()
            bytes = b
            byteCapacity = capacity
        }

        @inline(__always)
        private mutating func write(_ text: String) {
            var text = text
            text.withUTF8 { write($0) }
        }

        @inline(__always)
        private mutating func write(_ literal: StaticString) { literal.withUTF8Buffer { write($0) } }

        private mutating func addSpan(_ span: Span, at index: Int? = nil) {
            if spanCount == spanCapacity {
                let s = UnsafeMutablePointer<Span>.allocate(capacity: spanCapacity * 2)
                s.moveInitialize(from: spans, count: spanCount)
                spans.deallocate()
                spans = s
                spanCapacity *= 2
            }
            if let index, index < spanCount {
                (spans + index + 1).moveInitialize(from: spans + index, count: spanCount - index)
                (spans + index).initialize(to: span)
            } else {
                (spans + spanCount).initialize(to: span)
            }
            spanCount += 1
        }

        mutating func requestLine(method: String, target: String) {
            pseudo(":method", method)
            pseudo(":scheme", scheme)
            pseudo(":path", target)
            authorityIndex = spanCount
        }

        private mutating func pseudo(_ name: StaticString, _ value: String) {
            let n = count
            write(name)
            let v = count
            write(value)
            addSpan((n, v - n, v, count - v, true))
        }

        /// Opens `:authority`, for the first `Host`; false for any later one (left out).
        private mutating func startAuthority() -> Bool {
            if sawAuthority { return false }
            fieldIsAuthority = true
            fieldStart = count
            write(":authority")
            valueStart = count
            return true
        }

        /// Opens a field whose name the caller writes next, then calls `nameWritten`.
        private mutating func startField() {
            fieldIsAuthority = false
            fieldStart = count
        }

        /// Lowercases the name just written.
        private mutating func nameWritten() {
            valueStart = count
            for i in fieldStart..<valueStart where bytes[i] >= 65 && bytes[i] <= 90 { bytes[i] |= 0x20 }
        }

        private mutating func close() {
            let nameLength = valueStart - fieldStart
            let indexed = !(nameLength == 12
                            && UnsafeBufferPointer(start: bytes + fieldStart, count: nameLength).equals("x-request-id"))
            let span: Span = (fieldStart, nameLength, valueStart, count - valueStart, indexed)
            if fieldIsAuthority {
                sawAuthority = true
                addSpan(span, at: authorityIndex)
            } else {
                addSpan(span)
            }
        }

        mutating func field(_ name: UnsafeBufferPointer<UInt8>, _ value: UnsafeBufferPointer<UInt8>, kind: HeaderRewriter.FieldKind) {
            switch kind {
            case .hopByHop: return
            case .host: guard startAuthority() else { return }
            default:
                startField()
                write(name)
                nameWritten()
            }
            write(value)
            close()
        }

        mutating func beginField(_ name: StaticString, kind: HeaderRewriter.FieldKind) {
            switch kind {
            case .hopByHop: skipping = true
            case .host: skipping = !startAuthority()
            default:
                skipping = false
                startField()
                write(name)
                nameWritten()
            }
        }

        mutating func value(_ bytes: UnsafeBufferPointer<UInt8>) { if !skipping { write(bytes) } }
        mutating func value(_ text: String) { if !skipping { write(text) } }
        mutating func value(_ literal: StaticString) { if !skipping { write(literal) } }

        mutating func decimal(_ n: Int64) {
            guard !skipping else { return }
            HeaderRewriter.withDecimal(n) { write($0) }
        }

        mutating func endField() {
            if !skipping { close() }
            skipping = false
        }

        mutating func end() {
            if teTrailers {
                let n = count
                write("te")
                let v = count
                write("trailers")
                addSpan((n, v - n, v, 8, true))
            }
        }
    }
}
