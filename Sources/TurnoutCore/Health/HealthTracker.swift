/// What Turnout believes about an endpoint's health.
public enum HealthStatus: String, Sendable, Equatable, Codable {
    /// No probe has finished yet: the endpoint takes no traffic.
    case unknown
    case healthy
    case unhealthy
}

/// The rise/fall state machine of one endpoint. It only decides; the prober acts on transitions.
///
/// Start-up rule: an endpoint in `unknown` becomes healthy on its first passing probe (so a freshly
/// started proxy serves at once) and unhealthy on its first failing one. After that, `rise`
/// consecutive passes are needed to become healthy and `fall` consecutive failures to become
/// unhealthy. An endpoint that joins a running proxy (reload, DNS, admin API) is `joining`: it
/// needs `rise` passes from `unknown` too, so one lucky probe never sends it traffic.
public struct HealthTracker: Sendable, Equatable {
    public private(set) var rise: Int
    public private(set) var fall: Int
    public private(set) var status: HealthStatus = .unknown
    public private(set) var consecutivePasses = 0
    public private(set) var consecutiveFailures = 0
    public let joining: Bool

    public init(rise: Int, fall: Int, joining: Bool = false) {
        self.rise = max(1, rise)
        self.fall = max(1, fall)
        self.joining = joining
    }

    /// Takes new thresholds (a reload), keeping the status and the current run of results.
    public mutating func retune(rise: Int, fall: Int) {
        self.rise = max(1, rise)
        self.fall = max(1, fall)
    }

    /// Records a probe result and returns the new status when it changed.
    public mutating func record(passed: Bool) -> HealthStatus? {
        if passed {
            consecutivePasses += 1
            consecutiveFailures = 0
        } else {
            consecutiveFailures += 1
            consecutivePasses = 0
        }
        let next: HealthStatus
        switch status {
        case .unknown:
            if joining {
                next = passed ? (consecutivePasses >= rise ? .healthy : .unknown) : .unhealthy
            } else {
                next = passed ? .healthy : .unhealthy
            }
        case .healthy:
            next = consecutiveFailures >= fall ? .unhealthy : .healthy
        case .unhealthy:
            next = consecutivePasses >= rise ? .healthy : .unhealthy
        }
        guard next != status else { return nil }
        status = next
        return next
    }
}
