/// A log-linear latency histogram with about 6% precision from 64 µs to about 35 minutes (2^31 µs;
/// longer values share the last bucket), 4 µs below 64 µs: each power of two is split into 16
/// linear sub-buckets. A plain value: the data path keeps one per
/// event loop and readers add them up, so recording needs no lock and no atomic.
public struct LatencyHistogram: Sendable, Equatable {
    public static let subBuckets = 16
    /// Values below 2^minShift microseconds share the first buckets linearly.
    @usableFromInline static let minShift = 6
    @usableFromInline static let octaves = 26
    public static let bucketCount = subBuckets * (octaves + 1)

    public private(set) var counts: [UInt64]
    public private(set) var total: UInt64 = 0
    public private(set) var sumMicros: UInt64 = 0

    public init() { counts = [UInt64](repeating: 0, count: Self.bucketCount) }

    /// A histogram from counters kept elsewhere (`bucketCount` counts).
    public init(counts: [UInt64], total: UInt64, sumMicros: UInt64) {
        precondition(counts.count == Self.bucketCount)
        self.counts = counts
        self.total = total
        self.sumMicros = sumMicros
    }

    /// The bucket a value goes to.
    @inlinable
    public static func index(micros: UInt64) -> Int {
        let v = max(micros, 0)
        if v < UInt64(1 << minShift) {
            // Parenthesised: Swift's >> binds tighter than *, which put every value below 64 µs
            // in the first bucket.
            return (Int(v) * subBuckets) >> minShift
        }
        let log2 = 63 - v.leadingZeroBitCount
        let octave = min(log2 - minShift + 1, octaves)
        if octave >= octaves { return bucketCount - 1 }
        let shift = log2 - 4  // 16 sub-buckets per power of two
        let sub = Int((v >> UInt64(shift)) & 15)
        return octave * subBuckets + sub
    }

    @inline(__always)
    public mutating func record(micros: UInt64) {
        counts[Self.index(micros: micros)] &+= 1
        total &+= 1
        sumMicros &+= micros
    }

    public mutating func add(_ other: LatencyHistogram) {
        for i in 0..<counts.count { counts[i] &+= other.counts[i] }
        total &+= other.total
        sumMicros &+= other.sumMicros
    }

    /// Adds `count` recordings to bucket `index` (rebuilding a histogram another process sent).
    public mutating func add(bucket index: Int, count: UInt64) {
        counts[index] &+= count
        total &+= count
    }

    public mutating func addSum(micros: UInt64) { sumMicros &+= micros }

    /// `self - earlier`: what was recorded since `earlier` was taken from the same counters.
    public func since(_ earlier: LatencyHistogram) -> LatencyHistogram {
        var out = self
        for i in 0..<counts.count { out.counts[i] = counts[i] &- earlier.counts[i] }
        out.total = total &- earlier.total
        out.sumMicros = sumMicros &- earlier.sumMicros
        return out
    }

    /// The value (µs) below which `q` (0...1) of the recordings fall, as the upper bound of the
    /// bucket that holds it. nil when empty.
    public func quantile(_ q: Double) -> UInt64? {
        guard total > 0 else { return nil }
        let rank = UInt64((Double(total) * q).rounded(.up))
        var seen: UInt64 = 0
        for (i, c) in counts.enumerated() {
            seen += c
            if seen >= max(rank, 1) { return Self.bucketUpperMicros(i) }
        }
        return Self.bucketUpperMicros(counts.count - 1)
    }

    /// The exclusive upper edge of bucket `i` in microseconds.
    public static func bucketUpperMicros(_ i: Int) -> UInt64 {
        let octave = i / subBuckets
        let sub = UInt64(i % subBuckets)
        if octave == 0 { return max(1, ((sub + 1) << UInt64(minShift)) / UInt64(subBuckets)) }
        let log2 = UInt64(octave + minShift - 1)
        return (1 << log2) + (sub + 1) * ((1 << log2) / 16)
    }

    /// How many recordings are at most `micros` (for Prometheus `le` buckets; exact at bucket edges).
    public func count(atMost micros: UInt64) -> UInt64 {
        var n: UInt64 = 0
        for (i, c) in counts.enumerated() where Self.bucketUpperMicros(i) <= micros { n += c }
        return n
    }
}
