/// Builds the heads Turnout sends: requests to upstreams and responses to clients. Hop-by-hop
/// fields are dropped, framing is regenerated, and forwarding fields are added (SPEC "What clients
/// see from the data path").
public enum HeaderRewriter {
    /// The field names Turnout handles itself, recognised without allocating (ASCII, any case).
    public enum FieldKind {
        case hopByHop, contentLength, forwardedFor, forwardedProto, forwardedHost, via, host, other
    }

    public static func kind(_ name: UnsafeBufferPointer<UInt8>) -> FieldKind {
        switch name.count {
        case 2: return name.equalsIgnoringASCIICase("te") ? .hopByHop : .other
        case 3: return name.equalsIgnoringASCIICase("via") ? .via : .other
        case 4: return name.equalsIgnoringASCIICase("host") ? .host : .other
        case 7: return name.equalsIgnoringASCIICase("trailer") || name.equalsIgnoringASCIICase("upgrade") ? .hopByHop : .other
        case 10: return name.equalsIgnoringASCIICase("connection") || name.equalsIgnoringASCIICase("keep-alive") ? .hopByHop : .other
        case 14: return name.equalsIgnoringASCIICase("content-length") ? .contentLength : .other
        case 15: return name.equalsIgnoringASCIICase("x-forwarded-for") ? .forwardedFor : .other
        case 16:
            return name.equalsIgnoringASCIICase("proxy-connection") ? .hopByHop
                : name.equalsIgnoringASCIICase("x-forwarded-host") ? .forwardedHost : .other
        case 17:
            return name.equalsIgnoringASCIICase("transfer-encoding") ? .hopByHop
                : name.equalsIgnoringASCIICase("x-forwarded-proto") ? .forwardedProto : .other
        default: return .other
        }
    }

    /// Field names the message's Connection header lists (hop-by-hop too), lowercased; empty
    /// (and without allocating) when there is none but the usual close/keep-alive.
    public static func namedByConnection(_ headers: HTTPHeaders) -> [String] {
        guard !headers.allListElements("connection", satisfy: isCloseOrKeepAlive) else { return [] }
        return headers.tokens("connection").filter { $0 != "close" && $0 != "keep-alive" }
    }

    private static func isCloseOrKeepAlive(_ element: UnsafeBufferPointer<UInt8>) -> Bool {
        element.equalsIgnoringASCIICase("close") || element.equalsIgnoringASCIICase("keep-alive")
    }

    @inline(__always)
    public static func isNamed(_ name: UnsafeBufferPointer<UInt8>, in named: [String]) -> Bool {
        !named.isEmpty && named.contains { n in
            var n = n
            return n.withUTF8 { name.equalsIgnoringASCIICase($0) }
        }
    }

    /// The request head for the upstream as HTTP/1.1 bytes (`UpstreamRequest.http1Head`).
    public static func upstreamRequest(_ head: HTTPRequestHead, clientIP: String, scheme: String, fallbackHost: String,
                                       upgrade: String? = nil, addRequestID: String? = nil) -> [UInt8] {
        UpstreamRequest(head: head, clientIP: clientIP, scheme: scheme, fallbackHost: fallbackHost, upgrade: upgrade,
                        requestID: addRequestID, madeRequestID: addRequestID != nil).http1Head()
    }

    /// Writes what goes upstream for `request` into `sink`, whatever protocol the sink writes:
    /// the client's fields less the hop-by-hop ones (and those its `Connection` names) and the
    /// forwarding fields Turnout sets itself; then `Host` when the client sent none, the request
    /// id Turnout made (instead of the client's), `X-Forwarded-For` (the client's list, then the
    /// client), `X-Forwarded-Proto`, `X-Forwarded-Host`, `Via`, the upgrade (`Upgrade` and
    /// `Connection: Upgrade`) when the request switches protocols, the body's framing, and a
    /// mirror's mark.
    public static func writeUpstreamRequest<S: UpstreamHeadSink>(_ request: UpstreamRequest, into sink: inout S) {
        sink.requestLine(method: request.head.method, target: request.head.target)
        let named = namedByConnection(request.head.headers)
        var hasForwardedFor = false
        var hasVia = false
        var sawHost = false
        var sawContentLength = false
        let replaceID = request.madeRequestID
        request.head.headers.forEach { name, value in
            let k = kind(name)
            switch k {
            case .hopByHop, .forwardedProto, .forwardedHost: return
            case .contentLength: sawContentLength = true; return
            case .forwardedFor: hasForwardedFor = true; return
            case .via: hasVia = true; return
            case .host: sawHost = true
            case .other:
                if isNamed(name, in: named) { return }
                if replaceID && name.count == 12 && name.equalsIgnoringASCIICase("x-request-id") { return }
            }
            sink.field(name, value, kind: k)
        }
        if !sawHost { sink.field("Host", request.fallbackHost, kind: .host) }
        request.writeMadeID(into: &sink)
        sink.beginField("X-Forwarded-For", kind: .forwardedFor)
        if hasForwardedFor { sink.values(of: "x-forwarded-for", in: request.head.headers) }
        sink.value(request.clientIP)
        sink.endField()
        sink.field("X-Forwarded-Proto", request.scheme, kind: .forwardedProto)
        if let host = request.head.host { sink.field("X-Forwarded-Host", host, kind: .forwardedHost) }
        sink.beginField("Via", kind: .via)
        viaValue(received: hasVia ? request.head.headers : nil, version: request.head.version) { sink.value($0) }
        sink.endField()
        if let upgrade = request.upgrade {
            sink.field("Upgrade", upgrade, kind: .hopByHop)
            sink.field("Connection", "Upgrade", kind: .hopByHop)
        }
        switch request.head.framing {
        case .length(let n):
            sink.beginField("Content-Length", kind: .contentLength)
            sink.decimal(n)
            sink.endField()
        case .chunked: sink.field("Transfer-Encoding", "chunked", kind: .hopByHop)
        case .none, .untilClose:
            if sawContentLength { sink.field("Content-Length", "0", kind: .contentLength) }
        }
        if request.mirrorCopy { sink.field("X-Turnout-Mirror", "1", kind: .other) }
        sink.end()
    }

    @inline(__always)
    static func appendField(_ out: inout [UInt8], _ name: UnsafeBufferPointer<UInt8>, _ value: UnsafeBufferPointer<UInt8>) {
        out.append(contentsOf: name)
        out.append(literal: ": ")
        out.append(contentsOf: value)
        out.append(literal: "\r\n")
    }

    @inline(__always)
    static func appendField(_ out: inout [UInt8], _ name: StaticString, _ value: String) {
        out.append(literal: name)
        out.append(literal: ": ")
        out.appendUTF8(value)
        out.append(literal: "\r\n")
    }

    /// Appends `n` (not negative) in decimal, without building a String.
    @inlinable
    public static func appendDecimal<T: BinaryInteger>(_ out: inout [UInt8], _ n: T) {
        withDecimal(n) { out.append(contentsOf: $0) }
    }

    /// Calls `body` with the decimal digits of `n` (not negative), written on the stack.
    @inlinable
    public static func withDecimal<T: BinaryInteger, R>(_ n: T, _ body: (UnsafeBufferPointer<UInt8>) -> R) -> R {
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                     UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var v = UInt64(n)
        var count = 0
        return withUnsafeMutableBytes(of: &digits) { d in
            repeat {
                d[19 - count] = UInt8(48 + v % 10)
                v /= 10
                count += 1
            } while v > 0
            return body(UnsafeBufferPointer(start: d.baseAddress!.assumingMemoryBound(to: UInt8.self) + (20 - count), count: count))
        }
    }

    /// The value of the `Via` Turnout sends on, in pieces: the entries of the `Via` fields of
    /// `received` (nil: none), each followed by ", ", then its own (`<version> turnout`). Every
    /// head Turnout writes (HTTP/1.1 and HTTP/2, to upstreams and to clients) takes it from here.
    @inlinable
    public static func viaValue(received: HTTPHeaders?, version: HTTPVersion, _ piece: (UnsafeBufferPointer<UInt8>) -> Void) {
        received?.forEachValue("via") { v in
            piece(v)
            (", " as StaticString).withUTF8Buffer(piece)
            return true
        }
        version.viaLiteral.withUTF8Buffer(piece)
        (" turnout" as StaticString).withUTF8Buffer(piece)
    }

    /// `Via` with the received entries (the `Via` fields of `received`), then Turnout's own.
    static func appendVia(_ out: inout [UInt8], _ received: HTTPHeaders?, version: HTTPVersion) {
        out.append(literal: "Via: ")
        viaValue(received: received, version: version) { out.append(contentsOf: $0) }
        out.append(literal: "\r\n")
    }

    /// Calls `body` with each end-to-end field of a response, in order: hop-by-hop fields and
    /// those its Connection field names are dropped, Content-Length only kept with `keepLength`,
    /// and `Via` fields left out with `skipVia` (the caller writes them with its own entry).
    /// Returns whether there were `Via` fields.
    @discardableResult @inlinable
    public static func forEachEndToEndField(_ headers: HTTPHeaders, keepLength: Bool, skipVia: Bool,
                                     _ body: (_ name: UnsafeBufferPointer<UInt8>, _ value: UnsafeBufferPointer<UInt8>) -> Void) -> Bool {
        let named = namedByConnection(headers)
        var sawVia = false
        headers.forEach { name, value in
            switch kind(name) {
            case .hopByHop: return
            case .contentLength: if !keepLength { return }
            case .via:
                sawVia = true
                if skipVia { return }
            case .other, .host, .forwardedFor, .forwardedProto, .forwardedHost:
                if isNamed(name, in: named) { return }
            }
            body(name, value)
        }
        return sawVia
    }

    /// The response head for the client. `framing` is what the client will receive.
    public static func clientResponse(_ head: HTTPResponseHead, clientFraming: BodyFraming, keepAlive: Bool,
                                      clientVersion: HTTPVersion, setCookie: String?) -> [UInt8] {
        var out: [UInt8] = []
        clientResponse(head, clientFraming: clientFraming, keepAlive: keepAlive, clientVersion: clientVersion,
                       setCookie: setCookie, into: &out)
        return out
    }

    /// `clientResponse`, appended to `out` (a reused buffer).
    public static func clientResponse(_ head: HTTPResponseHead, clientFraming: BodyFraming, keepAlive: Bool,
                                      clientVersion: HTTPVersion, setCookie: String?, into out: inout [UInt8]) {
        out.reserveCapacity(out.count + 192 + head.headers.byteCount + head.reason.utf8.count + (setCookie?.utf8.count ?? 0))
        out.append(literal: "HTTP/1.1 ")
        appendDecimal(&out, head.status)
        out.append(32)
        out.appendUTF8(head.reason)
        out.append(literal: "\r\n")
        let keepLength: Bool
        if case .none = clientFraming { keepLength = true } else { keepLength = false }
        let hasVia = forEachEndToEndField(head.headers, keepLength: keepLength, skipVia: true) { appendField(&out, $0, $1) }
        appendVia(&out, hasVia ? head.headers : nil, version: head.version)
        if let setCookie { appendField(&out, "Set-Cookie", setCookie) }
        switch clientFraming {
        case .length(let n):
            out.append(literal: "Content-Length: ")
            appendDecimal(&out, n)
            out.append(literal: "\r\n")
        case .chunked: out.append(literal: "Transfer-Encoding: chunked\r\n")
        case .none, .untilClose: break
        }
        if !keepAlive {
            out.append(literal: "Connection: close\r\n")
        } else if clientVersion == .http10 {
            out.append(literal: "Connection: keep-alive\r\n")
        }
        out.append(literal: "\r\n")
    }

    /// The `101 Switching Protocols` head for the client: the upstream's fields, its `Upgrade`,
    /// and `Connection: Upgrade`.
    public static func switchingProtocols(_ head: HTTPResponseHead) -> [UInt8] {
        var out = Array("HTTP/1.1 101 \(head.reason)\r\n".utf8)
        let hasVia = forEachEndToEndField(head.headers, keepLength: true, skipVia: true) { appendField(&out, $0, $1) }
        appendVia(&out, hasVia ? head.headers : nil, version: head.version)
        if let upgrade = head.headers.first("upgrade") { appendField(&out, "Upgrade", upgrade) }
        out.append(literal: "Connection: Upgrade\r\n\r\n")
        return out
    }

    /// The protocol an HTTP/1.1 request asks to switch to (`Upgrade` named in `Connection`), when
    /// Turnout tunnels it: not `h2c` (HTTP/2 is spoken with prior knowledge instead), and only for
    /// requests without a body.
    public static func requestedUpgrade(_ head: HTTPRequestHead) -> String? {
        guard head.version == .http11, !head.hasBody, head.headers.hasToken("connection", "upgrade"),
              let value = head.headers.first("upgrade"), !value.isEmpty else { return nil }
        if head.headers.tokens("upgrade").contains("h2c") { return nil }
        return value
    }

    /// An interim (1xx) response for an HTTP/1.1 client.
    public static func informational(_ head: HTTPResponseHead) -> [UInt8] {
        var out = Array("HTTP/1.1 \(head.status) \(head.reason)\r\n".utf8)
        forEachEndToEndField(head.headers, keepLength: true, skipVia: false) { appendField(&out, $0, $1) }
        out.append(literal: "\r\n")
        return out
    }

    /// A response Turnout makes itself (errors): small plain-text body.
    public static func errorResponse(status: Int, message: String, close: Bool, extraHeaders: [(String, String)] = []) -> [UInt8] {
        let body = errorText(status: status, message: message)
        var out = "HTTP/1.1 \(status) \(reasonPhrase(status))\r\n"
        out += "Content-Type: text/plain; charset=utf-8\r\n"
        out += "Content-Length: \(body.utf8.count)\r\n"
        out += "Cache-Control: no-store\r\n"
        for (k, v) in extraHeaders { out += "\(k): \(v)\r\n" }
        if close { out += "Connection: close\r\n" }
        out += "\r\n"
        out += body
        return Array(out.utf8)
    }

    /// The plain-text body of Turnout's own error answers.
    public static func errorText(status: Int, message: String) -> String {
        "\(status) \(reasonPhrase(status)): \(message)\n"
    }

    public static func errorBody(status: Int, message: String) -> [UInt8] { Array(errorText(status: status, message: message).utf8) }

    public static func reasonPhrase(_ status: Int) -> String {
        switch status {
        case 100: return "Continue"
        case 200: return "OK"
        case 400: return "Bad Request"
        case 201: return "Created"
        case 401: return "Unauthorized"
        case 404: return "Not Found"
        case 405: return "Method Not Allowed"
        case 408: return "Request Timeout"
        case 409: return "Conflict"
        case 412: return "Precondition Failed"
        case 415: return "Unsupported Media Type"
        case 413: return "Content Too Large"
        case 414: return "URI Too Long"
        case 431: return "Request Header Fields Too Large"
        case 500: return "Internal Server Error"
        case 502: return "Bad Gateway"
        case 503: return "Service Unavailable"
        case 504: return "Gateway Timeout"
        case 505: return "HTTP Version Not Supported"
        default: return "Status \(status)"
        }
    }

    /// The value of cookie `name` in the request's Cookie headers: the first pair with that name
    /// (case-sensitive), nil when it is absent or empty.
    public static func cookie(_ name: String, in headers: HTTPHeaders) -> String? {
        var name = name
        var found: String?
        _ = name.withUTF8 { want in
            headers.forEachValue("cookie") { v in
                var i = 0
                while i < v.count {
                    var end = i
                    while end < v.count && v[end] != 59 { end += 1 }  // ';'
                    var s = i, e = end
                    while s < e && (v[s] == 32 || v[s] == 9) { s += 1 }
                    while e > s && (v[e - 1] == 32 || v[e - 1] == 9) { e -= 1 }
                    var eq = s
                    while eq < e && v[eq] != 61 { eq += 1 }  // '='
                    if eq < e && eq - s == want.count && v[s..<eq].elementsEqual(want) {
                        if eq + 1 < e { found = String(decoding: UnsafeBufferPointer(rebasing: v[(eq + 1)..<e]), as: UTF8.self) }
                        return false
                    }
                    i = end + 1
                }
                return true
            }
        }
        return found
    }
}
