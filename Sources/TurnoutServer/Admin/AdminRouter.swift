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
    let stateFile: String?
    let logger: Logger
    let isDraining: @Sendable () -> Bool

    static let maxBody = 64 * 1024

    init(store: RoutingStore, stateFile: String?, logger: Logger, isDraining: @escaping @Sendable () -> Bool) {
        self.store = store
        self.stateFile = stateFile
        self.logger = logger
        self.isDraining = isDraining
    }

    func handle(_ req: AdminRequest) -> AdminResponse {
        let path = req.path.split(separator: "?", maxSplits: 1).first.map(String.init) ?? req.path
        let routes: [String: [String]] = [
            "/v1/state": ["GET"], "/v1/switch": ["POST"], "/v1/weights": ["PUT"], "/v1/rollback": ["POST"],
            "/healthz": ["GET"],
        ]
        guard let methods = routes[path] else {
            return .error(AdminError(404, "not_found", "no admin endpoint \(path)"))
        }
        let method = req.method == "HEAD" && methods.contains("GET") ? "GET" : req.method
        guard methods.contains(method) else {
            var r = AdminResponse.error(AdminError(405, "method_not_allowed", "\(path) accepts \(methods.joined(separator: ", ")), not \(req.method)"))
            r.headers.append(("Allow", methods.joined(separator: ", ")))
            return r
        }
        if !req.body.isEmpty, let ct = req.headers.first("content-type"),
           ct.split(separator: ";").first?.trimmingHTTPWhitespace().lowercased() != "application/json" {
            return .error(AdminError(415, "unsupported_media_type", "send the body as application/json, not \(ct)"))
        }
        do {
            switch path {
            case "/healthz":
                return isDraining()
                    ? AdminResponse(status: 503, body: "{\"status\":\"draining\"}")
                    : AdminResponse(status: 200, body: "{\"status\":\"serving\"}")
            case "/v1/state":
                return stateResponse(status: 200)
            case "/v1/switch":
                let obj = try AdminJSON.object(req.body, allowed: ["pool", "force"])
                let pool = try AdminJSON.string(obj, "pool", required: true)!
                let force = try AdminJSON.bool(obj, "force") ?? false
                return try mutate(req, action: "switch to \(pool)\(force ? " (forced)" : "")") { state, view throws(AdminError) in
                    try RoutingCommands.switchTo(pool, force: force, state: state, pools: view)
                }
            case "/v1/weights":
                let obj = try AdminJSON.object(req.body, allowed: ["weights"])
                let weights = try AdminJSON.weights(obj, "weights")
                let text = weights.sorted { $0.key < $1.key }.map { "\($0.key)=\(Percent.format(basisPoints: $0.value))" }.joined(separator: " ")
                return try mutate(req, action: "weights \(text)") { state, view throws(AdminError) in
                    try RoutingCommands.setWeights(weights, state: state, pools: view)
                }
            case "/v1/rollback":
                if !req.body.isEmpty { _ = try AdminJSON.object(req.body, allowed: []) }
                return try mutate(req, action: "rollback") { state, view throws(AdminError) in
                    try RoutingCommands.rollback(state: state, pools: view)
                }
            default:
                return .error(AdminError(404, "not_found", "no admin endpoint \(path)"))
            }
        } catch {
            return .error(error)
        }
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

    private func mutate(_ req: AdminRequest, action: String,
                        _ change: (RoutingState, RoutingCommands.PoolView) throws(AdminError) -> RoutingState) throws(AdminError) -> AdminResponse {
        let expected = try ifMatch(req.headers)
        let store = self.store
        let stateFile = self.stateFile
        let before = store.state.generation
        let next = try store.mutate({ (state: RoutingState, health: [Int: HealthStatus]) throws(AdminError) -> RoutingState in
            try RoutingCommands.checkGeneration(expected, state)
            return try change(state, store.poolView(health: health))
        }, persist: { (next: RoutingState) throws(AdminError) in
            guard let stateFile else { return }
            do {
                try StateFile.write(next, to: stateFile, syncDirectory: false)
            } catch {
                throw AdminError(500, "state_write_failed", "\(error); nothing was changed")
            }
        })
        if next.generation != before {
            if let stateFile { scheduleDirectorySync(stateFile) }
            let weights = store.poolNames.map { "\($0)=\(Percent.format(basisPoints: next.weights[$0] ?? 0))" }.joined(separator: " ")
            logger.notice("\(action): generation \(next.generation), live \(next.live), weights \(weights)")
        }
        return stateResponse(status: 200)
    }

    private let syncQueue = DispatchQueue(label: "turnout.state-sync", qos: .utility)
    private var syncPending = false
    private let syncLock = NSLock()

    /// Makes the last rename durable across power loss without delaying the answer; several
    /// mutations in a row share one directory fsync.
    private func scheduleDirectorySync(_ path: String) {
        syncLock.lock()
        defer { syncLock.unlock() }
        guard !syncPending else { return }
        syncPending = true
        syncQueue.async { [self] in
            syncLock.lock()
            syncPending = false
            syncLock.unlock()
            StateFile.syncDirectory(of: path)
        }
    }

    private func stateResponse(status: Int) -> AdminResponse {
        let generation = store.state.generation
        return AdminResponse(status: status, body: store.stateJSON(), headers: [("ETag", "\"\(generation)\"")])
    }
}
