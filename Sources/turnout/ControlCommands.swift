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

/// `--wait DURATION` on a write command: the answer comes once every live replica of a cluster
/// applied the change (a single node answers at once).
struct WaitOption: ParsableArguments {
    @Option(help: ArgumentHelp("Cluster mode: wait until every live replica applied the change, up to this long (e.g. 5s); exit 1 naming those that have not.", valueName: "DURATION"))
    var wait: String?

    func validate() throws {
        if let wait, DurationParser.milliseconds(wait).map({ $0 > 0 && $0 <= 600_000 }) != true {
            throw ValidationError("--wait: expected a duration from 1ms to 10m, such as 5s")
        }
    }

    /// `path` with `?wait=` when asked for.
    func apply(_ path: String) -> String { wait.map { "\(path)?wait=\($0)" } ?? path }

    var seconds: Int { wait.flatMap(DurationParser.milliseconds).map { Int($0 / 1000) + 1 } ?? 0 }
}

/// Runs one admin call for a CLI command: exit 2 when unreachable, 1 when refused.
func callAdmin(_ options: AdminOptions, _ method: String, _ path: String, json: String? = nil,
               ifMatch: UInt64? = nil, wait: WaitOption? = nil) throws -> [String: Any] {
    var client = try options.client()
    let path = wait?.apply(path) ?? path
    client.timeoutSeconds += wait?.seconds ?? 0
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
        for problem in object?["problems"] as? [String] ?? [] {
            FileHandle.standardError.write(Data("  \(problem)\n".utf8))
        }
        if let pending = object?["pending"] as? [String] {
            FileHandle.standardError.write(Data("  not applied yet by: \(pending.joined(separator: ", "))\n".utf8))
        }
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
        let ramp = (s["ramp"] as? [String: Any]).map {
            "\($0["pool"] ?? "?") \($0["status"] ?? "?")" + ($0["phase"] as? String == "mirror" ? " (mirroring step)" : "")
        } ?? "none"
        lines.append("live: \(s["live"] as? String ?? "?")   generation: \(s["generation"] ?? "?")   ramp: \(ramp)")
        var rows: [[String]] = [["POOL", "WEIGHT", "ENDPOINT", "HEALTH", "STATE", "IN-FLIGHT", "TUNNELS", "LAST REQUEST"]]
        for name in pools.keys.sorted() {
            let eps = (pools[name] as? [String: Any])?["endpoints"] as? [[String: Any]] ?? []
            if eps.isEmpty { rows.append([name, percent(weights[name]), "(none)", "", "", "", "", ""]) }
            for (i, e) in eps.enumerated() {
                var state = e["state"] as? String ?? "serving"
                if (e["leaving"] as? Bool) == true { state = "leaving" }
                if (e["ejected"] as? Bool) == true { state += ",ejected" }
                if let w = (e["weight"] as? NSNumber)?.intValue, w != EndpointOverride.defaultWeight { state += " w=\(w)" }
                if let src = e["source"] as? String, src != "config" { state += " (\(src))" }
                let last = (e["last_request_ms_ago"] as? NSNumber).map { String(format: "%.1fs ago", $0.doubleValue / 1000) } ?? "never"
                rows.append([i == 0 ? name : "", i == 0 ? percent(weights[name]) : "", e["address"] as? String ?? "?",
                             e["health"] as? String ?? ((e["healthy"] as? Bool) == true ? "healthy" : "unhealthy"),
                             state, "\(e["in_flight"] ?? 0)", "\(e["tunnels"] ?? 0)", last])
            }
        }
        let widths = (0..<8).map { c in rows.map { $0[c].count }.max() ?? 0 }
        for r in rows {
            lines.append(r.enumerated().map { $1.padding(toLength: widths[$0] + 2, withPad: " ", startingAt: 0) }.joined().trimmingCharacters(in: .whitespaces))
        }
        if let prev = s["previous"] as? [String: Any] {
            lines.append("previous: " + prev.keys.sorted().map { "\($0)=\(percent(prev[$0]).dropLast())" }.joined(separator: " ") + "   (turnout rollback restores it)")
        } else {
            lines.append("previous: none")
        }
        if let c = s["cluster"] as? [String: Any] {
            let applied = (c["applied_revision"] as? NSNumber)?.uint64Value ?? 0
            var head = "cluster: \(c["name"] ?? "?")   this replica: \(c["replica_id"] ?? "?")   etcd: "
            head += (c["connected"] as? Bool) == true ? "connected" : "NOT CONNECTED"
            if (c["stale"] as? Bool) == true { head += String(format: "   STALE for %.1fs", (c["stale_seconds"] as? NSNumber)?.doubleValue ?? 0) }
            if let driver = c["ramp_driver"] as? String { head += "   ramp driver: \(driver)" }
            lines.append(head)
            var rows: [[String]] = [["REPLICA", "ADDRESS", "APPLIED", "LAG", "STALE", "LAST SEEN"]]
            for r in c["replicas"] as? [[String: Any]] ?? [] {
                let rev = (r["applied_revision"] as? NSNumber)?.uint64Value ?? 0
                let lag = rev >= applied ? "0" : "\(applied - rev) behind"
                let ago = ((r["last_seen_ms_ago"] as? NSNumber)?.doubleValue ?? 0) / 1000
                rows.append([r["id"] as? String ?? "?", r["address"] as? String ?? "?", "\(rev)", lag,
                             (r["stale"] as? Bool) == true ? "yes" : "no", String(format: "%.1fs ago", ago)])
            }
            let widths = (0..<6).map { c in rows.map { $0[c].count }.max() ?? 0 }
            for r in rows {
                lines.append(r.enumerated().map { $1.padding(toLength: widths[$0] + 2, withPad: " ", startingAt: 0) }.joined().trimmingCharacters(in: .whitespaces))
            }
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
        abstract: "Show the live state: live pool, weights, endpoints with health, in-flight requests and open tunnels.",
        discussion: "Exit status: 0 success, 1 refused by the proxy, 2 cannot reach the admin endpoint or bad usage."
    )
    @OptionGroup var options: AdminOptions

    func run() throws {
        let state = try callAdmin(options, "GET", "/v1/state")
        if !options.json {
            print(StateTable.render(state))
            if let mirror = state["mirror"] as? [String: Any], mirror["mirror"] is [String: Any] { print(MirrorText.render(mirror)) }
            if let ramp = state["ramp"] as? [String: Any] { print(RampText.render(ramp)) }
        }
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
    @OptionGroup var waitOption: WaitOption
    @OptionGroup var options: AdminOptions

    func run() throws {
        let body = "{\"pool\":\(JSONWriter.quote(pool)),\"force\":\(force)}"
        let state = try callAdmin(options, "POST", "/v1/switch", json: body, ifMatch: ifMatch, wait: waitOption)
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
    @OptionGroup var waitOption: WaitOption
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
        let state = try callAdmin(options, "PUT", "/v1/weights", json: "{\"weights\":{\(parts.joined(separator: ","))}}", ifMatch: ifMatch, wait: waitOption)
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
    @OptionGroup var waitOption: WaitOption
    @OptionGroup var options: AdminOptions

    func run() throws {
        let state = try callAdmin(options, "POST", "/v1/rollback", ifMatch: ifMatch, wait: waitOption)
        if !options.json { print("rolled back: " + StateTable.summary(state)) }
    }
}

struct Reload: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make the proxy re-read its config file (as SIGHUP does).",
        discussion: """
            Pools, endpoints, routing options, health settings, timeouts, limits, listeners and TLS
            certificates take effect without dropping a connection; runtime weights and the live pool
            are kept. An invalid file is refused with every problem listed (exit 1) and changes
            nothing. workers, admin, state_file and access_log need a restart (reported).
            """
    )
    @OptionGroup var options: AdminOptions

    func run() throws {
        let result = try callAdmin(options, "POST", "/v1/reload")
        guard !options.json else { return }
        let changes = result["changes"] as? [String] ?? []
        print(changes.isEmpty ? "reloaded: nothing changed" : "reloaded: " + changes.joined(separator: "; "))
        let restart = result["restart_required"] as? [String] ?? []
        if !restart.isEmpty { print("needs a restart to take effect: " + restart.joined(separator: "; ")) }
    }
}

struct Ramp: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Ramp a canary up step by step, rolling back on its own when a gate is breached.",
        discussion: """
            turnout ramp POOL --steps 1,5,25,50,100 --interval 30s [--max-error-rate 1%] [--max-p99 500ms] [--min-requests 100]
                              [--mirror 100 [--mirror-for 1m] [--mirror-methods GET,HEAD]]
            turnout ramp pause | resume | abort | status

            Each step holds for --interval. At its end the canary's 5xx rate and p99 over the step are checked (once --min-requests were seen; with fewer the step holds and says so). A breach rolls back to the pre-ramp weights at once. Reaching 100% makes POOL live. While a ramp runs, switch and weights are refused unless forced. "abort" restores the pre-ramp weights.

            With --mirror, the ramp starts with a mirroring step: for --mirror-for (default: the interval) that share of GET and HEAD requests is copied to POOL while its weight stays as it was, and the same gates are judged on the copies' answers. Only then does step 1 send it live traffic; a breach rolls back before any user met the new release.
            """
    )
    @Argument(help: ArgumentHelp("The pool to ramp up, or pause, resume, abort, status.", valueName: "POOL|ACTION"))
    var target: String
    @Option(help: "Canary percentages, comma-separated, strictly increasing.") var steps: String?
    @Option(help: "How long each step holds, e.g. 30s.") var interval: String?
    @Option(help: "Largest 5xx share per step, e.g. 1% or 0.01 (default 1%).") var maxErrorRate: String?
    @Option(help: "Largest p99 latency per step, e.g. 500ms (default: not checked).") var maxP99: String?
    @Option(help: "Fewest canary requests before a step is judged (default 100).") var minRequests: Int?
    @Option(help: "Start with a mirroring step copying this percentage of requests to POOL, e.g. 100.") var mirror: String?
    @Option(help: "How long the mirroring step lasts, e.g. 1m (default: --interval).") var mirrorFor: String?
    @Option(help: "Methods the mirroring step copies, comma-separated (default GET,HEAD).") var mirrorMethods: String?
    @OptionGroup var waitOption: WaitOption
    @OptionGroup var options: AdminOptions

    func run() throws {
        switch target {
        case "pause", "resume":
            let r = try callAdmin(options, "POST", "/v1/ramp/\(target)", wait: waitOption)
            if !options.json { print(RampText.render(r)) }
        case "abort":
            let r = try callAdmin(options, "DELETE", "/v1/ramp", wait: waitOption)
            if !options.json { print(RampText.render(r)) }
        case "status":
            let r = try callAdmin(options, "GET", "/v1/ramp")
            if !options.json { print(RampText.render(r)) }
        default:
            guard let steps else { throw ValidationError("give --steps, e.g. --steps 1,5,25,50,100") }
            var stepList: [String] = []
            for s in steps.split(separator: ",") {
                guard let t = Self.percentText(s) else { throw ValidationError("--steps: \"\(s)\" is not a percentage") }
                stepList.append(t)
            }
            if let interval, DurationParser.milliseconds(interval) == nil { throw ValidationError("--interval: \"\(interval)\" is not a duration such as 30s") }
            var gates: [String] = []
            if let maxErrorRate {
                let pct = maxErrorRate.hasSuffix("%")
                guard let v = Double(pct ? String(maxErrorRate.dropLast()) : maxErrorRate) else {
                    throw ValidationError("--max-error-rate: expected e.g. 1% or 0.01")
                }
                gates.append("\"max_error_rate\":\(pct ? v / 100 : v)")
            }
            if let maxP99 {
                guard DurationParser.milliseconds(maxP99) != nil else { throw ValidationError("--max-p99: expected a duration such as 500ms") }
                gates.append("\"max_p99\":\(JSONWriter.quote(maxP99))")
            }
            if let minRequests { gates.append("\"min_requests\":\(minRequests)") }
            var mirrorField = ""
            if let mirror {
                guard let t = Self.percentText(mirror) else { throw ValidationError("--mirror: \"\(mirror)\" is not a percentage") }
                var fields = ["\"percent\":\(t)"]
                if let mirrorFor {
                    guard DurationParser.milliseconds(mirrorFor) != nil else { throw ValidationError("--mirror-for: \"\(mirrorFor)\" is not a duration such as 1m") }
                    fields.append("\"duration\":\(JSONWriter.quote(mirrorFor))")
                }
                if let mirrorMethods {
                    let list = mirrorMethods.split(separator: ",").map { JSONWriter.quote($0.trimmingCharacters(in: .whitespaces)) }
                    fields.append("\"methods\":[\(list.joined(separator: ","))]")
                }
                mirrorField = ",\"mirror\":{\(fields.joined(separator: ","))}"
            } else if mirrorFor != nil || mirrorMethods != nil {
                throw ValidationError("--mirror-for and --mirror-methods need --mirror PCT")
            }
            let body = "{\"pool\":\(JSONWriter.quote(target)),\"steps\":[\(stepList.joined(separator: ","))],\"interval\":\(JSONWriter.quote(interval ?? "30s")),\"gates\":{\(gates.joined(separator: ","))}\(mirrorField)}"
            let r = try callAdmin(options, "POST", "/v1/ramp", json: body, wait: waitOption)
            if !options.json { print(RampText.render(r)) }
        }
    }
}

extension Ramp {
    /// A percentage as given (`25`, `12.5%`, ` 5 `) as the number the API takes, nil when it is not one.
    static func percentText<S: StringProtocol>(_ s: S) -> String? {
        let t = s.trimmingCharacters(in: .whitespaces).replacingOccurrences(of: "%", with: "")
        guard case .success = Percent.parseBasisPoints(t) else { return nil }
        return t
    }
}

/// Renders a ramp document as text.
enum RampText {
    static func num(_ v: Any?, _ fmt: String) -> String {
        guard let n = v as? NSNumber else { return "-" }
        return String(format: fmt, n.doubleValue)
    }

    static func render(_ r: [String: Any]) -> String {
        let steps = (r["steps"] as? [Any] ?? []).map { "\($0)" }.joined(separator: ",")
        let mirror = r["mirror"] as? [String: Any]
        let mirroring = r["phase"] as? String == "mirror"
        let step = mirroring ? "mirroring step" : "step \(r["step"] ?? "?") of \((r["steps"] as? [Any])?.count ?? 0)"
        var plan = "steps \(steps), interval \(r["interval"] ?? "?")"
        if let mirror { plan = "mirroring \(mirror["percent"] ?? "?")% for \(mirror["duration"] ?? "?") first, " + plan }
        var lines = ["ramp \(r["pool"] ?? "?"): \(r["status"] ?? "?"), \(step) at \(r["weight"] ?? "?")% (\(plan))"]
        if let reason = r["reason"] as? String { lines.append("reason: \(reason)") }
        lines.append("STEP    WEIGHT  REQUESTS  ERROR-RATE  P99      VERDICT")
        func row(_ name: String, _ weight: String, _ s: [String: Any]) {
            let rate = (s["error_rate"] as? NSNumber).map { String(format: "%.2f%%", $0.doubleValue * 100) } ?? "-"
            let p99 = (s["p99_ms"] as? NSNumber).map { String(format: "%.1fms", $0.doubleValue) } ?? "-"
            let cols = [name, weight, "\(s["requests"] ?? 0)", rate, p99, "\(s["verdict"] ?? "?")"]
            let widths = [8, 8, 10, 12, 9, 0]
            lines.append(zip(cols, widths).map { $1 == 0 ? $0 : $0.padding(toLength: max($1, $0.count + 1), withPad: " ", startingAt: 0) }.joined())
        }
        if let m = r["mirror_observed"] as? [String: Any] { row("mirror", "copies", m) }
        for (i, s) in (r["steps_observed"] as? [[String: Any]] ?? []).enumerated() { row("\(i + 1)", "\(s["weight"] ?? "?")%", s) }
        return lines.joined(separator: "\n")
    }
}

struct Events: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Follow the event stream: switches, weight changes, rollbacks, ramp steps and gate verdicts, health changes.",
        discussion: "Prints one line per event until interrupted (with --json, the event's JSON)."
    )
    @OptionGroup var options: AdminOptions

    func run() throws {
        let client = try options.client()
        do {
            try client.stream("/v1/events") { line in
                guard line.hasPrefix("data: ") else {
                    if line.hasPrefix("event: overflow") {
                        FileHandle.standardError.write(Data("turnout: this reader fell behind and was dropped by the proxy\n".utf8))
                    }
                    return
                }
                let json = String(line.dropFirst(6))
                // Unbuffered, so a pipe sees each event as it happens.
                FileHandle.standardOutput.write(Data(((options.json ? json : EventText.render(json)) + "\n").utf8))
            }
        } catch {
            FileHandle.standardError.write(Data("turnout: \(error)\n".utf8))
            throw ExitCode(2)
        }
    }
}

enum EventText {
    static func render(_ json: String) -> String {
        guard let e = (try? JSONSerialization.jsonObject(with: Data(json.utf8))) as? [String: Any] else { return json }
        var parts = ["\(e["time"] ?? "")", "gen \(e["generation"] ?? "?")", "\(e["kind"] ?? "?")"]
        for key in ["pool", "endpoint", "health", "step", "weight", "verdict", "requests", "error_rate", "p99_ms", "live"] {
            if let v = e[key], !(v is NSNull) { parts.append("\(key)=\(v)") }
        }
        if let w = e["weights"] as? [String: Any] {
            parts.append("weights=" + w.keys.sorted().map { "\($0):\(w[$0]!)" }.joined(separator: ","))
        }
        if let reason = e["reason"] as? String, !reason.isEmpty { parts.append("(\(reason))") }
        return parts.joined(separator: " ")
    }
}

struct Mirror: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Copy a share of live requests to a pool (fire and forget), or stop: `turnout mirror green 10`, `turnout mirror off`.",
        discussion: """
            Copies PERCENT of the requests other pools serve (GET and HEAD unless --methods) to
            POOL; the copies' answers are thrown away and counted apart (turnout mirror shows them).
            Clients never wait for a copy. Without arguments: show the mirror and what it observed.
            The setting is persisted like the weights and survives restarts.
            """
    )
    @Argument(help: ArgumentHelp("POOL PERCENT, or off; nothing to show the mirror.", valueName: "POOL PCT | off"))
    var words: [String] = []
    @Option(help: ArgumentHelp("Methods to copy, comma-separated (default GET,HEAD).", valueName: "METHODS"))
    var methods: String?
    @Option(help: ArgumentHelp("Copy request bodies up to this many bytes (default 65536); longer ones are not mirrored.", valueName: "BYTES"))
    var maxBodyBytes: Int?
    @Option(help: ArgumentHelp("Copies in flight at once per worker (default 256); beyond, requests are not mirrored.", valueName: "N"))
    var maxInFlight: Int?
    @Option(help: ArgumentHelp("Only apply if the state is still at this generation (else exit 1, 412).", valueName: "GENERATION"))
    var ifMatch: UInt64?
    @OptionGroup var waitOption: WaitOption
    @OptionGroup var options: AdminOptions

    func validate() throws {
        switch words.count {
        case 0:
            if methods != nil || maxBodyBytes != nil || maxInFlight != nil || ifMatch != nil {
                throw ValidationError("options set the mirror: give POOL PERCENT too")
            }
        case 1:
            guard words[0] == "off" else { throw ValidationError("expected POOL PERCENT or off, got \"\(words[0])\"") }
            if methods != nil || maxBodyBytes != nil || maxInFlight != nil {
                throw ValidationError("mirror off takes no --methods, --max-body-bytes or --max-in-flight")
            }
        case 2:
            guard case .success(let bp) = Percent.parseBasisPoints(words[1]), bp > 0 else {
                throw ValidationError("\"\(words[1])\" is not a percentage above 0 and at most 100 with at most two decimals")
            }
        default:
            throw ValidationError("expected POOL PERCENT or off")
        }
    }

    func run() throws {
        let answer: [String: Any]
        switch words.count {
        case 0:
            answer = try callAdmin(options, "GET", "/v1/mirror")
        case 1:
            answer = try callAdmin(options, "DELETE", "/v1/mirror", ifMatch: ifMatch, wait: waitOption)
        default:
            var body = "{\"pool\":\(JSONWriter.quote(words[0])),\"percent\":\(words[1])"
            if let methods {
                let list = methods.split(separator: ",").map { JSONWriter.quote($0.trimmingCharacters(in: .whitespaces).uppercased()) }
                body += ",\"methods\":[\(list.joined(separator: ","))]"
            }
            if let maxBodyBytes { body += ",\"max_body_bytes\":\(maxBodyBytes)" }
            if let maxInFlight { body += ",\"max_in_flight\":\(maxInFlight)" }
            answer = try callAdmin(options, "PUT", "/v1/mirror", json: body + "}", ifMatch: ifMatch, wait: waitOption)
        }
        if !options.json { print(MirrorText.render(answer)) }
    }
}

/// Renders `GET /v1/mirror` (and the `mirror` member of `GET /v1/state`).
enum MirrorText {
    static func render(_ m: [String: Any]) -> String {
        var lines: [String] = []
        if let spec = m["mirror"] as? [String: Any] {
            let methods = (spec["methods"] as? [String] ?? []).joined(separator: ",")
            lines.append("mirror: \(spec["pool"] ?? "?") \(StateTable.percent(spec["percent"])) of \(methods)"
                         + "   (bodies up to \(spec["max_body_bytes"] ?? "?") bytes, \(spec["max_in_flight"] ?? "?") in flight per worker)")
        } else {
            lines.append("mirror: off")
        }
        let observed = m["observed"] as? [String: Any] ?? [:]
        for pool in observed.keys.sorted() {
            guard let o = observed[pool] as? [String: Any] else { continue }
            let r = o["responses"] as? [String: Any] ?? [:]
            let d = o["dropped"] as? [String: Any] ?? [:]
            let dropped = d.keys.sorted().compactMap { k in ((d[k] as? NSNumber)?.intValue ?? 0) > 0 ? "\(k)=\(d[k]!)" : nil }
            func ms(_ v: Any?) -> String { (v as? NSNumber).map { String(format: "%.1fms", $0.doubleValue) } ?? "-" }
            lines.append("  \(pool): \(o["requests"] ?? 0) copies   2xx \(r["2xx"] ?? 0)  3xx \(r["3xx"] ?? 0)  4xx \(r["4xx"] ?? 0)  5xx \(r["5xx"] ?? 0)"
                         + "   no answer \(o["errors"] ?? 0)   p50 \(ms(o["p50_ms"]))  p99 \(ms(o["p99_ms"]))"
                         + "   not copied: \(dropped.isEmpty ? "0" : dropped.joined(separator: " "))")
        }
        return lines.joined(separator: "\n")
    }
}
