import ArgumentParser
import Foundation
import TurnoutCore
import TurnoutServer

/// `turnout endpoints add|remove|drain|maintenance|ready|weight POOL ADDRESS`.
struct Endpoints: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Change a pool's endpoints at run time: add, remove, drain, maintenance, ready, weight.",
        discussion: """
            Changes are kept in the state file (and, in cluster mode, in etcd for every replica),
            survive restarts and reloads, and each gets a generation and an event.
              add POOL ADDRESS [--weight N]   a new endpoint; it takes traffic once its probes pass
              remove POOL ADDRESS             drains it, then it leaves the pool
              drain POOL ADDRESS              no new requests; in-flight requests and tunnels finish
              maintenance POOL ADDRESS        no requests, still probed
              ready POOL ADDRESS              back to serving
              weight POOL ADDRESS N           its share within the pool (default 100)
            Taking the last serving endpoint out of a pool that carries traffic is refused (exit 1)
            unless --force. Exit status: 0 done, 1 refused, 2 unreachable or bad usage.
            """
    )
    @Argument(help: ArgumentHelp("add, remove, drain, maintenance, ready or weight.", valueName: "ACTION")) var action: String
    @Argument(help: "The pool.") var pool: String
    @Argument(help: ArgumentHelp("The endpoint, host:port.", valueName: "ADDRESS")) var address: String
    @Argument(help: ArgumentHelp("The weight (with the weight action).", valueName: "N")) var value: Int?
    @Option(help: "The weight of an endpoint being added (default 100).") var weight: Int?
    @Flag(help: "Take out the last serving endpoint of a pool that carries traffic anyway.") var force = false
    @Option(help: ArgumentHelp("Only apply if the state is still at this generation (else exit 1, 412).", valueName: "GENERATION"))
    var ifMatch: UInt64?
    @OptionGroup var waitOption: WaitOption
    @OptionGroup var options: AdminOptions

    static let actions = ["add", "remove", "drain", "maintenance", "ready", "weight"]

    func validate() throws {
        guard Self.actions.contains(action) else {
            throw ValidationError("unknown action \"\(action)\" (expected \(Self.actions.joined(separator: ", ")))")
        }
        if action == "weight" && value == nil { throw ValidationError("give the weight: turnout endpoints weight POOL ADDRESS N") }
        if action != "weight" && value != nil { throw ValidationError("unexpected argument \(value!) after the address") }
        if weight != nil && action != "add" { throw ValidationError("--weight goes with add (use `turnout endpoints weight POOL ADDRESS N`)") }
        if case .failure(let p) = HostPort.parse(address) { throw ValidationError("address \"\(address)\": \(p.message)") }
    }

    func run() throws {
        let base = "/v1/pools/\(Self.escape(pool))/endpoints"
        let one = "\(base)/\(Self.escape(address))"
        let result: [String: Any]
        switch action {
        case "add":
            var body = "{\"address\":\(JSONWriter.quote(address))"
            if let weight { body += ",\"weight\":\(weight)" }
            result = try callAdmin(options, "POST", base, json: body + "}", ifMatch: ifMatch, wait: waitOption)
        case "remove":
            result = try callAdmin(options, "DELETE", one + (force ? "?force=true" : ""), ifMatch: ifMatch, wait: waitOption)
        case "weight":
            result = try callAdmin(options, "PUT", one, json: "{\"weight\":\(value!),\"force\":\(force)}", ifMatch: ifMatch, wait: waitOption)
        default:
            let state = action == "ready" ? "serving" : action == "drain" ? "draining" : action
            result = try callAdmin(options, "PUT", one, json: "{\"state\":\(JSONWriter.quote(state)),\"force\":\(force)}", ifMatch: ifMatch, wait: waitOption)
        }
        guard !options.json else { return }
        switch action {
        case "remove": print("endpoint \(address) removed from pool \(pool) (it drains first): " + StateTable.summary(result))
        default:
            let state = result["state"] as? String ?? "?"
            let health = result["health"] as? String ?? "?"
            print("\(pool) \(address): \(state), weight \(result["weight"] ?? "?"), health \(health)")
        }
    }

    /// A path segment: `[`, `]`, `/`, `%`, `?` and `#` escaped.
    static func escape(_ s: String) -> String {
        var allowed = CharacterSet.urlPathAllowed
        allowed.remove(charactersIn: "/[]%?#")
        return s.addingPercentEncoding(withAllowedCharacters: allowed) ?? s
    }
}

/// `turnout wait-drained POOL[/ADDRESS] [--timeout 10m]`: the signal a pipeline waits for before
/// it scales the old release down.
struct WaitDrained: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wait-drained",
        abstract: "Wait until a pool (or one endpoint) takes no new requests and has none in flight and no tunnel open.",
        discussion: """
            In cluster mode every live replica counts. Exit status: 0 drained; 1 timed out (what is
            still open, or why the target still takes requests, is printed); 2 cannot reach the
            admin endpoint or bad usage. Example: turnout switch green && turnout wait-drained blue --timeout 10m
            """
    )
    @Argument(help: ArgumentHelp("A pool, or POOL/ADDRESS for one endpoint.", valueName: "POOL[/ADDRESS]")) var target: String
    @Option(help: ArgumentHelp("Give up after this long (e.g. 90s, 10m).", valueName: "DURATION")) var timeout: String = "10m"
    @OptionGroup var options: AdminOptions

    func validate() throws {
        guard DurationParser.milliseconds(timeout).map({ $0 > 0 }) == true else {
            throw ValidationError("--timeout: expected a duration such as 90s or 10m")
        }
        if target.isEmpty || target.hasPrefix("/") { throw ValidationError("expected POOL or POOL/ADDRESS") }
    }

    func run() throws {
        let parts = target.split(separator: "/", maxSplits: 1).map(String.init)
        var path = "/v1/drain?pool=\(Endpoints.escape(parts[0]))"
        if parts.count > 1 { path += "&address=\(Endpoints.escape(parts[1]))" }
        let deadline = Date().addingTimeInterval(Double(DurationParser.milliseconds(timeout)!) / 1000)
        var quiet = options
        quiet.json = false
        var last: [String: Any] = [:]
        while true {
            last = try callAdmin(quiet, "GET", path)
            if (last["drained"] as? Bool) == true { break }
            if Date() >= deadline {
                FileHandle.standardError.write(Data("turnout: \(target) not drained after \(timeout):\n\(Self.describe(last))\n".utf8))
                if options.json { print(Self.json(last)) }
                throw ExitCode(1)
            }
            // Polls the proxy's own counters: a drain is a condition on the far side.
            Thread.sleep(forTimeInterval: 0.1)
        }
        if options.json { print(Self.json(last)) } else { print("\(target) drained") }
    }

    static func json(_ o: [String: Any]) -> String {
        String(decoding: (try? JSONSerialization.data(withJSONObject: o, options: [.sortedKeys])) ?? Data(), as: UTF8.self)
    }

    static func describe(_ r: [String: Any]) -> String {
        var lines: [String] = []
        for why in r["taking_traffic"] as? [String] ?? [] { lines.append("  still taking new requests: \(why)") }
        for o in r["open"] as? [[String: Any]] ?? [] {
            let replica = (o["replica"] as? String).flatMap { $0.isEmpty ? nil : " on \($0)" } ?? ""
            lines.append("  \(o["pool"] ?? "?")/\(o["address"] ?? "?")\(replica): \(o["in_flight"] ?? 0) in flight, \(o["tunnels"] ?? 0) tunnels open")
        }
        for p in r["pending_replicas"] as? [String] ?? [] { lines.append("  replica \(p) has not reported since the change") }
        return lines.joined(separator: "\n")
    }
}
