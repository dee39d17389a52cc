import Foundation

/// The gates a canary must pass at every ramp step.
public struct RampGates: Codable, Sendable, Equatable {
    /// Largest allowed share of 5xx responses (0...1), e.g. 0.01.
    public var maxErrorRate: Double?
    /// Largest allowed p99 latency in milliseconds.
    public var maxP99Ms: Int64?
    /// Fewest canary requests a step must see before its gates are judged.
    public var minRequests: Int

    public init(maxErrorRate: Double? = 0.01, maxP99Ms: Int64? = nil, minRequests: Int = 100) {
        self.maxErrorRate = maxErrorRate
        self.maxP99Ms = maxP99Ms
        self.minRequests = minRequests
    }
}

/// A ramp's optional first step: before any live request goes to the canary, a copy of a share
/// of the live requests is mirrored to it for `durationMs`, and the ramp's gates are judged on the
/// copies' answers. The canary's weights do not change during it.
public struct RampMirrorPlan: Codable, Sendable, Equatable {
    /// The share of eligible requests copied, in basis points.
    public var percentBP: Int
    /// How long the mirroring step lasts (the ramp's interval unless given).
    public var durationMs: Int64
    /// Methods copied (upper case); GET and HEAD unless given.
    public var methods: [String]

    public init(percentBP: Int, durationMs: Int64, methods: [String] = MirrorSpec.defaultMethods) {
        self.percentBP = percentBP
        self.durationMs = durationMs
        self.methods = methods
    }

    /// The mirror in force during the step, copying to `pool`.
    public func spec(pool: String) -> MirrorSpec {
        MirrorSpec(pool: pool, percentBP: percentBP, methods: methods)
    }
}

/// What a ramp should do, as asked by the operator.
public struct RampPlan: Codable, Sendable, Equatable {
    public var pool: String
    /// Canary weight of each step in basis points, strictly increasing.
    public var steps: [Int]
    public var intervalMs: Int64
    public var gates: RampGates
    /// A mirroring step before the first weighted step, when asked for. Absent in state files
    /// written before ramps could mirror.
    public var mirror: RampMirrorPlan?

    public init(pool: String, steps: [Int], intervalMs: Int64, gates: RampGates, mirror: RampMirrorPlan? = nil) {
        self.pool = pool
        self.steps = steps
        self.intervalMs = intervalMs
        self.gates = gates
        self.mirror = mirror
    }

    /// Checks the plan's own shape (not the pools).
    public func validate() throws(AdminError) {
        guard !steps.isEmpty else { throw .badRequest("steps must list at least one weight", code: "invalid_ramp") }
        var last = 0
        for s in steps {
            guard s > last, s <= Percent.whole else {
                throw .badRequest("steps must be strictly increasing percentages above 0 and at most 100", code: "invalid_ramp")
            }
            last = s
        }
        guard intervalMs >= 100 else { throw .badRequest("interval must be at least 100ms", code: "invalid_ramp") }
        if let e = gates.maxErrorRate, !(0...1).contains(e) {
            throw .badRequest("max_error_rate must be between 0 and 1 (e.g. 0.01 for 1%)", code: "invalid_ramp")
        }
        if let p = gates.maxP99Ms, p <= 0 { throw .badRequest("max_p99 must be a positive duration", code: "invalid_ramp") }
        guard gates.minRequests >= 0 else { throw .badRequest("min_requests must be 0 or more", code: "invalid_ramp") }
        if let m = mirror {
            guard m.durationMs >= 100 else { throw .badRequest("mirror duration must be at least 100ms", code: "invalid_ramp") }
            // The spec's own checks (percent, methods), phrased for the ramp.
            if let problem = m.spec(pool: pool).problem(pools: [pool]) {
                throw .badRequest("mirror step: \(problem)", code: "invalid_ramp")
            }
        }
    }
}

/// What was seen during one step of a ramp.
public struct RampStepRecord: Codable, Sendable, Equatable {
    public var weight: Int
    public var requests: UInt64
    public var errors: UInt64
    public var p99Ms: Double?
    /// passed, held, breached, health, aborted, completed, running
    public var verdict: String

    public init(weight: Int, requests: UInt64 = 0, errors: UInt64 = 0, p99Ms: Double? = nil, verdict: String = "running") {
        self.weight = weight
        self.requests = requests
        self.errors = errors
        self.p99Ms = p99Ms
        self.verdict = verdict
    }

    public var errorRate: Double? { requests == 0 ? nil : Double(errors) / Double(requests) }
}

/// A ramp in progress or finished. Part of the persisted routing state.
public struct RampState: Codable, Sendable, Equatable {
    public enum Status: String, Codable, Sendable {
        case running, paused, completed
        case rolledBack = "rolled_back"
        case aborted
    }

    public var plan: RampPlan
    public var status: Status
    public var step: Int
    /// Wall-clock start of the current step (for display; the driver times steps on a monotonic clock).
    public var stepStartedAt: Date
    public var preRampWeights: [String: Int]
    public var preRampLive: String
    public var records: [RampStepRecord]
    public var reason: String?
    /// The mirroring step's record, when the plan has one (verdict "running" while it lasts).
    public var mirrorRecord: RampStepRecord?
    /// The mirror in force before the ramp began, restored when its mirroring step ends (nil when
    /// the plan has no mirroring step).
    public var preRampMirror: MirrorSetting?

    public init(plan: RampPlan, status: Status, step: Int, stepStartedAt: Date, preRampWeights: [String: Int],
                preRampLive: String, records: [RampStepRecord], reason: String?,
                mirrorRecord: RampStepRecord? = nil, preRampMirror: MirrorSetting? = nil) {
        self.plan = plan
        self.status = status
        self.step = step
        self.stepStartedAt = stepStartedAt
        self.preRampWeights = preRampWeights
        self.preRampLive = preRampLive
        self.records = records
        self.reason = reason
        self.mirrorRecord = mirrorRecord
        self.preRampMirror = preRampMirror
    }

    public var isActive: Bool { status == .running || status == .paused }
    /// Whether the ramp is in its mirroring step (running or paused in it).
    public var isMirroring: Bool { isActive && mirrorRecord?.verdict == "running" }
    /// Whether the weighted steps began (no mirroring step, or it passed).
    public var weightedStepsBegan: Bool { mirrorRecord.map { $0.verdict == "passed" } ?? true }
    /// The canary's share now: its pre-ramp weight during the mirroring step, else the step's.
    public var currentWeight: Int { isMirroring ? (preRampWeights[plan.pool] ?? 0) : plan.steps[step] }
    /// How long the current step lasts.
    public var currentIntervalMs: Int64 { isMirroring ? (plan.mirror?.durationMs ?? plan.intervalMs) : plan.intervalMs }
}

/// The observations a ramp decision is made on: the canary's traffic in the current step.
public struct RampWindow: Sendable, Equatable {
    public var requests: UInt64
    public var errors: UInt64
    public var p99Micros: UInt64?
    /// The canary's latencies, from which `p99Micros` comes (empty when built from a p99 alone).
    public var latency: LatencyHistogram
    /// Requests of every pool in the same window (to show the split).
    public var totalRequests: UInt64
    public init(requests: UInt64, errors: UInt64, p99Micros: UInt64?, totalRequests: UInt64 = 0) {
        self.requests = requests
        self.errors = errors
        self.p99Micros = p99Micros
        self.latency = LatencyHistogram()
        self.totalRequests = totalRequests
    }
    public init(requests: UInt64, errors: UInt64, latency: LatencyHistogram, totalRequests: UInt64) {
        self.requests = requests
        self.errors = errors
        self.latency = latency
        self.p99Micros = latency.quantile(0.99)
        self.totalRequests = totalRequests
    }
    /// This window and another replica's, as one (counts add up, p99 of the merged histogram).
    public func adding(_ other: RampWindow) -> RampWindow {
        var h = latency
        h.add(other.latency)
        return RampWindow(requests: requests + other.requests, errors: errors + other.errors, latency: h,
                          totalRequests: totalRequests + other.totalRequests)
    }
    public var errorRate: Double { requests == 0 ? 0 : Double(errors) / Double(requests) }
    public var p99Ms: Double? { p99Micros.map { Double($0) / 1000 } }
}

/// The ramp state machine. Pure: given the state and what was observed, it says what to do.
public enum RampEngine {
    public enum Decision: Equatable, Sendable {
        case none
        /// The step's time is up but too few requests were seen: keep the weight, say so.
        case hold(String)
        /// Gates passed at the end of the step: go to the next step.
        case advance
        /// The last step passed.
        case complete
        /// Roll back to the pre-ramp weights at once.
        case rollback(reason: String, verdict: String)
    }

    public static func decide(_ ramp: RampState, window: RampWindow, stepElapsedMs: Int64, canaryHealthy: Bool) -> Decision {
        guard ramp.status == .running else { return .none }
        if !canaryHealthy { return .rollback(reason: "pool \(ramp.plan.pool) has no healthy endpoint", verdict: "health") }
        let gates = ramp.plan.gates
        let judged = window.requests >= UInt64(gates.minRequests) && window.requests > 0
        let of = ramp.isMirroring ? " of mirrored requests" : ""
        if judged {
            if let max = gates.maxErrorRate, window.errorRate > max {
                return .rollback(reason: "error rate\(of): " + String(format: "%.2f%% over %.2f%% (%llu of %llu requests)",
                                                window.errorRate * 100, max * 100, window.errors, window.requests),
                                 verdict: "breached")
            }
            if let max = gates.maxP99Ms, let p99 = window.p99Ms, p99 > Double(max) {
                return .rollback(reason: "latency\(of): " + String(format: "p99 %.1fms over %lldms", p99, max), verdict: "breached")
            }
        }
        guard stepElapsedMs >= ramp.currentIntervalMs else { return .none }
        guard judged else {
            let what = ramp.isMirroring ? "mirrored requests" : "requests"
            return .hold("too few \(what) to judge: \(window.requests) of \(gates.minRequests) needed")
        }
        return ramp.isMirroring || ramp.step + 1 < ramp.plan.steps.count ? .advance : .complete
    }

    /// The weights for a step: the target pool gets the step's share, the pre-ramp live pool the rest.
    public static func weights(for ramp: RampState, step: Int, pools: [String]) -> [String: Int] {
        var w: [String: Int] = [:]
        for p in pools { w[p] = 0 }
        let share = ramp.plan.steps[step]
        w[ramp.plan.pool] = share
        if share < Percent.whole { w[ramp.preRampLive, default: 0] += Percent.whole - share }
        return w
    }
}
