import Foundation
import Testing
@testable import TurnoutCore

@Suite struct MirrorTests {
    let pools = RoutingCommands.PoolView(names: ["blue", "green"], healthy: ["blue", "green"])
    let start = RoutingState(generation: 3, live: "blue", weights: ["blue": 10_000, "green": 0])

    func spec(_ percent: Int = 1000, methods: [String] = MirrorSpec.defaultMethods) -> MirrorSpec {
        MirrorSpec(pool: "green", percentBP: percent, methods: methods)
    }

    // MARK: which requests are copied

    @Test func theShareIsExactInEveryWindowOfTenThousand() {
        for bp in [1, 250, 1000, 3333, 5000, 9999, 10_000] {
            let route = MirrorRoute(pool: 1, spec: spec(bp))
            var copied = 0
            for _ in 0..<20_000 where route.selects(method: "GET", servingPool: 0) { copied += 1 }
            #expect(copied == 2 * bp, "at \(bp) bp")
        }
    }

    @Test func copiesAreSpreadEvenly() {
        // At 10%, exactly one copy in each run of ten requests.
        let route = MirrorRoute(pool: 1, spec: spec(1000))
        for _ in 0..<100 {
            let picks = (0..<10).filter { _ in route.selects(method: "GET", servingPool: 0) }
            #expect(picks.count == 1)
        }
    }

    @Test func onlyListedMethodsOfOtherPoolsAreCopiedOrCounted() {
        let route = MirrorRoute(pool: 1, spec: spec(5000, methods: ["GET"]))
        // Neither a POST nor a request green serves itself takes a place in the count.
        for _ in 0..<10 {
            #expect(!route.selects(method: "POST", servingPool: 0))
            #expect(!route.selects(method: "GET", servingPool: 1))
        }
        #expect([route.selects(method: "GET", servingPool: 0), route.selects(method: "GET", servingPool: 0)] == [false, true])
    }

    // MARK: the spec

    @Test func problemsAreNamed() {
        let names = ["blue", "green"]
        #expect(spec().problem(pools: names) == nil)
        #expect(MirrorSpec(pool: "red", percentBP: 10).problem(pools: names)?.contains("no pool named \"red\"") == true)
        #expect(spec(0).problem(pools: names)?.contains("above 0") == true)
        #expect(spec(10_001).problem(pools: names) != nil)
        #expect(spec(methods: []).problem(pools: names) != nil)
        #expect(spec(methods: ["get"]).problem(pools: names)?.contains("upper-case") == true)
        #expect(spec(methods: ["CONNECT"]).problem(pools: names) == "CONNECT cannot be mirrored")
        #expect(spec(methods: ["GET", "GET"]).problem(pools: names) != nil)
        var s = spec()
        s.maxInFlight = 0
        #expect(s.problem(pools: names)?.contains("max_in_flight") == true)
        s = spec()
        s.maxBodyBytes = MirrorSpec.maxMaxBodyBytes + 1
        #expect(s.problem(pools: names)?.contains("max_body_bytes") == true)
    }

    // MARK: the command

    @Test func settingTheMirrorIsAGenerationAndTheSameAgainIsNone() throws {
        let on = try RoutingCommands.setMirror(spec(), state: start, pools: pools)
        #expect(on.mirror == spec() && on.generation == 4 && on.weights == start.weights)
        let again = try RoutingCommands.setMirror(spec(), state: on, pools: pools)
        #expect(again.generation == 4)
        let off = try RoutingCommands.setMirror(nil, state: on, pools: pools)
        #expect(off.mirror == nil && off.generation == 5)
        #expect(try RoutingCommands.setMirror(nil, state: off, pools: pools).generation == 5)
    }

    @Test func badSpecsAreRefusedWithTheirCode() {
        func code(_ s: MirrorSpec) -> String? {
            do { _ = try RoutingCommands.setMirror(s, state: start, pools: pools); return nil } catch { return "\(error.status) \(error.code)" }
        }
        #expect(code(MirrorSpec(pool: "red", percentBP: 10)) == "404 unknown_pool")
        #expect(code(spec(0)) == "400 invalid_mirror")
        #expect(code(spec(methods: ["CONNECT"])) == "400 invalid_mirror")
    }

    @Test func switchesWeightsRollbacksAndRampsKeepTheMirror() throws {
        let on = try RoutingCommands.setMirror(spec(), state: start, pools: pools)
        let switched = try RoutingCommands.switchTo("green", force: false, state: on, pools: pools)
        #expect(switched.mirror == spec())
        let weighted = try RoutingCommands.setWeights(["blue": 5000, "green": 5000], state: switched, pools: pools)
        #expect(weighted.mirror == spec())
        #expect(try RoutingCommands.rollback(state: weighted, pools: pools).mirror == spec())
        let plan = RampPlan(pool: "green", steps: [1000, 10_000], intervalMs: 1000, gates: RampGates())
        let ramped = try RoutingCommands.startRamp(plan, state: on, pools: pools, now: Date())
        #expect(ramped.mirror == spec())
        #expect(RoutingCommands.rollbackRamp(state: ramped, pools: pools, observed: nil, reason: "test").mirror == spec())
    }

    // MARK: on disk, in the config, in the API

    func config(_ routing: String = "") throws -> TurnoutConfig {
        try ConfigLoader.parse(yaml: """
            listeners: [{ address: 127.0.0.1:8080 }]
            pools: { blue: { endpoints: ["10.0.0.1:80"] }, green: { endpoints: ["10.0.1.1:80"] } }
            routing:
              weights: { blue: 100 }
            \(routing)
            """)
    }

    func roundTrip(_ state: RoutingState, config: TurnoutConfig, edit: (String) -> String = { $0 }) throws -> RoutingState? {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("turnout-mirror-\(UUID())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("state.json").path
        try StateFile.write(state, to: path)
        try edit(try String(contentsOfFile: path, encoding: .utf8)).write(toFile: path, atomically: true, encoding: .utf8)
        return try StateFile.load(path: path, config: config)
    }

    @Test func theStateFileKeepsTheMirrorAndItsBeingOff() throws {
        let withMirror = try config("  mirror: { pool: green, percent: 50 }")
        var s = start
        s.mirror = MirrorSpec(pool: "green", percentBP: 1250, methods: ["GET", "POST"], maxBodyBytes: 10, maxInFlight: 3)
        #expect(try roundTrip(s, config: withMirror)?.mirror == s.mirror)
        // Off is written as off, and stays off whatever the config says.
        #expect(try roundTrip(start, config: withMirror)?.mirror == nil)
        // A file from before mirroring existed takes the config's.
        let old = try roundTrip(start, config: withMirror) { $0.replacingOccurrences(of: "\"mirror\" : \"off\",", with: "") }
        #expect(old?.mirror == MirrorSpec(pool: "green", percentBP: 5000))
        // A mirror of a pool the config no longer has is refused, with the file named.
        #expect(throws: StateFile.LoadError.self) {
            try roundTrip(s, config: withMirror) { $0.replacingOccurrences(of: "\"pool\" : \"green\"", with: "\"pool\" : \"red\"") }
        }
        #expect(throws: StateFile.LoadError.self) {
            try roundTrip(start, config: withMirror) { $0.replacingOccurrences(of: "\"mirror\" : \"off\"", with: "\"mirror\" : \"on\"") }
        }
    }

    @Test func theClusterDocumentCarriesTheMirror() throws {
        var s = start
        s.mirror = spec()
        let (back, _) = try ClusterDocument.decode(ClusterDocument.encode(s, change: nil), revision: 9, config: try config())
        #expect(back.mirror == spec())
    }

    @Test func theConfigReadsTheMirror() throws {
        let c = try config("  mirror: { pool: green, percent: 2.5, methods: [get, options], max_body_bytes: 0, max_in_flight: 9 }")
        #expect(c.routing.mirror == MirrorSpec(pool: "green", percentBP: 250, methods: ["GET", "OPTIONS"], maxBodyBytes: 0, maxInFlight: 9))
        #expect(RoutingState.initial(from: c).mirror == c.routing.mirror)
        #expect(try config("  mirror: off").routing.mirror == nil)
        #expect(try config().routing.mirror == nil)
    }

    @Test func jsonShowsTheSpecAndWhatWasObserved() {
        var t = TrafficStats()
        var s = EndpointStats()
        s.record(status: 200, micros: 1500, proxyGenerated: false)
        s.record(status: 502, micros: 3000, proxyGenerated: true)
        t.mirror["green"] = s
        t.mirrorDropped["green"] = [4, 0, 1, 0, 0]
        let json = JSONWriter.mirror(spec(), traffic: t)
        let obj = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any]
        let m = obj?["mirror"] as? [String: Any]
        #expect(m?["percent"] as? Int == 10 && m?["methods"] as? [String] == ["GET", "HEAD"])
        let g = (obj?["observed"] as? [String: Any])?["green"] as? [String: Any]
        #expect(g?["requests"] as? Int == 2 && g?["errors"] as? Int == 1)
        #expect((g?["responses"] as? [String: Any])?["5xx"] as? Int == 1)
        #expect(g?["dropped"] as? [String: Int] == ["busy": 4, "unavailable": 0, "body_too_large": 1, "incomplete": 0, "failing": 0])
        #expect(JSONWriter.mirror(nil, traffic: TrafficStats()) == "{\"mirror\":null,\"observed\":{}}")
    }

    @Test func mirrorCountersAddAndSubtract() {
        var a = TrafficStats()
        var s = EndpointStats()
        s.record(status: 200, micros: 10, proxyGenerated: false)
        a.mirror["green"] = s
        a.mirrorDropped["green"] = [1, 2, 3, 4, 5]
        var sum = TrafficStats()
        sum.add(a)
        sum.add(a)
        #expect(sum.mirror["green"]?.requests == 2 && sum.mirrorDropped["green"] == [2, 4, 6, 8, 10])
        let delta = sum.since(a)
        #expect(delta.mirror["green"]?.requests == 1 && delta.mirrorDropped["green"] == [1, 2, 3, 4, 5])
    }
}
