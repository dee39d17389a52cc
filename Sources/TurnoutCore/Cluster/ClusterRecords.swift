import Foundation

/// One replica's entry in the cluster registry (`<prefix>replicas/<id>`, bound to the replica's
/// lease, so it disappears when the replica stops renewing it).
public struct ReplicaRecord: Codable, Sendable, Equatable {
    public var id: String
    /// The first listener's address (where clients reach this replica).
    public var address: String
    public var version: String
    public var pid: Int32
    /// The routing document revision this replica routes by.
    public var appliedRevision: UInt64
    /// When it began routing by it (Unix time in microseconds): convergence is measured with it.
    public var appliedAtMicros: Int64
    /// No contact with etcd for longer than `stale_after` (as the replica itself last knew).
    public var stale: Bool
    /// Per pool: endpoints and how many of them pass their probes, as this replica sees them.
    public var health: [String: PoolHealth]
    /// When the record was written (Unix time in milliseconds).
    public var updatedAtMillis: Int64
    /// Requests in flight and tunnels open, as `[in_flight, tunnels]` by `pool/address`, on
    /// endpoints that take no new requests here (draining, in maintenance, leaving, or in a pool
    /// without weight): what `wait-drained` waits for across replicas.
    public var busy: [String: [Int]]?

    public struct PoolHealth: Codable, Sendable, Equatable {
        public var endpoints: Int
        public var healthy: Int
        public init(endpoints: Int, healthy: Int) {
            self.endpoints = endpoints
            self.healthy = healthy
        }
    }

    enum CodingKeys: String, CodingKey {
        case id, address, version, pid, stale, health, busy
        case appliedRevision = "applied_revision"
        case appliedAtMicros = "applied_at_us"
        case updatedAtMillis = "updated_at_ms"
    }

    public init(id: String, address: String, version: String, pid: Int32, appliedRevision: UInt64, appliedAtMicros: Int64,
                stale: Bool, health: [String: PoolHealth], updatedAtMillis: Int64) {
        self.id = id
        self.address = address
        self.version = version
        self.pid = pid
        self.appliedRevision = appliedRevision
        self.appliedAtMicros = appliedAtMicros
        self.stale = stale
        self.health = health
        self.updatedAtMillis = updatedAtMillis
    }
}

/// What one replica saw of a ramp's current step (`<prefix>ramp-windows/<id>`, lease-bound):
/// the ramp's driver adds every replica's window to its own before it judges the gates.
public struct RampWindowRecord: Codable, Sendable, Equatable {
    public var replica: String
    public var pool: String
    /// The step (0-based) and its start, which identify the step across replicas.
    public var step: Int
    public var stepStartedAt: Double
    public var requests: UInt64
    public var errors: UInt64
    /// Requests of every pool in the window.
    public var total: UInt64
    /// The canary's latency histogram, sparse: [bucket index, count] pairs.
    public var latency: [[UInt64]]
    public var latencySumMicros: UInt64

    enum CodingKeys: String, CodingKey {
        case replica, pool, step, requests, errors, total, latency
        case stepStartedAt = "step_started_at"
        case latencySumMicros = "latency_sum_us"
    }

    public init(replica: String, pool: String, step: Int, stepStartedAt: Double, window: RampWindow) {
        self.replica = replica
        self.pool = pool
        self.step = step
        self.stepStartedAt = stepStartedAt
        self.requests = window.requests
        self.errors = window.errors
        self.total = window.totalRequests
        self.latency = window.latency.counts.enumerated().compactMap { $0.element == 0 ? nil : [UInt64($0.offset), $0.element] }
        self.latencySumMicros = window.latency.sumMicros
    }

    /// The window this record carries (buckets out of range are ignored).
    public var window: RampWindow {
        var h = LatencyHistogram()
        for pair in latency where pair.count == 2 && pair[0] < UInt64(LatencyHistogram.bucketCount) {
            h.add(bucket: Int(pair[0]), count: pair[1])
        }
        h.addSum(micros: latencySumMicros)
        return RampWindow(requests: requests, errors: errors, latency: h, totalRequests: total)
    }

    public func matches(_ ramp: RampState) -> Bool {
        pool == ramp.plan.pool && step == ramp.step && stepStartedAt == ramp.stepStartedAt.timeIntervalSince1970
    }
}

/// JSON encoding for the cluster's records (sorted keys, compact).
public enum ClusterJSON {
    public static func encode<T: Encodable>(_ value: T) -> [UInt8] {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return Array((try? e.encode(value)) ?? Data())
    }

    public static func decode<T: Decodable>(_ type: T.Type, _ bytes: [UInt8]) -> T? {
        try? JSONDecoder().decode(type, from: Data(bytes))
    }
}

/// This build's version, as `turnout --version` prints it and the cluster registry records it.
public enum TurnoutVersion {
    public static let number = "0.1.0"
    public static let text = "turnout \(number)"
}
