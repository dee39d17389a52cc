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

    /// One period of the smooth weighted round-robin order, as pool indices.
    let sequence: [Int]
    let sequenceCounter = Atomic<UInt64>(0)
    /// Sticky buckets: canary pools take the lowest buckets, in pool order, each `weight` buckets wide.
    let canaryBuckets: [(upper: Int, pool: Int)]
    /// Per endpoint id: whether the endpoint takes traffic (ids are small and dense).
    private let healthyByID: [Bool]

    public init(generation: UInt64, live: Int, pools: [PoolRoute], weights: [Int],
                sticky: StickyKey?, previewHeader: String?, failover: Bool) {
        precondition(pools.count == weights.count && pools.indices.contains(live))
        self.generation = generation
        self.live = live
        self.pools = pools
        self.weights = weights
        self.sticky = sticky
        self.previewHeader = previewHeader
        self.failover = failover
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

/// One pool inside a routing snapshot, with the endpoints that are healthy in that snapshot.
public final class PoolRoute: Sendable {
    public let name: String
    public let endpoints: [UpstreamEndpoint]
    /// Indices into `endpoints` of the endpoints that take traffic.
    public let healthy: [Int]
    public let balance: BalanceMode
    let roundRobin = Atomic<UInt64>(0)

    public init(name: String, endpoints: [UpstreamEndpoint], healthy: [Int], balance: BalanceMode) {
        self.name = name
        self.endpoints = endpoints
        self.healthy = healthy
        self.balance = balance
    }

    public var hasHealthyEndpoint: Bool { !healthy.isEmpty }

    /// Picks a healthy endpoint, skipping the one with id `excluding` when there is another choice.
    public func pickEndpoint(excluding: Int?) -> UpstreamEndpoint? {
        var candidates = healthy
        if let excluding { candidates.removeAll { endpoints[$0].id == excluding } }
        guard !candidates.isEmpty else { return nil }
        if candidates.count == 1 { return endpoints[candidates[0]] }
        let n = Int(roundRobin.wrappingAdd(1, ordering: .relaxed).oldValue % UInt64(candidates.count))
        switch balance {
        case .roundRobin:
            return endpoints[candidates[n]]
        case .leastOutstanding:
            // Start the scan at the round-robin position so ties rotate.
            var best = candidates[n]
            var bestLoad = endpoints[best].inFlight.load(ordering: .relaxed)
            for k in 1..<candidates.count {
                let c = candidates[(n + k) % candidates.count]
                let load = endpoints[c].inFlight.load(ordering: .relaxed)
                if load < bestLoad { best = c; bestLoad = load }
            }
            return endpoints[best]
        }
    }
}
