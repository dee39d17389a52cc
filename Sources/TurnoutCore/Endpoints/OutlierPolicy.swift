/// The decisions of passive outlier detection, as pure functions: whether an endpoint that
/// tripped a trigger may be ejected, and for how long.
public enum OutlierPolicy {
    /// Never longer than this (or the base time, when that is longer), as Envoy's
    /// `max_ejection_time` defaults to.
    public static let maxEjectionMs: Int64 = 300_000

    /// Whether one more endpoint of a pool of `poolSize` (with `ejected` already out) may be
    /// ejected without more than `maxPercent` of the pool out at once.
    public static func mayEject(poolSize: Int, ejected: Int, maxPercent: Int) -> Bool {
        poolSize > 0 && (ejected + 1) * 100 <= maxPercent * poolSize
    }

    /// How many ejections in a row count towards the next one's length: the count goes down by one
    /// for every `base` the endpoint stayed in since its last readmission.
    public static func streak(previous: Int, sinceReadmittedMs: Int64?, baseMs: Int64) -> Int {
        guard let since = sinceReadmittedMs, baseMs > 0 else { return previous }
        return max(0, previous - Int(since / baseMs))
    }

    /// The length of the `n`th ejection in a row (n from 1): n × base, capped.
    public static func duration(nth n: Int, baseMs: Int64) -> Int64 {
        min(Int64(max(1, n)) * baseMs, max(baseMs, maxEjectionMs))
    }
}
