/// The request an HTTP/2 upstream (`protocol: h2c | h2`) gets, as HTTP/2 fields, written by
/// `HeaderRewriter.writeUpstreamRequest` (the rewriter HTTP/1.1 upstreams get theirs from) in
/// HTTP/2's form (RFC 9113 8.3.1): the request line becomes `:method`, `:scheme`, `:path`, `Host`
/// becomes `:authority`, names are lowercase, and the connection-specific fields (`Connection`,
/// `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`, `Upgrade`, `TE`) are left out; `te:
/// trailers` is sent when the client asked for trailers (gRPC does).
public struct HTTP2RequestFields: Sendable {
    /// Names and values, one after another (the buffer is kept from request to request).
    public private(set) var storage: [UInt8] = []
    /// Each field as offsets into `storage`, pseudo-headers first. `indexed` is false for a field
    /// whose value is new on every request (`x-request-id`): HPACK must not put it in the dynamic
    /// table (RFC 7541 6.2.2), where each request's id would push out an entry that repeats (the
    /// forwarded fields, `via`, `user-agent`), and make both ends insert, evict and search for
    /// nothing.
    public typealias Span = (name: Int, nameLength: Int, value: Int, valueLength: Int, indexed: Bool)
    public private(set) var spans: [Span] = []

    /// `scheme`: "http" (h2c) or "https" (h2). `teTrailers`: the client sent `TE: trailers`.
    public init(_ request: UpstreamRequest, scheme: String, teTrailers: Bool) {
        set(request, scheme: scheme, teTrailers: teTrailers)
    }

    /// Empty, to be filled by `set` (a sender keeps one and refills it for each request, so that
    /// its buffers are allocated once).
    public init() {}

    /// The fields of `request`, replacing what was there (the buffers are kept).
    public mutating func set(_ request: UpstreamRequest, scheme: String, teTrailers: Bool) {
        var w = Writer(scheme: scheme, teTrailers: teTrailers)
        swap(&w.storage, &storage)
        swap(&w.spans, &spans)
        w.storage.removeAll(keepingCapacity: true)
        w.spans.removeAll(keepingCapacity: true)
        w.storage.reserveCapacity(128 + request.head.headers.byteCount + request.head.target.utf8.count)
        HeaderRewriter.writeUpstreamRequest(request, into: &w)
        swap(&w.storage, &storage)
        swap(&w.spans, &spans)
    }

    /// The fields as (name, value) strings, in order (for tests and logs).
    public var pairs: [(String, String)] {
        spans.map { s in
            (String(decoding: storage[s.name..<s.name + s.nameLength], as: UTF8.self),
             String(decoding: storage[s.value..<s.value + s.valueLength], as: UTF8.self))
        }
    }

    /// `HeaderRewriter`'s sink for HTTP/2.
    private struct Writer: UpstreamHeadSink {
        var storage: [UInt8] = []
        var spans: [Span] = []
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

        init(scheme: String, teTrailers: Bool) {
            self.scheme = scheme
            self.teTrailers = teTrailers
        }

        mutating func requestLine(method: String, target: String) {
            pseudo(":method", method)
            pseudo(":scheme", scheme)
            pseudo(":path", target)
            authorityIndex = spans.count
        }

        private mutating func pseudo(_ name: StaticString, _ value: String) {
            let n = storage.count
            storage.append(literal: name)
            let v = storage.count
            storage.appendUTF8(value)
            spans.append((n, v - n, v, storage.count - v, true))
        }

        /// Opens `:authority`, for the first `Host`; false for any later one (left out).
        private mutating func startAuthority() -> Bool {
            if sawAuthority { return false }
            fieldIsAuthority = true
            fieldStart = storage.count
            storage.append(literal: ":authority")
            valueStart = storage.count
            return true
        }

        /// Opens a field whose name the caller writes next, then calls `nameWritten`.
        private mutating func startField() {
            fieldIsAuthority = false
            fieldStart = storage.count
        }

        /// Lowercases the name just written.
        private mutating func nameWritten() {
            valueStart = storage.count
            let from = fieldStart, to = valueStart
            storage.withUnsafeMutableBufferPointer { b in
                for i in from..<to where b[i] >= 65 && b[i] <= 90 { b[i] |= 0x20 }
            }
        }

        private mutating func close() {
            let nameLength = valueStart - fieldStart
            let indexed = !(nameLength == 12 && storage.withUnsafeBufferPointer {
                UnsafeBufferPointer(rebasing: $0[fieldStart..<valueStart]).equals("x-request-id")
            })
            let span: Span = (fieldStart, nameLength, valueStart, storage.count - valueStart, indexed)
            if fieldIsAuthority {
                sawAuthority = true
                spans.insert(span, at: authorityIndex)
            } else {
                spans.append(span)
            }
        }

        mutating func field(_ name: UnsafeBufferPointer<UInt8>, _ value: UnsafeBufferPointer<UInt8>, kind: HeaderRewriter.FieldKind) {
            switch kind {
            case .hopByHop: return
            case .host: guard startAuthority() else { return }
            default:
                startField()
                storage.append(contentsOf: name)
                nameWritten()
            }
            storage.append(contentsOf: value)
            close()
        }

        mutating func beginField(_ name: StaticString, kind: HeaderRewriter.FieldKind) {
            switch kind {
            case .hopByHop: skipping = true
            case .host: skipping = !startAuthority()
            default:
                skipping = false
                startField()
                storage.append(literal: name)
                nameWritten()
            }
        }

        mutating func value(_ bytes: UnsafeBufferPointer<UInt8>) { if !skipping { storage.append(contentsOf: bytes) } }
        mutating func value(_ text: String) { if !skipping { storage.appendUTF8(text) } }
        mutating func value(_ literal: StaticString) { if !skipping { storage.append(literal: literal) } }
        mutating func decimal(_ n: Int64) { if !skipping { HeaderRewriter.appendDecimal(&storage, n) } }

        mutating func endField() {
            if !skipping { close() }
            skipping = false
        }

        mutating func end() {
            if teTrailers {
                let n = storage.count
                storage.append(literal: "te")
                let v = storage.count
                storage.append(literal: "trailers")
                spans.append((n, v - n, v, 8, true))
            }
        }
    }
}
