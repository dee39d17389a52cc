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

/// A ramp that starts with a mirroring step (`"mirror": {...}` in the plan).
@Suite struct RampMirrorStepTests {
    let pools = RoutingCommands.PoolView(names: ["blue", "green"], healthy: ["blue", "green"])
    let configMirror = MirrorSpec(pool: "blue", percentBP: 500)
    var start: RoutingState {
        RoutingState(generation: 1, live: "blue", weights: ["blue": 10_000, "green": 0],
                     previousWeights: ["blue": 0, "green": 10_000], previousLive: "green", mirror: configMirror)
    }

    func plan(mirrorPercent: Int = 10_000, durationMs: Int64 = 2000) -> RampPlan {
        RampPlan(pool: "green", steps: [1000, 10_000], intervalMs: 1000,
                 gates: RampGates(maxErrorRate: 0.01, maxP99Ms: 500, minRequests: 100),
                 mirror: RampMirrorPlan(percentBP: mirrorPercent, durationMs: durationMs))
    }

    @Test func theMirroringStepCopiesToTheCanaryAndLeavesTheWeights() throws {
        let s = try RoutingCommands.startRamp(plan(), state: start, pools: pools, now: Date())
        let ramp = try #require(s.ramp)
        #expect(s.weights == start.weights && s.live == "blue" && s.generation == 2)
        #expect(s.mirror == MirrorSpec(pool: "green", percentBP: 10_000))
        #expect(ramp.isMirroring && ramp.currentWeight == 0 && ramp.currentIntervalMs == 2000)
        #expect(ramp.preRampMirror == .on(configMirror))
        // Judged on its own duration, not the interval.
        let good = RampWindow(requests: 500, errors: 0, p99Micros: 1000)
        #expect(RampEngine.decide(ramp, window: good, stepElapsedMs: 1500, canaryHealthy: true) == .none)
        #expect(RampEngine.decide(ramp, window: good, stepElapsedMs: 2000, canaryHealthy: true) == .advance)
        // The operator cannot take the mirror over while the step owns it.
        #expect(throws: AdminError.self) { try RoutingCommands.setMirror(nil, state: s, pools: pools) }
    }

    @Test func passingItEntersStepOneAndRestoresTheMirror() throws {
        var s = try RoutingCommands.startRamp(plan(), state: start, pools: pools, now: Date())
        s = RoutingCommands.advanceRamp(state: s, pools: pools,
                                        observed: RampStepRecord(weight: 0, requests: 300, verdict: "passed"), now: Date())
        let ramp = try #require(s.ramp)
        #expect(!ramp.isMirroring && ramp.step == 0 && ramp.weightedStepsBegan)
        #expect(s.weights == ["blue": 9000, "green": 1000] && s.mirror == configMirror)
        #expect(ramp.mirrorRecord?.verdict == "passed" && ramp.mirrorRecord?.requests == 300)
        #expect(ramp.records.count == 1 && ramp.records[0].verdict == "running")
        // What a rollback of the whole ramp restores is what came before it.
        #expect(s.previousWeights == start.weights && s.previousLive == "blue")
        // From here on, the ordinary steps.
        #expect(RampEngine.decide(ramp, window: RampWindow(requests: 500, errors: 0, p99Micros: 1000), stepElapsedMs: 1000, canaryHealthy: true) == .advance)
        // And the mirror is the operator's again.
        #expect(try RoutingCommands.setMirror(nil, state: s, pools: pools).mirror == nil)
    }

    @Test func aBreachWhileMirroringRollsBackWithoutTouchingTheWeights() throws {
        let s = try RoutingCommands.startRamp(plan(), state: start, pools: pools, now: Date())
        let bad = RampWindow(requests: 200, errors: 50, p99Micros: 1000)
        guard case .rollback(let reason, "breached") = RampEngine.decide(s.ramp!, window: bad, stepElapsedMs: 10, canaryHealthy: true) else {
            Issue.record("expected a rollback")
            return
        }
        #expect(reason.contains("mirrored"))
        let back = RoutingCommands.rollbackRamp(state: s, pools: pools,
                                                observed: RampStepRecord(weight: 0, requests: 200, errors: 50, verdict: "breached"), reason: reason)
        #expect(back.weights == start.weights && back.mirror == configMirror && back.ramp?.status == .rolledBack)
        #expect(back.ramp?.mirrorRecord?.verdict == "breached" && back.ramp?.weightedStepsBegan == false)
        // The ramp changed no weights, so the operator's rollback target stays.
        #expect(back.previousWeights == start.previousWeights && back.previousLive == "green")
    }

    @Test func abortingOrForcingWhileMirroringRestoresTheMirror() throws {
        let s = try RoutingCommands.startRamp(plan(), state: start, pools: pools, now: Date())
        let aborted = try RoutingCommands.abortRamp(state: s, pools: pools)
        #expect(aborted.ramp?.status == .aborted && aborted.mirror == configMirror && aborted.ramp?.mirrorRecord?.verdict == "aborted")
        #expect(aborted.ramp?.records[0].verdict == "running" && aborted.ramp?.weightedStepsBegan == false)
        let forced = try RoutingCommands.switchTo("green", force: true, state: s, pools: pools)
        #expect(forced.ramp?.status == .aborted && forced.mirror == configMirror && forced.live == "green")
        // A pause keeps the step (and its mirror); resuming restarts its clock.
        let paused = try RoutingCommands.pauseRamp(state: s)
        #expect(paused.ramp?.isMirroring == true && paused.mirror == s.mirror)
    }

    @Test func tooFewCopiesHoldTheStep() throws {
        let s = try RoutingCommands.startRamp(plan(), state: start, pools: pools, now: Date())
        guard case .hold(let why) = RampEngine.decide(s.ramp!, window: RampWindow(requests: 3, errors: 0, p99Micros: 1000), stepElapsedMs: 5000, canaryHealthy: true) else {
            Issue.record("expected a hold")
            return
        }
        #expect(why.contains("mirrored"))
    }

    @Test func badMirroringStepsAreRefused() {
        #expect(throws: AdminError.self) { try plan(mirrorPercent: 0).validate() }
        #expect(throws: AdminError.self) { try plan(mirrorPercent: 10_001).validate() }
        #expect(throws: AdminError.self) { try plan(durationMs: 10).validate() }
        var p = plan()
        p.mirror?.methods = ["CONNECT"]
        #expect(throws: AdminError.self) { try p.validate() }
    }

    @Test func theStateFileKeepsTheMirroringStep() throws {
        let config = try MirrorTests().config("  mirror: { pool: blue, percent: 5 }")
        let s = try RoutingCommands.startRamp(plan(), state: start, pools: pools, now: Date())
        let back = try #require(try MirrorTests().roundTrip(s, config: config))
        #expect(back.ramp == s.ramp && back.mirror == s.mirror)
        // A file from before ramps could mirror has none of the new fields and reads as before.
        let plain = try RoutingCommands.startRamp(RampPlan(pool: "green", steps: [1000], intervalMs: 1000, gates: RampGates()),
                                                  state: start, pools: pools, now: Date())
        let old = try MirrorTests().roundTrip(plain, config: config)
        #expect(old?.ramp?.mirrorRecord == nil && old?.ramp?.isMirroring == false)
        // A mirroring record without a mirroring plan is refused.
        var broken = s
        broken.ramp?.plan.mirror = nil
        #expect(throws: StateFile.LoadError.self) { try MirrorTests().roundTrip(broken, config: config) }
    }
}
