import Foundation

/// Parses and prints the human durations used in the config file and the CLI:
/// `250ms`, `2s`, `1.5s`, `1m`, `1h`, combinations such as `1m30s`.
public enum DurationParser {
    /// Returns the duration in milliseconds, or nil when the text is not a duration.
    public static func milliseconds(_ text: String) -> Int64? {
        let s = text.trimmingCharacters(in: .whitespaces)
        guard !s.isEmpty else { return nil }
        var total: Double = 0
        var index = s.startIndex
        var sawComponent = false
        while index < s.endIndex {
            var number = ""
            while index < s.endIndex, s[index].isNumber || s[index] == "." {
                number.append(s[index]); index = s.index(after: index)
            }
            var unit = ""
            while index < s.endIndex, s[index].isLetter {
                unit.append(s[index]); index = s.index(after: index)
            }
            guard !number.isEmpty, let value = Double(number), value.isFinite, value >= 0 else { return nil }
            let factor: Double
            switch unit {
            case "ms": factor = 1
            case "s": factor = 1000
            case "m": factor = 60_000
            case "h": factor = 3_600_000
            default: return nil
            }
            total += value * factor
            sawComponent = true
        }
        guard sawComponent, total < 1e15 else { return nil }
        return Int64(total.rounded())
    }

    /// Formats milliseconds the way a user would write them (`500ms`, `2s`, `1m30s`).
    public static func format(milliseconds ms: Int64) -> String {
        if ms == 0 { return "0s" }
        if ms % 1000 != 0 { return ms < 1000 ? "\(ms)ms" : "\(Double(ms) / 1000)s" }
        var seconds = ms / 1000
        var out = ""
        if seconds >= 3600, seconds % 60 == 0 { out += "\(seconds / 3600)h"; seconds %= 3600 }
        if seconds >= 60 { out += "\(seconds / 60)m"; seconds %= 60 }
        if seconds > 0 { out += "\(seconds)s" }
        return out
    }
}
