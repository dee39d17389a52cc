import Foundation

/// RFC 3339 / ISO 8601 UTC timestamps with milliseconds (`2026-11-21T23:34:48.120Z`), formatted
/// with gmtime_r: thread-safe and cheap, unlike sharing a Foundation formatter across loops.
public enum Timestamp {
    public static func iso8601(_ date: Date = Date()) -> String {
        let t = date.timeIntervalSince1970
        var out: [UInt8] = []
        out.reserveCapacity(24)
        // Whole seconds and the fraction apart: a Double of today's seconds times 1e9 loses the
        // last digits (…600.25 would print .249).
        let secs = t.rounded(.down)
        let nanos = t <= 0 ? 0 : UInt64(secs) * 1_000_000_000 + UInt64(((t - secs) * 1_000_000_000).rounded())
        append(nanosSinceEpoch: nanos, to: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// Now, in nanoseconds since the epoch (the wall clock).
    public static func nowNanos() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    /// Appends `2026-11-21T23:34:48.120Z` for the time, without building Strings.
    public static func append(nanosSinceEpoch: UInt64, to out: inout [UInt8]) {
        var secs = time_t(nanosSinceEpoch / 1_000_000_000)
        let ms = Int(nanosSinceEpoch / 1_000_000 % 1000)
        var parts = tm()
        gmtime_r(&secs, &parts)
        func put(_ v: Int, _ width: Int) {
            var d = 1
            for _ in 1..<width { d *= 10 }
            while d > 0 {
                out.append(UInt8(48 + v / d % 10))
                d /= 10
            }
        }
        put(Int(parts.tm_year) + 1900, 4)
        out.append(UInt8(ascii: "-"))
        put(Int(parts.tm_mon) + 1, 2)
        out.append(UInt8(ascii: "-"))
        put(Int(parts.tm_mday), 2)
        out.append(UInt8(ascii: "T"))
        put(Int(parts.tm_hour), 2)
        out.append(UInt8(ascii: ":"))
        put(Int(parts.tm_min), 2)
        out.append(UInt8(ascii: ":"))
        put(Int(parts.tm_sec), 2)
        out.append(UInt8(ascii: "."))
        put(ms, 3)
        out.append(UInt8(ascii: "Z"))
    }
}
