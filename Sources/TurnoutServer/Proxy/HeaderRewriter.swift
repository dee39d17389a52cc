import TurnoutCore

/// Builds the heads Turnout sends: requests to upstreams and responses to clients. Hop-by-hop
/// fields are dropped, framing is regenerated, and forwarding fields are added (SPEC "What clients
/// see from the data path").
public enum HeaderRewriter {
    /// The field names Turnout handles itself, recognised without allocating (ASCII, any case).
    enum FieldKind {
        case hopByHop, contentLength, forwardedFor, forwardedProto, forwardedHost, via, host, other
    }

    static func kind(_ name: String) -> FieldKind {
        func is_(_ lower: String) -> Bool { name.equalsIgnoringASCIICase(lower) }
        switch name.utf8.count {
        case 2: return is_("te") ? .hopByHop : .other
        case 3: return is_("via") ? .via : .other
        case 4: return is_("host") ? .host : .other
        case 7: return is_("trailer") || is_("upgrade") ? .hopByHop : .other
        case 10: return is_("connection") || is_("keep-alive") ? .hopByHop : .other
        case 14: return is_("content-length") ? .contentLength : .other
        case 15: return is_("x-forwarded-for") ? .forwardedFor : .other
        case 16: return is_("proxy-connection") ? .hopByHop : is_("x-forwarded-host") ? .forwardedHost : .other
        case 17: return is_("transfer-encoding") ? .hopByHop : is_("x-forwarded-proto") ? .forwardedProto : .other
        default: return .other
        }
    }

    /// Field names the message's Connection header lists (hop-by-hop too), lowercased; empty
    /// (and without allocating) when there is none but the usual close/keep-alive.
    static func namedByConnection(_ headers: HTTPHeaders) -> [String] {
        guard !headers.allListElements("connection", satisfy: isCloseOrKeepAlive) else { return [] }
        return headers.tokens("connection").filter { $0 != "close" && $0 != "keep-alive" }
    }

    private static func isCloseOrKeepAlive(_ element: UnsafeBufferPointer<UInt8>) -> Bool {
        ("close" as StaticString).withUTF8Buffer { element.equalsIgnoringASCIICase($0) }
            || ("keep-alive" as StaticString).withUTF8Buffer { element.equalsIgnoringASCIICase($0) }
    }

    @inline(__always)
    static func isNamed(_ name: String, in named: [String]) -> Bool {
        !named.isEmpty && named.contains { name.equalsIgnoringASCIICase($0) }
    }

    /// The request head for the upstream, always HTTP/1.1.
    /// With `upgrade`, the request asks the upstream to switch to that protocol (`Upgrade` and
    /// `Connection: Upgrade` are sent; they are dropped otherwise).
    public static func upstreamRequest(_ head: HTTPRequestHead, clientIP: String, scheme: String, fallbackHost: String,
                                       upgrade: String? = nil) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(320 + head.headers.count * 48)
        out += head.method.utf8
        out.append(32)
        out += head.target.utf8
        out += " HTTP/1.1\r\n".utf8
        let named = namedByConnection(head.headers)
        var forwardedFor: [String] = []
        var via: [String] = []
        var sawHost = false
        var sawContentLength = false
        for f in head.headers {
            switch kind(f.name) {
            case .hopByHop, .forwardedProto, .forwardedHost: continue
            case .contentLength: sawContentLength = true; continue
            case .forwardedFor: forwardedFor.append(f.value); continue
            case .via: via.append(f.value); continue
            case .host: sawHost = true
            case .other: if isNamed(f.name, in: named) { continue }
            }
            appendField(&out, f.name, f.value)
        }
        if !sawHost { appendField(&out, "Host", fallbackHost) }
        out += "X-Forwarded-For: ".utf8
        for v in forwardedFor {
            out += v.utf8
            out += ", ".utf8
        }
        out += clientIP.utf8
        out += "\r\n".utf8
        appendField(&out, "X-Forwarded-Proto", scheme)
        if let host = head.host { appendField(&out, "X-Forwarded-Host", host) }
        appendVia(&out, via, version: head.version)
        if let upgrade {
            appendField(&out, "Upgrade", upgrade)
            out += "Connection: Upgrade\r\n".utf8
        }
        switch head.framing {
        case .length(let n): appendField(&out, "Content-Length", String(n))
        case .chunked: out += "Transfer-Encoding: chunked\r\n".utf8
        case .none, .untilClose:
            if sawContentLength { out += "Content-Length: 0\r\n".utf8 }
        }
        out += "\r\n".utf8
        return out
    }

    @inline(__always)
    static func appendField(_ out: inout [UInt8], _ name: String, _ value: String) {
        out += name.utf8
        out += ": ".utf8
        out += value.utf8
        out += "\r\n".utf8
    }

    /// `Via` with the received entries, then Turnout's own.
    static func appendVia(_ out: inout [UInt8], _ via: [String], version: HTTPVersion) {
        out += "Via: ".utf8
        for v in via {
            out += v.utf8
            out += ", ".utf8
        }
        out += version.viaToken.utf8
        out += " turnout\r\n".utf8
    }

    /// Calls `body` with each end-to-end field of a response, in order: hop-by-hop fields and
    /// those its Connection field names are dropped, Content-Length only kept with `keepLength`,
    /// and `Via` entries go to `via` (or to `body` when `via` is nil).
    static func forEachEndToEndField(_ headers: HTTPHeaders, keepLength: Bool, via: inout [String]?,
                                     _ body: (HTTPField) -> Void) {
        let named = namedByConnection(headers)
        for f in headers {
            switch kind(f.name) {
            case .hopByHop: continue
            case .contentLength: if !keepLength { continue }
            case .via:
                if via != nil { via!.append(f.value); continue }
            case .other, .host, .forwardedFor, .forwardedProto, .forwardedHost:
                if isNamed(f.name, in: named) { continue }
            }
            body(f)
        }
    }

    static func forEachEndToEndField(_ headers: HTTPHeaders, keepLength: Bool, via: inout [String],
                                     _ body: (HTTPField) -> Void) {
        var collected: [String]? = via
        forEachEndToEndField(headers, keepLength: keepLength, via: &collected, body)
        via = collected ?? []
    }

    /// The response head for the client. `framing` is what the client will receive.
    public static func clientResponse(_ head: HTTPResponseHead, clientFraming: BodyFraming, keepAlive: Bool,
                                      clientVersion: HTTPVersion, setCookie: String?) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(256 + head.headers.count * 48)
        out += "HTTP/1.1 ".utf8
        out += String(head.status).utf8
        out.append(32)
        out += head.reason.utf8
        out += "\r\n".utf8
        var via: [String] = []
        let keepLength: Bool
        if case .none = clientFraming { keepLength = true } else { keepLength = false }
        forEachEndToEndField(head.headers, keepLength: keepLength, via: &via) { appendField(&out, $0.name, $0.value) }
        appendVia(&out, via, version: head.version)
        if let setCookie { appendField(&out, "Set-Cookie", setCookie) }
        switch clientFraming {
        case .length(let n): appendField(&out, "Content-Length", String(n))
        case .chunked: out += "Transfer-Encoding: chunked\r\n".utf8
        case .none, .untilClose: break
        }
        if !keepAlive {
            out += "Connection: close\r\n".utf8
        } else if clientVersion == .http10 {
            out += "Connection: keep-alive\r\n".utf8
        }
        out += "\r\n".utf8
        return out
    }

    /// The `101 Switching Protocols` head for the client: the upstream's fields, its `Upgrade`,
    /// and `Connection: Upgrade`.
    static func switchingProtocols(_ head: HTTPResponseHead) -> [UInt8] {
        var out = Array("HTTP/1.1 101 \(head.reason)\r\n".utf8)
        var via: [String] = []
        forEachEndToEndField(head.headers, keepLength: true, via: &via) { appendField(&out, $0.name, $0.value) }
        appendVia(&out, via, version: head.version)
        if let upgrade = head.headers.first("upgrade") { appendField(&out, "Upgrade", upgrade) }
        out += "Connection: Upgrade\r\n\r\n".utf8
        return out
    }

    /// The protocol an HTTP/1.1 request asks to switch to (`Upgrade` named in `Connection`), when
    /// Turnout tunnels it: not `h2c` (HTTP/2 is spoken with prior knowledge instead), and only for
    /// requests without a body.
    static func requestedUpgrade(_ head: HTTPRequestHead) -> String? {
        guard head.version == .http11, !head.hasBody, head.headers.hasToken("connection", "upgrade"),
              let value = head.headers.first("upgrade"), !value.isEmpty else { return nil }
        if head.headers.tokens("upgrade").contains("h2c") { return nil }
        return value
    }

    /// An interim (1xx) response for an HTTP/1.1 client.
    static func informational(_ head: HTTPResponseHead) -> [UInt8] {
        var out = Array("HTTP/1.1 \(head.status) \(head.reason)\r\n".utf8)
        var keepVia: [String]? = nil
        forEachEndToEndField(head.headers, keepLength: true, via: &keepVia) { appendField(&out, $0.name, $0.value) }
        out += "\r\n".utf8
        return out
    }

    /// A response Turnout makes itself (errors): small plain-text body.
    static func errorResponse(status: Int, message: String, close: Bool, extraHeaders: [(String, String)] = []) -> [UInt8] {
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
    static func errorText(status: Int, message: String) -> String {
        "\(status) \(reasonPhrase(status)): \(message)\n"
    }

    static func errorBody(status: Int, message: String) -> [UInt8] { Array(errorText(status: status, message: message).utf8) }

    static func reasonPhrase(_ status: Int) -> String {
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

    /// The value of cookie `name` in the request's Cookie headers.
    static func cookie(_ name: String, in headers: HTTPHeaders) -> String? {
        for value in headers.values("cookie") {
            for pair in value.split(separator: ";") {
                let p = pair.trimmingHTTPWhitespace()
                guard let eq = p.firstIndex(of: "=") else { continue }
                if p[..<eq] == name {
                    let v = String(p[p.index(after: eq)...])
                    return v.isEmpty ? nil : v
                }
            }
        }
        return nil
    }
}
