import Synchronization

/// The request id (`X-Request-Id`): the client's when it sent a usable one, else one Turnout
/// makes. It goes upstream with the request (and with its mirror copy) and into the access log,
/// so one request can be followed from the client through Turnout to the application.
public enum RequestID {
    /// The header's name as it is sent.
    public static let header = "X-Request-Id"
    /// Longest id taken from a client; a longer one is replaced.
    public static let maxLength = 200

    /// Random per process, so that ids from different replicas and restarts do not collide.
    private static let prefix: UInt64 = {
        var g = SystemRandomNumberGenerator()
        return g.next()
    }()
    private static let counter = Atomic<UInt64>(0)

    /// A client's id is used when it is 1-200 visible ASCII characters (no spaces, no controls):
    /// what may go into a log line and a header as it is.
    public static func isUsable(_ v: String) -> Bool {
        let u = v.utf8
        return !u.isEmpty && u.count <= maxLength && u.allSatisfy { $0 > 0x20 && $0 < 0x7F }
    }

    /// A new id's number: its text (`withText`) is the process's random prefix and this counter,
    /// 32 hex digits. Kept as a number until it is written: into the upstream request's fields
    /// straight from the stack, and into a String only for a log line.
    public static func next() -> UInt64 { counter.wrappingAdd(1, ordering: .relaxed).oldValue }

    /// Calls `body` with the 32 hex digits of id number `n`, written on the stack.
    public static func withText<R>(_ n: UInt64, _ body: (UnsafeBufferPointer<UInt8>) -> R) -> R {
        let p = prefix
        return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 32) { buf in
            let d: StaticString = "0123456789abcdef"
            let digits = d.utf8Start
            for i in 0..<16 {
                buf[i] = digits[Int((p >> UInt64(60 - 4 * i)) & 0xF)]
                buf[16 + i] = digits[Int((n >> UInt64(60 - 4 * i)) & 0xF)]
            }
            return body(UnsafeBufferPointer(buf))
        }
    }

    /// The text of id number `n`.
    public static func text(_ n: UInt64) -> String { withText(n) { String(decoding: $0, as: UTF8.self) } }

    /// A new id: 32 hex digits, the process's random prefix and a counter.
    public static func make() -> String { text(next()) }

    /// The client's id, when it sent a usable one.
    public static func client(_ headers: HTTPHeaders) -> String? {
        guard let v = headers.first("x-request-id"), isUsable(v) else { return nil }
        return v
    }

    /// The id of a request with these headers, and whether Turnout made it (and so adds the header).
    public static func of(_ headers: HTTPHeaders) -> (id: String, made: Bool) {
        if let v = client(headers) { return (v, false) }
        return (make(), true)
    }
}
