import Foundation

/// Weights are percentages with at most two decimals, held as basis points (1% = 100 bp) so that
/// sums are exact integers.
public enum Percent {
    public static let whole = 10_000

    /// Parses `90`, `12.5`, `0.01` into basis points. More than two decimals, negative numbers,
    /// values above 100 and anything that is not a plain decimal number are refused.
    public static func parseBasisPoints(_ text: String) -> Result<Int, ConfigProblem> {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count <= 2, let whole = parts.first, !whole.isEmpty, whole.count <= 3,
              whole.allSatisfy({ $0.isASCII && $0.isNumber })
        else {
            return .failure(ConfigProblem("expected a percentage between 0 and 100, got \"\(text)\""))
        }
        var bp = Int(whole)! * 100
        if parts.count == 2 {
            let frac = parts[1]
            guard !frac.isEmpty, frac.allSatisfy({ $0.isASCII && $0.isNumber }) else {
                return .failure(ConfigProblem("expected a percentage between 0 and 100, got \"\(text)\""))
            }
            let significant = frac.reversed().drop(while: { $0 == "0" })
            guard significant.count <= 2 else {
                return .failure(ConfigProblem("at most two decimals are allowed (0.01% resolution), got \"\(text)\""))
            }
            let padded = String(frac.prefix(2)).padding(toLength: 2, withPad: "0", startingAt: 0)
            bp += Int(padded)!
        }
        guard bp <= whole_ else {
            return .failure(ConfigProblem("must be between 0 and 100, got \(text)"))
        }
        return .success(bp)
    }

    private static let whole_ = 10_000

    /// Basis points as the shortest percentage text: 9000 → "90", 1250 → "12.5", 1 → "0.01".
    public static func format(basisPoints bp: Int) -> String {
        let sign = bp < 0 ? "-" : ""
        let v = abs(bp)
        let whole = v / 100
        let frac = v % 100
        if frac == 0 { return "\(sign)\(whole)" }
        if frac % 10 == 0 { return "\(sign)\(whole).\(frac / 10)" }
        return "\(sign)\(whole).\(frac < 10 ? "0" : "")\(frac)"
    }
}
