import Foundation

/// RFC 3339 / ISO 8601 UTC timestamps with milliseconds (`2026-11-21T23:34:48.120Z`), formatted
/// with gmtime_r: thread-safe and cheap, unlike sharing a Foundation formatter across loops.
public enum Timestamp {
    public static func iso8601(_ date: Date = Date()) -> String {
        let t = date.timeIntervalSince1970
        var secs = time_t(t.rounded(.down))
        var ms = Int(((t - Double(secs)) * 1000).rounded(.down))
        if ms >= 1000 { secs += 1; ms -= 1000 }
        var parts = tm()
        gmtime_r(&secs, &parts)
        func pad(_ v: Int32, _ width: Int) -> String {
            let s = String(v)
            return s.count >= width ? s : String(repeating: "0", count: width - s.count) + s
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(ms), 3))Z"
    }
}
