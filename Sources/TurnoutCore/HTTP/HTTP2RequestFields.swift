/// The request an HTTP/2 upstream (`protocol: h2c | h2`) gets, as HTTP/2 fields, from the head
/// `HeaderRewriter.upstreamRequest` wrote for it: one rewriter decides what goes upstream whatever
/// the upstream speaks, and this turns its HTTP/1.1 form into pseudo-headers and lowercase fields
/// (RFC 9113 8.3.1): the request line becomes `:method`, `:scheme`, `:path`, `Host` becomes
/// `:authority`, and the connection-specific fields (`Connection`, `Keep-Alive`,
/// `Proxy-Connection`, `Transfer-Encoding`, `Upgrade`, `TE`) are left out; `te: trailers` is sent
/// when the client asked for trailers (gRPC does).
public struct HTTP2RequestFields: Sendable {
    /// Names and values, lowercase names, one after another.
    public private(set) var storage: [UInt8] = []
    /// Each field as offsets into `storage`, pseudo-headers first.
    public private(set) var spans: [(name: Int, nameLength: Int, value: Int, valueLength: Int)] = []

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
        storage.removeAll(keepingCapacity: true)
        spans.removeAll(keepingCapacity: true)
        storage.reserveCapacity(head.count + 32)
        spans.reserveCapacity(16)
        let b = head.bindMemory(to: UInt8.self)
        var i = 0
        // Request line: METHOD SP TARGET SP HTTP/1.1 CRLF
        guard let sp1 = Self.find(b, 32, from: 0), let sp2 = Self.find(b, 32, from: sp1 + 1),
              let eol = Self.find(b, 13, from: sp2 + 1), sp1 > 0, sp2 > sp1 + 1
        else { throw Invalid(reason: "the request line is malformed") }
        append(":method", b, 0, sp1)
        appendLiteral(":scheme", scheme)
        // :authority is written where Host is found; a path first keeps the order nghttp2 likes.
        append(":path", b, sp1 + 1, sp2)
        let authorityIndex = spans.count
        i = eol + 2
        var sawHost = false
        while i + 1 < b.count && !(b[i] == 13 && b[i + 1] == 10) {
            guard let colon = Self.find(b, 58, from: i), let end = Self.find(b, 13, from: colon) else {
                throw Invalid(reason: "a header field is malformed")
            }
            var vs = colon + 1
            while vs < end && (b[vs] == 32 || b[vs] == 9) { vs += 1 }
            var ve = end
            while ve > vs && (b[ve - 1] == 32 || b[ve - 1] == 9) { ve -= 1 }
            let name = UnsafeBufferPointer(rebasing: b[i..<colon])
            switch HeaderRewriter.kind(name) {
            case .host:
                if !sawHost {
                    sawHost = true
                    insertAuthority(b, vs, ve, at: authorityIndex)
                }
            case .hopByHop:
                break
            default:
                appendLowercased(b, i, colon, vs, ve)
            }
            i = end + 2
        }
        if teTrailers { appendLiteral("te", "trailers") }
    }

    private static func find(_ b: UnsafeBufferPointer<UInt8>, _ byte: UInt8, from: Int) -> Int? {
        var k = from
        while k < b.count {
            if b[k] == byte { return k }
            k += 1
        }
        return nil
    }

    private mutating func append(_ name: StaticString, _ b: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int) {
        let n = storage.count
        storage.append(contentsOf: UnsafeBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount))
        let v = storage.count
        storage.append(contentsOf: UnsafeBufferPointer(rebasing: b[start..<end]))
        spans.append((n, v - n, v, end - start))
    }

    private mutating func appendLiteral(_ name: StaticString, _ value: String) {
        let n = storage.count
        storage.append(contentsOf: UnsafeBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount))
        let v = storage.count
        storage.append(contentsOf: value.utf8)
        spans.append((n, v - n, v, storage.count - v))
    }

    private mutating func insertAuthority(_ b: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int, at index: Int) {
        let n = storage.count
        storage.append(contentsOf: ":authority".utf8)
        let v = storage.count
        storage.append(contentsOf: UnsafeBufferPointer(rebasing: b[start..<end]))
        spans.insert((n, v - n, v, end - start), at: index)
    }

    private mutating func appendLowercased(_ b: UnsafeBufferPointer<UInt8>, _ ns: Int, _ ne: Int, _ vs: Int, _ ve: Int) {
        let n = storage.count
        for k in ns..<ne {
            let c = b[k]
            storage.append(c >= 65 && c <= 90 ? c | 0x20 : c)
        }
        let v = storage.count
        storage.append(contentsOf: UnsafeBufferPointer(rebasing: b[vs..<ve]))
        spans.append((n, v - n, v, ve - vs))
    }

    /// The fields as (name, value) strings, in order (for tests and logs).
    public var pairs: [(String, String)] {
        spans.map { s in
            (String(decoding: storage[s.name..<s.name + s.nameLength], as: UTF8.self),
             String(decoding: storage[s.value..<s.value + s.valueLength], as: UTF8.self))
        }
    }
}
