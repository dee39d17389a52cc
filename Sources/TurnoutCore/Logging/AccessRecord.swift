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
    /// The request id (`X-Request-Id`) that went upstream; nil when the request never got one.
    public var requestID: String?
    /// Request body bytes taken from the client (a tunnel: `bytesUp`).
    public var bytesIn: Int64
    /// From the request's start until its head could go to the endpoint (a new connection's
    /// connect included); nil when it never could.
    public var upstreamConnectNanos: UInt64?
    /// From the request head going upstream to the first byte of the answer; nil when none came.
    public var upstreamResponseNanos: UInt64?

    public init(clientIP: String, kind: Kind, pool: String, endpoint: String?, durationNanos: UInt64,
                attempts: Int = 1, route: String? = nil, error: String? = nil, requestID: String? = nil,
                bytesIn: Int64 = 0, upstreamConnectNanos: UInt64? = nil, upstreamResponseNanos: UInt64? = nil) {
        self.clientIP = clientIP
        self.kind = kind
        self.pool = pool
        self.endpoint = endpoint
        self.durationNanos = durationNanos
        self.attempts = attempts
        self.route = route
        self.error = error
        self.requestID = requestID
        self.bytesIn = bytesIn
        self.upstreamConnectNanos = upstreamConnectNanos
        self.upstreamResponseNanos = upstreamResponseNanos
    }

    /// The names of the JSON line's fields, in order (docs/metrics-and-logs.md documents each).
    public static let jsonFields = ["time", "log", "type", "client", "method", "path", "protocol", "status", "pool", "endpoint",
                                    "bytes_in", "bytes_out", "duration_ms", "upstream_connect_ms", "upstream_response_ms",
                                    "request_id", "retries", "route", "error"]

    /// The JSON line (`log_format: json`) with its newline, stamped `timeNanos` (wall clock,
    /// since the epoch): every field of `jsonFields`, always present (null when it does not
    /// apply), in that order.
    public func jsonLine(timeNanos: UInt64) -> [UInt8] {
        var j = JSONLine()
        j.time("time", timeNanos)
        j.literal("log", "access")
        switch kind {
        case .request(let method, let target, let version, let status, let bytes):
            j.literal("type", "request")
            j.string("client", clientIP)
            j.string("method", method)
            j.string("path", target)
            j.string("protocol", version)
            j.int("status", Int64(status))
            j.string("pool", pool)
            j.string("endpoint", endpoint)
            j.int("bytes_in", bytesIn)
            j.int("bytes_out", bytes)
        case .tunnel(let target, let up, let down, let http2):
            j.literal("type", "tunnel")
            j.string("client", clientIP)
            if http2 { j.literal("method", "CONNECT") } else { j.literal("method", "GET") }
            j.string("path", target)
            if http2 { j.literal("protocol", "HTTP/2") } else { j.literal("protocol", "HTTP/1.1") }
            j.int("status", http2 ? 200 : 101)
            j.string("pool", pool)
            j.string("endpoint", endpoint)
            j.int("bytes_in", up)
            j.int("bytes_out", down)
        }
        j.milliseconds("duration_ms", nanos: durationNanos)
        j.milliseconds("upstream_connect_ms", nanos: upstreamConnectNanos)
        j.milliseconds("upstream_response_ms", nanos: upstreamResponseNanos)
        j.string("request_id", requestID)
        j.int("retries", Int64(max(attempts - 1, 0)))
        j.string("route", route)
        j.string("error", error)
        var line = j.finish()
        line.append(10)
        return line
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
