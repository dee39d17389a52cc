/// The standard gRPC health check (`grpc.health.v1.Health/Check`), as bytes: the request a probe
/// sends and the verdict on the answer. The messages are tiny protobufs written and read by hand:
/// `HealthCheckRequest { string service = 1; }` and `HealthCheckResponse { ServingStatus status = 1; }`
/// with SERVING = 1, NOT_SERVING = 2, SERVICE_UNKNOWN = 3.
public enum GRPCHealth {
    public static let path = "/grpc.health.v1.Health/Check"

    /// The request body: one length-prefixed message (not compressed).
    public static func requestBody(service: String) -> [UInt8] {
        var message: [UInt8] = []
        let name = Array(service.utf8)
        if !name.isEmpty {
            message.append(0x0a)  // field 1, length-delimited
            appendVarint(&message, UInt64(name.count))
            message.append(contentsOf: name)
        }
        let n = UInt32(message.count)
        return [0, UInt8(n >> 24), UInt8(n >> 16 & 0xff), UInt8(n >> 8 & 0xff), UInt8(n & 0xff)] + message
    }

    private static func appendVarint(_ out: inout [UInt8], _ value: UInt64) {
        var v = value
        while v >= 0x80 {
            out.append(UInt8(v & 0x7f) | 0x80)
            v >>= 7
        }
        out.append(UInt8(v))
    }

    static let statusNames = [0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"]

    /// Whether the answer says SERVING, and what it said. `grpcStatus` comes from the trailers (or,
    /// for a trailers-only answer, the head).
    public static func verdict(httpStatus: Int, grpcStatus: String?, grpcMessage: String?, body: [UInt8]) -> (passed: Bool, detail: String) {
        guard httpStatus == 200 else { return (false, "HTTP status \(httpStatus)") }
        guard let grpcStatus else { return (false, "no grpc-status in the answer") }
        guard grpcStatus == "0" else {
            return (false, "grpc-status \(grpcStatus)" + (grpcMessage.map { ": \($0)" } ?? ""))
        }
        guard body.count >= 5, body[0] == 0 else { return (false, "no health message in the answer") }
        let length = Int(body[1]) << 24 | Int(body[2]) << 16 | Int(body[3]) << 8 | Int(body[4])
        guard body.count >= 5 + length else { return (false, "a truncated health message") }
        var status: UInt64 = 0  // proto3: an absent field is 0 (UNKNOWN)
        var i = 5
        let end = 5 + length
        while i < end {
            let tag = body[i]
            i += 1
            guard let (value, next) = readVarint(body, i, end) else { return (false, "a malformed health message") }
            switch tag {
            case 0x08:  // field 1, varint
                status = value
                i = next
            default:
                // Another field: skip it (varint, or length-delimited).
                if tag & 7 == 0 {
                    i = next
                } else if tag & 7 == 2 {
                    i = next + Int(value)
                } else {
                    return (false, "a malformed health message")
                }
            }
        }
        let name = statusNames[Int(status)] ?? "status \(status)"
        return (status == 1, name)
    }

    private static func readVarint(_ b: [UInt8], _ start: Int, _ end: Int) -> (UInt64, Int)? {
        var v: UInt64 = 0
        var shift: UInt64 = 0
        var i = start
        while i < end && shift < 64 {
            let byte = b[i]
            v |= UInt64(byte & 0x7f) << shift
            i += 1
            if byte & 0x80 == 0 { return (v, i) }
            shift += 7
        }
        return nil
    }
}

/// gRPC status codes for answers Turnout gives a gRPC client itself (no healthy endpoint, an
/// upstream that failed, a bad request): the mapping gRPC's own HTTP-to-gRPC table and Envoy use.
public enum GRPCStatus {
    public static let unknown = 2
    public static let internalError = 13
    public static let unavailable = 14

    public static func code(forHTTP status: Int) -> Int {
        switch status {
        case 400: return internalError
        case 401: return 16  // UNAUTHENTICATED
        case 403: return 7  // PERMISSION_DENIED
        case 404: return 12  // UNIMPLEMENTED
        case 413, 431: return 8  // RESOURCE_EXHAUSTED
        case 429, 502, 503, 504: return unavailable
        default: return unknown
        }
    }

    /// A `grpc-message` value: percent-encoded outside printable ASCII and for '%' itself.
    public static func encodeMessage(_ text: String) -> String {
        var out = ""
        for b in text.utf8 {
            if b >= 0x20 && b <= 0x7e && b != 0x25 {
                out.unicodeScalars.append(UnicodeScalar(b))
            } else {
                out += "%" + String(b, radix: 16, uppercase: true).leftPaddedHex
            }
        }
        return out
    }

    /// Whether a request is a gRPC call (`content-type: application/grpc`, `application/grpc+proto`...).
    public static func isGRPC(contentType: String?) -> Bool {
        guard var ct = contentType else { return false }
        return ct.withUTF8 { isGRPC(contentType: $0) }
    }

    /// The same test on the field's bytes, without making a String of them.
    public static func isGRPC(contentType ct: UnsafeBufferPointer<UInt8>) -> Bool {
        let base: StaticString = "application/grpc"
        let n = base.utf8CodeUnitCount
        guard ct.count >= n, UnsafeBufferPointer(rebasing: ct[0..<n]).equalsIgnoringASCIICase(base) else { return false }
        return ct.count == n || ct[n] == UInt8(ascii: "+") || ct[n] == UInt8(ascii: ";")
    }
}

private extension String {
    var leftPaddedHex: String { count == 1 ? "0" + self : self }
}
