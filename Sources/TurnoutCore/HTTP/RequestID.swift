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

    /// A new id: 32 hex digits, the process's random prefix and a counter.
    public static func make() -> String {
        let n = counter.wrappingAdd(1, ordering: .relaxed).oldValue
        let digits: StaticString = "0123456789abcdef"
        return String(unsafeUninitializedCapacity: 32) { buf in
            let d = digits.utf8Start
            for i in 0..<16 {
                buf[i] = d[Int((prefix >> UInt64(60 - 4 * i)) & 0xF)]
                buf[16 + i] = d[Int((n >> UInt64(60 - 4 * i)) & 0xF)]
            }
            return 32
        }
    }

    /// The id of a request with these headers, and whether Turnout made it (and so adds the header).
    public static func of(_ headers: HTTPHeaders) -> (id: String, made: Bool) {
        if let v = headers.first("x-request-id"), isUsable(v) { return (v, false) }
        return (make(), true)
    }
}
