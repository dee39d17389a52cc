import Foundation
import TurnoutCore

/// Run-time endpoint changes (`/v1/pools/{pool}/endpoints[/{address}]`) and drain observation
/// (`GET /v1/drain`).
extension AdminRouter {
    func handleEndpoints(_ req: AdminRequest, path: String) -> AdminResponse {
        // /v1/pools/{pool}/endpoints[/{address}]
        let parts = path.dropFirst("/v1/pools/".count).split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 2 || parts.count == 3, parts[1] == "endpoints", !parts[0].isEmpty,
              let pool = Self.percentDecoded(parts[0]), parts.count == 2 || !parts[2].isEmpty,
              let address = parts.count == 3 ? Self.percentDecoded(parts[2]) : ""
        else {
            return .error(AdminError(404, "not_found", "no admin endpoint \(path) (expected /v1/pools/POOL/endpoints[/ADDRESS])"))
        }
        let methods = parts.count == 2 ? ["GET", "POST"] : ["GET", "PUT", "DELETE"]
        let method: String
        switch Self.admit(req, path: path, methods: methods) {
        case .success(let m): method = m
        case .failure(let refusal): return refusal.response
        }
        let store = self.store
        do {
            switch (method, parts.count) {
            case ("GET", 2):
                guard store.poolNames.contains(pool) else { throw Self.unknownPool(pool, store) }
                let all = store.endpointObjects(pool: pool, address: nil, nowNanos: EventLoop.now()) ?? []
                return AdminResponse(status: 200, body: "{\"pool\":\(JSONWriter.quote(pool)),\"endpoints\":[\(all.joined(separator: ","))]}",
                                     headers: [("ETag", "\"\(store.state.generation)\"")])
            case ("GET", _):
                guard store.poolNames.contains(pool) else { throw Self.unknownPool(pool, store) }
                let normal = try EndpointCommands.address(address)
                guard let one = store.endpointObjects(pool: pool, address: normal, nowNanos: EventLoop.now())?.first else {
                    throw AdminError(404, "unknown_endpoint", "pool \(pool) has no endpoint \(normal)")
                }
                return AdminResponse(status: 200, body: one, headers: [("ETag", "\"\(store.state.generation)\"")])
            case ("POST", _):
                let obj = try AdminJSON.object(req.body, allowed: ["address", "weight"])
                let text = try AdminJSON.string(obj, "address", required: true)!
                let weight = try Self.weightField(obj)
                let normal = try EndpointCommands.address(text)
                return try mutate(req, action: "endpoint \(normal) added to pool \(pool)", kind: "endpoint_added",
                                  fields: [("pool", JSONWriter.quote(pool)), ("endpoint", JSONWriter.quote(normal))],
                                  respond: { $0.endpointResponse(status: 201, pool: pool, address: normal) }) { state, _ throws(AdminError) in
                    try EndpointCommands.add(pool: pool, address: normal, weight: weight, state: state, view: store.endpointView())
                }
            case ("DELETE", _):
                if !req.body.isEmpty { _ = try AdminJSON.object(req.body, allowed: ["force"]) }
                let force = try Self.forceParameter(req)
                let normal = try EndpointCommands.address(address)
                return try mutate(req, action: "endpoint \(normal) removed from pool \(pool)\(force ? " (forced)" : "")", kind: "endpoint_removed",
                                  fields: [("pool", JSONWriter.quote(pool)), ("endpoint", JSONWriter.quote(normal))]) { state, _ throws(AdminError) in
                    try EndpointCommands.remove(pool: pool, address: normal, force: force, state: state, view: store.endpointView())
                }
            default: // PUT
                let obj = try AdminJSON.object(req.body, allowed: ["state", "weight", "force"])
                var change = EndpointCommands.Change()
                if let s = try AdminJSON.string(obj, "state", required: false) {
                    guard let st = EndpointAdminState(rawValue: s) else {
                        throw AdminError.badRequest("state must be serving, draining or maintenance, got \"\(s)\"", code: "invalid_state")
                    }
                    change.state = st
                }
                change.weight = try Self.weightField(obj)
                let force = try AdminJSON.bool(obj, "force") ?? false
                let normal = try EndpointCommands.address(address)
                let requested = change
                var what: [String] = []
                if let s = change.state { what.append(s.rawValue) }
                if let w = change.weight { what.append("weight \(w)") }
                return try mutate(req, action: "endpoint \(normal) of pool \(pool): \(what.joined(separator: ", "))\(force ? " (forced)" : "")",
                                  kind: "endpoint_changed",
                                  fields: [("pool", JSONWriter.quote(pool)), ("endpoint", JSONWriter.quote(normal))],
                                  respond: { $0.endpointResponse(status: 200, pool: pool, address: normal) }) { state, _ throws(AdminError) in
                    try EndpointCommands.update(pool: pool, address: normal, requested, force: force, state: state, view: store.endpointView())
                }
            }
        } catch let error as AdminError {
            return .error(error)
        } catch {
            return .error(AdminError(500, "internal_error", "\(error)"))
        }
    }

    static func unknownPool(_ pool: String, _ store: RoutingStore) -> AdminError {
        AdminError(404, "unknown_pool", "no pool named \"\(pool)\" (pools: \(store.poolNames.joined(separator: ", ")))")
    }

    static func weightField(_ obj: [String: Any]) throws(AdminError) -> Int? {
        guard let v = obj["weight"] else { return nil }
        guard let n = v as? NSNumber, !AdminJSON.isBool(v), n.doubleValue == n.doubleValue.rounded(),
              n.doubleValue >= 0, n.doubleValue <= Double(EndpointOverride.maxWeight)
        else {
            throw .badRequest("weight must be a whole number from 0 to \(EndpointOverride.maxWeight)", code: "invalid_weight")
        }
        return n.intValue
    }

    /// `?force=true` (or a body `{"force": true}`) on DELETE.
    static func forceParameter(_ req: AdminRequest) throws(AdminError) -> Bool {
        if !req.body.isEmpty, let f = try AdminJSON.bool(try AdminJSON.object(req.body, allowed: ["force"]), "force") { return f }
        guard let q = req.path.split(separator: "?", maxSplits: 1).dropFirst().first else { return false }
        for pair in q.split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1)
            guard kv.first == "force" else { continue }
            switch kv.count > 1 ? String(kv[1]) : "true" {
            case "true", "1": return true
            case "false", "0": return false
            default: throw .badRequest("force must be true or false", code: "invalid_force")
            }
        }
        return false
    }

    static func percentDecoded(_ s: String) -> String? {
        guard s.contains("%") else { return s }
        return s.removingPercentEncoding
    }

    func endpointResponse(status: Int, pool: String, address: String) -> AdminResponse {
        let body = store.endpointObjects(pool: pool, address: address, nowNanos: EventLoop.now())?.first
            ?? "{\"pool\":\(JSONWriter.quote(pool)),\"address\":\(JSONWriter.quote(address))}"
        return AdminResponse(status: status, body: body, headers: [("ETag", "\"\(store.state.generation)\"")])
    }

    // MARK: drain

    /// `GET /v1/drain?pool=P[&address=A]`: whether the pool (or endpoint) takes no new requests and
    /// has nothing in flight and no tunnel open, here and (cluster mode) on every live replica.
    func drainResponse(_ target: String) throws(AdminError) -> AdminResponse {
        var pool: String?
        var address: String?
        if let q = target.split(separator: "?", maxSplits: 1).dropFirst().first {
            for pair in q.split(separator: "&") {
                let kv = pair.split(separator: "=", maxSplits: 1).map(String.init)
                let value = kv.count > 1 ? (kv[1].removingPercentEncoding ?? kv[1]) : ""
                switch kv[0] {
                case "pool": pool = value
                case "address": address = value
                default: throw .badRequest("unknown parameter \(kv[0]) (expected pool, address)", code: "invalid_parameter")
                }
            }
        }
        guard let pool, !pool.isEmpty else { throw .badRequest("name the pool: /v1/drain?pool=blue[&address=10.0.0.5:8080]", code: "missing_field") }
        guard store.poolNames.contains(pool) else { throw Self.unknownPool(pool, store) }
        let normal = try address.map { (a: String) throws(AdminError) -> String in try EndpointCommands.address(a) }
        let local = DrainReport.local(store: store, pool: pool, address: normal, replica: cluster?.replicaID ?? "")
        if let normal, !local.found { throw AdminError(404, "unknown_endpoint", "pool \(pool) has no endpoint \(normal)") }
        var report = local
        if let cluster { report.merge(cluster.drainReports(pool: pool, address: normal)) }
        return AdminResponse(status: 200, body: report.json(pool: pool, address: normal))
    }
}

/// What is still open on a pool or endpoint being drained.
struct DrainReport: Sendable {
    struct Open: Sendable, Equatable {
        var replica: String
        var pool: String
        var address: String
        var inFlight: Int
        var tunnels: Int
    }
    var found = false
    /// Why the target still gets new requests (empty: it gets none).
    var takingTraffic: [String] = []
    var open: [Open] = []
    /// Replicas whose report is older than the routing change that drains the target.
    var pending: [String] = []

    var drained: Bool { takingTraffic.isEmpty && open.isEmpty && pending.isEmpty }

    static func local(store: RoutingStore, pool: String, address: String?, replica: String) -> DrainReport {
        var r = DrainReport()
        let state = store.state
        let share = state.weights[pool] ?? 0
        guard let members = store.members.first(where: { $0.pool.name == pool })?.members else { return r }
        for m in members where address == nil || m.endpoint.address.description == address {
            r.found = true
            let inFlight = max(0, m.endpoint.inFlight.load(ordering: .relaxed))
            let tunnels = max(0, m.endpoint.tunnels.load(ordering: .relaxed))
            if inFlight > 0 || tunnels > 0 {
                r.open.append(Open(replica: replica, pool: pool, address: m.endpoint.address.description, inFlight: inFlight, tunnels: tunnels))
            }
            if address != nil && m.admitsRequests && share > 0 {
                r.takingTraffic.append("endpoint \(m.endpoint.address) is \(m.state.rawValue) in pool \(pool), which has weight \(Percent.format(basisPoints: share))%")
            }
        }
        if address == nil && share > 0 {
            r.takingTraffic.append("pool \(pool) has weight \(Percent.format(basisPoints: share))%")
        }
        return r
    }

    mutating func merge(_ other: (open: [Open], pending: [String])) {
        open += other.open
        pending += other.pending
    }

    func json(pool: String, address: String?) -> String {
        let opens = open.map {
            "{\"replica\":\(JSONWriter.quote($0.replica)),\"pool\":\(JSONWriter.quote($0.pool)),\"address\":\(JSONWriter.quote($0.address)),\"in_flight\":\($0.inFlight),\"tunnels\":\($0.tunnels)}"
        }
        return "{\"pool\":\(JSONWriter.quote(pool)),\"address\":\(address.map(JSONWriter.quote) ?? "null"),\"drained\":\(drained)"
            + ",\"taking_traffic\":[\(takingTraffic.map(JSONWriter.quote).joined(separator: ","))]"
            + ",\"open\":[\(opens.joined(separator: ","))],\"pending_replicas\":[\(pending.map(JSONWriter.quote).joined(separator: ","))]}"
    }
}
