import Logging
import Testing
import TurnoutCore
@testable import TurnoutServer

/// The per-loop copy of the settings and the routing table must never lag behind a publication.
@Suite struct LoopViewTests {
    static func config(idle: String, maxIdle: Int? = nil) throws -> TurnoutConfig {
        let cap = maxIdle.map { ", max_idle_connections: \($0)" } ?? ""
        return try ConfigLoader.parse(yaml: """
            listeners: [ { address: "127.0.0.1:8080" } ]
            pools:
              blue: { endpoints: ["127.0.0.1:9001"]\(cap) }
              green: { endpoints: ["127.0.0.1:9002"] }
            routing: { weights: { blue: 100 } }
            timeouts: { idle: \(idle) }
            """)
    }

    @Test func aLoopsCachedTableAndSettingsFollowEveryPublication() throws {
        let config = try Self.config(idle: "60s")
        let store = RoutingStore(config: config, state: .initial(from: config))
        let context = ProxyContext(config: config, store: store, logger: Logger(label: "test"))
        let view = LoopView(context: context)
        let first = view.table
        #expect(first === store.table)
        #expect(view.table === first)  // nothing published: the cached object
        let blue = store.endpoints[0].endpoints[0], green = store.endpoints[1].endpoints[0]
        #expect(!view.table.isHealthy(endpointID: green.id))

        // A health change publishes a new table; the next read takes it.
        store.setHealth(endpointID: green.id, .healthy)
        #expect(view.table !== first && view.table === store.table)
        #expect(view.table.isHealthy(endpointID: green.id) && !view.table.isHealthy(endpointID: blue.id))

        // So does an operator's change.
        let beforeSwitch = view.table
        _ = store.mutate({ state, _ in
            var s = state
            s.weights = ["blue": 0, "green": 10_000]
            s.live = "green"
            return s
        }, persist: { _ in })
        #expect(view.table !== beforeSwitch && view.table.weights == [0, 10_000])

        // A reload (the store takes the pools first, as `ProxyServer.reload` does) replaces the
        // settings; their values are read anew.
        #expect(view.timeouts.idleMs == 60_000)
        #expect(view.settings.maxIdleConnections(ofEndpoint: blue.id) == Int.max, "no cap by default")
        let reloaded = try Self.config(idle: "5s", maxIdle: 3)
        struct Refused: Error {}
        _ = try store.reconfigure(reloaded, persist: { (_: RoutingState) throws(Refused) in }, refuse: { _ in Refused() })
        context.replace(config: reloaded)
        #expect(view.timeouts.idleMs == 5_000)
        #expect(view.settings === context.settings)
        #expect(view.settings.maxIdleConnections(ofEndpoint: blue.id) == 3)
        #expect(view.settings.maxIdleConnections(ofEndpoint: 999) == 0)
    }
}
