import TurnoutCore

/// Routes one request on the current routing snapshot (SPEC "Routing semantics"), the same way for
/// HTTP/1.1 connections and HTTP/2 streams: sticky cohort from cookie or header (a new client gets
/// a cohort cookie), preview pinning, weighted split, failover.
enum RequestRouter {
    enum Outcome {
        /// Forward to this endpoint.
        case forward(poolName: String, endpoint: UpstreamEndpoint, reason: RouteDecision.Reason, setCookie: String?)
        /// No pool has a healthy endpoint: answer 503.
        case unavailable(poolName: String)
    }

    static func route(_ head: HTTPRequestHead, table: RoutingTable) -> Outcome {
        var stickyKey: String?
        var newCookie: String?
        switch table.sticky {
        case .cookie(let name):
            if let v = HeaderRewriter.cookie(name, in: head.headers) {
                stickyKey = v
            } else {
                let key = randomCohortKey()
                stickyKey = key
                newCookie = "\(name)=\(key); Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax"
            }
        case .header(let name):
            if let v = head.headers.first(name), !v.isEmpty { stickyKey = v }
        case nil:
            break
        }
        let preview = table.previewHeader.flatMap { head.headers.first($0) }
        let decision = table.route(stickyKey: stickyKey, previewPool: preview)
        let poolName = table.pools[decision.pool].name
        guard let endpoint = decision.endpoint else { return .unavailable(poolName: poolName) }
        return .forward(poolName: poolName, endpoint: endpoint, reason: decision.reason, setCookie: newCookie)
    }

    static func randomCohortKey() -> String {
        var g = SystemRandomNumberGenerator()
        let a = g.next() as UInt64
        return String(a, radix: 16).leftPadded(to: 16)
    }

    /// Counts and logs an answer Turnout gave without reaching an upstream (a 503).
    static func recordUnforwarded(_ head: HTTPRequestHead, status: Int, pool: String, bytes: Int, clientIP: String,
                                  context: ProxyContext, stats: LoopStats) {
        stats.record(endpoint: nil, pool: pool, status: status, startedAt: EventLoop.now(), proxyGenerated: status >= 500)
        if let access = context.accessLogger {
            let record = AccessRecord(clientIP: clientIP,
                                      kind: .request(method: head.method, target: head.target, version: head.version.text,
                                                     status: status, bytes: Int64(bytes)),
                                      pool: pool, endpoint: nil, durationNanos: 0)
            access.info("\(record.text)")
        }
    }
}

extension String {
    func leftPadded(to n: Int) -> String {
        count >= n ? self : String(repeating: "0", count: n - count) + self
    }
}
