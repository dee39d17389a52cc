import Atomics
import Foundation
import Synchronization

/// The single owner of routing state. Writers (the admin API, the health prober, discovery, the
/// outlier detector) change it under a lock and publish a new immutable `RoutingTable` with one
/// atomic swap; the data path reads the current table without locking.
public final class RoutingStore: Sendable {
    private let published: ManagedAtomic<RoutingTable>
    /// Counts publications: bumped after each new table is stored, so that a reader that cached a
    /// table can tell with one plain load whether it is still current.
    private let publications = Atomic<UInt64>(0)
    private let inner: Mutex<Inner>
    /// Told about every change of the endpoint set (set once at start-up, before any change).
    private let observer = Mutex<(@Sendable (Reconfiguration) -> Void)?>(nil)

    struct Inner {
        var state: RoutingState
        var health: [Int: HealthStatus]
        var nextEndpointID: Int
        var config: [PoolConfig]
        /// The latest applied DNS answer per discovered pool.
        var discovered: [String: [DiscoveredAddress]] = [:]
        /// Endpoint ids ejected by outlier detection.
        var ejected: Set<Int> = []
        var commit = Commit()
    }

    /// Changes on their way to disk (group commit): each change is computed on the newest state,
    /// durable or pending, and queued; one writer at a time writes the newest pending state,
    /// which covers every change queued before it, with one fsync. The store's lock is not held
    /// while the disk works, so health updates and the data path never wait on it.
    struct Commit {
        /// The newest state not yet durable, and the number of the last change in it.
        var pending: (state: RoutingState, seq: UInt64, durable: Bool)?
        var lastSeq: UInt64 = 0
        /// Changes up to this number are durable and published.
        var doneSeq: UInt64 = 0
        /// Changes in a write that failed (and those computed on top of them): their callers
        /// compute again. Later numbers may be done since; these never are.
        var failed: Range<UInt64> = 0..<0
        var writing = false
    }

    enum Queued { case unchanged(RoutingState), queued(RoutingState, UInt64) }
    enum CommitStep { case done, recompute, wait, apply(RoutingState, UInt64), write(RoutingState, UInt64) }

    /// Wakes callers waiting for their change to be written. Taken before `inner`, never after.
    private let commitSignal = NSCondition()

    public init(config: TurnoutConfig, state: RoutingState) {
        var inner = Inner(state: state, health: [:], nextEndpointID: 0, config: config.pools)
        let (members, _) = Self.members(&inner, current: [])
        let topology = Topology(members, config.routing)
        self.inner = Mutex(inner)
        self.topology = ManagedAtomic(topology)
        self.published = ManagedAtomic(Self.build(inner, topology))
    }

    /// Sets the function told about endpoints that join and leave (health prober, address book).
    /// It runs under the store's lock, in order: it must not block or call back into the store.
    public func observeTopology(_ f: @escaping @Sendable (Reconfiguration) -> Void) {
        observer.withLock { $0 = f }
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
        // A new table with the same split continues the old one's place in the weighted order, so
        // endpoint changes, health flips and DNS answers never skew the split between pools.
        let old = published.load(ordering: .acquiring)
        if old.sequence == table.sequence {
            table.sequenceCounter.store(old.sequenceCounter.load(ordering: .relaxed), ordering: .relaxed)
        }
        published.store(table, ordering: .releasing)
        publications.add(1, ordering: .releasing)
    }

    public var state: RoutingState { inner.withLock { $0.state } }

    /// One endpoint of a pool as the topology holds it: where it comes from and what the operator
    /// set for it.
    public struct Member: Sendable {
        public let endpoint: UpstreamEndpoint
        public let source: EndpointSource
        public let state: EndpointAdminState
        public let weight: Int
        /// No longer wanted (removed, or gone from DNS) but still busy: it drains, then leaves.
        public let leaving: Bool
        /// Takes new requests when healthy and not ejected.
        public var admitsRequests: Bool { state == .serving && !leaving && weight > 0 }
    }

    /// Pools, endpoints and routing options, readable without the lock. Only replaced under the
    /// lock, so code under the lock reads the one in force.
    final class Topology: AtomicReference, Sendable {
        let pools: [(pool: PoolConfig, members: [Member])]
        let endpoints: [(pool: PoolConfig, endpoints: [UpstreamEndpoint])]
        let routing: RoutingConfig
        init(_ pools: [(pool: PoolConfig, members: [Member])], _ routing: RoutingConfig) {
            self.pools = pools
            self.endpoints = pools.map { ($0.pool, $0.members.map(\.endpoint)) }
            self.routing = routing
        }
    }
    private let topology: ManagedAtomic<Topology>

    /// Every endpoint, by pool in config order (reloads, discovery and the admin API change them).
    public var endpoints: [(pool: PoolConfig, endpoints: [UpstreamEndpoint])] { topology.load(ordering: .acquiring).endpoints }

    /// Every endpoint with its source and state, by pool in config order.
    public var members: [(pool: PoolConfig, members: [Member])] { topology.load(ordering: .acquiring).pools }

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

    /// Ejects an endpoint from (or readmits it to) its pool's rotation. Returns false when nothing
    /// changed (already so, or no such endpoint).
    @discardableResult
    public func setEjected(endpointID: Int, _ ejected: Bool) -> Bool {
        inner.withLock { inner in
            let topology = self.topology.load(ordering: .acquiring)
            guard inner.ejected.contains(endpointID) != ejected else { return false }
            if ejected {
                guard topology.endpoints.contains(where: { $0.endpoints.contains { $0.id == endpointID } }) else { return false }
                inner.ejected.insert(endpointID)
            } else {
                inner.ejected.remove(endpointID)
            }
            publish(Self.build(inner, topology))
            return true
        }
    }

    public func isEjected(endpointID: Int) -> Bool { inner.withLock { $0.ejected.contains(endpointID) } }

    /// What changed in the pools.
    public struct Reconfiguration: Sendable {
        public var added: [UpstreamEndpoint] = []
        public var removed: [UpstreamEndpoint] = []
        public var addedPools: [String] = []
        public var removedPools: [String] = []
        public var isEmpty: Bool { added.isEmpty && removed.isEmpty && addedPools.isEmpty && removedPools.isEmpty }
    }

    /// Takes the pools, endpoints and routing options of a reloaded config. An endpoint that stays
    /// (same pool, same address) keeps its identity, health and counters; a new one starts unknown
    /// (it takes traffic once probed healthy). Runtime weights, the live pool and run-time endpoint
    /// changes are kept; a new pool gets weight 0. Refused, changing nothing, when a pool that is
    /// live, has weight, is being ramped or receives mirrored traffic would disappear. A changed state (pools added or
    /// removed) is persisted first.
    public func reconfigure<E: Error>(_ config: TurnoutConfig, persist: (RoutingState) throws(E) -> Void,
                                      refuse: (String) -> E) throws(E) -> Reconfiguration {
        try whenQuiet { (inner: inout Inner) throws(E) -> Reconfiguration in
            let current = topology.load(ordering: .acquiring)
            let oldNames = current.pools.map(\.pool.name)
            let newNames = Set(config.pools.map(\.name))
            var removedPools: [String] = []
            for name in oldNames where !newNames.contains(name) {
                if inner.state.live == name { throw refuse("pool \(name) is live; switch away from it before removing it") }
                if (inner.state.weights[name] ?? 0) > 0 {
                    throw refuse("pool \(name) still has weight \(Percent.format(basisPoints: inner.state.weights[name] ?? 0))%; set its weight to 0 before removing it")
                }
                if let ramp = inner.state.ramp, ramp.isActive, ramp.plan.pool == name || ramp.preRampLive == name {
                    throw refuse("pool \(name) is part of a running ramp")
                }
                if inner.state.mirror?.pool == name {
                    throw refuse("pool \(name) receives mirrored traffic; turn mirroring off (turnout mirror off) before removing it")
                }
                removedPools.append(name)
            }
            let addedPools = config.pools.map(\.name).filter { !oldNames.contains($0) }
            var state = inner.state
            for name in removedPools {
                state.weights[name] = nil
                state.previousWeights?[name] = nil
                state.endpoints[name] = nil
            }
            for name in addedPools { state.weights[name] = 0; state.previousWeights?[name] = 0 }
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
            for name in removedPools { inner.discovered[name] = nil }
            inner.config = config.pools
            var out = rebuild(&inner, routing: config.routing)
            out.addedPools = addedPools
            out.removedPools = removedPools
            return out
        }
    }

    /// Takes a pool's latest DNS answer (discovery decides when an answer is applied). Addresses
    /// that appear join the pool unprobed; those that vanish drain and then leave.
    @discardableResult
    public func setDiscovered(pool: String, _ addresses: [DiscoveredAddress]) -> Reconfiguration {
        inner.withLock { inner in
            guard inner.config.contains(where: { $0.name == pool }), inner.discovered[pool] != addresses else { return Reconfiguration() }
            inner.discovered[pool] = addresses
            return rebuild(&inner, routing: topology.load(ordering: .acquiring).routing)
        }
    }

    /// Lets endpoints that were leaving and are no longer busy go. Returns those that left.
    @discardableResult
    public func releaseDrained() -> [UpstreamEndpoint] {
        // Checked without the lock first: the drain watcher asks ten times a second.
        func anyDone(_ t: Topology) -> Bool { t.pools.contains { $0.members.contains { $0.leaving && !$0.endpoint.isBusy } } }
        guard anyDone(topology.load(ordering: .acquiring)) else { return [] }
        return inner.withLock { inner in
            let current = topology.load(ordering: .acquiring)
            guard anyDone(current) else { return [] }
            return rebuild(&inner, routing: current.routing).removed
        }
    }

    /// Recomputes the endpoint set from config, DNS answers and run-time changes, keeping the
    /// identity of every endpoint that stays, and publishes it. Under the lock.
    @discardableResult
    private func rebuild(_ inner: inout Inner, routing: RoutingConfig) -> Reconfiguration {
        let current = topology.load(ordering: .acquiring)
        let (pools, diff) = Self.members(&inner, current: current.pools)
        for e in diff.removed {
            inner.health[e.id] = nil
            inner.ejected.remove(e.id)
        }
        let next = Topology(pools, routing)
        topology.store(next, ordering: .releasing)
        publish(Self.build(inner, next))
        if !diff.isEmpty { observer.withLock { $0 }?(diff) }
        return diff
    }

    /// The members of every pool: config endpoints, then DNS addresses, then those added at run
    /// time, less those removed at run time; an endpoint no longer wanted stays, leaving, while it
    /// has requests in flight or tunnels open.
    static func members(_ inner: inout Inner, current: [(pool: PoolConfig, members: [Member])])
        -> ([(pool: PoolConfig, members: [Member])], Reconfiguration) {
        var out: [(pool: PoolConfig, members: [Member])] = []
        var diff = Reconfiguration()
        var nextID = inner.nextEndpointID
        let newNames = Set(inner.config.map(\.name))
        // A removed pool took no traffic (reconfigure refuses otherwise): its endpoints go at once.
        for entry in current where !newNames.contains(entry.pool.name) { diff.removed += entry.members.map(\.endpoint) }
        for pool in inner.config {
            let overrides = inner.state.endpoints[pool.name] ?? [:]
            var wanted: [(HostPort, EndpointSource, Int?)] = []
            var seen = Set<String>()
            for a in pool.endpoints where seen.insert(a.description).inserted { wanted.append((a, .config, nil)) }
            for d in inner.discovered[pool.name] ?? [] where seen.insert(d.address.description).inserted {
                wanted.append((d.address, .dns, d.weight))
            }
            for (address, o) in overrides.sorted(by: { $0.key < $1.key }) where o.added && !o.removed {
                if case .success(let hp) = HostPort.parse(address), seen.insert(hp.description).inserted {
                    wanted.append((hp, .api, nil))
                }
            }
            wanted.removeAll { overrides[$0.0.description]?.removed == true }
            let old = current.first { $0.pool.name == pool.name }?.members ?? []
            var members: [Member] = []
            for (address, source, dnsWeight) in wanted {
                let o = overrides[address.description] ?? EndpointOverride()
                let endpoint: UpstreamEndpoint
                if let kept = old.first(where: { $0.endpoint.address == address }) {
                    endpoint = kept.endpoint
                } else {
                    endpoint = UpstreamEndpoint(id: nextID, pool: pool.name, address: address)
                    nextID += 1
                    diff.added.append(endpoint)
                }
                members.append(Member(endpoint: endpoint, source: source, state: o.state,
                                      weight: o.weight ?? dnsWeight ?? EndpointOverride.defaultWeight, leaving: false))
            }
            for m in old where !members.contains(where: { $0.endpoint === m.endpoint }) {
                if m.endpoint.isBusy {
                    members.append(Member(endpoint: m.endpoint, source: m.source, state: .draining, weight: m.weight, leaving: true))
                } else {
                    diff.removed.append(m.endpoint)
                }
            }
            out.append((pool, members))
        }
        inner.nextEndpointID = nextID
        return (out, diff)
    }

    /// Runs `change` on the newest state (under the store's lock). When it returns a new state,
    /// that state is made durable with `persist`, then published, then returned: a caller that
    /// gets the new state back knows it survives a crash. A thrown error leaves everything as it
    /// was. `persist` nil: nothing to write (the cluster's state, durable in etcd).
    ///
    /// The disk is not written under the store's lock. Changes made while a write is under way
    /// are queued, and the next write covers all of them (group commit: one fsync for many
    /// changes); whichever caller is first to find the disk free writes for the batch, so every
    /// caller must pass the same persistence (the proxy's state file). When a write fails, the
    /// caller whose write it was gets its error, and the others' changes are computed again on
    /// the state before the batch.
    @discardableResult
    public func mutate<E: Error>(
        _ change: (RoutingState, _ health: [Int: HealthStatus]) throws(E) -> RoutingState,
        persist: ((RoutingState) throws(E) -> Void)?
    ) throws(E) -> RoutingState {
        commitSignal.lock()
        defer { commitSignal.unlock() }
        compute: while true {
            let queued = try inner.withLock { (inner: inout Inner) throws(E) -> Queued in
                let base = inner.commit.pending?.state ?? inner.state
                let next = try change(base, inner.health)
                guard next != base else { return .unchanged(next) }
                inner.commit.lastSeq += 1
                let durable = persist != nil || inner.commit.pending?.durable == true
                inner.commit.pending = (next, inner.commit.lastSeq, durable)
                return .queued(next, inner.commit.lastSeq)
            }
            let next: RoutingState, seq: UInt64
            switch queued {
            case .unchanged(let same): return same
            case .queued(let n, let s): (next, seq) = (n, s)
            }
            while true {
                let step = inner.withLock { (inner: inout Inner) -> CommitStep in
                    if inner.commit.failed.contains(seq) { return .recompute }
                    if inner.commit.doneSeq >= seq { return .done }
                    guard !inner.commit.writing, let p = inner.commit.pending else { return .wait }
                    if !p.durable { return .apply(p.state, p.seq) }
                    // A batch that must be written is written by a caller that can write it.
                    guard persist != nil else { return .wait }
                    inner.commit.writing = true
                    return .write(p.state, p.seq)
                }
                switch step {
                case .done:
                    return next
                case .recompute:
                    continue compute
                case .wait:
                    commitSignal.wait()
                case .apply(let state, let upTo):
                    inner.withLock { committed(&$0, state, upTo: upTo) }
                    commitSignal.broadcast()
                case .write(let state, let upTo):
                    commitSignal.unlock()
                    var failure: E?
                    do throws(E) { try persist?(state) } catch { failure = error }
                    commitSignal.lock()
                    inner.withLock { (inner: inout Inner) in
                        inner.commit.writing = false
                        if failure == nil {
                            committed(&inner, state, upTo: upTo)
                        } else {
                            inner.commit.failed = (inner.commit.doneSeq + 1)..<(inner.commit.lastSeq + 1)
                            inner.commit.pending = nil
                        }
                    }
                    commitSignal.broadcast()
                    if let failure { throw failure }
                }
            }
        }
    }

    /// A batch is durable (or needs no write): it becomes the state, and routing follows it.
    private func committed(_ inner: inout Inner, _ next: RoutingState, upTo seq: UInt64) {
        inner.commit.doneSeq = seq
        if inner.commit.pending?.seq == seq { inner.commit.pending = nil }
        let endpointsChanged = next.endpoints != inner.state.endpoints
        inner.state = next
        if endpointsChanged {
            rebuild(&inner, routing: topology.load(ordering: .acquiring).routing)
        } else {
            publish(Self.build(inner, topology.load(ordering: .acquiring)))
        }
    }

    /// Runs `body` once no change is queued or being written, holding the store's lock (a reload
    /// changes the state outside the queue).
    private func whenQuiet<T, E: Error>(_ body: (inout Inner) throws(E) -> T) throws(E) -> T {
        commitSignal.lock()
        defer { commitSignal.unlock() }
        while true {
            let result = try inner.withLock { (inner: inout Inner) throws(E) -> T? in
                guard inner.commit.pending == nil, !inner.commit.writing else { return nil }
                return try body(&inner)
            }
            if let result { return result }
            commitSignal.wait()
        }
    }

    static func build(_ inner: Inner, _ topology: Topology) -> RoutingTable {
        var pools: [PoolRoute] = []
        var weights: [Int] = []
        var live = 0
        for (i, entry) in topology.pools.enumerated() {
            let members = entry.members
            let healthy = members.indices.filter {
                members[$0].admitsRequests && inner.health[members[$0].endpoint.id] == .healthy
                    && !inner.ejected.contains(members[$0].endpoint.id)
            }
            pools.append(PoolRoute(name: entry.pool.name, endpoints: members.map(\.endpoint), healthy: healthy,
                                   balance: entry.pool.balance, weights: members.map(\.weight)))
            weights.append(inner.state.weights[entry.pool.name] ?? 0)
            if entry.pool.name == inner.state.live { live = i }
        }
        let routing = topology.routing
        var mirror: MirrorRoute?
        if let spec = inner.state.mirror, let index = pools.firstIndex(where: { $0.name == spec.pool }) {
            mirror = MirrorRoute(pool: index, spec: spec)
        }
        return RoutingTable(generation: inner.state.generation, live: live, pools: pools, weights: weights,
                            sticky: routing.sticky, previewHeader: routing.previewHeader, failover: routing.failover,
                            mirror: mirror)
    }
}

/// One address a pool's DNS name resolved to, with the weight its SRV record gave (nil for A/AAAA).
public struct DiscoveredAddress: Sendable, Equatable, Hashable {
    public var address: HostPort
    public var weight: Int?
    public init(address: HostPort, weight: Int? = nil) {
        self.address = address
        self.weight = weight
    }
}

extension RoutingStore {
    /// Pool names in config order and which pools have an endpoint taking traffic, for admin
    /// commands. Read from the published table, which is current under the store's lock.
    public func poolView() -> RoutingCommands.PoolView {
        let table = self.table
        return RoutingCommands.PoolView(names: table.pools.map(\.name),
                                        healthy: Set(table.pools.filter(\.hasHealthyEndpoint).map(\.name)))
    }

    /// Every endpoint of every pool as admin commands see it (under the store's lock too).
    public func endpointView() -> EndpointCommands.View {
        let table = self.table
        var pools: [String: [EndpointCommands.Entry]] = [:]
        for (pool, members) in members {
            let route = table.pools.first { $0.name == pool.name }
            pools[pool.name] = members.enumerated().map { i, m in
                EndpointCommands.Entry(address: m.endpoint.address.description, source: m.source, state: m.state,
                                       leaving: m.leaving, takesTraffic: route?.healthy.contains(i) ?? false)
            }
        }
        return EndpointCommands.View(order: members.map(\.pool.name), pools: pools)
    }

    public var poolNames: [String] { endpoints.map(\.pool.name) }

    /// The document `GET /v1/state` returns: generation, live pool, weights, previous weights, and
    /// every endpoint with its health, state and load.
    /// `poolFields`: more JSON members for a pool's object, by pool (each starts with a comma).
    public func stateJSON(ramp: String = "null", mirror: String = "null", cluster: String = "null", nowNanos: UInt64, poolFields: [String: String] = [:]) -> String {
        let (state, health, ejected) = inner.withLock { ($0.state, $0.health, $0.ejected) }
        let order = poolNames
        var out = "{\"generation\":\(state.generation),\"live\":\(JSONWriter.quote(state.live))"
        out += ",\"weights\":\(JSONWriter.weights(state.weights, order: order))"
        out += ",\"previous\":" + (state.previousWeights.map { JSONWriter.weights($0, order: order) } ?? "null")
        out += ",\"pools\":{"
        out += members.map { entry in
            let eps = entry.members.map { Self.endpointJSON($0, health: health, ejected: ejected, nowNanos: nowNanos) }
            return "\(JSONWriter.quote(entry.pool.name)):{\"endpoints\":[\(eps.joined(separator: ","))]\(poolFields[entry.pool.name] ?? "")}"
        }.joined(separator: ",")
        out += "},\"ramp\":\(ramp),\"mirror\":\(mirror),\"cluster\":\(cluster)}"
        return out
    }

    /// One endpoint's object, as in `GET /v1/state`; `prefix` goes first inside the braces.
    static func endpointJSON(_ m: Member, health: [Int: HealthStatus], ejected: Set<Int>, nowNanos: UInt64, prefix: String = "") -> String {
        let e = m.endpoint
        let h = health[e.id] ?? .unknown
        let last = e.lastRequestAt.load(ordering: .relaxed)
        let ago = last == 0 ? "null" : "\(nowNanos > last ? (nowNanos - last) / 1_000_000 : 0)"
        return "{\(prefix)\"address\":\(JSONWriter.quote(e.address.description)),\"healthy\":\(h == .healthy),\"health\":\"\(h.rawValue)\""
            + ",\"state\":\"\(m.state.rawValue)\",\"weight\":\(m.weight),\"source\":\"\(m.source.rawValue)\",\"leaving\":\(m.leaving)"
            + ",\"ejected\":\(ejected.contains(e.id)),\"in_flight\":\(max(0, e.inFlight.load(ordering: .relaxed)))"
            + ",\"tunnels\":\(max(0, e.tunnels.load(ordering: .relaxed))),\"last_request_ms_ago\":\(ago)}"
    }

    /// The endpoints of one pool (or only the one at `address`) as objects of `GET /v1/state`,
    /// each with its `pool`; nil for an unknown pool.
    public func endpointObjects(pool: String, address: String?, nowNanos: UInt64) -> [String]? {
        guard let entry = members.first(where: { $0.pool.name == pool }) else { return nil }
        let (health, ejected) = inner.withLock { ($0.health, $0.ejected) }
        return entry.members.filter { address == nil || $0.endpoint.address.description == address }.map {
            Self.endpointJSON($0, health: health, ejected: ejected, nowNanos: nowNanos, prefix: "\"pool\":\(JSONWriter.quote(pool)),")
        }
    }

    /// The state and endpoint health, read together.
    public func snapshot() -> (RoutingState, [Int: HealthStatus]) {
        inner.withLock { ($0.state, $0.health) }
    }

    /// Ejected endpoint ids.
    public var ejectedIDs: Set<Int> { inner.withLock { $0.ejected } }
}
