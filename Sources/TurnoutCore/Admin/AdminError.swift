/// An admin API failure: the HTTP status, a machine-readable code and a sentence for humans.
/// Rendered as `{"error":"...","code":"..."}`.
public struct AdminError: Error, Sendable, Equatable, CustomStringConvertible {
    public var status: Int
    public var code: String
    public var message: String

    public init(_ status: Int, _ code: String, _ message: String) {
        self.status = status
        self.code = code
        self.message = message
    }

    public var description: String { "\(status) \(code): \(message)" }

    public static func badRequest(_ message: String, code: String = "bad_request") -> AdminError {
        AdminError(400, code, message)
    }
}
