import Testing
@testable import TurnoutCore

private func makeTable(weights: [String: Int], live: String, sticky: StickyKey? = nil, preview: String? = nil,
                       healthy: Set<String> = ["blue", "green"], failover: Bool = true,
                       endpointsPerPool: Int = 1) -> RoutingTable {
    var pools: [PoolRoute] = []
    var ws: [Int] = []
    var id = 0
    var liveIndex = 0
    for (i, name) in ["blue", "green"].enumerated() {
        var eps: [UpstreamEndpoint] = []
        for k in 0..<endpointsPerPool {
            eps.append(UpstreamEndpoint(id: id, pool: name, address: HostPort(host: "127.0.0.1", port: UInt16(9000 + id + k))))
            id += 1
        }
        pools.append(PoolRoute(name: name, endpoints: eps, healthy: healthy.contains(name) ? Array(eps.indices) : [], balance: .roundRobin))
        ws.append(weights[name] ?? 0)
        if name == live { liveIndex = i }
    }
    return RoutingTable(generation: 1, live: liveIndex, pools: pools, weights: ws, sticky: sticky, previewHeader: preview, failover: failover)
}

@Suite struct WeightedSplitTests {
    @Test func everyWindowOfOneHundredHoldsExactlyNinetyAndTen() {
        let table = makeTable(weights: ["blue": 9000, "green": 1000], live: "blue")
        let picks = (0..<1000).map { _ in table.nextWeightedPool() }
        for start in 0...(picks.count - 100) {
            let green = picks[start..<(start + 100)].filter { $0 == 1 }.count
            #expect(green == 10, "window starting at \(start) had \(green) green")
        }
    }

    @Test func fractionalWeightsAreExactOverTheirPeriod() {
        let table = makeTable(weights: ["blue": 9_999, "green": 1], live: "blue")
        let picks = (0..<10_000).map { _ in table.nextWeightedPool() }
        #expect(picks.filter { $0 == 1 }.count == 1)
    }

    @Test func smoothOrderSpreadsTheMinorityEvenly() {
        let order = RoutingTable.smoothWeightedOrder([5000, 5000])
        #expect(order == [0, 1])
        let o2 = RoutingTable.smoothWeightedOrder([7500, 2500])
        #expect(o2.count == 4 && o2.filter { $0 == 1 }.count == 1)
    }

    @Test func zeroWeightPoolsNeverGetTraffic() {
        let table = makeTable(weights: ["blue": 10_000, "green": 0], live: "blue")
        #expect((0..<500).allSatisfy { _ in table.nextWeightedPool() == 0 })
    }
}

@Suite struct StickyRoutingTests {
    @Test func aCohortAlwaysLandsOnTheSamePool() {
        let table = makeTable(weights: ["blue": 7000, "green": 3000], live: "blue", sticky: .cookie("c"))
        for key in (0..<200).map({ "user-\($0)" }) {
            let first = table.stickyPool(key: key)
            #expect((0..<5).allSatisfy { _ in table.stickyPool(key: key) == first })
        }
    }

    @Test func raisingTheCanaryOnlyMovesUsersOntoIt() {
        let before = makeTable(weights: ["blue": 9000, "green": 1000], live: "blue", sticky: .cookie("c"))
        let after = makeTable(weights: ["blue": 5000, "green": 5000], live: "blue", sticky: .cookie("c"))
        var onGreenBefore = 0
        var onGreenAfter = 0
        for i in 0..<20_000 {
            let key = "k\(i)"
            let b = before.stickyPool(key: key)
            let a = after.stickyPool(key: key)
            if b == 1 {
                onGreenBefore += 1
                #expect(a == 1, "user \(key) moved from green back to blue")
            }
            if a == 1 { onGreenAfter += 1 }
        }
        // The hash spreads keys: shares are close to the weights.
        #expect(abs(onGreenBefore - 2000) < 300)
        #expect(abs(onGreenAfter - 10_000) < 600)
    }

    /// Users keep their cohort across restarts and upgrades only if a key maps to the same bucket
    /// in every version: these buckets are pinned (computed independently, in Python, from the
    /// documented algorithm: 64-bit FNV-1a over the UTF-8 bytes, then murmur3's fmix64, mod 10000).
    /// A change here moves users between pools on upgrade.
    @Test(arguments: [
        ("", 4342), ("alice", 7236), ("bob", 9952), ("user-42", 1453),
        ("3f2b9c1e-7d4a-4e8b-9f00-1a2b3c4d5e6f", 8964), ("ünïcødé", 5629), ("turnout_cohort=abc", 5275),
    ])
    func knownKeysLandInTheirPinnedBuckets(key: String, bucket: Int) {
        #expect(StickyHash.bucket(key) == bucket)
    }

    @Test func pinnedBucketsDecideThePoolAtAGivenSplit() {
        // At 30% green the canary takes buckets [0, 3000): user-42 (1453) is on green, alice (7236)
        // and bob (9952) on blue; at 75% alice joins green, bob stays on blue.
        let at30 = makeTable(weights: ["blue": 7000, "green": 3000], live: "blue", sticky: .cookie("c"))
        #expect(at30.stickyPool(key: "user-42") == 1 && at30.stickyPool(key: "alice") == 0 && at30.stickyPool(key: "bob") == 0)
        let at75 = makeTable(weights: ["blue": 2500, "green": 7500], live: "blue", sticky: .cookie("c"))
        #expect(at75.stickyPool(key: "alice") == 1 && at75.stickyPool(key: "bob") == 0)
    }
}

@Suite struct RouteDecisionTests {
    @Test func previewHeaderPinsAPoolEvenAtZeroWeight() {
        let table = makeTable(weights: ["blue": 10_000], live: "blue", preview: "X-Turnout-Pool")
        let d = table.route(stickyKey: nil, previewPool: "green")
        #expect(d.pool == 1 && d.reason == .preview && d.endpoint != nil)
    }

    @Test func unknownPreviewPoolIsIgnored() {
        let table = makeTable(weights: ["blue": 10_000], live: "blue", preview: "X-Turnout-Pool")
        let d = table.route(stickyKey: nil, previewPool: "purple")
        #expect(d.pool == 0 && d.reason == .weighted)
    }

    @Test func failoverSpillsToAHealthyPool() {
        let table = makeTable(weights: ["blue": 10_000], live: "blue", healthy: ["green"])
        let d = table.route(stickyKey: nil, previewPool: nil)
        #expect(d.pool == 1 && d.reason == .failover && d.endpoint != nil)
    }

    @Test func withoutFailoverAnUnhealthyPoolHasNoEndpoint() {
        let table = makeTable(weights: ["blue": 10_000], live: "blue", healthy: ["green"], failover: false)
        let d = table.route(stickyKey: nil, previewPool: nil)
        #expect(d.pool == 0 && d.endpoint == nil)
    }

    @Test func noHealthyPoolAtAllGivesNoEndpoint() {
        let table = makeTable(weights: ["blue": 10_000], live: "blue", healthy: [])
        #expect(table.route(stickyKey: nil, previewPool: nil).endpoint == nil)
    }

    @Test func roundRobinVisitsEveryHealthyEndpoint() {
        let table = makeTable(weights: ["blue": 10_000], live: "blue", endpointsPerPool: 3)
        let ids = (0..<9).compactMap { _ in table.pools[0].pickEndpoint(excluding: nil)?.id }
        #expect(Set(ids) == [0, 1, 2])
        #expect(ids.filter { $0 == 0 }.count == 3)
    }

    @Test func retryPicksAnotherEndpoint() {
        let table = makeTable(weights: ["blue": 10_000], live: "blue", endpointsPerPool: 2)
        for _ in 0..<10 { #expect(table.pools[0].pickEndpoint(excluding: 0)?.id == 1) }
        let single = makeTable(weights: ["blue": 10_000], live: "blue")
        #expect(single.pools[0].pickEndpoint(excluding: 0) == nil)
    }

    @Test func leastOutstandingPrefersTheIdleEndpoint() {
        let eps = (0..<3).map { UpstreamEndpoint(id: $0, pool: "blue", address: HostPort(host: "127.0.0.1", port: UInt16(9000 + $0))) }
        let pool = PoolRoute(name: "blue", endpoints: eps, healthy: [0, 1, 2], balance: .leastOutstanding)
        eps[0].requestStarted(at: 1); eps[0].requestStarted(at: 1)
        eps[2].requestStarted(at: 1)
        for _ in 0..<5 { #expect(pool.pickEndpoint(excluding: nil)?.id == 1) }
    }
}

@Suite struct HealthTrackerTests {
    @Test func firstPassMakesAnUnknownEndpointHealthy() {
        var t = HealthTracker(rise: 3, fall: 2)
        #expect(t.record(passed: true) == .healthy)
    }

    @Test func fallFailuresMakeItUnhealthyAndRisePassesBringItBack() {
        var t = HealthTracker(rise: 2, fall: 3)
        _ = t.record(passed: true)
        #expect(t.record(passed: false) == nil)
        #expect(t.record(passed: false) == nil)
        #expect(t.record(passed: false) == .unhealthy)
        #expect(t.record(passed: true) == nil)
        #expect(t.record(passed: false) == nil)
        #expect(t.record(passed: true) == nil)
        #expect(t.record(passed: true) == .healthy)
    }
}
