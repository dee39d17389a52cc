import Foundation
import Logging
import TurnoutCore

/// One admin request, already read whole.
struct AdminRequest {
    var method: String
    var path: String
    var headers: HTTPHeaders
    var body: [UInt8]
}

/// An admin response.
struct AdminResponse {
    var status: Int
    var body: String
    var headers: [(String, String)] = []
    /// The connection turns into a server-sent event stream.
    var stream = false
    /// The body exactly as is (a dashboard asset), instead of `body` with a final newline.
    var raw: [UInt8]? = nil
    /// The answer comes later (a cluster write): the connection calls this and sends what it
    /// hands back, on the admin loop.
    var deferred: (@Sendable (@escaping @Sendable (AdminResponse) -> Void) -> Void)? = nil

    static func error(_ e: AdminError) -> AdminResponse {
        var r = AdminResponse(status: e.status, body: JSONWriter.error(e))
        if e.status == 401 { r.headers.append(("WWW-Authenticate", "Bearer")) }
        return r
    }
}

/// Maps admin requests to routing-store operations (SPEC "Admin API"). A mutation is validated on
/// the current state under the store's lock, written to the state file, and only then published
/// and answered; any failure leaves state, file and routing as they were.
final class AdminRouter: @unchecked Sendable {
    let store: RoutingStore
    let stateFile: StateFileWriter?
    let logger: Logger
    let isDraining: @Sendable () -> Bool
    let events: EventBus
    /// The running ramp step's observations (set once the ramp controller exists).
    var rampWindow: () -> RampWindow? = { nil }
    /// The Prometheus exposition (set by the server, which owns the counters).
    var metrics: () -> String = { "" }
    /// `GET /v1/stats`: the dashboard's traffic history (set by the server).
    var stats: () -> String = { "{}" }
    /// Traffic counters summed over the loops (set by the server, which owns them).
    var traffic: () -> TrafficStats = { TrafficStats() }
    /// Extra members of each pool's object in `/v1/state` (discovery status; set by the server).
    var poolFields: () -> [String: String] = { [:] }
    /// Cluster mode: routing changes go through etcd (set by the server before the admin API serves).
    var cluster: ClusterAgent?
    /// Re-reads the config file (set by the server, which owns everything a reload touches).
    var reload: () -> Result<ReloadOutcome, ReloadError> = { .failure(.refused("reload is not available")) }

    static let maxBody = 64 * 1024

    init(store: RoutingStore, stateFile: StateFileWriter?, logger: Logger, events: EventBus, isDraining: @escaping @Sendable () -> Bool) {
        self.store = store
        self.stateFile = stateFile
        self.logger = logger
        self.events = events
        self.isDraining = isDraining
    }

    func handle(_ req: AdminRequest) -> AdminResponse {
        let path = req.path.split(separator: "?", maxSplits: 1).first.map(String.init) ?? req.path
        if path.hasPrefix("/v1/pools/") { return handleEndpoints(req, path: path) }
        let routes: [String: [String]] = [
            "/v1/state": ["GET"], "/v1/switch": ["POST"], "/v1/weights": ["PUT"], "/v1/rollback": ["POST"],
            "/healthz": ["GET"], "/v1/ramp": ["GET", "POST", "DELETE"], "/v1/ramp/pause": ["POST"],
            "/v1/ramp/resume": ["POST"], "/v1/events": ["GET"], "/metrics": ["GET"], "/v1/reload": ["POST"],
            "/v1/drain": ["GET"], "/v1/stats": ["GET"], "/v1/mirror": ["GET", "PUT", "DELETE"],
        ]
        guard let methods = routes[path] else {
            return .error(AdminError(404, "not_found", "no admin endpoint \(path)"))
        }
        let method: String
        switch Self.admit(req, path: path, methods: methods) {
        case .success(let m): method = m
        case .failure(let refusal): return refusal.response
        }
        do {
            switch path {
            case "/healthz":
                return isDraining()
                    ? AdminResponse(status: 503, body: "{\"status\":\"draining\"}")
                    : AdminResponse(status: 200, body: "{\"status\":\"serving\"}")
            case "/v1/state":
                return stateResponse(status: 200)
            case "/v1/events":
                return AdminResponse(status: 200, body: "", stream: true)
            case "/v1/drain":
                return try drainResponse(req.path)
            case "/v1/stats":
                return AdminResponse(status: 200, body: stats())
            case "/metrics":
                return AdminResponse(status: 200, body: metrics(), headers: [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")])
            case "/v1/ramp":
                switch method {
                case "GET":
                    guard store.state.ramp != nil else { throw AdminError(404, "no_ramp", "no ramp has run since this state began") }
                    return rampResponse(status: 200)
                case "POST":
                    let plan = try Self.rampPlan(req.body)
                    return try mutate(req, action: "ramp \(plan.pool) through \(plan.steps.map { Percent.format(basisPoints: $0) }.joined(separator: ","))", kind: "ramp_started",
                                      respond: { $0.rampResponse(status: 201) }) { state, view throws(AdminError) in
                        try RoutingCommands.startRamp(plan, state: state, pools: view, now: Date())
                    }
                default:
                    return try mutate(req, action: "ramp aborted", kind: "ramp_aborted", respond: { $0.rampResponse(status: 200) }) { state, view throws(AdminError) in
                        try RoutingCommands.abortRamp(state: state, pools: view)
                    }
                }
            case "/v1/ramp/pause":
                return try mutate(req, action: "ramp paused", kind: "ramp_paused", respond: { $0.rampResponse(status: 200) }) { state, _ throws(AdminError) in
                    try RoutingCommands.pauseRamp(state: state)
                }
            case "/v1/ramp/resume":
                return try mutate(req, action: "ramp resumed", kind: "ramp_resumed", respond: { $0.rampResponse(status: 200) }) { state, _ throws(AdminError) in
                    try RoutingCommands.resumeRamp(state: state, now: Date())
                }
            case "/v1/mirror":
                if method == "GET" { return mirrorResponse() }
                let spec = method == "DELETE" ? nil : try AdminJSON.mirror(req.body)
                if method == "DELETE" && !req.body.isEmpty { _ = try AdminJSON.object(req.body, allowed: []) }
                let action = spec.map { "mirror \($0.summary)" } ?? "mirror off"
                return try mutate(req, action: action, kind: "mirror", fields: [("mirror", JSONWriter.mirrorSpec(spec))],
                                  respond: { $0.mirrorResponse() }) { state, view throws(AdminError) in
                    try RoutingCommands.setMirror(spec, state: state, pools: view)
                }
            case "/v1/switch":
                let obj = try AdminJSON.object(req.body, allowed: ["pool", "force"])
                let pool = try AdminJSON.string(obj, "pool", required: true)!
                let force = try AdminJSON.bool(obj, "force") ?? false
                return try mutate(req, action: "switch to \(pool)\(force ? " (forced)" : "")", kind: "switch") { state, view throws(AdminError) in
                    try RoutingCommands.switchTo(pool, force: force, state: state, pools: view)
                }
            case "/v1/weights":
                let obj = try AdminJSON.object(req.body, allowed: ["weights", "force"])
                let weights = try AdminJSON.weights(obj, "weights")
                let force = try AdminJSON.bool(obj, "force") ?? false
                let text = weights.sorted { $0.key < $1.key }.map { "\($0.key)=\(Percent.format(basisPoints: $0.value))" }.joined(separator: " ")
                return try mutate(req, action: "weights \(text)", kind: "weights") { state, view throws(AdminError) in
                    try RoutingCommands.setWeights(weights, force: force, state: state, pools: view)
                }
            case "/v1/reload":
                if !req.body.isEmpty { _ = try AdminJSON.object(req.body, allowed: []) }
                switch reload() {
                case .success(let outcome):
                    let body = "{\"reloaded\":true,\"changes\":[\(outcome.changes.map(JSONWriter.quote).joined(separator: ","))],"
                        + "\"restart_required\":[\(outcome.restartRequired.map(JSONWriter.quote).joined(separator: ","))]}"
                    return AdminResponse(status: 200, body: body)
                case .failure(.invalid(let problems)):
                    let body = "{\"error\":\"the new config is invalid; the running config is kept\",\"code\":\"invalid_config\","
                        + "\"problems\":[\(problems.map(JSONWriter.quote).joined(separator: ","))]}"
                    return AdminResponse(status: 400, body: body)
                case .failure(.refused(let reason)):
                    throw AdminError(409, "reload_refused", "\(reason); the running config is kept")
                }
            case "/v1/rollback":
                if !req.body.isEmpty { _ = try AdminJSON.object(req.body, allowed: []) }
                return try mutate(req, action: "rollback", kind: "rollback") { state, view throws(AdminError) in
                    try RoutingCommands.rollback(state: state, pools: view)
                }
            default:
                return .error(AdminError(404, "not_found", "no admin endpoint \(path)"))
            }
        } catch let error as AdminError {
            return .error(error)
        } catch {
            return .error(AdminError(500, "internal_error", "\(error)"))
        }
    }

    /// A refusal already written as a response (405 with `Allow`, 415).
    struct Refusal: Error { let response: AdminResponse }

    /// The method to handle `req` as (HEAD as GET where GET is allowed), or the answer when the
    /// method is not one of `methods` or the body is not JSON.
    static func admit(_ req: AdminRequest, path: String, methods: [String]) -> Result<String, Refusal> {
        let method = req.method == "HEAD" && methods.contains("GET") ? "GET" : req.method
        guard methods.contains(method) else {
            var r = AdminResponse.error(AdminError(405, "method_not_allowed", "\(path) accepts \(methods.joined(separator: ", ")), not \(req.method)"))
            r.headers.append(("Allow", methods.joined(separator: ", ")))
            return .failure(Refusal(response: r))
        }
        if !req.body.isEmpty, let ct = req.headers.first("content-type"),
           ct.split(separator: ";").first?.trimmingHTTPWhitespace().lowercased() != "application/json" {
            return .failure(Refusal(response: .error(AdminError(415, "unsupported_media_type", "send the body as application/json, not \(ct)"))))
        }
        return .success(method)
    }

    private func ifMatch(_ headers: HTTPHeaders) throws(AdminError) -> UInt64? {
        guard let raw = headers.first("if-match") else { return nil }
        var v = raw.trimmingHTTPWhitespace()
        if v.hasPrefix("W/") { v.removeFirst(2) }
        if v.hasPrefix("\"") && v.hasSuffix("\"") && v.count >= 2 { v = String(v.dropFirst().dropLast()) }
        guard let g = UInt64(v) else {
            throw .badRequest("If-Match must be a generation number, e.g. If-Match: 7", code: "invalid_if_match")
        }
        return g
    }

    /// `?wait=5s` on a write: answer once every live replica applied it (at most 10 minutes).
    static func waitParameter(_ target: String) throws(AdminError) -> Int64? {
        guard let q = target.split(separator: "?", maxSplits: 1).dropFirst().first else { return nil }
        for pair in q.split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1)
            guard kv.first == "wait" else { continue }
            let text = kv.count > 1 ? String(kv[1]) : ""
            guard let ms = DurationParser.milliseconds(text), ms > 0, ms <= 600_000 else {
                throw .badRequest("wait must be a duration from 1ms to 10m, e.g. ?wait=5s", code: "invalid_wait")
            }
            return ms
        }
        return nil
    }

    func mutate(_ req: AdminRequest, action: String, kind: String,
                        fields: [(String, String)] = [],
                        respond: @escaping @Sendable (AdminRouter) -> AdminResponse = { $0.stateResponse(status: 200) },
                        _ change: @escaping @Sendable (RoutingState, RoutingCommands.PoolView) throws(AdminError) -> RoutingState) throws(AdminError) -> AdminResponse {
        let expected = try ifMatch(req.headers)
        let wait = try Self.waitParameter(req.path)
        if let cluster {
            // The answer comes once etcd committed (and, with ?wait, every replica applied it).
            return AdminResponse(status: 0, body: "", deferred: { [self] done in
                cluster.writeAsync(expected: expected, kind: kind, reason: action, change) { [self] result in
                    switch result {
                    case .failure(let e):
                        done(.error(e))
                    case .success(let state):
                        guard let wait else { return done(respond(self)) }
                        cluster.waitConverged(revision: state.generation, timeoutMs: wait) { [self] pending in
                            if pending.isEmpty { return done(respond(self)) }
                            let body = "{\"error\":\"generation \(state.generation) is committed, but not every replica applied it within \(DurationParser.format(milliseconds: wait))\","
                                + "\"code\":\"not_converged\",\"generation\":\(state.generation),\"pending\":[\(pending.map(JSONWriter.quote).joined(separator: ","))]}"
                            done(AdminResponse(status: 504, body: body, headers: [("ETag", "\"\(state.generation)\"")]))
                        }
                    }
                }
            })
        }
        let store = self.store
        let stateFile = self.stateFile
        let before = store.state.generation
        let next = try store.mutate({ (state: RoutingState, health: [Int: HealthStatus]) throws(AdminError) -> RoutingState in
            try RoutingCommands.checkGeneration(expected, state)
            return try change(state, store.poolView())
        }, persist: { (next: RoutingState) throws(AdminError) in
            guard let stateFile else { return }
            do {
                try stateFile.write(next)
            } catch {
                throw AdminError(500, "state_write_failed", "\(error); nothing was changed")
            }
        })
        if next.generation != before {
            let weights = store.poolNames.map { "\($0)=\(Percent.format(basisPoints: next.weights[$0] ?? 0))" }.joined(separator: " ")
            logger.notice("\(action): generation \(next.generation), live \(next.live), weights \(weights)")
            events.publish(TurnoutEvent(kind: kind, generation: next.generation, reason: action,
                                        fields: fields + [("live", JSONWriter.quote(next.live)),
                                                 ("weights", JSONWriter.weights(next.weights, order: store.poolNames)),
                                                 ("previous", next.previousWeights.map { JSONWriter.weights($0, order: store.poolNames) } ?? "null")]))
        }
        // A single node has no other replica to wait for: ?wait is satisfied at once.
        return respond(self)
    }

    func mirrorResponse() -> AdminResponse {
        let state = store.state
        return AdminResponse(status: 200, body: JSONWriter.mirror(state.mirror, traffic: traffic()),
                             headers: [("ETag", "\"\(state.generation)\"")])
    }

    func stateResponse(status: Int) -> AdminResponse {
        let state = store.state
        return AdminResponse(status: status, body: store.stateJSON(ramp: rampJSON(state), mirror: JSONWriter.mirror(state.mirror, traffic: traffic()),
                                                                   cluster: cluster?.stateJSON() ?? "null", nowNanos: EventLoop.now(), poolFields: poolFields()),
                             headers: [("ETag", "\"\(state.generation)\"")])
    }

    func rampResponse(status: Int) -> AdminResponse {
        let state = store.state
        return AdminResponse(status: status, body: rampJSON(state), headers: [("ETag", "\"\(state.generation)\"")])
    }

    /// `{"pool":"green","steps":[1,5,25],...}` for `GET /v1/ramp` and the `ramp` field of the state.
    func rampJSON(_ state: RoutingState) -> String {
        guard let r = state.ramp else { return "null" }
        func num(_ d: Double?) -> String { d.map { String(format: "%.6g", $0) } ?? "null" }
        var out = "{\"pool\":\(JSONWriter.quote(r.plan.pool))"
        out += ",\"steps\":[\(r.plan.steps.map { Percent.format(basisPoints: $0) }.joined(separator: ","))]"
        out += ",\"interval\":\(JSONWriter.quote(DurationParser.format(milliseconds: r.plan.intervalMs)))"
        out += ",\"gates\":{\"max_error_rate\":\(num(r.plan.gates.maxErrorRate)),\"max_p99\":"
        out += (r.plan.gates.maxP99Ms.map { JSONWriter.quote(DurationParser.format(milliseconds: $0)) } ?? "null")
        out += ",\"min_requests\":\(r.plan.gates.minRequests)}"
        out += ",\"mirror\":" + (r.plan.mirror.map { m in
            "{\"percent\":\(Percent.format(basisPoints: m.percentBP)),\"duration\":\(JSONWriter.quote(DurationParser.format(milliseconds: m.durationMs)))"
                + ",\"methods\":[\(m.methods.map(JSONWriter.quote).joined(separator: ","))]}"
        } ?? "null")
        // Step 0 is the mirroring step.
        out += ",\"status\":\(JSONWriter.quote(r.status.rawValue)),\"phase\":\(JSONWriter.quote(r.isMirroring ? "mirror" : "weights"))"
        out += ",\"step\":\(r.isMirroring ? 0 : r.step + 1),\"weight\":\(Percent.format(basisPoints: r.currentWeight))"
        out += ",\"step_started_at\":\(JSONWriter.quote(Timestamp.iso8601(r.stepStartedAt)))"
        let next = r.status == .running ? JSONWriter.quote(Timestamp.iso8601(r.stepStartedAt.addingTimeInterval(Double(r.currentIntervalMs) / 1000))) : "null"
        out += ",\"next_step_at\":\(next)"
        var records = r.records
        var mirrorRecord = r.mirrorRecord
        if r.status == .running, let w = rampWindow() {
            let live = RampStepRecord(weight: r.currentWeight, requests: w.requests, errors: w.errors, p99Ms: w.p99Ms, verdict: "running")
            if r.isMirroring { mirrorRecord = live } else if records.indices.contains(r.step) { records[r.step] = live }
        }
        func recordJSON(_ rec: RampStepRecord) -> String {
            "{\"weight\":\(Percent.format(basisPoints: rec.weight)),\"requests\":\(rec.requests),\"errors\":\(rec.errors),\"error_rate\":\(num(rec.errorRate)),\"p99_ms\":\(num(rec.p99Ms)),\"verdict\":\(JSONWriter.quote(rec.verdict))}"
        }
        // While mirroring (or after a ramp stopped in that step) no weighted step has begun.
        out += ",\"steps_observed\":[" + (!r.weightedStepsBegan ? "" : records.map(recordJSON).joined(separator: ",")) + "]"
        out += ",\"mirror_observed\":" + (mirrorRecord.map(recordJSON) ?? "null")
        out += ",\"reason\":" + (r.reason.map(JSONWriter.quote) ?? "null")
        out += ",\"pre_ramp\":{\"live\":\(JSONWriter.quote(r.preRampLive)),\"weights\":\(JSONWriter.weights(r.preRampWeights, order: store.poolNames))"
        if let m = r.preRampMirror { out += ",\"mirror\":" + JSONWriter.mirrorSpec(m.spec) }
        out += "}}"
        return out
    }

    /// Reads `{"pool","steps","interval","gates":{...}}`.
    static func rampPlan(_ body: [UInt8]) throws(AdminError) -> RampPlan {
        let obj = try AdminJSON.object(body, allowed: ["pool", "steps", "interval", "gates", "mirror"])
        let pool = try AdminJSON.string(obj, "pool", required: true)!
        guard let rawSteps = obj["steps"] as? [Any] else {
            throw .badRequest("steps must be a list of percentages, e.g. [1,5,25,50,100]", code: obj["steps"] == nil ? "missing_field" : "wrong_type")
        }
        var steps: [Int] = []
        for v in rawSteps {
            // Each step is checked exactly like a weight (a number, 0-100, at most two decimals).
            if let bp = try AdminJSON.weights(["step": ["step": v]], "step")["step"] { steps.append(bp) }
        }
        let intervalText = try AdminJSON.string(obj, "interval", required: false) ?? "30s"
        guard let interval = DurationParser.milliseconds(intervalText) else {
            throw .badRequest("interval must be a duration such as 30s or 1m", code: "invalid_ramp")
        }
        var gates = RampGates()
        if let g = obj["gates"] {
            guard let gobj = g as? [String: Any] else { throw .badRequest("gates must be an object", code: "wrong_type") }
            for key in gobj.keys where !["max_error_rate", "max_p99", "min_requests"].contains(key) {
                throw .badRequest("unknown gate \"\(key)\" (expected max_error_rate, max_p99, min_requests)", code: "unknown_field")
            }
            if let v = gobj["max_error_rate"] {
                if v is NSNull { gates.maxErrorRate = nil } else {
                    guard let n = v as? NSNumber, !AdminJSON.isBool(v) else { throw .badRequest("max_error_rate must be a number such as 0.01", code: "wrong_type") }
                    gates.maxErrorRate = n.doubleValue
                }
            }
            if let v = gobj["max_p99"] {
                if v is NSNull { gates.maxP99Ms = nil } else {
                    guard let t = v as? String, let ms = DurationParser.milliseconds(t) else {
                        throw .badRequest("max_p99 must be a duration such as 500ms", code: "wrong_type")
                    }
                    gates.maxP99Ms = ms
                }
            }
            if let v = gobj["min_requests"] {
                guard let n = v as? NSNumber, !AdminJSON.isBool(v), n.doubleValue == n.doubleValue.rounded(), n.intValue >= 0 else {
                    throw .badRequest("min_requests must be a whole number", code: "wrong_type")
                }
                gates.minRequests = n.intValue
            }
        }
        var mirror: RampMirrorPlan?
        if let m = obj["mirror"], !(m is NSNull) {
            // {"percent": 100, "duration": "1m", "methods": ["GET", "HEAD"]}: the mirroring step.
            guard let mobj = m as? [String: Any] else {
                throw .badRequest("mirror must be an object such as {\"percent\": 100, \"duration\": \"1m\"}", code: "wrong_type")
            }
            for key in mobj.keys where !["percent", "duration", "methods"].contains(key) {
                throw .badRequest("unknown mirror field \"\(key)\" (expected percent, duration, methods)", code: "unknown_field")
            }
            guard let rawPercent = mobj["percent"] else { throw .badRequest("mirror needs \"percent\"", code: "missing_field") }
            let percent = try AdminJSON.percent(rawPercent, name: "mirror percent", code: "invalid_ramp")
            var duration = interval
            if let d = mobj["duration"], !(d is NSNull) {
                guard let t = d as? String, let ms = DurationParser.milliseconds(t) else {
                    throw .badRequest("mirror duration must be a duration such as 1m", code: "wrong_type")
                }
                duration = ms
            }
            var plan = RampMirrorPlan(percentBP: percent, durationMs: duration)
            if let m = try AdminJSON.methods(mobj["methods"], name: "mirror methods") { plan.methods = m }
            mirror = plan
        }
        return RampPlan(pool: pool, steps: steps, intervalMs: interval, gates: gates, mirror: mirror)
    }
}
