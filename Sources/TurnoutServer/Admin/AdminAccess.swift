#if canImport(Glibc)
import Glibc
#endif
import COpenSSL
import Foundation
import Synchronization
import TurnoutCore

/// Who may do what on the TCP admin address: the bearer token (everything), the read-only token
/// (reads only, 403 on changes), or a dashboard session (a cookie from `POST /v1/session`, with
/// the role of the token that opened it; its changes must carry the session's CSRF token).
/// The Unix socket is guarded by its file mode and is not checked here.
///
/// A session cookie is signed, not stored: `v1.ROLE.EXPIRES.NONCE.HMAC` with HMAC-SHA256 keyed by
/// the tokens, so a restarted Turnout with the same tokens keeps its sessions (the page recovers
/// by itself), and changing a token ends every session it opened. The CSRF token is an HMAC of the
/// cookie. Logging out revokes the cookie in memory.
final class AdminAccess: Sendable {
    enum Role: String, Sendable {
        case admin
        case readOnly = "read_only"
    }

    struct Session: Sendable {
        var role: Role
        var csrf: String
        /// Unix seconds.
        var expires: Int64
    }

    static let cookieName = "turnout_session"
    /// Sessions end 12 hours after login.
    static let sessionLifetimeSeconds: Int64 = 12 * 3600

    private let token: [UInt8]?
    private let readOnlyToken: [UInt8]?
    private let key: [UInt8]
    let dashboard: Bool
    /// Cookies logged out before they expired, with their expiry (pruned as they expire).
    private let revoked = Mutex<[String: Int64]>([:])

    init(token: String?, readOnlyToken: String?, dashboard: Bool) {
        self.token = token.map { Array($0.utf8) }
        self.readOnlyToken = readOnlyToken.map { Array($0.utf8) }
        self.key = Array("turnout-session-v1\0\(token ?? "")\0\(readOnlyToken ?? "")".utf8)
        self.dashboard = dashboard
    }

    func hmac(_ text: String) -> String {
        var out = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        let data = Array(text.utf8)
        _ = key.withUnsafeBufferPointer { k in
            data.withUnsafeBufferPointer { d in
                HMAC(EVP_sha256(), k.baseAddress, Int32(k.count), d.baseAddress, d.count, &out, &length)
            }
        }
        return out.prefix(Int(length)).map { String($0, radix: 16).leftPadded(to: 2) }.joined()
    }

    func csrf(forCookie cookie: String) -> String { hmac("csrf:" + cookie) }

    /// A new signed session cookie value.
    func newCookie(role: Role, nowSeconds: Int64) -> String {
        let payload = "v1.\(role.rawValue).\(nowSeconds + Self.sessionLifetimeSeconds).\(Self.randomToken())"
        return payload + "." + hmac("session:" + payload)
    }

    /// Compares in constant time (for the length of the expected value).
    static func equal(_ presented: [UInt8], _ expected: [UInt8]) -> Bool {
        var diff = UInt8(presented.count == expected.count ? 0 : 1)
        for i in 0..<expected.count { diff |= expected[i] ^ (i < presented.count ? presented[i] : 0) }
        return diff == 0
    }

    /// The role a token grants, if any.
    func role(forToken presented: [UInt8]) -> Role? {
        if let token, Self.equal(presented, token) { return .admin }
        if let readOnlyToken, Self.equal(presented, readOnlyToken) { return .readOnly }
        return nil
    }

    func bearerRole(_ headers: HTTPHeaders) -> Role? {
        guard let auth = headers.first("authorization") else { return nil }
        let prefix = "bearer "
        guard auth.count > prefix.count, auth.lowercased().hasPrefix(prefix) else { return nil }
        return role(forToken: Array(auth.utf8.dropFirst(prefix.count)))
    }

    static func sessionID(_ headers: HTTPHeaders) -> String? {
        for field in headers.values("cookie") {
            for pair in field.split(separator: ";") {
                let kv = pair.split(separator: "=", maxSplits: 1)
                if kv.count == 2, kv[0].trimmingCharacters(in: .whitespaces) == cookieName {
                    return kv[1].trimmingCharacters(in: .whitespaces)
                }
            }
        }
        return nil
    }

    func session(_ headers: HTTPHeaders) -> Session? {
        guard dashboard, let cookie = Self.sessionID(headers) else { return nil }
        return session(cookie: cookie, nowSeconds: Int64(Date().timeIntervalSince1970))
    }

    func session(cookie: String, nowSeconds: Int64) -> Session? {
        let parts = cookie.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 5, parts[0] == "v1", let role = Role(rawValue: String(parts[1])),
              let expires = Int64(parts[2]), expires > nowSeconds
        else { return nil }
        let payload = parts[0...3].joined(separator: ".")
        guard Self.equal(Array(parts[4].utf8), Array(hmac("session:" + payload).utf8)) else { return nil }
        if revoked.withLock({ $0[cookie] != nil }) { return nil }
        return Session(role: role, csrf: csrf(forCookie: cookie), expires: expires)
    }

    static func randomToken() -> String {
        var bytes = [UInt8](repeating: 0, count: 24)
        if RAND_bytes(&bytes, Int32(bytes.count)) != 1 {
            var g = SystemRandomNumberGenerator()
            for i in bytes.indices { bytes[i] = UInt8.random(in: 0...255, using: &g) }
        }
        return bytes.map { String($0, radix: 16).leftPadded(to: 2) }.joined()
    }

    /// What to do with one request on the TCP address: answer it here (`.respond`), or hand it to
    /// the router.
    enum Decision {
        case respond(AdminResponse)
        case route
    }

    func decide(method: String, target: String, headers: HTTPHeaders, body: [UInt8]) -> Decision {
        let path = target.split(separator: "?", maxSplits: 1).first.map(String.init) ?? target
        let reading = method == "GET" || method == "HEAD"
        // GET /healthz answers without the token: load balancers and Kubernetes probes ask it,
        // and it tells only "serving" or "draining".
        if reading && target == "/healthz" { return .route }
        if dashboard && reading, let asset = DashboardAssets.asset(path) { return .respond(asset) }
        if dashboard && path == "/v1/session" { return .respond(sessionCall(method: method, headers: headers, body: body)) }
        let role: Role
        if let r = bearerRole(headers) {
            role = r
        } else if let s = session(headers) {
            if !reading {
                let presented = headers.first("x-csrf-token").map { Array($0.utf8) } ?? []
                guard Self.equal(presented, Array(s.csrf.utf8)) else {
                    return .respond(.error(AdminError(403, "csrf_required", "a change made with a session cookie must carry the session's X-CSRF-Token header")))
                }
            }
            role = s.role
        } else {
            var r = AdminResponse.error(AdminError(401, "unauthorized", "send Authorization: Bearer <token> (the token in admin.token_file)\(dashboard ? ", or log in to the dashboard" : "")"))
            r.headers.append(("WWW-Authenticate", "Bearer"))
            return .respond(r)
        }
        if role == .readOnly && !reading {
            return .respond(.error(AdminError(403, "read_only", "this token (or session) may read the state but not change it")))
        }
        return .route
    }

    /// `POST /v1/session {"token"}` logs in (sets the cookie), `GET` tells the page its role and
    /// CSRF token, `DELETE` logs out.
    func sessionCall(method: String, headers: HTTPHeaders, body: [UInt8]) -> AdminResponse {
        switch method {
        case "POST":
            let presented: String
            do {
                let obj = try AdminJSON.object(body, allowed: ["token"])
                presented = try AdminJSON.string(obj, "token", required: true)!
            } catch {
                return .error(error)
            }
            guard let role = role(forToken: Array(presented.trimmingCharacters(in: .whitespacesAndNewlines).utf8)) else {
                return .error(AdminError(401, "unauthorized", "that is not the admin token or the read-only token"))
            }
            let now = Int64(Date().timeIntervalSince1970)
            let value = newCookie(role: role, nowSeconds: now)
            let session = Session(role: role, csrf: csrf(forCookie: value), expires: now + Self.sessionLifetimeSeconds)
            let cookie = "\(Self.cookieName)=\(value); Path=/; HttpOnly; SameSite=Strict; Max-Age=\(Self.sessionLifetimeSeconds)"
            return AdminResponse(status: 200, body: Self.sessionJSON(session), headers: [("Set-Cookie", cookie)])
        case "GET", "HEAD":
            // Without a session the page asks this first: `role: null` (not a 401, which a
            // browser logs as an error) tells it to show the login form.
            guard let s = session(headers) else { return AdminResponse(status: 200, body: "{\"role\":null,\"csrf\":null}") }
            return AdminResponse(status: 200, body: Self.sessionJSON(s))
        case "DELETE":
            guard let s = session(headers), let id = Self.sessionID(headers) else {
                return .error(AdminError(401, "unauthorized", "no session"))
            }
            guard Self.equal(headers.first("x-csrf-token").map { Array($0.utf8) } ?? [], Array(s.csrf.utf8)) else {
                return .error(AdminError(403, "csrf_required", "logging out needs the session's X-CSRF-Token header"))
            }
            let now = Int64(Date().timeIntervalSince1970)
            revoked.withLock { r in
                r = r.filter { $0.value > now }
                r[id] = s.expires
            }
            return AdminResponse(status: 200, body: "{\"logged_out\":true}",
                                 headers: [("Set-Cookie", "\(Self.cookieName)=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")])
        default:
            var r = AdminResponse.error(AdminError(405, "method_not_allowed", "/v1/session accepts GET, POST, DELETE, not \(method)"))
            r.headers.append(("Allow", "GET, POST, DELETE"))
            return r
        }
    }

    static func sessionJSON(_ s: Session) -> String {
        "{\"role\":\"\(s.role.rawValue)\",\"csrf\":\(JSONWriter.quote(s.csrf))}"
    }
}
