import Foundation
import Testing
import TurnoutCore
@testable import TurnoutServer

/// The TCP admin address's access rules: tokens, signed session cookies, CSRF, the read-only role.
@Suite struct AdminAccessTests {
    let access = AdminAccess(token: "admin-token-0123456789", readOnlyToken: "viewer-token-0123456789", dashboard: true)

    func decide(_ method: String, _ path: String, _ fields: [HTTPField]) -> (status: Int?, code: String?) {
        switch access.decide(method: method, target: path, headers: HTTPHeaders(fields), body: []) {
        case .route: return (nil, nil)
        case .respond(let r):
            let code = r.body.split(separator: "\"").drop { $0 != "code" }.dropFirst(2).first.map(String.init)
            return (r.status, code)
        }
    }

    @Test func aSignedCookieHoldsItsRoleUntilItExpiresAndCannotBeForged() {
        let cookie = access.newCookie(role: .readOnly, nowSeconds: 1000)
        let s = access.session(cookie: cookie, nowSeconds: 1001)
        #expect(s?.role == .readOnly && s?.csrf == access.csrf(forCookie: cookie))
        #expect(access.session(cookie: cookie, nowSeconds: 1000 + AdminAccess.sessionLifetimeSeconds) == nil)
        #expect(access.session(cookie: cookie.replacingOccurrences(of: "read_only", with: "admin"), nowSeconds: 1001) == nil)
        let parts = cookie.split(separator: ".")
        let later = "\(parts[0]).\(parts[1]).\(Int64(parts[2])! + 999).\(parts[3]).\(parts[4])"
        #expect(access.session(cookie: later, nowSeconds: 1001) == nil)
        // Another set of tokens (a changed token) does not accept it.
        let other = AdminAccess(token: "another-token-0123456789", readOnlyToken: "viewer-token-0123456789", dashboard: true)
        #expect(other.session(cookie: cookie, nowSeconds: 1001) == nil)
    }

    @Test func changesNeedTheCSRFTokenAndTheAdminRole() {
        let now = Int64(Date.now.timeIntervalSince1970)
        let admin = access.newCookie(role: .admin, nowSeconds: now)
        let viewer = access.newCookie(role: .readOnly, nowSeconds: now)
        #expect(decide("GET", "/v1/state", []).status == 401)
        #expect(decide("GET", "/", []).status == 200)
        #expect(decide("GET", "/healthz", []).status == nil)
        #expect(decide("GET", "/v1/state", [HTTPField("Cookie", "a=b; turnout_session=\(admin)")]).status == nil)
        #expect(decide("POST", "/v1/switch", [HTTPField("Cookie", "turnout_session=\(admin)")]) == (403, "csrf_required"))
        #expect(decide("POST", "/v1/switch", [HTTPField("Cookie", "turnout_session=\(admin)"),
                                               HTTPField("X-CSRF-Token", access.csrf(forCookie: viewer))]) == (403, "csrf_required"))
        #expect(decide("POST", "/v1/switch", [HTTPField("Cookie", "turnout_session=\(admin)"),
                                               HTTPField("X-CSRF-Token", access.csrf(forCookie: admin))]).status == nil)
        #expect(decide("POST", "/v1/switch", [HTTPField("Cookie", "turnout_session=\(viewer)"),
                                               HTTPField("X-CSRF-Token", access.csrf(forCookie: viewer))]) == (403, "read_only"))
        #expect(decide("POST", "/v1/switch", [HTTPField("Authorization", "Bearer viewer-token-0123456789")]) == (403, "read_only"))
        #expect(decide("POST", "/v1/switch", [HTTPField("Authorization", "Bearer admin-token-0123456789")]).status == nil)
        #expect(decide("POST", "/v1/switch", [HTTPField("Authorization", "Bearer admin-token-012345678")]).status == 401)
        // Without the dashboard there are no sessions and no page.
        let plain = AdminAccess(token: "admin-token-0123456789", readOnlyToken: nil, dashboard: false)
        if case .respond(let r) = plain.decide(method: "GET", target: "/", headers: HTTPHeaders(), body: []) { #expect(r.status == 401) }
        if case .respond(let r) = plain.decide(method: "GET", target: "/v1/state", headers: HTTPHeaders([HTTPField("Cookie", "turnout_session=\(admin)")]), body: []) {
            #expect(r.status == 401)
        }
    }
}
