import Testing
@testable import TurnoutCore

@Suite struct RoutingStoreTests {
    static func config(_ pools: [(String, [String])], weights: [String: Int]) throws -> TurnoutConfig {
        let poolLines = pools.map { name, eps in "  \(name): { endpoints: [\(eps.map { "\"\($0)\"" }.joined(separator: ", "))] }" }
        let weightText = weights.map { "\($0.key): \($0.value)" }.joined(separator: ", ")
        return try ConfigLoader.parse(yaml: """
            listeners: [ { address: "127.0.0.1:8080" } ]
            pools:
            \(poolLines.joined(separator: "\n"))
            routing: { weights: { \(weightText) } }
            """)
    }

    struct Refused: Error { let reason: String }

    @Test func reconfigureKeepsEndpointsWeightsAndHealthAndAddsPoolsAtZero() throws {
        let first = try Self.config([("blue", ["127.0.0.1:9001"]), ("green", ["127.0.0.1:9002"])], weights: ["blue": 90, "green": 10])
        let store = RoutingStore(config: first, state: .initial(from: first))
        let blue = store.endpoints[0].endpoints[0]
        store.setHealth(endpointID: blue.id, .healthy)
        let second = try Self.config([("blue", ["127.0.0.1:9001", "127.0.0.1:9003"]), ("green", ["127.0.0.1:9002"]),
                                      ("canary", ["127.0.0.1:9004"])], weights: ["blue": 100])
        var persisted: [RoutingState] = []
        let r = try store.reconfigure(second, persist: { (s: RoutingState) throws(Refused) in persisted.append(s) }, refuse: { Refused(reason: $0) })
        #expect(r.addedPools == ["canary"] && r.removedPools.isEmpty)
        #expect(r.added.map(\.address.description) == ["127.0.0.1:9003", "127.0.0.1:9004"])
        #expect(store.endpoints[0].endpoints[0] === blue)          // the same object: counters and health stay
        #expect(store.health(of: blue.id) == .healthy)
        #expect(store.state.weights == ["blue": 9000, "green": 1000, "canary": 0])  // runtime weights, not the file's
        #expect(persisted.count == 1 && persisted[0].generation == 2)
        #expect(store.table.pools.map(\.name) == ["blue", "green", "canary"])
        #expect(Set(store.allEndpoints.map(\.id)).count == 4)      // fresh ids never collide
    }

    @Test func removingAPoolThatCarriesTrafficIsRefusedAndChangesNothing() throws {
        let first = try Self.config([("blue", ["127.0.0.1:9001"]), ("green", ["127.0.0.1:9002"])], weights: ["blue": 90, "green": 10])
        let store = RoutingStore(config: first, state: .initial(from: first))
        let before = store.table
        let second = try Self.config([("blue", ["127.0.0.1:9001"])], weights: ["blue": 100])
        #expect(throws: Refused.self) {
            try store.reconfigure(second, persist: { (_: RoutingState) throws(Refused) in }, refuse: { Refused(reason: $0) })
        }
        #expect(store.table === before && store.endpoints.count == 2)
        _ = try store.mutate({ (s: RoutingState, _) throws(Refused) in
            var n = s; n.weights = ["blue": 10000, "green": 0]; n.generation += 1; return n
        }, persist: { (_: RoutingState) throws(Refused) in })
        let r = try store.reconfigure(second, persist: { (_: RoutingState) throws(Refused) in }, refuse: { Refused(reason: $0) })
        #expect(r.removedPools == ["green"] && store.state.weights == ["blue": 10000])
    }

    @Test func healthOfARemovedEndpointIsIgnored() throws {
        let first = try Self.config([("blue", ["127.0.0.1:9001", "127.0.0.1:9003"])], weights: ["blue": 100])
        let store = RoutingStore(config: first, state: .initial(from: first))
        let gone = store.endpoints[0].endpoints[1]
        let second = try Self.config([("blue", ["127.0.0.1:9001"])], weights: ["blue": 100])
        _ = try store.reconfigure(second, persist: { (_: RoutingState) throws(Refused) in }, refuse: { Refused(reason: $0) })
        store.setHealth(endpointID: gone.id, .healthy)   // a probe that was already running
        #expect(store.table.pools[0].healthy.isEmpty)
    }

    @Test func everyPublishedTableMovesTheVersionAndNothingElseDoes() throws {
        let first = try Self.config([("blue", ["127.0.0.1:9001", "127.0.0.1:9003"]), ("green", ["127.0.0.1:9002"])],
                                    weights: ["blue": 100])
        let store = RoutingStore(config: first, state: .initial(from: first))
        let a = store.endpoints[0].endpoints[0], b = store.endpoints[0].endpoints[1]
        let v0 = store.version
        store.setHealth(endpointID: a.id, .healthy)
        #expect(store.version == v0 + 1)
        #expect(store.table.isHealthy(endpointID: a.id) && !store.table.isHealthy(endpointID: b.id))
        store.setHealth(endpointID: a.id, .healthy)  // no change, nothing published
        #expect(store.version == v0 + 1)
        _ = try store.mutate({ (s: RoutingState, _) throws(Refused) in s }, persist: { (_: RoutingState) throws(Refused) in })
        #expect(store.version == v0 + 1)  // the same state: nothing published
        // An endpoint a reload removes is no longer in the table, healthy or not.
        let second = try Self.config([("blue", ["127.0.0.1:9003"]), ("green", ["127.0.0.1:9002"])], weights: ["blue": 100])
        _ = try store.reconfigure(second, persist: { (_: RoutingState) throws(Refused) in }, refuse: { Refused(reason: $0) })
        #expect(store.version == v0 + 2)
        #expect(!store.table.isHealthy(endpointID: a.id))
        #expect(!store.table.isHealthy(endpointID: -1) && !store.table.isHealthy(endpointID: 1_000))
    }
}
