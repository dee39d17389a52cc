import Atomics
import Synchronization

/// The single owner of routing state. Writers (the admin API, the health prober) change it under a
/// lock and publish a new immutable `RoutingTable` with one atomic swap; the data path reads the
/// current table without locking.
public final class RoutingStore: Sendable {
    private let published: ManagedAtomic<RoutingTable>
    private let inner: Mutex<Inner>

    struct Inner {
        var state: RoutingState
        var health: [Int: HealthStatus]
    }

    /// Every endpoint, by pool in config order.
    public let endpoints: [(pool: PoolConfig, endpoints: [UpstreamEndpoint])]
    public let routing: RoutingConfig

    public init(config: TurnoutConfig, state: RoutingState) {
        var nextID = 0
        var all: [(pool: PoolConfig, endpoints: [UpstreamEndpoint])] = []
        for pool in config.pools {
            var eps: [UpstreamEndpoint] = []
            for address in pool.endpoints {
                eps.append(UpstreamEndpoint(id: nextID, pool: pool.name, address: address))
                nextID += 1
            }
            all.append((pool, eps))
        }
        self.endpoints = all
        self.routing = config.routing
        let inner = Inner(state: state, health: [:])
        self.inner = Mutex(inner)
        self.published = ManagedAtomic(Self.build(inner, endpoints: all, routing: config.routing))
    }

    /// The current routing snapshot. Lock-free; call once per request.
    @inline(__always)
    public var table: RoutingTable { published.load(ordering: .acquiring) }

    public var state: RoutingState { inner.withLock { $0.state } }

    public func health(of endpointID: Int) -> HealthStatus {
        inner.withLock { $0.health[endpointID] ?? .unknown }
    }

    public var allEndpoints: [UpstreamEndpoint] { endpoints.flatMap(\.endpoints) }

    /// Records a health change and publishes a snapshot that reflects it.
    public func setHealth(endpointID: Int, _ status: HealthStatus) {
        inner.withLock { inner in
            guard inner.health[endpointID] != status else { return }
            inner.health[endpointID] = status
            published.store(Self.build(inner, endpoints: endpoints, routing: routing), ordering: .releasing)
        }
    }

    /// Runs `change` on a copy of the state under the store's lock. When it returns a new state, that
    /// state is first handed to `persist` (still under the lock, so writers are serialised), and only
    /// if persisting succeeds is it published. A thrown error leaves everything as it was.
    @discardableResult
    public func mutate<E: Error>(
        _ change: (RoutingState, _ health: [Int: HealthStatus]) throws(E) -> RoutingState,
        persist: (RoutingState) throws(E) -> Void
    ) throws(E) -> RoutingState {
        try inner.withLock { (inner: inout Inner) throws(E) -> RoutingState in
            let next = try change(inner.state, inner.health)
            guard next != inner.state else { return next }
            try persist(next)
            inner.state = next
            published.store(Self.build(inner, endpoints: endpoints, routing: routing), ordering: .releasing)
            return next
        }
    }

    static func build(_ inner: Inner, endpoints: [(pool: PoolConfig, endpoints: [UpstreamEndpoint])], routing: RoutingConfig) -> RoutingTable {
        var pools: [PoolRoute] = []
        var weights: [Int] = []
        var live = 0
        for (i, entry) in endpoints.enumerated() {
            let healthy = entry.endpoints.indices.filter { inner.health[entry.endpoints[$0].id] == .healthy }
            pools.append(PoolRoute(name: entry.pool.name, endpoints: entry.endpoints, healthy: healthy, balance: entry.pool.balance))
            weights.append(inner.state.weights[entry.pool.name] ?? 0)
            if entry.pool.name == inner.state.live { live = i }
        }
        return RoutingTable(generation: inner.state.generation, live: live, pools: pools, weights: weights,
                            sticky: routing.sticky, previewHeader: routing.previewHeader, failover: routing.failover)
    }
}

extension RoutingStore {
    /// Pool names in config order and which pools have a healthy endpoint, for admin commands.
    public func poolView(health: [Int: HealthStatus]) -> RoutingCommands.PoolView {
        var healthy = Set<String>()
        for entry in endpoints where entry.endpoints.contains(where: { health[$0.id] == .healthy }) {
            healthy.insert(entry.pool.name)
        }
        return RoutingCommands.PoolView(names: endpoints.map(\.pool.name), healthy: healthy)
    }

    public var poolNames: [String] { endpoints.map(\.pool.name) }

    /// The document `GET /v1/state` returns: generation, live pool, weights, previous weights, and
    /// every endpoint with its health and in-flight count.
    public func stateJSON(ramp: String = "null") -> String {
        let (state, health) = snapshot()
        let order = poolNames
        var out = "{\"generation\":\(state.generation),\"live\":\(JSONWriter.quote(state.live))"
        out += ",\"weights\":\(JSONWriter.weights(state.weights, order: order))"
        out += ",\"previous\":" + (state.previousWeights.map { JSONWriter.weights($0, order: order) } ?? "null")
        out += ",\"pools\":{"
        out += endpoints.map { entry in
            let eps = entry.endpoints.map { e -> String in
                let h = health[e.id] ?? .unknown
                return "{\"address\":\(JSONWriter.quote(e.address.description)),\"healthy\":\(h == .healthy),\"health\":\"\(h.rawValue)\",\"in_flight\":\(max(0, e.inFlight.load(ordering: .relaxed))),\"tunnels\":\(max(0, e.tunnels.load(ordering: .relaxed)))}"
            }
            return "\(JSONWriter.quote(entry.pool.name)):{\"endpoints\":[\(eps.joined(separator: ","))]}"
        }.joined(separator: ",")
        out += "},\"ramp\":\(ramp)}"
        return out
    }

    /// The state and endpoint health, read together.
    public func snapshot() -> (RoutingState, [Int: HealthStatus]) {
        inner.withLock { ($0.state, $0.health) }
    }
}
