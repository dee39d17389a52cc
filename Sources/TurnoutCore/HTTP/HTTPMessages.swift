/// The HTTP versions Turnout speaks with clients (upstreams always get HTTP/1.1).
public enum HTTPVersion: Sendable, Equatable {
    case http10
    case http11
    case http2

    public var text: String {
        switch self {
        case .http10: return "HTTP/1.0"
        case .http11: return "HTTP/1.1"
        case .http2: return "HTTP/2"
        }
    }

    /// The protocol token a `Via` entry uses (RFC 9110 7.6.3), as a literal.
    public var viaLiteral: StaticString {
        switch self {
        case .http10: return "1.0"
        case .http11: return "1.1"
        case .http2: return "2"
        }
    }
}

/// How a message body is delimited on the wire.
public enum BodyFraming: Sendable, Equatable {
    case none
    case length(Int64)
    case chunked
    /// Response only: the body runs until the upstream closes the connection.
    case untilClose
}

/// A parsed, validated request head.
public struct HTTPRequestHead: Sendable, Equatable {
    public var method: String
    /// The target in origin form (`/path?query`), or `*` for `OPTIONS *`.
    public var target: String
    public var version: HTTPVersion
    public var headers: HTTPHeaders
    /// The Host header, or the authority of an absolute-form target.
    public var host: String?
    public var framing: BodyFraming
    /// Whether the client wants the connection kept open after this exchange.
    public var keepAlive: Bool
    public var expectsContinue: Bool

    public init(method: String, target: String, version: HTTPVersion, headers: HTTPHeaders, host: String?,
                framing: BodyFraming, keepAlive: Bool, expectsContinue: Bool) {
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.host = host
        self.framing = framing
        self.keepAlive = keepAlive
        self.expectsContinue = expectsContinue
    }

    /// Methods that may be sent again after a failure without changing the outcome (RFC 9110 9.2.2).
    public var isIdempotent: Bool {
        switch method {
        case "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE": return true
        default: return false
        }
    }

    public var hasBody: Bool {
        switch framing {
        case .none, .length(0): return false
        default: return true
        }
    }
}

/// A parsed, validated response head.
public struct HTTPResponseHead: Sendable, Equatable {
    public var version: HTTPVersion
    public var status: Int
    public var reason: String
    public var headers: HTTPHeaders
    /// Whether the upstream allows the connection to be reused after this response.
    public var keepAlive: Bool

    public init(version: HTTPVersion, status: Int, reason: String, headers: HTTPHeaders, keepAlive: Bool) {
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers
        self.keepAlive = keepAlive
    }

    /// RFC 9112 6.3: the framing of this response to a request with `requestMethod`.
    public func framing(requestMethod: String) throws(HTTPParseError) -> BodyFraming {
        if requestMethod == "HEAD" || (100..<200).contains(status) || status == 204 || status == 304 {
            return .none
        }
        let cl = headers.count("content-length", readingFirst: HTTPHeadParser.parseContentLength)
        // Tokens (an array) only when there is a Transfer-Encoding field, which is rare.
        if headers.contains("transfer-encoding"), case let te = headers.tokens("transfer-encoding"), !te.isEmpty {
            if cl.count > 0 { throw .bad("response has both Content-Length and Transfer-Encoding") }
            guard te == ["chunked"] else { throw .bad("unsupported response Transfer-Encoding \(te.joined(separator: ", "))") }
            return .chunked
        }
        if cl.count > 0 {
            guard cl.count == 1, let n = cl.first ?? nil else { throw .bad("invalid Content-Length in response") }
            return .length(n)
        }
        return .untilClose
    }
}

/// Why a message could not be accepted, with the status a client should receive.
public enum HTTPParseError: Error, Sendable, Equatable {
    case bad(String)
    case headTooLarge
    case tooManyHeaders
    case uriTooLong
    case versionNotSupported
    case methodNotAllowed(String)
    case bodyTooLarge

    public var status: Int {
        switch self {
        case .bad: return 400
        case .headTooLarge, .tooManyHeaders: return 431
        case .uriTooLong: return 414
        case .versionNotSupported: return 505
        case .methodNotAllowed: return 405
        case .bodyTooLarge: return 413
        }
    }

    public var message: String {
        switch self {
        case .bad(let why): return why
        case .headTooLarge: return "request head too large"
        case .tooManyHeaders: return "too many header fields"
        case .uriTooLong: return "request target too long"
        case .versionNotSupported: return "HTTP version not supported"
        case .methodNotAllowed(let m): return "method \(m) is not supported by this proxy"
        case .bodyTooLarge: return "request body too large"
        }
    }
}
