import Atomics
import Synchronization

/// The single owner of routing state. Writers (the admin API, the health prober) change it under a
/// lock and publish a new immutable `RoutingTable` with one atomic swap; the data path reads the
/// current table without locking.
public final class RoutingStore: Sendable {
    private let published: ManagedAtomic<RoutingTable>
    /// Counts publications: bumped after each new table is stored, so that a reader that cached a
    /// table can tell with one plain load whether it is still current.
    private let publications = Atomic<UInt64>(0)
    private let inner: Mutex<Inner>

    struct Inner {
        var state: RoutingState
        var health: [Int: HealthStatus]
        var nextEndpointID: Int
    }

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
        let inner = Inner(state: state, health: [:], nextEndpointID: nextID)
        let topology = Topology(all, config.routing)
        self.inner = Mutex(inner)
        self.topology = ManagedAtomic(topology)
        self.published = ManagedAtomic(Self.build(inner, topology))
    }

    /// The current routing snapshot. Lock-free, but loading a reference atomically costs two
    /// 16-byte compare-and-swaps: the data path keeps the table per event loop and reloads it
    /// when `version` moves (`LoopView`).
    @inline(__always)
    public var table: RoutingTable { published.load(ordering: .acquiring) }

    /// How many tables have been published. A table loaded after reading a version is at least as
    /// new as that version.
    @inline(__always)
    public var version: UInt64 { publications.load(ordering: .acquiring) }

    private func publish(_ table: RoutingTable) {
        published.store(table, ordering: .releasing)
        publications.add(1, ordering: .releasing)
    }

    public var state: RoutingState { inner.withLock { $0.state } }

    /// Pools, endpoints and routing options, readable without the lock. Only replaced under the
    /// lock (by a reload), so code under the lock reads the one in force.
    final class Topology: AtomicReference, Sendable {
        let endpoints: [(pool: PoolConfig, endpoints: [UpstreamEndpoint])]
        let routing: RoutingConfig
        init(_ endpoints: [(pool: PoolConfig, endpoints: [UpstreamEndpoint])], _ routing: RoutingConfig) {
            self.endpoints = endpoints
            self.routing = routing
        }
    }
    private let topology: ManagedAtomic<Topology>

    /// Every endpoint, by pool in config order (a reload may change them).
    public var endpoints: [(pool: PoolConfig, endpoints: [UpstreamEndpoint])] { topology.load(ordering: .acquiring).endpoints }

    public var routing: RoutingConfig { topology.load(ordering: .acquiring).routing }

    public func health(of endpointID: Int) -> HealthStatus {
        inner.withLock { $0.health[endpointID] ?? .unknown }
    }

    public var allEndpoints: [UpstreamEndpoint] { endpoints.flatMap(\.endpoints) }

    /// Records a health change and publishes a snapshot that reflects it.
    public func setHealth(endpointID: Int, _ status: HealthStatus) {
        inner.withLock { inner in
            guard inner.health[endpointID] != status else { return }
            let topology = self.topology.load(ordering: .acquiring)
            guard topology.endpoints.contains(where: { $0.endpoints.contains { $0.id == endpointID } }) else { return }
            inner.health[endpointID] = status
            publish(Self.build(inner, topology))
        }
    }

    /// What a reload changed in the pools.
    public struct Reconfiguration: Sendable {
        public var added: [UpstreamEndpoint] = []
        public var removed: [UpstreamEndpoint] = []
        public var addedPools: [String] = []
        public var removedPools: [String] = []
    }

    /// Takes the pools, endpoints and routing options of a reloaded config. An endpoint that stays
    /// (same pool, same address) keeps its identity, health and counters; a new one starts unknown
    /// (it takes traffic once probed healthy). Runtime weights and the live pool are kept; a new
    /// pool gets weight 0. Refused, changing nothing, when a pool that is live, has weight, or is
    /// being ramped would disappear. A changed state (pools added or removed) is persisted first.
    public func reconfigure<E: Error>(_ config: TurnoutConfig, persist: (RoutingState) throws(E) -> Void,
                                      refuse: (String) -> E) throws(E) -> Reconfiguration {
        try inner.withLock { (inner: inout Inner) throws(E) -> Reconfiguration in
            var out = Reconfiguration()
            let current = topology.load(ordering: .acquiring).endpoints
            let newNames = Set(config.pools.map(\.name))
            for entry in current where !newNames.contains(entry.pool.name) {
                let name = entry.pool.name
                if inner.state.live == name { throw refuse("pool \(name) is live; switch away from it before removing it") }
                if (inner.state.weights[name] ?? 0) > 0 {
                    throw refuse("pool \(name) still has weight \(Percent.format(basisPoints: inner.state.weights[name] ?? 0))%; set its weight to 0 before removing it")
                }
                if let ramp = inner.state.ramp, ramp.isActive, ramp.plan.pool == name || ramp.preRampLive == name {
                    throw refuse("pool \(name) is part of a running ramp")
                }
                out.removedPools.append(name)
            }
            var nextID = inner.nextEndpointID
            var all: [(pool: PoolConfig, endpoints: [UpstreamEndpoint])] = []
            for pool in config.pools {
                let old = current.first { $0.pool.name == pool.name }?.endpoints ?? []
                if old.isEmpty && !current.contains(where: { $0.pool.name == pool.name }) { out.addedPools.append(pool.name) }
                var eps: [UpstreamEndpoint] = []
                for address in pool.endpoints {
                    if let kept = old.first(where: { $0.address == address }) {
                        eps.append(kept)
                    } else {
                        let e = UpstreamEndpoint(id: nextID, pool: pool.name, address: address)
                        nextID += 1
                        eps.append(e)
                        out.added.append(e)
                    }
                }
                out.removed += old.filter { e in !eps.contains { $0 === e } }
                all.append((pool, eps))
            }
            var state = inner.state
            for name in out.removedPools {
                state.weights[name] = nil
                state.previousWeights?[name] = nil
            }
            for name in out.addedPools { state.weights[name] = 0; state.previousWeights?[name] = 0 }
            // A previous state that named a removed pool (as live, or with weight) cannot be restored.
            let previousLost = state.previousLive.map { !newNames.contains($0) } == true
                || state.previousWeights.map { $0.values.reduce(0, +) != Percent.whole } == true
            if previousLost {
                state.previousLive = nil
                state.previousWeights = nil
            }
            if state != inner.state {
                state.generation += 1
                try persist(state)
                inner.state = state
            }
            for e in out.removed { inner.health[e.id] = nil }
            inner.nextEndpointID = nextID
            let topology = Topology(all, config.routing)
            self.topology.store(topology, ordering: .releasing)
            publish(Self.build(inner, topology))
            return out
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
            publish(Self.build(inner, topology.load(ordering: .acquiring)))
            return next
        }
    }

    static func build(_ inner: Inner, _ topology: Topology) -> RoutingTable {
        var pools: [PoolRoute] = []
        var weights: [Int] = []
        var live = 0
        for (i, entry) in topology.endpoints.enumerated() {
            let healthy = entry.endpoints.indices.filter { inner.health[entry.endpoints[$0].id] == .healthy }
            pools.append(PoolRoute(name: entry.pool.name, endpoints: entry.endpoints, healthy: healthy, balance: entry.pool.balance))
            weights.append(inner.state.weights[entry.pool.name] ?? 0)
            if entry.pool.name == inner.state.live { live = i }
        }
        let routing = topology.routing
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
    public func stateJSON(ramp: String = "null", cluster: String = "null") -> String {
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
        out += "},\"ramp\":\(ramp),\"cluster\":\(cluster)}"
        return out
    }

    /// The state and endpoint health, read together.
    public func snapshot() -> (RoutingState, [Int: HealthStatus]) {
        inner.withLock { ($0.state, $0.health) }
    }
}
