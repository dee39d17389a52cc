import Foundation
import Synchronization
import Testing
@testable import TurnoutCore

@Suite struct EndpointConfigTests {
    static let head = """
        listeners: [{ address: 127.0.0.1:8080 }]
        pools:

        """

    func problems(_ pools: String, root: String = "") -> [String] {
        do {
            _ = try ConfigLoader.parse(yaml: Self.head + pools + "\n" + root)
            return []
        } catch {
            return error.problems.map(\.description)
        }
    }

    @Test func readsDiscoveryAndOutlierDetectionWithTheirDefaults() throws {
        let c = try ConfigLoader.parse(yaml: Self.head + """
              blue: { endpoints: [], discovery: { dns: blue.svc.cluster.local, type: a, port: 8080 } }
              green: { endpoints: ["127.0.0.1:9002"], discovery: { dns: _http._tcp.green.test, type: SRV, min_ttl: 2s, max_ttl: 1m, confirm_empty: 0s },
                       outlier_detection: { consecutive_5xx: 5, base_ejection: 10s, max_ejected_percent: 20 } }
            resolvers: ["127.0.0.1:5353", "[::1]:53"]
            """)
        let blue = try #require(c.pool(named: "blue")?.discovery)
        #expect(blue.name == "blue.svc.cluster.local" && blue.type == .a && blue.port == 8080)
        #expect(blue.minTTLMs == 1000 && blue.maxTTLMs == 300_000 && blue.confirmEmptyMs == 30_000)
        let green = try #require(c.pool(named: "green"))
        #expect(green.discovery?.type == .srv && green.discovery?.port == nil && green.discovery?.minTTLMs == 2000)
        #expect(green.discovery?.maxTTLMs == 60_000 && green.discovery?.confirmEmptyMs == 0)
        #expect(green.outlierDetection.consecutiveFailures == 3 && green.outlierDetection.consecutive5xx == 5)
        #expect(green.outlierDetection.baseEjectionMs == 10_000 && green.outlierDetection.maxEjectedPercent == 20)
        #expect(c.pool(named: "blue")?.outlierDetection == OutlierConfig())
        #expect(c.resolvers.map(\.description) == ["127.0.0.1:5353", "[::1]:53"])
    }

    @Test func reportsEveryDiscoveryMistakeWithItsPath() {
        let p = problems("""
              blue: { discovery: { dns: "bad name!", type: MX } }
              green: { endpoints: [], discovery: { type: A, port: 80 } }
              red: { endpoints: [], discovery: { dns: red.test, type: SRV, port: 80, min_ttl: 10s, max_ttl: 1s } }
              pink: { endpoints: [], discovery: { dns: pink.test, type: A } }
              grey: { endpoints: [] }
              teal: { endpoints: ["127.0.0.1:1"], outlier_detection: { consecutive_failures: -1, max_ejected_percent: 101, colour: red } }
            """, root: "resolvers: [dns.google:53]")
        #expect(p.contains("pools.blue.discovery.dns: \"bad name!\" is not a DNS name"))
        #expect(p.contains("pools.blue.discovery.type: expected A, AAAA or SRV, got \"MX\""))
        #expect(p.contains("pools.green.discovery.dns: required (the name to resolve)"))
        #expect(p.contains("pools.red.discovery.port: not used with SRV: each record carries its port"))
        #expect(p.contains("pools.red.discovery.min_ttl: must not exceed max_ttl"))
        #expect(p.contains("pools.pink.discovery.port: required with type A (the port of every address)"))
        #expect(p.contains("pools.grey.endpoints: a pool needs at least one endpoint (or discovery)"))
        #expect(p.contains("pools.teal.outlier_detection.consecutive_failures: must be between 0 and 1000, got -1"))
        #expect(p.contains("pools.teal.outlier_detection.max_ejected_percent: must be between 0 and 100, got 101"))
        #expect(p.contains { $0.hasPrefix("pools.teal.outlier_detection.colour: unknown key") })
        #expect(p.contains("resolvers[0]: a resolver must be an IP address, not a name (dns.google)"))
    }
}

@Suite struct EndpointCommandTests {
    let view = EndpointCommands.View(order: ["blue", "green"], pools: [
        "blue": [EndpointCommands.Entry(address: "10.0.0.1:80", source: .config, state: .serving, leaving: false, takesTraffic: true),
                 EndpointCommands.Entry(address: "10.0.0.2:80", source: .dns, state: .serving, leaving: false, takesTraffic: true)],
        "green": [EndpointCommands.Entry(address: "10.0.1.1:80", source: .config, state: .serving, leaving: false, takesTraffic: true)],
    ])
    let start = RoutingState(generation: 4, live: "blue", weights: ["blue": 10_000, "green": 0])

    @Test func addRemoveAndUpdateEachMakeOneGeneration() throws {
        let added = try EndpointCommands.add(pool: "blue", address: "10.0.0.9:80", weight: 50, state: start, view: view)
        #expect(added.generation == 5)
        #expect(added.override(pool: "blue", address: "10.0.0.9:80") == EndpointOverride(added: true, weight: 50))
        let drained = try EndpointCommands.update(pool: "blue", address: "10.0.0.2:80", .init(state: .draining), force: false, state: added, view: view)
        #expect(drained.generation == 6 && drained.override(pool: "blue", address: "10.0.0.2:80").state == .draining)
        let ready = try EndpointCommands.update(pool: "blue", address: "10.0.0.2:80", .init(state: .serving), force: false, state: drained, view: view)
        // Back to neutral: the override is forgotten.
        #expect(ready.endpoints["blue"]?["10.0.0.2:80"] == nil && ready.generation == 7)
        let removed = try EndpointCommands.remove(pool: "blue", address: "10.0.0.1:80", force: false, state: ready, view: view)
        #expect(removed.override(pool: "blue", address: "10.0.0.1:80").removed)
        // Routing state is untouched by endpoint changes.
        #expect(removed.weights == start.weights && removed.live == start.live)
    }

    @Test func refusesWithClearErrors() {
        func code(_ f: () throws -> RoutingState) -> String? {
            do { _ = try f(); return nil } catch { return (error as? AdminError)?.code ?? "\(error)" }
        }
        #expect(code { try EndpointCommands.add(pool: "red", address: "10.0.0.9:80", weight: nil, state: start, view: view) } == "unknown_pool")
        #expect(code { try EndpointCommands.add(pool: "blue", address: "10.0.0.9", weight: nil, state: start, view: view) } == "invalid_address")
        #expect(code { try EndpointCommands.add(pool: "blue", address: "10.0.0.1:80", weight: nil, state: start, view: view) } == "endpoint_exists")
        #expect(code { try EndpointCommands.add(pool: "blue", address: "10.0.0.9:80", weight: 10_001, state: start, view: view) } == "invalid_weight")
        #expect(code { try EndpointCommands.remove(pool: "blue", address: "10.0.0.7:80", force: false, state: start, view: view) } == "unknown_endpoint")
        // The last serving endpoint of a pool with traffic needs force; a pool without weight does not.
        let oneLeft = try! EndpointCommands.update(pool: "blue", address: "10.0.0.2:80", .init(state: .maintenance), force: false, state: start, view: view)
        var v = view
        v.pools["blue"]![1].state = .maintenance
        #expect(code { try EndpointCommands.remove(pool: "blue", address: "10.0.0.1:80", force: false, state: oneLeft, view: v) } == "last_endpoint")
        #expect(code { try EndpointCommands.update(pool: "blue", address: "10.0.0.1:80", .init(weight: 0), force: false, state: oneLeft, view: v) } == "last_endpoint")
        #expect(code { try EndpointCommands.remove(pool: "blue", address: "10.0.0.1:80", force: true, state: oneLeft, view: v) } == nil)
        #expect(code { try EndpointCommands.remove(pool: "green", address: "10.0.1.1:80", force: false, state: start, view: view) } == nil)
        #expect(code { try EndpointCommands.update(pool: "blue", address: "10.0.0.1:80", .init(), force: false, state: start, view: view) } == "missing_field")
    }

    @Test func theStateFileKeepsOverridesAndDropsThoseOfPoolsNoLongerConfigured() throws {
        let config = try ConfigLoader.parse(yaml: """
            listeners: [{ address: 127.0.0.1:8080 }]
            pools: { blue: { endpoints: ["10.0.0.1:80"] }, green: { endpoints: ["10.0.1.1:80"] } }
            """)
        var s = start
        s.setOverride(EndpointOverride(added: true, weight: 7), pool: "blue", address: "10.0.0.9:80")
        s.setOverride(EndpointOverride(removed: true), pool: "red", address: "10.0.2.1:80")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("turnout-ep-\(UUID())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let path = dir.appendingPathComponent("state.json").path
        try StateFile.write(s, to: path)
        let back = try #require(try StateFile.load(path: path, config: config))
        #expect(back.endpoints == ["blue": ["10.0.0.9:80": EndpointOverride(added: true, weight: 7)]])
        // A hand-edited bad address is refused with the file's name.
        let text = try String(contentsOfFile: path, encoding: .utf8).replacingOccurrences(of: "10.0.0.9:80", with: "10.0.0.9")
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        #expect(throws: StateFile.LoadError.self) { try StateFile.load(path: path, config: config) }
    }
}

@Suite struct RoutingStoreEndpointTests {
    func store(_ pools: String = #"{ blue: { endpoints: ["10.0.0.1:80", "10.0.0.2:80"] }, green: { endpoints: ["10.0.1.1:80"] } }"#) throws -> RoutingStore {
        let config = try ConfigLoader.parse(yaml: "listeners: [{ address: 127.0.0.1:8080 }]\npools: \(pools)\n")
        return RoutingStore(config: config, state: RoutingState.initial(from: config))
    }

    @Test func aRemovedBusyEndpointLeavesOnlyOnceItDrained() throws {
        let s = try store()
        for e in s.allEndpoints { s.setHealth(endpointID: e.id, .healthy) }
        let leaving = s.allEndpoints[1]
        leaving.requestStarted(at: 1)
        try s.mutate({ (st: RoutingState, _) throws(AdminError) -> RoutingState in
            try EndpointCommands.remove(pool: "blue", address: "10.0.0.2:80", force: false, state: st, view: s.endpointView())
        }, persist: { (_: RoutingState) throws(AdminError) in })
        let member = try #require(s.members[0].members.first { $0.endpoint === leaving })
        #expect(member.leaving && member.state == .draining)
        #expect(!s.table.isHealthy(endpointID: leaving.id))
        #expect(s.releaseDrained().isEmpty)
        leaving.requestEnded()
        #expect(s.releaseDrained().map(\.id) == [leaving.id])
        #expect(s.members[0].members.map(\.endpoint.address.description) == ["10.0.0.1:80"])
    }

    @Test func discoveredAddressesKeepTheirIdentityAndEjectionTakesAnEndpointOutOfRotation() throws {
        let s = try store(#"{ blue: { endpoints: [], discovery: { dns: b.test, type: A, port: 80 } }, green: { endpoints: ["10.0.1.1:80"] } }"#)
        let box = Mutex<[RoutingStore.Reconfiguration]>([])
        s.observeTopology { change in box.withLock { $0.append(change) } }
        let a = HostPort(host: "10.0.0.1", port: 80), b = HostPort(host: "10.0.0.2", port: 80)
        s.setDiscovered(pool: "blue", [DiscoveredAddress(address: a), DiscoveredAddress(address: b)])
        let first = s.members[0].members.map(\.endpoint)
        s.setDiscovered(pool: "blue", [DiscoveredAddress(address: b)])
        #expect(s.members[0].members.map(\.endpoint.id) == [first[1].id])
        let seen = box.withLock { $0 }
        #expect(seen.count == 2 && seen[0].added.count == 2 && seen[1].removed.map(\.id) == [first[0].id])
        s.setHealth(endpointID: first[1].id, .healthy)
        #expect(s.table.isHealthy(endpointID: first[1].id))
        #expect(s.setEjected(endpointID: first[1].id, true))
        #expect(!s.table.isHealthy(endpointID: first[1].id))
        #expect(!s.setEjected(endpointID: first[1].id, true))
        s.setEjected(endpointID: first[1].id, false)
        #expect(s.table.isHealthy(endpointID: first[1].id))
    }

    @Test func endpointWeightsSplitAPoolInProportion() {
        let eps = (0..<3).map { UpstreamEndpoint(id: $0, pool: "blue", address: HostPort(host: "10.0.0.\($0)", port: 80)) }
        let pool = PoolRoute(name: "blue", endpoints: eps, healthy: [0, 1, 2], balance: .roundRobin, weights: [100, 300, 0])
        var counts = [0, 0, 0]
        for _ in 0..<400 { counts[pool.pickEndpoint(excluding: nil)!.id] += 1 }
        #expect(counts[0] == 100 && counts[1] == 300)
    }
}

@Suite struct HealthJoiningTests {
    @Test func anEndpointThatJoinsARunningProxyNeedsRisePasses() {
        var t = HealthTracker(rise: 3, fall: 2, joining: true)
        #expect(t.record(passed: true) == nil && t.record(passed: true) == nil)
        #expect(t.record(passed: true) == .healthy)
        var boot = HealthTracker(rise: 3, fall: 2)
        #expect(boot.record(passed: true) == .healthy)
    }
}

@Suite struct OutlierPolicyTests {
    @Test func neverEjectsMoreThanTheShareAndGrowsEachEjection() {
        #expect(OutlierPolicy.mayEject(poolSize: 2, ejected: 0, maxPercent: 50))
        #expect(!OutlierPolicy.mayEject(poolSize: 2, ejected: 1, maxPercent: 50))
        #expect(!OutlierPolicy.mayEject(poolSize: 1, ejected: 0, maxPercent: 50))
        #expect(OutlierPolicy.mayEject(poolSize: 1, ejected: 0, maxPercent: 100))
        #expect(!OutlierPolicy.mayEject(poolSize: 10, ejected: 0, maxPercent: 0))
        #expect(OutlierPolicy.duration(nth: 1, baseMs: 30_000) == 30_000)
        #expect(OutlierPolicy.duration(nth: 3, baseMs: 30_000) == 90_000)
        #expect(OutlierPolicy.duration(nth: 50, baseMs: 30_000) == 300_000)
        #expect(OutlierPolicy.duration(nth: 2, baseMs: 600_000) == 600_000)
        #expect(OutlierPolicy.streak(previous: 3, sinceReadmittedMs: 65_000, baseMs: 30_000) == 1)
        #expect(OutlierPolicy.streak(previous: 3, sinceReadmittedMs: nil, baseMs: 30_000) == 3)
    }
}
