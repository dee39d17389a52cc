/// Strict HTTP/1.x head parsing (RFC 9112). Lines end in CRLF; bare CR or LF, obs-fold, whitespace
/// before a colon, invalid bytes in names or values and ambiguous framing are refused.
public enum HTTPHeadParser {
    /// Longest request target accepted; longer gets 414.
    public static let maxTargetLength = 8 * 1024

    /// Looks for the end of a head (CRLFCRLF) in `buffer[start..<end]`.
    /// Returns the index just past it, or nil when more bytes are needed.
    /// `scanFrom` lets a caller resume the search where the previous call stopped.
    /// Throws `headTooLarge` once `limit` bytes were seen without an end.
    public static func findHeadEnd(_ buffer: [UInt8], start: Int, end: Int, limit: Int) throws(HTTPParseError) -> Int? {
        var i = start
        // Leading empty lines before a request line are ignored (RFC 9112 2.2).
        while i + 1 < end, buffer[i] == 13, buffer[i + 1] == 10 { i += 2 }
        let searchEnd = min(end, start + limit)
        if let found = buffer.withUnsafeBytes({ scanHeadEnd($0, from: i, to: searchEnd) }) { return found }
        // Leading empty lines count against the limit too, so they cannot grow a buffer forever.
        if end - start >= limit { throw .headTooLarge }
        return nil
    }

    /// The index just past the first CRLF CRLF in `bytes[from..<to]`, if there is one: the end of a
    /// head, for the parser to confirm. Looks at every fourth byte while none can end the marker.
    @inlinable
    public static func scanHeadEnd(_ bytes: UnsafeRawBufferPointer, from: Int, to: Int) -> Int? {
        var j = from
        while j + 3 < to {
            let b = bytes[j + 3]
            if b == 10 {
                if bytes[j] == 13 && bytes[j + 1] == 10 && bytes[j + 2] == 13 { return j + 4 }
                j += 1
            } else if b == 13 {
                j += 1
            } else {
                j += 4  // a byte that cannot end CRLF CRLF: the next candidate end is 4 on
            }
        }
        return nil
    }

    /// Whether the start of a request that is still arriving can still become a valid request line.
    /// Lets a server refuse binary garbage (a TLS hello on a plain port, random bytes) at once
    /// instead of waiting for a head that never comes.
    public static func requestPrefixIsPlausible(_ buffer: [UInt8], start: Int, end: Int) -> Bool {
        var i = start
        while i + 1 < end, buffer[i] == 13, buffer[i + 1] == 10 { i += 2 }
        while i < end {
            let b = buffer[i]
            if b == 13 { return i + 1 >= end || buffer[i + 1] == 10 }
            if b == 10 { return false }
            if b < 0x20 || b >= 0x7F { return false }
            i += 1
        }
        return true
    }

    /// The start line of a head in `b[start..<end]` (leading empty lines skipped), without its CRLF,
    /// and the index just past that CRLF. Nil when there is no start line.
    @inline(__always)
    static func startLine(_ b: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int) throws(HTTPParseError) -> (line: Range<Int>, next: Int)? {
        var i = start
        while i + 1 < end, b[i] == 13, b[i + 1] == 10 { i += 2 }
        let lineStart = i
        while i < end {
            let c = b[i]
            if c == 13 {
                guard i + 1 < end, b[i + 1] == 10 else { throw .bad("bare CR in message head") }
                return i == lineStart ? nil : (lineStart..<i, i + 2)
            }
            if c == 10 { throw .bad("bare LF in message head") }
            i += 1
        }
        return nil
    }

    /// Parses the field lines in `b[from..<end]`, up to the empty line that ends the head, in one
    /// pass: the bytes are copied once into the headers' storage and each field is recorded as
    /// offsets into it.
    static func parseFields(_ b: UnsafeBufferPointer<UInt8>, from: Int, end: Int, maxCount: Int) throws(HTTPParseError) -> HTTPHeaders {
        guard from < end else { return HTTPHeaders() }
        var lineCount = 0
        for k in from..<end where b[k] == 10 { lineCount += 1 }
        var spans: [HTTPHeaders.Span] = []
        spans.reserveCapacity(min(lineCount, maxCount + 1))
        var i = from
        while i < end {
            let b0 = b[i]
            if b0 == 13 {
                guard i + 1 < end, b[i + 1] == 10 else { throw .bad("bare CR in message head") }
                break  // the empty line: end of the head
            }
            if b0 == 10 { throw .bad("bare LF in message head") }
            if spans.count >= maxCount { throw .tooManyHeaders }
            if b0 == 32 || b0 == 9 { throw .bad("obsolete line folding is not accepted") }
            // name ':'
            var k = i
            while true {
                guard k < end else { throw .bad("header line without a colon") }
                let c = b[k]
                if c == 58 { break }
                if !HTTPSyntax.isTokenByte(c) {
                    if c == 32 || c == 9 { throw .bad("whitespace between a field name and the colon") }
                    if c == 13 || c == 10 { try lineBreakAt(b, k, end); throw .bad("header line without a colon") }
                    throw .bad("invalid character in a field name")
                }
                k += 1
            }
            let colon = k
            guard colon > i else { throw .bad("empty field name") }
            // value CRLF
            k = colon + 1
            while true {
                guard k < end else { throw .bad("message head ends without CRLF") }
                let c = b[k]
                if c == 13 || c == 10 { try lineBreakAt(b, k, end); break }
                guard HTTPSyntax.isFieldValueByte(c) else { throw .bad("invalid character in the value of a header field") }
                k += 1
            }
            let lineEnd = k
            var vs = colon + 1
            var ve = lineEnd
            while vs < ve, b[vs] == 32 || b[vs] == 9 { vs += 1 }
            while ve > vs, b[ve - 1] == 32 || b[ve - 1] == 9 { ve -= 1 }
            spans.append(HTTPHeaders.Span(nameStart: i - from, nameEnd: colon - from, valueStart: vs - from, valueEnd: ve - from))
            i = lineEnd + 2
        }
        return HTTPHeaders(bytes: Array(UnsafeBufferPointer(rebasing: b[from..<i])), spans: spans)
    }

    /// Checks that the CR or LF at `k` is a CRLF.
    @inline(__always)
    private static func lineBreakAt(_ b: UnsafeBufferPointer<UInt8>, _ k: Int, _ end: Int) throws(HTTPParseError) {
        if b[k] == 10 { throw .bad("bare LF in message head") }
        guard k + 1 < end, b[k + 1] == 10 else { throw .bad("bare CR in message head") }
    }

    /// Content-Length: one or more digits, nothing else, and it must fit in 63 bits.
    public static func parseContentLength(_ s: String) -> Int64? {
        var s = s
        return s.withUTF8 { parseContentLength($0) }
    }

    /// Content-Length from its bytes: one or more digits, nothing else, at most 18 of them.
    @inlinable
    public static func parseContentLength(_ v: UnsafeBufferPointer<UInt8>) -> Int64? {
        guard !v.isEmpty, v.count <= 18 else { return nil }
        var n: Int64 = 0
        for c in v {
            guard c >= 48 && c <= 57 else { return nil }
            n = n * 10 + Int64(c - 48)
        }
        return n
    }

    static func parseVersion(_ b: UnsafeBufferPointer<UInt8>, _ r: Range<Int>) -> HTTPVersion? {
        guard isHTTPVersionShaped(b, r), b[r.lowerBound + 5] == 49 else { return nil }  // "HTTP/1.y"
        switch b[r.lowerBound + 7] {
        case 48: return .http10
        case 49: return .http11
        default: return nil
        }
    }

    /// "HTTP/d.d" with any digits.
    static func isHTTPVersionShaped(_ b: UnsafeBufferPointer<UInt8>, _ r: Range<Int>) -> Bool {
        guard r.count == 8 else { return false }
        let o = r.lowerBound
        return b[o] == 72 && b[o + 1] == 84 && b[o + 2] == 84 && b[o + 3] == 80 && b[o + 4] == 47
            && b[o + 6] == 46 && (48...57).contains(b[o + 5]) && (48...57).contains(b[o + 7])
    }

    /// Parses and validates a request head occupying `buffer[start..<end]` (end just past CRLFCRLF).
    public static func parseRequest(_ buffer: [UInt8], start: Int, end: Int, maxHeaderCount: Int = 100) throws(HTTPParseError) -> HTTPRequestHead {
        try buffer.withUnsafeBufferPointer { b throws(HTTPParseError) in
            try parseRequest(b, start: start, end: end, maxHeaderCount: maxHeaderCount)
        }
    }

    /// Parses and validates a request head occupying `b[start..<end]` (end just past CRLFCRLF).
    public static func parseRequest(_ b: UnsafeBufferPointer<UInt8>, start: Int, end: Int, maxHeaderCount: Int = 100) throws(HTTPParseError) -> HTTPRequestHead {
        guard let (requestLine, fieldsStart) = try startLine(b, start, end) else { throw .bad("empty request") }
        // request-line = method SP request-target SP HTTP-version, single spaces only.
        var sp1 = -1
        var sp2 = -1
        for k in requestLine where b[k] == 32 {
            if sp1 < 0 { sp1 = k } else if sp2 < 0 { sp2 = k } else { throw .bad("malformed request line") }
        }
        guard sp1 > requestLine.lowerBound, sp2 > sp1 + 1, sp2 < requestLine.upperBound - 1 else {
            throw .bad("malformed request line")
        }
        let methodRange = requestLine.lowerBound..<sp1
        for k in methodRange where !HTTPSyntax.isTokenByte(b[k]) { throw .bad("invalid method") }
        let method = String(decoding: UnsafeBufferPointer(rebasing: b[methodRange]), as: UTF8.self)
        let targetRange = (sp1 + 1)..<sp2
        if targetRange.count > maxTargetLength { throw .uriTooLong }
        for k in targetRange where !HTTPSyntax.isTargetByte(b[k]) { throw .bad("invalid character in request target") }
        var target = String(decoding: UnsafeBufferPointer(rebasing: b[targetRange]), as: UTF8.self)
        let versionRange = (sp2 + 1)..<requestLine.upperBound
        guard let version = parseVersion(b, versionRange) else {
            if isHTTPVersionShaped(b, versionRange) { throw .versionNotSupported }
            throw .bad("malformed HTTP version")
        }
        var headers = try parseFields(b, from: fieldsStart, end: end, maxCount: maxHeaderCount)

        if method == "CONNECT" { throw .methodNotAllowed(method) }
        var absoluteAuthority: String?
        if b[targetRange.lowerBound] == 47 {  // '/': origin-form
        } else if target == "*" {
            guard method == "OPTIONS" else { throw .bad("asterisk-form is only valid with OPTIONS") }
        } else if let schemeEnd = target.range(of: "://") {
            let scheme = target[..<schemeEnd.lowerBound].lowercased()
            guard scheme == "http" || scheme == "https" else { throw .bad("unsupported scheme in request target") }
            let rest = target[schemeEnd.upperBound...]
            let slash = rest.firstIndex(where: { $0 == "/" || $0 == "?" }) ?? rest.endIndex
            let authority = String(rest[..<slash])
            guard !authority.isEmpty, !authority.contains("@") else { throw .bad("invalid authority in request target") }
            absoluteAuthority = authority
            let path = String(rest[slash...])
            target = path.isEmpty ? "/" : (path.hasPrefix("?") ? "/" + path : path)
        } else {
            throw .bad("invalid request target")
        }

        var host: String?
        var hostCount = 0
        var hostValid = true
        headers.forEachValue("host") { v in
            hostCount += 1
            if hostCount == 1 {
                hostValid = isValidHost(v)
                host = String(decoding: v, as: UTF8.self)
            }
            return hostCount < 2
        }
        if hostCount > 1 { throw .bad("more than one Host header") }
        if version == .http11 && host == nil { throw .bad("missing Host header") }
        if !hostValid { throw .bad("invalid Host header") }
        if let absoluteAuthority {
            // RFC 9112 3.2.2: the target's authority replaces Host.
            host = absoluteAuthority
            headers.set("Host", absoluteAuthority)
        }

        let keepAlive = version == .http11 ? !headers.hasToken("connection", "close") : headers.hasToken("connection", "keep-alive")

        let te = headers.count("transfer-encoding") { $0.equalsIgnoringASCIICase("chunked") }
        let cl = headers.count("content-length", readingFirst: parseContentLength)
        let framing: BodyFraming
        if te.count > 0 {
            if cl.count > 0 { throw .bad("both Content-Length and Transfer-Encoding") }
            if version == .http10 { throw .bad("Transfer-Encoding in an HTTP/1.0 request") }
            guard te.count == 1, te.first == true else {
                throw .bad("unsupported Transfer-Encoding (only a single chunked is accepted)")
            }
            framing = .chunked
        } else if cl.count > 0 {
            guard cl.count == 1, let n = cl.first ?? nil else { throw .bad("invalid Content-Length") }
            framing = n == 0 ? .none : .length(n)
        } else {
            framing = .none
        }
        let expect = headers.count("expect") { $0.equalsIgnoringASCIICase("100-continue") }
        var expectsContinue = false
        if expect.count > 0 {
            guard expect.first == true else { throw .bad("unsupported Expect value") }
            expectsContinue = version == .http11
        }
        return HTTPRequestHead(method: method, target: target, version: version, headers: headers, host: host,
                               framing: framing, keepAlive: keepAlive, expectsContinue: expectsContinue)
    }

    static func isValidHost(_ h: String) -> Bool {
        var h = h
        return h.withUTF8 { isValidHost($0) }
    }

    static func isValidHost(_ h: UnsafeBufferPointer<UInt8>) -> Bool {
        guard h.count <= 255 else { return false }
        // Token bytes exclude '@', so userinfo can never sneak in.
        return h.allSatisfy { b in
            HTTPSyntax.isTokenByte(b) || b == 58 || b == 91 || b == 93  // ':' '[' ']'
        }
    }

    /// Parses and validates a response head occupying `buffer[start..<end]`.
    public static func parseResponse(_ buffer: [UInt8], start: Int, end: Int, maxHeaderCount: Int = 200) throws(HTTPParseError) -> HTTPResponseHead {
        try buffer.withUnsafeBufferPointer { b throws(HTTPParseError) in
            try parseResponse(b, start: start, end: end, maxHeaderCount: maxHeaderCount)
        }
    }

    /// Parses and validates a response head occupying `b[start..<end]` (end just past CRLFCRLF).
    public static func parseResponse(_ b: UnsafeBufferPointer<UInt8>, start: Int, end: Int, maxHeaderCount: Int = 200) throws(HTTPParseError) -> HTTPResponseHead {
        guard let (statusLine, fieldsStart) = try startLine(b, start, end), statusLine.count >= 12 else {
            throw .bad("malformed status line")
        }
        let versionRange = statusLine.lowerBound..<(statusLine.lowerBound + 8)
        guard let version = parseVersion(b, versionRange) else { throw .bad("malformed status line version") }
        let s = statusLine.lowerBound + 8
        guard b[s] == 32 else { throw .bad("malformed status line") }
        var status = 0
        for k in (s + 1)..<(s + 4) {
            let c = b[k]
            guard c >= 48 && c <= 57 else { throw .bad("malformed status code") }
            status = status * 10 + Int(c - 48)
        }
        guard status >= 100 && status <= 999 else { throw .bad("status code out of range") }
        var reason = ""
        if s + 4 < statusLine.upperBound {
            guard b[s + 4] == 32 else { throw .bad("malformed status line") }
            let rr = (s + 5)..<statusLine.upperBound
            for k in rr where !HTTPSyntax.isFieldValueByte(b[k]) { throw .bad("invalid character in reason phrase") }
            reason = String(decoding: UnsafeBufferPointer(rebasing: b[rr]), as: UTF8.self)
        }
        let headers = try parseFields(b, from: fieldsStart, end: end, maxCount: maxHeaderCount)
        let keepAlive = version == .http11 ? !headers.hasToken("connection", "close") : headers.hasToken("connection", "keep-alive")
        return HTTPResponseHead(version: version, status: status, reason: reason, headers: headers, keepAlive: keepAlive)
    }
}
