import Foundation
import Testing
@testable import TurnoutCore

/// Rollback undoes the last operator-level change, a whole ramp counting as one, and `live` always
/// names a pool that takes traffic.
@Suite struct RollbackTests {
    let pools = RoutingCommands.PoolView(names: ["blue", "green"], healthy: ["blue", "green"])
    let start = RoutingState(generation: 1, live: "blue", weights: ["blue": 10_000, "green": 0])
    let stable = ["blue": 10_000, "green": 0]

    func plan(_ steps: [Int]) -> RampPlan {
        RampPlan(pool: "green", steps: steps, intervalMs: 1000, gates: RampGates(maxErrorRate: 0.01, maxP99Ms: nil, minRequests: 1))
    }

    func passed(_ s: RoutingState) -> RampStepRecord {
        RampStepRecord(weight: s.ramp!.currentWeight, requests: 100, errors: 0, p99Ms: 1, verdict: "passed")
    }

    /// `live` is a pool with weight in every state.
    func expectLiveTakesTraffic(_ s: RoutingState, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect((s.weights[s.live] ?? 0) > 0, "live \(s.live) has no weight in \(s.weights)", sourceLocation: sourceLocation)
    }

    /// Runs a ramp through all its steps.
    func completedRamp(_ steps: [Int], from state: RoutingState) throws -> RoutingState {
        var s = try RoutingCommands.startRamp(plan(steps), state: state, pools: pools, now: Date())
        expectLiveTakesTraffic(s)
        while s.ramp!.step + 1 < steps.count {
            s = RoutingCommands.advanceRamp(state: s, pools: pools, observed: passed(s), now: Date())
            expectLiveTakesTraffic(s)
            #expect(s.previousWeights == stable, "a ramp step must never be what rollback restores")
        }
        s = RoutingCommands.completeRamp(state: s, pools: pools, observed: passed(s))
        expectLiveTakesTraffic(s)
        return s
    }

    @Test func rollbackAfterACompletedRampRestoresTheWeightsFromBeforeIt() throws {
        let done = try completedRamp([5000, 10_000], from: start)
        #expect(done.ramp?.status == .completed)
        #expect(done.weights == ["blue": 0, "green": 10_000] && done.live == "green")
        #expect(done.previousWeights == stable && done.previousLive == "blue")
        let back = try RoutingCommands.rollback(state: done, pools: pools)
        #expect(back.weights == stable && back.live == "blue")
        #expect(back.generation == done.generation + 1)
        // A second rollback undoes the first: the release is promoted again.
        let again = try RoutingCommands.rollback(state: back, pools: pools)
        #expect(again.weights == ["blue": 0, "green": 10_000] && again.live == "green")
    }

    @Test func aRampThatStopsShortOfAllTrafficIsUndoneWhole() throws {
        let done = try completedRamp([1000, 2500], from: start)
        #expect(done.weights == ["blue": 7500, "green": 2500] && done.live == "blue")
        let back = try RoutingCommands.rollback(state: done, pools: pools)
        #expect(back.weights == stable && back.live == "blue")
    }

    @Test func theStepAtAllTrafficMakesTheCanaryLive() throws {
        var s = try RoutingCommands.startRamp(plan([5000, 10_000]), state: start, pools: pools, now: Date())
        s = RoutingCommands.advanceRamp(state: s, pools: pools, observed: passed(s), now: Date())
        #expect(s.ramp?.status == .running && s.weights["green"] == 10_000 && s.live == "green")
        // Rolled back at that step, blue is live again.
        let back = RoutingCommands.rollbackRamp(state: s, pools: pools, observed: nil, reason: "error rate")
        #expect(back.weights == stable && back.live == "blue")
    }

    @Test func anAbortedRampLeavesNothingToRollBackAndSaysWhy() throws {
        var s = try RoutingCommands.startRamp(plan([1000, 5000, 10_000]), state: start, pools: pools, now: Date())
        s = RoutingCommands.advanceRamp(state: s, pools: pools, observed: passed(s), now: Date())
        let aborted = try RoutingCommands.abortRamp(state: s, pools: pools)
        #expect(aborted.weights == stable && aborted.live == "blue" && aborted.previousWeights == nil)
        #expect(throws: AdminError.self) { try RoutingCommands.rollback(state: aborted, pools: pools) }
        do {
            _ = try RoutingCommands.rollback(state: aborted, pools: pools)
        } catch {
            #expect(error.status == 409 && error.code == "nothing_to_roll_back")
            #expect(error.message.contains("already rolled back") && error.message.contains("blue=100 green=0"))
        }
    }

    @Test func aRampRolledBackByAGateLeavesNothingToRollBack() throws {
        let s = try RoutingCommands.startRamp(plan([1000, 10_000]), state: start, pools: pools, now: Date())
        let back = RoutingCommands.rollbackRamp(state: s, pools: pools, observed: nil, reason: "error rate over 1%")
        #expect(back.ramp?.status == .rolledBack && back.weights == stable && back.generation == s.generation + 1)
        #expect(throws: AdminError.self) { try RoutingCommands.rollback(state: back, pools: pools) }
    }

    @Test func rollbackDuringARampAbortsIt() throws {
        let s = try RoutingCommands.startRamp(plan([1000, 10_000]), state: start, pools: pools, now: Date())
        let back = try RoutingCommands.rollback(state: s, pools: pools)
        #expect(back.ramp?.status == .aborted && back.weights == stable && back.live == "blue")
    }

    @Test func aForcedSwitchDuringARampIsUndoneToTheWeightsFromBeforeTheRamp() throws {
        var s = try RoutingCommands.startRamp(plan([1000, 5000, 10_000]), state: start, pools: pools, now: Date())
        s = RoutingCommands.advanceRamp(state: s, pools: pools, observed: passed(s), now: Date())
        let switched = try RoutingCommands.switchTo("green", force: true, state: s, pools: pools)
        #expect(switched.ramp?.status == .aborted && switched.live == "green")
        #expect(switched.previousWeights == stable && switched.previousLive == "blue")
        let back = try RoutingCommands.rollback(state: switched, pools: pools)
        #expect(back.weights == stable && back.live == "blue")
    }

    @Test func rollbackUndoesASwitchAndASecondRollbackUndoesTheFirst() throws {
        let switched = try RoutingCommands.switchTo("green", force: false, state: start, pools: pools)
        let back = try RoutingCommands.rollback(state: switched, pools: pools)
        #expect(back.weights == stable && back.live == "blue")
        let forth = try RoutingCommands.rollback(state: back, pools: pools)
        #expect(forth.weights == ["blue": 0, "green": 10_000] && forth.live == "green")
    }

    @Test func rollbackUndoesAWeightsChange() throws {
        let split = try RoutingCommands.setWeights(["blue": 9000, "green": 1000], state: start, pools: pools)
        #expect(split.live == "blue" && split.previousWeights == stable)
        let back = try RoutingCommands.rollback(state: split, pools: pools)
        #expect(back.weights == stable && back.live == "blue")
    }

    @Test func aLivePoolLeftWithoutWeightGivesWayToTheLargest() throws {
        let three = RoutingCommands.PoolView(names: ["blue", "green", "red"], healthy: ["blue", "green", "red"])
        let s = RoutingState(generation: 1, live: "blue", weights: ["blue": 10_000, "green": 0, "red": 0])
        let next = try RoutingCommands.setWeights(["green": 4000, "red": 6000], state: s, pools: three)
        #expect(next.live == "red")
        let tie = try RoutingCommands.setWeights(["green": 5000, "red": 5000], state: s, pools: three)
        #expect(tie.live == "green")
        let kept = try RoutingCommands.setWeights(["blue": 100, "red": 9900], state: s, pools: three)
        #expect(kept.live == "blue")
    }

    @Test func aStateFileThatNamesAPoolWithoutWeightAsLiveLoadsWithTheLivePoolThatTakesTraffic() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("turnout-rollback-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("state.json").path
        let written = RoutingState(generation: 5, live: "blue", weights: ["blue": 0, "green": 10_000])
        try StateFile.write(written, to: path)
        let config = try ConfigLoader.parse(yaml: """
            listeners: [{ address: "127.0.0.1:8080" }]
            pools:
              blue: { endpoints: ["127.0.0.1:9001"] }
              green: { endpoints: ["127.0.0.1:9002"] }
            """)
        let loaded = try #require(try StateFile.load(path: path, config: config))
        #expect(loaded.live == "green")
    }
}
