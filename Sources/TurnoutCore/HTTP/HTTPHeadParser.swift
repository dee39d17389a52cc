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

    /// Splits head bytes (ending with CRLFCRLF) into lines without their CRLF.
    static func lines(_ buffer: [UInt8], _ start: Int, _ end: Int) throws(HTTPParseError) -> [Range<Int>] {
        var out: [Range<Int>] = []
        var i = start
        while i + 1 < end, buffer[i] == 13, buffer[i + 1] == 10 { i += 2 }
        var lineStart = i
        while i < end {
            let b = buffer[i]
            if b == 13 {
                guard i + 1 < end, buffer[i + 1] == 10 else { throw .bad("bare CR in message head") }
                out.append(lineStart..<i)
                i += 2
                lineStart = i
                continue
            }
            if b == 10 { throw .bad("bare LF in message head") }
            i += 1
        }
        // The last line is the empty one that ends the head.
        if let last = out.last, last.isEmpty { out.removeLast() }
        return out
    }

    static func parseFields(_ buffer: [UInt8], _ lines: ArraySlice<Range<Int>>, maxCount: Int) throws(HTTPParseError) -> HTTPHeaders {
        var fields: [HTTPField] = []
        fields.reserveCapacity(lines.count)
        for line in lines {
            if fields.count >= maxCount { throw .tooManyHeaders }
            guard let first = line.first else { continue }
            let b0 = buffer[first]
            if b0 == 32 || b0 == 9 { throw .bad("obsolete line folding is not accepted") }
            var colon = -1
            var k = line.lowerBound
            while k < line.upperBound {
                let b = buffer[k]
                if b == 58 { colon = k; break }
                guard HTTPSyntax.isTokenByte(b) else {
                    if b == 32 || b == 9 { throw .bad("whitespace between a field name and the colon") }
                    throw .bad("invalid character in a field name")
                }
                k += 1
            }
            guard colon > line.lowerBound else { throw .bad(colon < 0 ? "header line without a colon" : "empty field name") }
            var vs = colon + 1
            var ve = line.upperBound
            while vs < ve, buffer[vs] == 32 || buffer[vs] == 9 { vs += 1 }
            while ve > vs, buffer[ve - 1] == 32 || buffer[ve - 1] == 9 { ve -= 1 }
            for v in vs..<ve where !HTTPSyntax.isFieldValueByte(buffer[v]) {
                throw .bad("invalid character in the value of a header field")
            }
            let name = String(decoding: buffer[line.lowerBound..<colon], as: UTF8.self)
            let value = String(decoding: buffer[vs..<ve], as: UTF8.self)
            fields.append(HTTPField(name, value))
        }
        return HTTPHeaders(fields)
    }

    /// Content-Length: one or more digits, nothing else, and it must fit in 63 bits.
    public static func parseContentLength(_ s: String) -> Int64? {
        guard !s.isEmpty, s.utf8.count <= 18, s.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }) else { return nil }
        return Int64(s)
    }

    static func parseVersion(_ buffer: [UInt8], _ r: Range<Int>) -> HTTPVersion? {
        guard isHTTPVersionShaped(buffer, r), buffer[r.lowerBound + 5] == 49 else { return nil }  // "HTTP/1.y"
        switch buffer[r.lowerBound + 7] {
        case 48: return .http10
        case 49: return .http11
        default: return nil
        }
    }

    /// "HTTP/d.d" with any digits.
    static func isHTTPVersionShaped(_ buffer: [UInt8], _ r: Range<Int>) -> Bool {
        guard r.count == 8 else { return false }
        let o = r.lowerBound
        return buffer[o] == 72 && buffer[o + 1] == 84 && buffer[o + 2] == 84 && buffer[o + 3] == 80 && buffer[o + 4] == 47
            && buffer[o + 6] == 46 && (48...57).contains(buffer[o + 5]) && (48...57).contains(buffer[o + 7])
    }

    /// Parses and validates a request head occupying `buffer[start..<end]` (end just past CRLFCRLF).
    public static func parseRequest(_ buffer: [UInt8], start: Int, end: Int, maxHeaderCount: Int = 100) throws(HTTPParseError) -> HTTPRequestHead {
        let ls = try lines(buffer, start, end)
        guard let requestLine = ls.first else { throw .bad("empty request") }
        // request-line = method SP request-target SP HTTP-version, single spaces only.
        var sp1 = -1
        var sp2 = -1
        for k in requestLine where buffer[k] == 32 {
            if sp1 < 0 { sp1 = k } else if sp2 < 0 { sp2 = k } else { throw .bad("malformed request line") }
        }
        guard sp1 > requestLine.lowerBound, sp2 > sp1 + 1, sp2 < requestLine.upperBound - 1 else {
            throw .bad("malformed request line")
        }
        let methodRange = requestLine.lowerBound..<sp1
        for k in methodRange where !HTTPSyntax.isTokenByte(buffer[k]) { throw .bad("invalid method") }
        let method = String(decoding: buffer[methodRange], as: UTF8.self)
        let targetRange = (sp1 + 1)..<sp2
        if targetRange.count > maxTargetLength { throw .uriTooLong }
        for k in targetRange where !HTTPSyntax.isTargetByte(buffer[k]) { throw .bad("invalid character in request target") }
        var target = String(decoding: buffer[targetRange], as: UTF8.self)
        let versionRange = (sp2 + 1)..<requestLine.upperBound
        guard let version = parseVersion(buffer, versionRange) else {
            if isHTTPVersionShaped(buffer, versionRange) { throw .versionNotSupported }
            throw .bad("malformed HTTP version")
        }
        var headers = try parseFields(buffer, ls.dropFirst(), maxCount: maxHeaderCount)

        if method == "CONNECT" { throw .methodNotAllowed(method) }
        var absoluteAuthority: String?
        if target.hasPrefix("/") {
            // origin-form
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
        for f in headers.fields where f.name.equalsIgnoringASCIICase("host") {
            if host != nil { throw .bad("more than one Host header") }
            host = f.value
        }
        if version == .http11 && host == nil { throw .bad("missing Host header") }
        if let h = host, !isValidHost(h) { throw .bad("invalid Host header") }
        if let absoluteAuthority {
            // RFC 9112 3.2.2: the target's authority replaces Host.
            host = absoluteAuthority
            headers.set("Host", absoluteAuthority)
        }

        let keepAlive = version == .http11 ? !headers.hasToken("connection", "close") : headers.hasToken("connection", "keep-alive")

        let te = headers.count("transfer-encoding")
        let cl = headers.count("content-length")
        let framing: BodyFraming
        if te.count > 0 {
            if cl.count > 0 { throw .bad("both Content-Length and Transfer-Encoding") }
            if version == .http10 { throw .bad("Transfer-Encoding in an HTTP/1.0 request") }
            guard te.count == 1, let value = te.first, value.equalsIgnoringASCIICase("chunked") else {
                throw .bad("unsupported Transfer-Encoding (only a single chunked is accepted)")
            }
            framing = .chunked
        } else if cl.count > 0 {
            guard cl.count == 1, let value = cl.first, let n = parseContentLength(value) else { throw .bad("invalid Content-Length") }
            framing = n == 0 ? .none : .length(n)
        } else {
            framing = .none
        }
        let expect = headers.first("expect")
        var expectsContinue = false
        if let expect {
            guard expect.lowercased() == "100-continue" else { throw .bad("unsupported Expect value") }
            expectsContinue = version == .http11
        }
        return HTTPRequestHead(method: method, target: target, version: version, headers: headers, host: host,
                               framing: framing, keepAlive: keepAlive, expectsContinue: expectsContinue)
    }

    static func isValidHost(_ h: String) -> Bool {
        guard h.utf8.count <= 255 else { return false }
        // Token bytes exclude '@', so userinfo can never sneak in.
        return h.utf8.allSatisfy { b in
            HTTPSyntax.isTokenByte(b) || b == 58 || b == 91 || b == 93  // ':' '[' ']'
        }
    }

    /// Parses and validates a response head occupying `buffer[start..<end]`.
    public static func parseResponse(_ buffer: [UInt8], start: Int, end: Int, maxHeaderCount: Int = 200) throws(HTTPParseError) -> HTTPResponseHead {
        let ls = try lines(buffer, start, end)
        guard let statusLine = ls.first, statusLine.count >= 12 else { throw .bad("malformed status line") }
        let versionRange = statusLine.lowerBound..<(statusLine.lowerBound + 8)
        guard let version = parseVersion(buffer, versionRange) else { throw .bad("malformed status line version") }
        let s = statusLine.lowerBound + 8
        guard buffer[s] == 32 else { throw .bad("malformed status line") }
        var status = 0
        for k in (s + 1)..<(s + 4) {
            let b = buffer[k]
            guard b >= 48 && b <= 57 else { throw .bad("malformed status code") }
            status = status * 10 + Int(b - 48)
        }
        guard status >= 100 && status <= 999 else { throw .bad("status code out of range") }
        var reason = ""
        if s + 4 < statusLine.upperBound {
            guard buffer[s + 4] == 32 else { throw .bad("malformed status line") }
            let rr = (s + 5)..<statusLine.upperBound
            for k in rr where !HTTPSyntax.isFieldValueByte(buffer[k]) { throw .bad("invalid character in reason phrase") }
            reason = String(decoding: buffer[rr], as: UTF8.self)
        }
        let headers = try parseFields(buffer, ls.dropFirst(), maxCount: maxHeaderCount)
        let keepAlive = version == .http11 ? !headers.hasToken("connection", "close") : headers.hasToken("connection", "keep-alive")
        return HTTPResponseHead(version: version, status: status, reason: reason, headers: headers, keepAlive: keepAlive)
    }
}
