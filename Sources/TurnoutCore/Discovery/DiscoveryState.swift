/// What discovery decides for one pool after each resolution: whether to apply the answer and
/// when to ask again. A value that returns decisions; the discovery service does the I/O.
///
/// Rules: the next resolution follows the answer's TTL clamped to `min_ttl`/`max_ttl`, with up to
/// 10% jitter either way (so replicas do not ask in step). A resolver error keeps the last good
/// list and retries after the TTL floor (at least 1 s), doubling up to `max_ttl` or 30 s,
/// whichever is shorter. An answer with no address for a
/// pool that carries traffic is held back until it has been the answer for `confirm_empty`; any
/// answer with addresses ends the hold.
public struct DiscoveryState: Sendable, Equatable {
    public let config: DiscoveryConfig
    /// The last applied list (nil until the first answer).
    public private(set) var applied: [DiscoveredAddress]?
    /// Since when (ms) answers have been empty while the pool carried traffic.
    public private(set) var emptySince: Int64?
    public private(set) var consecutiveErrors = 0

    public init(config: DiscoveryConfig) { self.config = config }

    public enum Decision: Sendable, Equatable {
        /// Apply this list (it differs from the applied one, or is the first).
        case apply([DiscoveredAddress])
        /// Nothing changed.
        case keep
        /// The answer is empty and the pool carries traffic: held until `remainingMs` more of
        /// empty answers; `first` is true when the hold just began.
        case holdEmpty(remainingMs: Int64, first: Bool)
        /// The hold is over: apply the empty answer.
        case applyEmpty
    }

    /// Takes an answer (addresses sorted by the caller) with its smallest TTL. Returns the decision
    /// and the delay until the next resolution. `jitter` is in [-1, 1].
    public mutating func answer(_ addresses: [DiscoveredAddress], ttlSeconds: UInt32, nowMs: Int64,
                                carriesTraffic: Bool, jitter: Double) -> (Decision, nextInMs: Int64) {
        consecutiveErrors = 0
        var delay = clampedDelay(ttlSeconds: ttlSeconds, jitter: jitter)
        if addresses.isEmpty, let applied, !applied.isEmpty, carriesTraffic {
            let first = emptySince == nil
            let since = emptySince ?? nowMs
            emptySince = since
            let remaining = config.confirmEmptyMs - (nowMs - since)
            if remaining > 0 {
                // Ask again before the hold ends, so an empty answer is confirmed on time.
                delay = max(1, min(delay, remaining))
                return (.holdEmpty(remainingMs: remaining, first: first), delay)
            }
            emptySince = nil
            self.applied = []
            return (.applyEmpty, delay)
        }
        emptySince = nil
        if addresses == applied { return (.keep, delay) }
        applied = addresses
        return (.apply(addresses), delay)
    }

    /// A resolution failed: the last list stays. Returns the delay until the retry.
    public mutating func failed(jitter: Double) -> Int64 {
        consecutiveErrors += 1
        // Never later than a normal resolution would come (max_ttl), and at most 30 s.
        let cap = min(30_000, max(config.maxTTLMs, 1000))
        let base = min(max(config.minTTLMs, 1000), cap)
        let backoff = min(cap, base << min(consecutiveErrors - 1, 5))
        return max(1, Int64(Double(backoff) * (1 + 0.1 * jitter)))
    }

    func clampedDelay(ttlSeconds: UInt32, jitter: Double) -> Int64 {
        let ttlMs = Int64(ttlSeconds) * 1000
        let clamped = min(max(ttlMs, config.minTTLMs), config.maxTTLMs)
        return max(1, Int64(Double(clamped) * (1 + 0.1 * max(-1, min(1, jitter)))))
    }
}
