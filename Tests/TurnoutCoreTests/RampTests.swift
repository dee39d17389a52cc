import Foundation
import Testing
@testable import TurnoutCore

@Suite struct RampEngineTests {
    let pools = RoutingCommands.PoolView(names: ["blue", "green"], healthy: ["blue", "green"])
    let start = RoutingState(generation: 1, live: "blue", weights: ["blue": 10_000, "green": 0])

    func plan(_ steps: [Int] = [1000, 5000, 10_000], minRequests: Int = 100) -> RampPlan {
        RampPlan(pool: "green", steps: steps, intervalMs: 1000,
                 gates: RampGates(maxErrorRate: 0.01, maxP99Ms: 500, minRequests: minRequests))
    }

    @Test func startingARampAppliesTheFirstStep() throws {
        let s = try RoutingCommands.startRamp(plan(), state: start, pools: pools, now: Date())
        #expect(s.weights == ["blue": 9000, "green": 1000])
        #expect(s.ramp?.status == .running && s.ramp?.step == 0 && s.generation == 2)
    }

    @Test func gatesPassAtTheEndOfAStepAndNotBefore() throws {
        let s = try RoutingCommands.startRamp(plan(), state: start, pools: pools, now: Date())
        let good = RampWindow(requests: 500, errors: 2, p99Micros: 100_000)
        #expect(RampEngine.decide(s.ramp!, window: good, stepElapsedMs: 500, canaryHealthy: true) == .none)
        #expect(RampEngine.decide(s.ramp!, window: good, stepElapsedMs: 1000, canaryHealthy: true) == .advance)
    }

    @Test func tooFewRequestsHoldTheStep() throws {
        let s = try RoutingCommands.startRamp(plan(), state: start, pools: pools, now: Date())
        let sparse = RampWindow(requests: 10, errors: 5, p99Micros: 9_000_000)
        guard case .hold = RampEngine.decide(s.ramp!, window: sparse, stepElapsedMs: 5000, canaryHealthy: true) else {
            Issue.record("expected a hold")
            return
        }
    }

    @Test func aBreachRollsBackAtOnce() throws {
        let s = try RoutingCommands.startRamp(plan(), state: start, pools: pools, now: Date())
        let errors = RampWindow(requests: 200, errors: 40, p99Micros: 1000)
        guard case .rollback(_, let verdict) = RampEngine.decide(s.ramp!, window: errors, stepElapsedMs: 10, canaryHealthy: true) else {
            Issue.record("expected a rollback")
            return
        }
        #expect(verdict == "breached")
        let slow = RampWindow(requests: 200, errors: 0, p99Micros: 900_000)
        guard case .rollback = RampEngine.decide(s.ramp!, window: slow, stepElapsedMs: 10, canaryHealthy: true) else {
            Issue.record("expected a rollback on p99")
            return
        }
        let back = RoutingCommands.rollbackRamp(state: s, pools: pools, observed: nil, reason: "x")
        #expect(back.weights == ["blue": 10_000, "green": 0] && back.live == "blue" && back.ramp?.status == .rolledBack)
    }

    @Test func lostHealthRollsBack() throws {
        let s = try RoutingCommands.startRamp(plan(), state: start, pools: pools, now: Date())
        guard case .rollback(_, "health") = RampEngine.decide(s.ramp!, window: RampWindow(requests: 0, errors: 0, p99Micros: nil), stepElapsedMs: 0, canaryHealthy: false) else {
            Issue.record("expected a health rollback")
            return
        }
    }

    @Test func completingAtOneHundredMakesTheCanaryLive() throws {
        var s = try RoutingCommands.startRamp(plan([5000, 10_000]), state: start, pools: pools, now: Date())
        s = RoutingCommands.advanceRamp(state: s, pools: pools, observed: RampStepRecord(weight: 5000, verdict: "passed"), now: Date())
        #expect(s.weights == ["blue": 0, "green": 10_000])
        s = RoutingCommands.completeRamp(state: s, pools: pools, observed: RampStepRecord(weight: 10_000, verdict: "passed"))
        #expect(s.live == "green" && s.ramp?.status == .completed)
        #expect(s.ramp?.records.map(\.verdict) == ["passed", "passed"])
    }

    @Test func badPlansAreRefused() {
        for steps in [[], [5000, 1000], [0, 100], [1000, 10_001]] {
            #expect(throws: AdminError.self) { try plan(steps).validate() }
        }
    }
}

@Suite struct LatencyHistogramTests {
    /// 16 buckets per power of two: a bucket spans at most 1/16 of its lower edge, so a quantile
    /// reported anywhere inside the true value's bucket is within 6.25% of it.
    @Test func quantilesAreWithinSixPercent() {
        var h = LatencyHistogram()
        for v in 1...10_000 { h.record(micros: UInt64(v * 10)) }
        for (q, exact) in [(0.5, 50_000.0), (0.9, 90_000.0), (0.99, 99_000.0), (0.999, 99_900.0)] {
            let got = Double(h.quantile(q)!)
            #expect(abs(got - exact) / exact <= 0.0625, "p\(q * 100): \(got) against \(exact)")
        }
        // From 64 µs up (the range the 6% is promised for), every single recorded value reads
        // back within 6.25%; below 64 µs the buckets are 4 µs wide.
        for v: UInt64 in [64, 100, 999, 1023, 1025, 33_333, 1_000_000, 123_456_789, 2_000_000_000] {
            var one = LatencyHistogram()
            one.record(micros: v)
            let got = Double(one.quantile(0.5)!)
            #expect(abs(got - Double(v)) / Double(v) <= 0.0625, "\(v) read back as \(got)")
        }
        for v: UInt64 in [1, 7, 17, 63] {
            var one = LatencyHistogram()
            one.record(micros: v)
            #expect(one.quantile(0.5)! > v && one.quantile(0.5)! - v <= 4, "\(v) read back as \(one.quantile(0.5)!)")
        }
    }

    @Test func windowsSubtractExactly() {
        var h = LatencyHistogram()
        for _ in 0..<100 { h.record(micros: 1000) }
        let before = h
        for _ in 0..<10 { h.record(micros: 400_000) }
        let window = h.since(before)
        #expect(window.total == 10)
        #expect(window.quantile(0.99)! >= 400_000)
    }

    @Test func tinyAndHugeValuesHaveBuckets() {
        var h = LatencyHistogram()
        h.record(micros: 0)
        h.record(micros: UInt64.max / 4)
        #expect(h.total == 2)
        #expect(h.count(atMost: 10) == 1)
    }
}
