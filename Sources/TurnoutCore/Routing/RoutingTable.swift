import Atomics
import Synchronization

/// The routing snapshot: everything a request needs to pick a pool and an endpoint. Immutable once
/// built and replaced whole, so a request never sees half of a change. The data path loads it once
/// per request; the only mutable parts are the round-robin counters, which are atomics.
public final class RoutingTable: AtomicReference, Sendable {
    /// Bumped by every routing change an operator makes (switch, weights, rollback).
    public let generation: UInt64
    /// Index of the live pool: the one that most recently held 100%.
    public let live: Int
    public let pools: [PoolRoute]
    /// Weights in basis points, aligned with `pools`.
    public let weights: [Int]
    public let sticky: StickyKey?
    public let previewHeader: String?
    public let failover: Bool
    /// Traffic mirroring, when on.
    public let mirror: MirrorRoute?

    /// One period of the smooth weighted round-robin order, as pool indices.
    let sequence: [Int]
    let sequenceCounter = Atomic<UInt64>(0)
    /// Sticky buckets: canary pools take the lowest buckets, in pool order, each `weight` buckets wide.
    let canaryBuckets: [(upper: Int, pool: Int)]
    /// Per endpoint id: whether the endpoint takes traffic (ids are small and dense).
    private let healthyByID: [Bool]

    public init(generation: UInt64, live: Int, pools: [PoolRoute], weights: [Int],
                sticky: StickyKey?, previewHeader: String?, failover: Bool, mirror: MirrorRoute? = nil) {
        precondition(pools.count == weights.count && pools.indices.contains(live))
        self.generation = generation
        self.live = live
        self.pools = pools
        self.weights = weights
        self.sticky = sticky
        self.previewHeader = previewHeader
        self.failover = failover
        self.mirror = mirror
        self.sequence = Self.smoothWeightedOrder(weights)
        var buckets: [(upper: Int, pool: Int)] = []
        var upper = 0
        for (i, w) in weights.enumerated() where i != live && w > 0 {
            upper += w
            buckets.append((upper, i))
        }
        self.canaryBuckets = buckets
        var healthy = [Bool](repeating: false, count: pools.lazy.flatMap(\.endpoints).idTableSize)
        for p in pools { for i in p.healthy { healthy[p.endpoints[i].id] = true } }
        self.healthyByID = healthy
    }

    /// Whether the endpoint with this id is in the table and takes traffic.
    @inline(__always)
    public func isHealthy(endpointID id: Int) -> Bool {
        id >= 0 && id < healthyByID.count && healthyByID[id]
    }

    /// The smooth weighted round-robin order (as nginx uses) for weights reduced by their GCD.
    /// Any window of one period holds each pool exactly in proportion to its weight, and the picks
    /// are spread evenly inside the period.
    static func smoothWeightedOrder(_ weights: [Int]) -> [Int] {
        let positive = weights.filter { $0 > 0 }
        guard !positive.isEmpty else { return [] }
        var g = positive[0]
        for w in positive.dropFirst() { g = gcd(g, w) }
        let reduced = weights.map { $0 / g }
        let total = reduced.reduce(0, +)
        var current = [Int](repeating: 0, count: weights.count)
        var order: [Int] = []
        order.reserveCapacity(total)
        for _ in 0..<total {
            var best = -1
            for i in reduced.indices where reduced[i] > 0 {
                current[i] += reduced[i]
                if best < 0 || current[i] > current[best] { best = i }
            }
            current[best] -= total
            order.append(best)
        }
        return order
    }

    static func gcd(_ a: Int, _ b: Int) -> Int { b == 0 ? a : gcd(b, a % b) }

    public func poolIndex(named name: String) -> Int? {
        for (i, p) in pools.enumerated() where p.name == name { return i }
        return nil
    }

    public var livePool: PoolRoute { pools[live] }

    /// The pool for a request without sticky key or preview pin: the next slot of the weighted order.
    public func nextWeightedPool() -> Int {
        guard !sequence.isEmpty else { return live }
        let n = sequenceCounter.wrappingAdd(1, ordering: .relaxed).oldValue
        return sequence[Int(n % UInt64(sequence.count))]
    }

    /// The pool for a sticky cohort key: canary pools own the lowest buckets.
    public func stickyPool(key: String) -> Int {
        let bucket = StickyHash.bucket(key)
        for b in canaryBuckets where bucket < b.upper { return b.pool }
        return live
    }

    /// Where a request goes. `previewPool` is the value of the preview header, if any.
    public func route(stickyKey: String?, previewPool: String?) -> RouteDecision {
        if let previewPool, let index = poolIndex(named: previewPool) {
            // A preview request asks for one pool explicitly: it never spills elsewhere.
            return RouteDecision(pool: index, endpoint: pools[index].pickEndpoint(excluding: nil), reason: .preview)
        }
        let chosen: Int
        let reason: RouteDecision.Reason
        if let stickyKey {
            chosen = stickyPool(key: stickyKey)
            reason = .sticky
        } else {
            chosen = nextWeightedPool()
            reason = .weighted
        }
        if let endpoint = pools[chosen].pickEndpoint(excluding: nil) {
            return RouteDecision(pool: chosen, endpoint: endpoint, reason: reason)
        }
        guard failover, let spill = failoverPool(avoiding: chosen),
              let endpoint = pools[spill].pickEndpoint(excluding: nil)
        else {
            return RouteDecision(pool: chosen, endpoint: nil, reason: reason)
        }
        return RouteDecision(pool: spill, endpoint: endpoint, reason: .failover)
    }

    /// The pool that takes traffic when `avoiding` has no healthy endpoint: the live pool if it is
    /// healthy, else the healthy pool with the highest weight (then config order).
    public func failoverPool(avoiding: Int) -> Int? {
        if live != avoiding, !pools[live].healthy.isEmpty { return live }
        let candidates = pools.indices.filter { $0 != avoiding && !pools[$0].healthy.isEmpty }
        return candidates.max { a, b in weights[a] < weights[b] || (weights[a] == weights[b] && a > b) }
    }
}

/// A routing decision: the pool and, when one is healthy, the endpoint.
public struct RouteDecision: Sendable {
    public enum Reason: String, Sendable {
        case weighted, sticky, preview, failover
    }
    public var pool: Int
    public var endpoint: UpstreamEndpoint?
    public var reason: Reason
}

/// One pool inside a routing snapshot, with the endpoints that take traffic in that snapshot.
public final class PoolRoute: Sendable {
    public let name: String
    public let endpoints: [UpstreamEndpoint]
    /// Indices into `endpoints` of the endpoints that take traffic: healthy, serving, not
    /// ejected, with weight.
    public let healthy: [Int]
    public let balance: BalanceMode
    /// Per endpoint (aligned with `endpoints`): its weight within the pool.
    public let endpointWeights: [Int]
    /// When the endpoints that take traffic have unequal weights: one period of their smooth
    /// weighted order, as indices into `endpoints` (empty when plain rotation is exact).
    let weightedOrder: [Int]
    let roundRobin = Atomic<UInt64>(0)

    public init(name: String, endpoints: [UpstreamEndpoint], healthy: [Int], balance: BalanceMode, weights: [Int]? = nil) {
        self.name = name
        self.endpoints = endpoints
        self.healthy = healthy
        self.balance = balance
        let weights = weights ?? [Int](repeating: EndpointOverride.defaultWeight, count: endpoints.count)
        self.endpointWeights = weights
        let routed = healthy.map { weights[$0] }
        if let first = routed.first, routed.contains(where: { $0 != first }) {
            self.weightedOrder = RoutingTable.smoothWeightedOrder(routed).map { healthy[$0] }
        } else {
            self.weightedOrder = []
        }
    }

    public var hasHealthyEndpoint: Bool { !healthy.isEmpty }

    /// Picks an endpoint that takes traffic, skipping the one with id `excluding` when there is
    /// another choice. Endpoints get requests in proportion to their weights.
    public func pickEndpoint(excluding: Int?) -> UpstreamEndpoint? {
        guard !healthy.isEmpty else { return nil }
        if healthy.count == 1 {
            let only = endpoints[healthy[0]]
            return only.id == excluding ? nil : only
        }
        let n = roundRobin.wrappingAdd(1, ordering: .relaxed).oldValue
        switch balance {
        case .roundRobin:
            if !weightedOrder.isEmpty {
                for k in 0..<weightedOrder.count {
                    let e = endpoints[weightedOrder[Int((n &+ UInt64(k)) % UInt64(weightedOrder.count))]]
                    if e.id != excluding { return e }
                }
                return nil
            }
            for k in 0..<healthy.count {
                let e = endpoints[healthy[Int((n &+ UInt64(k)) % UInt64(healthy.count))]]
                if e.id != excluding { return e }
            }
            return nil
        case .leastOutstanding:
            // Start the scan at the round-robin position so ties rotate; load is in-flight
            // requests per unit of weight (compared by cross-multiplying).
            let start = Int(n % UInt64(healthy.count))
            var best = -1
            var bestLoad = 0
            var bestWeight = 1
            for k in 0..<healthy.count {
                let c = healthy[(start + k) % healthy.count]
                if endpoints[c].id == excluding { continue }
                let load = endpoints[c].inFlight.load(ordering: .relaxed)
                let w = max(1, endpointWeights[c])
                if best < 0 || load * bestWeight < bestLoad * w {
                    best = c
                    bestLoad = load
                    bestWeight = w
                }
            }
            return best < 0 ? nil : endpoints[best]
        }
    }
}
