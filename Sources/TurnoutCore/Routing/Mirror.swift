import Synchronization

/// Traffic mirroring (`routing.mirror`, `PUT /v1/mirror`): a copy of a share of the requests that
/// other pools serve goes to the mirror pool as well, fire and forget. The client's answer never
/// waits for the copy; the copy's answer is thrown away and only counted.
public struct MirrorSpec: Sendable, Equatable, Codable {
    /// The pool that receives the copies.
    public var pool: String
    /// The share of eligible requests copied, in basis points (1% = 100).
    public var percentBP: Int
    /// Methods that are copied (upper case). Idempotent ones by default: a copy of a POST is a
    /// second POST.
    public var methods: [String]
    /// A request body is copied only up to this many bytes; a longer one is not mirrored.
    public var maxBodyBytes: Int
    /// Copies in flight at once per event loop; beyond, requests are not mirrored (counted as
    /// dropped), so a slow mirror holds bounded memory and connections.
    public var maxInFlight: Int

    public static let defaultMethods = ["GET", "HEAD"]
    public static let defaultMaxBodyBytes = 64 * 1024
    public static let defaultMaxInFlight = 256
    public static let maxMaxBodyBytes = 16 * 1024 * 1024
    public static let maxMaxInFlight = 100_000

    public init(pool: String, percentBP: Int, methods: [String] = MirrorSpec.defaultMethods,
                maxBodyBytes: Int = MirrorSpec.defaultMaxBodyBytes, maxInFlight: Int = MirrorSpec.defaultMaxInFlight) {
        self.pool = pool
        self.percentBP = percentBP
        self.methods = methods
        self.maxBodyBytes = maxBodyBytes
        self.maxInFlight = maxInFlight
    }

    enum CodingKeys: String, CodingKey {
        case pool, percentBP = "percent_bp", methods, maxBodyBytes = "max_body_bytes", maxInFlight = "max_in_flight"
    }

    /// Why the spec cannot be used, as one sentence; nil when it is valid for these pools.
    public func problem(pools: [String]) -> String? {
        if !pools.contains(pool) {
            return "no pool named \"\(pool)\" (pools: \(pools.joined(separator: ", ")))"
        }
        if percentBP <= 0 || percentBP > Percent.whole {
            return "percent must be above 0 and at most 100, got \(Percent.format(basisPoints: percentBP)) (to stop mirroring, turn it off)"
        }
        if methods.isEmpty { return "methods must name at least one method" }
        for m in methods {
            if !HTTPSyntax.isToken(m) || m != m.uppercased() { return "\"\(m)\" is not a method (upper-case token expected)" }
            if m == "CONNECT" { return "CONNECT cannot be mirrored" }
        }
        if Set(methods).count != methods.count { return "methods lists a method twice" }
        if maxBodyBytes < 0 || maxBodyBytes > Self.maxMaxBodyBytes {
            return "max_body_bytes must be between 0 and \(Self.maxMaxBodyBytes), got \(maxBodyBytes)"
        }
        if maxInFlight < 1 || maxInFlight > Self.maxMaxInFlight {
            return "max_in_flight must be between 1 and \(Self.maxMaxInFlight), got \(maxInFlight)"
        }
        return nil
    }

    /// "green 10% of GET, HEAD".
    public var summary: String {
        "\(pool) \(Percent.format(basisPoints: percentBP))% of \(methods.joined(separator: ", "))"
    }
}

/// The mirror setting as the state file and the routing document hold it: `"off"`, or the spec.
/// A document without the key (written before mirroring existed) takes the config's.
public enum MirrorSetting: Sendable, Equatable, Codable {
    case off
    case on(MirrorSpec)

    public init(_ spec: MirrorSpec?) { self = spec.map { .on($0) } ?? .off }

    public var spec: MirrorSpec? {
        if case .on(let s) = self { return s }
        return nil
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let word = try? c.decode(String.self) {
            guard word == "off" else {
                throw DecodingError.dataCorruptedError(in: c, debugDescription: "mirror must be \"off\" or an object, got \"\(word)\"")
            }
            self = .off
        } else {
            self = .on(try c.decode(MirrorSpec.self))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .off: try c.encode("off")
        case .on(let s): try c.encode(s)
        }
    }
}

/// The mirror as the data path reads it from the routing table: which requests are copied, to
/// which pool. The share is exact: of every 10,000 eligible requests, `percentBP` are copied,
/// spread evenly (the same error-diffusion count as the weighted split).
public final class MirrorRoute: Sendable {
    /// Index of the mirror pool in the table.
    public let pool: Int
    public let spec: MirrorSpec
    private let methods: [String]
    private let counter = Atomic<UInt64>(0)

    public init(pool: Int, spec: MirrorSpec) {
        self.pool = pool
        self.spec = spec
        self.methods = spec.methods
    }

    /// Whether a request with this method, served by pool `servingPool`, is copied. A request the
    /// mirror pool serves itself is never copied to it; methods not listed are not counted.
    @inline(__always)
    public func selects(method: String, servingPool: Int) -> Bool {
        guard servingPool != pool, methods.contains(method) else { return false }
        let p = UInt64(spec.percentBP)
        if p >= UInt64(Percent.whole) { return true }
        let n = counter.wrappingAdd(1, ordering: .relaxed).oldValue % UInt64(Percent.whole)
        return (n + 1) * p / UInt64(Percent.whole) > n * p / UInt64(Percent.whole)
    }
}
