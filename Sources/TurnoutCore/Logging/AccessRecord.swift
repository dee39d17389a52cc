import Foundation

/// One line of the access log: a request (forwarded or answered by Turnout) or a tunnel that
/// closed. The one formatter of access lines; every client protocol and tunnel fills one in.
public struct AccessRecord: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// A request and its answer.
        case request(method: String, target: String, version: String, status: Int, bytes: Int64)
        /// A tunnel (WebSocket or other upgrade) that closed.
        case tunnel(target: String, bytesUp: Int64, bytesDown: Int64, http2: Bool)
    }

    public var clientIP: String
    public var kind: Kind
    public var pool: String
    /// The endpoint that served it; nil when none was reached.
    public var endpoint: String?
    public var durationNanos: UInt64
    /// Tries at an endpoint (more than 1 after a retry).
    public var attempts: Int
    /// Why the request went to its pool, when not by weight (sticky, header, cookie...).
    public var route: String?
    public var error: String?

    public init(clientIP: String, kind: Kind, pool: String, endpoint: String?, durationNanos: UInt64,
                attempts: Int = 1, route: String? = nil, error: String? = nil) {
        self.clientIP = clientIP
        self.kind = kind
        self.pool = pool
        self.endpoint = endpoint
        self.durationNanos = durationNanos
        self.attempts = attempts
        self.route = route
        self.error = error
    }

    /// The text line (README, "Access log").
    public var text: String {
        let ms = String(format: "%.2f", Double(durationNanos) / 1_000_000)
        var line: String
        switch kind {
        case .request(let method, let target, let version, let status, let bytes):
            line = "\(clientIP) \"\(method) \(target) \(version)\" \(status) pool=\(pool) endpoint=\(endpoint ?? "-") bytes=\(bytes) duration_ms=\(ms)"
            if attempts > 1 { line += " attempts=\(attempts)" }
            if let route { line += " route=\(route)" }
        case .tunnel(let target, let up, let down, let http2):
            line = "\(clientIP) tunnel \(target) closed pool=\(pool) endpoint=\(endpoint ?? "-") bytes_up=\(up) bytes_down=\(down) duration_ms=\(ms)"
            if http2 { line += " protocol=h2" }
        }
        if let error { line += " error=\"\(error)\"" }
        return line
    }
}
