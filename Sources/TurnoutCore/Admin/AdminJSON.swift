import Foundation

/// Turns admin request bodies into typed values, with an `AdminError` for every kind of bad input:
/// not JSON, not an object, unknown fields, wrong types, percentages with more than two decimals.
public enum AdminJSON {
    public static func object(_ body: [UInt8], allowed: Set<String>) throws(AdminError) -> [String: Any] {
        if body.isEmpty { throw .badRequest("the request body must be a JSON object", code: "invalid_json") }
        let value: Any
        do {
            value = try JSONSerialization.jsonObject(with: Data(body), options: [.fragmentsAllowed])
        } catch {
            throw .badRequest("the request body is not valid JSON", code: "invalid_json")
        }
        guard let obj = value as? [String: Any] else {
            throw .badRequest("the request body must be a JSON object", code: "invalid_json")
        }
        for key in obj.keys.sorted() where !allowed.contains(key) {
            throw .badRequest("unknown field \"\(key)\" (expected: \(allowed.sorted().joined(separator: ", ")))", code: "unknown_field")
        }
        return obj
    }

    public static func isBool(_ v: Any) -> Bool {
        // JSON true/false arrive as boolean NSNumbers (objCType "c"); 0 and 1 arrive as integers.
        if let n = v as? NSNumber {
            return String(cString: n.objCType) == "c" || String(describing: type(of: v)).contains("Boolean")
        }
        return false
    }

    public static func string(_ obj: [String: Any], _ key: String, required: Bool) throws(AdminError) -> String? {
        guard let v = obj[key] else {
            if required { throw .badRequest("missing field \"\(key)\"", code: "missing_field") }
            return nil
        }
        guard let s = v as? String, !isBool(v) else {
            throw .badRequest("field \"\(key)\" must be a string", code: "wrong_type")
        }
        return s
    }

    public static func bool(_ obj: [String: Any], _ key: String) throws(AdminError) -> Bool? {
        guard let v = obj[key] else { return nil }
        if v is NSNull { return nil }
        guard isBool(v), let b = (v as? NSNumber)?.boolValue else {
            throw .badRequest("field \"\(key)\" must be true or false", code: "wrong_type")
        }
        return b
    }

    /// `{"blue": 90, "green": 10}` into basis points.
    public static func weights(_ obj: [String: Any], _ key: String) throws(AdminError) -> [String: Int] {
        guard let v = obj[key] else { throw .badRequest("missing field \"\(key)\"", code: "missing_field") }
        guard let dict = v as? [String: Any] else {
            throw .badRequest("field \"\(key)\" must be an object of pool: percentage", code: "wrong_type")
        }
        var out: [String: Int] = [:]
        for (pool, raw) in dict.sorted(by: { $0.key < $1.key }) {
            guard !isBool(raw), let n = raw as? NSNumber else {
                throw .badRequest("weight of \(pool) must be a number", code: "wrong_type")
            }
            let d = n.doubleValue
            guard d.isFinite, d >= 0, d <= 100 else {
                throw .badRequest("weight of \(pool) must be between 0 and 100", code: "invalid_weights")
            }
            // The shortest decimal that round-trips is what the client wrote, give or take trailing zeros.
            let text = d == d.rounded() ? String(Int(d)) : "\(d)"
            switch Percent.parseBasisPoints(text) {
            case .success(let bp): out[pool] = bp
            case .failure:
                throw .badRequest("weight of \(pool) has more than two decimals (0.01% resolution)", code: "invalid_weights")
            }
        }
        return out
    }
}

/// Writes the JSON documents of the admin API. Hand-written so weights print as the decimals users
/// wrote (`12.5`, not `12.499999`), and keys keep a stable order.
public enum JSONWriter {
    public static func quote(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 {
                    out += String(format: "\\u%04x", u.value)
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out + "\""
    }

    public static func weights(_ w: [String: Int], order: [String]) -> String {
        "{" + order.filter { w[$0] != nil }.map { "\(quote($0)):\(Percent.format(basisPoints: w[$0]!))" }.joined(separator: ",") + "}"
    }

    public static func error(_ e: AdminError) -> String {
        "{\"error\":\(quote(e.message)),\"code\":\(quote(e.code))}"
    }
}
