/// What an operator set for one endpoint: whether it takes new requests.
public enum EndpointAdminState: String, Sendable, Equatable, Codable, CaseIterable {
    /// Takes requests while healthy (the default).
    case serving
    /// Takes no new requests; requests in flight and open tunnels finish.
    case draining
    /// Takes no requests and is still probed, so `ready` can bring it back at once.
    case maintenance
}

/// A run-time change to one endpoint of a pool, made through the admin API and kept with the
/// routing state (state file, cluster document), so a restart, a reload and every replica apply
/// it. Keyed by pool, then by address (`host:port`) in `RoutingState.endpoints`.
public struct EndpointOverride: Sendable, Equatable, Codable {
    /// The endpoint was added at run time (it is not in the config or DNS answer).
    public var added: Bool
    /// The endpoint was removed at run time: it drains, then leaves the pool, and stays out even
    /// while the config or DNS still names it (until it is added again).
    public var removed: Bool
    public var state: EndpointAdminState
    /// Its share within the pool relative to the other endpoints (default 100; 0 takes no new
    /// requests, like draining).
    public var weight: Int?

    public init(added: Bool = false, removed: Bool = false, state: EndpointAdminState = .serving, weight: Int? = nil) {
        self.added = added
        self.removed = removed
        self.state = state
        self.weight = weight
    }

    /// Whether the override changes nothing (and can be forgotten).
    public var isNeutral: Bool { !added && !removed && state == .serving && weight == nil }

    public static let defaultWeight = 100
    public static let maxWeight = 10_000
}

/// Where an endpoint of a pool comes from.
public enum EndpointSource: String, Sendable, Equatable {
    /// Listed under `pools.NAME.endpoints`.
    case config
    /// An address of the pool's `discovery` name.
    case dns
    /// Added with `POST /v1/pools/{pool}/endpoints`.
    case api
}
