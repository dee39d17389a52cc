import ArgumentParser
import Foundation
import TurnoutCore
import TurnoutServer

/// How control commands find the admin API (SPEC "Command line"): `--admin`, then
/// `$TURNOUT_ADMIN`, then the `admin` section of `--config`, then the default socket.
struct AdminOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Admin endpoint: a Unix socket path (or unix:PATH) or http://HOST:PORT.", valueName: "PATH_OR_URL"))
    var admin: String?

    @Option(name: .long, help: ArgumentHelp("Find the admin endpoint (and token file) in this config file.", valueName: "FILE"))
    var config: String?

    @Option(name: .long, help: ArgumentHelp("File holding the bearer token for a TCP admin endpoint.", valueName: "FILE"))
    var tokenFile: String?

    @Flag(name: .long, help: "Print the admin API's JSON instead of text.")
    var json = false

    func client() throws -> AdminClient {
        var endpoint: AdminEndpoint?
        var configTokenFile: String?
        if let admin {
            guard let e = AdminEndpoint.parse(admin) else { throw ValidationError("--admin: expected a socket path or http://host:port, got \"\(admin)\"") }
            endpoint = e
        } else if let env = ProcessInfo.processInfo.environment["TURNOUT_ADMIN"], !env.isEmpty {
            guard let e = AdminEndpoint.parse(env) else { throw ValidationError("$TURNOUT_ADMIN: expected a socket path or http://host:port, got \"\(env)\"") }
            endpoint = e
        } else if let config {
            let cfg: TurnoutConfig
            do { cfg = try ConfigLoader.load(path: config) } catch {
                throw ValidationError("--config \(config):\n\(error.description)")
            }
            endpoint = .unix(cfg.admin.socket)
            configTokenFile = cfg.admin.tokenFile
        }
        let resolved = endpoint ?? .unix(AdminConfig.defaultSocket)
        var token: String?
        if case .tcp = resolved {
            guard let path = tokenFile ?? configTokenFile else {
                throw ValidationError("a TCP admin endpoint needs --token-file FILE")
            }
            guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
                throw ValidationError("cannot read token file \(path)")
            }
            token = text.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        return AdminClient(endpoint: resolved, token: token)
    }
}

/// Runs one admin call for a CLI command: exit 2 when unreachable, 1 when refused.
func callAdmin(_ options: AdminOptions, _ method: String, _ path: String, json: String? = nil,
               ifMatch: UInt64? = nil) throws -> [String: Any] {
    let client = try options.client()
    let response: AdminClient.Response
    do {
        response = try client.request(method, path, json: json, headers: ifMatch.map { [("If-Match", "\($0)")] } ?? [])
    } catch {
        FileHandle.standardError.write(Data("turnout: \(error)\n".utf8))
        throw ExitCode(2)
    }
    let object = (try? JSONSerialization.jsonObject(with: Data(response.body.utf8))) as? [String: Any]
    guard (200..<300).contains(response.status) else {
        let message = object?["error"] as? String ?? response.body.trimmingCharacters(in: .whitespacesAndNewlines)
        let code = object?["code"] as? String ?? "http_\(response.status)"
        FileHandle.standardError.write(Data("turnout: refused (\(response.status) \(code)): \(message)\n".utf8))
        throw ExitCode(1)
    }
    if options.json {
        print(response.body.trimmingCharacters(in: .whitespacesAndNewlines))
    }
    return object ?? [:]
}

/// Renders `GET /v1/state` as a table.
enum StateTable {
    static func percent(_ v: Any?) -> String {
        guard let n = v as? NSNumber else { return "-" }
        let d = n.doubleValue
        return (d == d.rounded() ? String(Int(d)) : String(format: "%g", d)) + "%"
    }

    static func render(_ s: [String: Any]) -> String {
        let weights = s["weights"] as? [String: Any] ?? [:]
        let pools = s["pools"] as? [String: Any] ?? [:]
        var lines: [String] = []
        lines.append("live: \(s["live"] as? String ?? "?")   generation: \(s["generation"] ?? "?")   ramp: \(s["ramp"] is NSNull || s["ramp"] == nil ? "none" : "running")")
        var rows: [[String]] = [["POOL", "WEIGHT", "ENDPOINT", "HEALTH", "IN-FLIGHT"]]
        for name in pools.keys.sorted() {
            let eps = (pools[name] as? [String: Any])?["endpoints"] as? [[String: Any]] ?? []
            for (i, e) in eps.enumerated() {
                rows.append([i == 0 ? name : "", i == 0 ? percent(weights[name]) : "", e["address"] as? String ?? "?",
                             e["health"] as? String ?? ((e["healthy"] as? Bool) == true ? "healthy" : "unhealthy"),
                             "\(e["in_flight"] ?? 0)"])
            }
        }
        let widths = (0..<5).map { c in rows.map { $0[c].count }.max() ?? 0 }
        for r in rows {
            lines.append(r.enumerated().map { $1.padding(toLength: widths[$0] + 2, withPad: " ", startingAt: 0) }.joined().trimmingCharacters(in: .whitespaces))
        }
        if let prev = s["previous"] as? [String: Any] {
            lines.append("previous: " + prev.keys.sorted().map { "\($0)=\(percent(prev[$0]).dropLast())" }.joined(separator: " ") + "   (turnout rollback restores it)")
        } else {
            lines.append("previous: none")
        }
        return lines.joined(separator: "\n")
    }

    static func summary(_ s: [String: Any]) -> String {
        let weights = s["weights"] as? [String: Any] ?? [:]
        let w = weights.keys.sorted().map { "\($0)=\(percent(weights[$0]).dropLast())" }.joined(separator: " ")
        return "generation \(s["generation"] ?? "?"): live \(s["live"] as? String ?? "?"), weights \(w)"
    }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the live state: live pool, weights, endpoints with health and in-flight requests.",
        discussion: "Exit status: 0 success, 1 refused by the proxy, 2 cannot reach the admin endpoint or bad usage."
    )
    @OptionGroup var options: AdminOptions

    func run() throws {
        let state = try callAdmin(options, "GET", "/v1/state")
        if !options.json { print(StateTable.render(state)) }
    }
}

struct Switch: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Atomic cutover: send 100% of new requests to POOL.",
        discussion: """
            Refused (exit 1) when POOL has no healthy endpoint, unless --force. Requests whose head
            completes after this command returns are routed to POOL; requests in flight finish where
            they started. Example: turnout switch green
            """
    )
    @Argument(help: "The pool to make live.") var pool: String
    @Flag(help: "Switch even if the pool has no healthy endpoint.") var force = false
    @Option(help: ArgumentHelp("Only apply if the state is still at this generation (else exit 1, 412).", valueName: "GENERATION"))
    var ifMatch: UInt64?
    @OptionGroup var options: AdminOptions

    func run() throws {
        let body = "{\"pool\":\(JSONWriter.quote(pool)),\"force\":\(force)}"
        let state = try callAdmin(options, "POST", "/v1/switch", json: body, ifMatch: ifMatch)
        if !options.json { print("switched to \(pool): " + StateTable.summary(state)) }
    }
}

struct Weights: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Set the traffic split, e.g. `turnout weights blue=90 green=10`.",
        discussion: "Percentages take at most two decimals and must sum to 100; pools not named get 0. A pool given 100 becomes live."
    )
    @Argument(help: ArgumentHelp("POOL=PERCENT pairs.", valueName: "POOL=PCT")) var pairs: [String]
    @Option(help: ArgumentHelp("Only apply if the state is still at this generation (else exit 1, 412).", valueName: "GENERATION"))
    var ifMatch: UInt64?
    @OptionGroup var options: AdminOptions

    func validate() throws {
        if pairs.isEmpty { throw ValidationError("give at least one POOL=PERCENT, e.g. blue=90 green=10") }
    }

    func run() throws {
        var parts: [String] = []
        for p in pairs {
            let kv = p.split(separator: "=", maxSplits: 1).map(String.init)
            guard kv.count == 2, !kv[0].isEmpty else { throw ValidationError("expected POOL=PERCENT, got \"\(p)\"") }
            guard case .success = Percent.parseBasisPoints(kv[1]) else {
                throw ValidationError("\"\(kv[1])\" is not a percentage between 0 and 100 with at most two decimals")
            }
            parts.append("\(JSONWriter.quote(kv[0])):\(kv[1])")
        }
        let state = try callAdmin(options, "PUT", "/v1/weights", json: "{\"weights\":{\(parts.joined(separator: ","))}}", ifMatch: ifMatch)
        if !options.json { print(StateTable.summary(state)) }
    }
}

struct Rollback: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Restore the weights in force before the last change.",
        discussion: "Refused (exit 1) when there is nothing to roll back to. A second rollback undoes the first."
    )
    @Option(help: ArgumentHelp("Only apply if the state is still at this generation (else exit 1, 412).", valueName: "GENERATION"))
    var ifMatch: UInt64?
    @OptionGroup var options: AdminOptions

    func run() throws {
        let state = try callAdmin(options, "POST", "/v1/rollback", ifMatch: ifMatch)
        if !options.json { print("rolled back: " + StateTable.summary(state)) }
    }
}
