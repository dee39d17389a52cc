/// The request an HTTP/2 upstream (`protocol: h2c | h2`) gets, as HTTP/2 fields, from the head
/// `HeaderRewriter.upstreamRequest` wrote for it: one rewriter decides what goes upstream whatever
/// the upstream speaks, and this turns its HTTP/1.1 form into pseudo-headers and lowercase fields
/// (RFC 9113 8.3.1): the request line becomes `:method`, `:scheme`, `:path`, `Host` becomes
/// `:authority`, and the connection-specific fields (`Connection`, `Keep-Alive`,
/// `Proxy-Connection`, `Transfer-Encoding`, `Upgrade`, `TE`) are left out; `te: trailers` is sent
/// when the client asked for trailers (gRPC does).
public struct HTTP2RequestFields: Sendable {
    /// Names and values, lowercase names, one after another (the buffer is kept from request to
    /// request: bytes past the last span are left over from earlier ones).
    public private(set) var storage: [UInt8] = []
    /// Each field as offsets into `storage`, pseudo-headers first. `indexed` is false for a field
    /// whose value is new on every request (`x-request-id`): HPACK must not put it in the dynamic
    /// table (RFC 7541 6.2.2), where each request's id would push out an entry that repeats (the
    /// forwarded fields, `via`, `user-agent`), and make both ends insert, evict and search for
    /// nothing.
    public typealias Span = (name: Int, nameLength: Int, value: Int, valueLength: Int, indexed: Bool)
    public private(set) var spans: [Span] = []

    public struct Invalid: Error, Equatable, Sendable {
        public let reason: String
    }

    /// `head`: an HTTP/1.1 request head ending with an empty line. `scheme`: "http" (h2c) or
    /// "https" (h2). `teTrailers`: the client sent `TE: trailers`.
    public init(head: UnsafeRawBufferPointer, scheme: String, teTrailers: Bool) throws(Invalid) {
        try set(head: head, scheme: scheme, teTrailers: teTrailers)
    }

    /// Empty, to be filled by `set` (a sender keeps one and refills it for each request, so that
    /// its buffers are allocated once).
    public init() {}

    /// The fields of `head`, replacing what was there (the buffers are kept).
    public mutating func set(head: UnsafeRawBufferPointer, scheme: String, teTrailers: Bool) throws(Invalid) {
        spans.removeAll(keepingCapacity: true)
        spans.reserveCapacity(16)
        // The fields take at most the head's bytes plus the pseudo-header names, the scheme and
        // `te: trailers`: written straight into a buffer that size, without a check per byte.
        let need = head.count + scheme.utf8.count + 64
        if storage.count < need { storage = [UInt8](repeating: 0, count: max(need, 1024)) }
        var spans = self.spans
        self.spans = []
        defer { self.spans = spans }
        let problem: String? = storage.withUnsafeMutableBufferPointer { out in
            Self.convert(head.bindMemory(to: UInt8.self), into: out.baseAddress!, spans: &spans, scheme: scheme, teTrailers: teTrailers)
        }
        if let problem { throw Invalid(reason: problem) }
    }

    /// Writes the fields of `b` at `o`, recording their spans; returns what is malformed, if anything.
    private static func convert(_ b: UnsafeBufferPointer<UInt8>, into o: UnsafeMutablePointer<UInt8>,
                                spans: inout [Span],
                                scheme: String, teTrailers: Bool) -> String? {
        var w = 0
        func put(_ p: UnsafePointer<UInt8>, _ n: Int) {
            (o + w).update(from: p, count: n)
            w += n
        }
        func field(_ name: StaticString, _ value: UnsafePointer<UInt8>, _ count: Int) -> Span {
            let n = w
            put(name.utf8Start, name.utf8CodeUnitCount)
            let v = w
            put(value, count)
            return (n, v - n, v, count, true)
        }
        // Request line: METHOD SP TARGET SP HTTP/1.1 CRLF
        guard let base = b.baseAddress, let sp1 = find(b, 32, from: 0), let sp2 = find(b, 32, from: sp1 + 1),
              let eol = find(b, 13, from: sp2 + 1), sp1 > 0, sp2 > sp1 + 1
        else { return "the request line is malformed" }
        spans.append(field(":method", base, sp1))
        var schemeCopy = scheme
        schemeCopy.withUTF8 { spans.append(field(":scheme", $0.baseAddress!, $0.count)) }
        // :authority is written where Host is found; a path first keeps the order nghttp2 likes.
        spans.append(field(":path", base + sp1 + 1, sp2 - sp1 - 1))
        let authorityIndex = spans.count
        var i = eol + 2
        var sawHost = false
        while i + 1 < b.count && !(b[i] == 13 && b[i + 1] == 10) {
            guard let colon = find(b, 58, from: i), let end = find(b, 13, from: colon) else {
                return "a header field is malformed"
            }
            var vs = colon + 1
            while vs < end && (b[vs] == 32 || b[vs] == 9) { vs += 1 }
            var ve = end
            while ve > vs && (b[ve - 1] == 32 || b[ve - 1] == 9) { ve -= 1 }
            switch HeaderRewriter.kind(UnsafeBufferPointer(rebasing: b[i..<colon])) {
            case .host:
                if !sawHost {
                    sawHost = true
                    spans.insert(field(":authority", base + vs, ve - vs), at: authorityIndex)
                }
            case .hopByHop:
                break
            default:
                let n = w
                for k in i..<colon {
                    let c = b[k]
                    o[w] = c >= 65 && c <= 90 ? c | 0x20 : c
                    w += 1
                }
                let v = w
                put(base + vs, ve - vs)
                let indexed = !(v - n == 12 && UnsafeBufferPointer(start: o + n, count: 12).equals("x-request-id"))
                spans.append((n, v - n, v, ve - vs, indexed))
            }
            i = end + 2
        }
        if teTrailers {
            let t: StaticString = "trailers"
            spans.append(field("te", t.utf8Start, t.utf8CodeUnitCount))
        }
        return nil
    }

    private static func find(_ b: UnsafeBufferPointer<UInt8>, _ byte: UInt8, from: Int) -> Int? {
        var k = from
        while k < b.count {
            if b[k] == byte { return k }
            k += 1
        }
        return nil
    }

    /// The fields as (name, value) strings, in order (for tests and logs).
    public var pairs: [(String, String)] {
        spans.map { s in
            (String(decoding: storage[s.name..<s.name + s.nameLength], as: UTF8.self),
             String(decoding: storage[s.value..<s.value + s.valueLength], as: UTF8.self))
        }
    }
}
