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
            out[pool] = try percent(raw, name: "weight of \(pool)", code: "invalid_weights")
        }
        return out
    }

    /// A percentage (a JSON number from 0 to 100, at most two decimals) into basis points; `name`
    /// starts the error message, `code` is the error code of a number out of range.
    public static func percent(_ raw: Any, name: String, code: String) throws(AdminError) -> Int {
        guard !isBool(raw), let n = raw as? NSNumber else {
            throw .badRequest("\(name) must be a number", code: "wrong_type")
        }
        let d = n.doubleValue
        guard d.isFinite, d >= 0, d <= 100 else {
            throw .badRequest("\(name) must be between 0 and 100", code: code)
        }
        // The shortest decimal that round-trips is what the client wrote, give or take trailing zeros.
        let text = d == d.rounded() ? String(Int(d)) : "\(d)"
        switch Percent.parseBasisPoints(text) {
        case .success(let bp): return bp
        case .failure: throw .badRequest("\(name) has more than two decimals (0.01% resolution)", code: code)
        }
    }

    /// A whole number from `min` to `max`.
    public static func int(_ obj: [String: Any], _ key: String, min: Int, max: Int) throws(AdminError) -> Int? {
        guard let v = obj[key], !(v is NSNull) else { return nil }
        guard !isBool(v), let n = v as? NSNumber, n.doubleValue == n.doubleValue.rounded(),
              n.doubleValue >= Double(min), n.doubleValue <= Double(max)
        else {
            throw .badRequest("field \"\(key)\" must be a whole number from \(min) to \(max)", code: "wrong_type")
        }
        return n.intValue
    }

    /// A list of method names (upper-cased; checked as a mirror's by `MirrorSpec.problem`), or nil
    /// when absent or null.
    public static func methods(_ v: Any?, name: String) throws(AdminError) -> [String]? {
        guard let v, !(v is NSNull) else { return nil }
        guard let list = v as? [Any], list.allSatisfy({ $0 is String && !isBool($0) }) else {
            throw .badRequest("\(name) must be a list of method names, e.g. [\"GET\", \"HEAD\"]", code: "wrong_type")
        }
        return list.map { ($0 as! String).uppercased() }
    }

    /// The body of `PUT /v1/mirror`: `{"pool","percent","methods","max_body_bytes","max_in_flight"}`,
    /// or `null` (mirroring off). The spec is checked against the pools by `RoutingCommands.setMirror`.
    public static func mirror(_ body: [UInt8]) throws(AdminError) -> MirrorSpec? {
        if String(decoding: body, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) == "null" { return nil }
        let obj = try object(body, allowed: ["pool", "percent", "methods", "max_body_bytes", "max_in_flight"])
        let pool = try string(obj, "pool", required: true)!
        guard let rawPercent = obj["percent"] else { throw .badRequest("missing field \"percent\"", code: "missing_field") }
        var spec = MirrorSpec(pool: pool, percentBP: try percent(rawPercent, name: "percent", code: "invalid_mirror"))
        if let m = try methods(obj["methods"], name: "methods") { spec.methods = m }
        if let n = try int(obj, "max_body_bytes", min: 0, max: MirrorSpec.maxMaxBodyBytes) { spec.maxBodyBytes = n }
        if let n = try int(obj, "max_in_flight", min: 1, max: MirrorSpec.maxMaxInFlight) { spec.maxInFlight = n }
        return spec
    }
}

/// Writes the JSON documents of the admin API. Hand-written so weights print as the decimals users
/// wrote (`12.5`, not `12.499999`), and keys keep a stable order.
public enum JSONWriter {
    public static func quote(_ s: String) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(s.utf8.count + 2)
        appendQuoted(s, to: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// Appends `s` as a JSON string, in quotes: `"` and `\` escaped, control characters as `\n`,
    /// `\r`, `\t` or `\u00XX`, everything else (UTF-8 included) as it is. A string with nothing
    /// to escape is copied in one go.
    public static func appendQuoted(_ s: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        var s = s
        s.withUTF8 { u in
            if !u.contains(where: { $0 < 0x20 || $0 == 0x22 || $0 == 0x5C }) {
                out.append(contentsOf: u)
                return
            }
            for c in u {
                switch c {
                case 0x22: out.append(literal: "\\\"")
                case 0x5C: out.append(literal: "\\\\")
                case 0x0A: out.append(literal: "\\n")
                case 0x0D: out.append(literal: "\\r")
                case 0x09: out.append(literal: "\\t")
                case ..<0x20:
                    let hex: StaticString = "0123456789abcdef"
                    out.append(literal: "\\u00")
                    out.append(hex.utf8Start[Int(c >> 4)])
                    out.append(hex.utf8Start[Int(c & 0xF)])
                default: out.append(c)
                }
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    /// The mirror as the admin API shows it: the spec in force (null when off) and what each pool
    /// that received copies observed since start.
    public static func mirror(_ spec: MirrorSpec?, traffic: TrafficStats) -> String {
        var out = "{\"mirror\":" + mirrorSpec(spec)
        var pools = Set(traffic.mirror.keys).union(traffic.mirrorDropped.keys)
        if let s = spec { pools.insert(s.pool) }
        out += ",\"observed\":{" + pools.sorted().map { name in
            let s = traffic.mirror[name] ?? EndpointStats()
            let d = traffic.mirrorDropped[name] ?? []
            func ms(_ q: Double) -> String { s.latency.quantile(q).map { String(format: "%.3f", Double($0) / 1000) } ?? "null" }
            return "\(quote(name)):{\"requests\":\(s.requests),\"responses\":{"
                + (1...5).map { "\"\($0)xx\":\(s.byClass[$0])" }.joined(separator: ",")
                + "},\"errors\":\(s.proxyErrors),\"p50_ms\":\(ms(0.5)),\"p99_ms\":\(ms(0.99)),\"dropped\":{"
                + MirrorDrop.allCases.map { "\"\($0.label)\":\(d.indices.contains($0.rawValue) ? d[$0.rawValue] : 0)" }.joined(separator: ",")
                + "}}"
        }.joined(separator: ",") + "}}"
        return out
    }

    /// `{"pool","percent","methods","max_body_bytes","max_in_flight"}`, or `null` when off.
    public static func mirrorSpec(_ spec: MirrorSpec?) -> String {
        guard let s = spec else { return "null" }
        return "{\"pool\":\(quote(s.pool)),\"percent\":\(Percent.format(basisPoints: s.percentBP))"
            + ",\"methods\":[\(s.methods.map(quote).joined(separator: ","))]"
            + ",\"max_body_bytes\":\(s.maxBodyBytes),\"max_in_flight\":\(s.maxInFlight)}"
    }

    public static func weights(_ w: [String: Int], order: [String]) -> String {
        "{" + order.filter { w[$0] != nil }.map { "\(quote($0)):\(Percent.format(basisPoints: w[$0]!))" }.joined(separator: ",") + "}"
    }

    public static func error(_ e: AdminError) -> String {
        "{\"error\":\(quote(e.message)),\"code\":\(quote(e.code))}"
    }
}
