/// Where one request goes and what goes upstream: the one route-to-plan entry point of both
/// client protocols (an HTTP/1.1 request and an HTTP/2 stream take the same path). It routes on
/// the routing snapshot (SPEC "Routing semantics": sticky cohort from cookie or header, a new
/// client gets a cohort cookie; preview pinning; weighted split; failover), picks the endpoint and
/// writes the request head the upstream gets.
public enum RequestPlan {
    /// Forward to an endpoint.
    case forward(Forward)
    /// No pool has a healthy endpoint: answer 503. The head comes back for the log line.
    case unavailable(poolName: String, head: HTTPRequestHead)

    public struct Forward {
        public let poolName: String
        /// The pool's index in the routing table the plan was made on.
        public let poolIndex: Int
        public let endpoint: UpstreamEndpoint
        public let reason: RouteDecision.Reason
        /// The cohort cookie to give a new client.
        public let setCookie: String?
        /// What goes upstream, to be written in the upstream's protocol.
        public let upstream: UpstreamRequest
        /// The request asks for a protocol switch (a 101 opens a tunnel).
        public let upgrade: Bool

        @usableFromInline
        init(poolName: String, poolIndex: Int, endpoint: UpstreamEndpoint, reason: RouteDecision.Reason, setCookie: String?,
             upstream: UpstreamRequest, upgrade: Bool) {
            self.poolName = poolName
            self.poolIndex = poolIndex
            self.endpoint = endpoint
            self.reason = reason
            self.setCookie = setCookie
            self.upstream = upstream
            self.upgrade = upgrade
        }
    }

    /// `upgrade`: the protocol the request switches to (HTTP/1.1 `Upgrade`, or `websocket` for an
    /// HTTP/2 extended CONNECT), nil for none. The head is taken (`consuming`): it moves into the
    /// plan's `upstream` (or comes back with `unavailable`). Inlined into its two callers: called,
    /// the head was copied into the argument and the original destroyed, a retain and a release
    /// for each of its parts; inlined, one such copy of the header storage is left (2 retains and
    /// 2 releases per request, `Benchmarks/h2up_counts.py --by-type`).
    @inlinable @inline(__always)
    public static func make(_ head: consuming HTTPRequestHead, table: RoutingTable, clientIP: String, scheme: String,
                            upgrade: String?) -> RequestPlan {
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
        guard let endpoint = decision.endpoint else { return .unavailable(poolName: poolName, head: head) }
        let clientID = RequestID.client(head.headers)
        let upstream = UpstreamRequest(head: head, clientIP: clientIP, scheme: scheme, fallbackHost: endpoint.description,
                                       upgrade: upgrade, clientID: clientID)
        return .forward(Forward(poolName: poolName, poolIndex: decision.pool, endpoint: endpoint, reason: decision.reason, setCookie: newCookie,
                                upstream: upstream, upgrade: upgrade != nil))
    }

    @usableFromInline
    static func randomCohortKey() -> String {
        var g = SystemRandomNumberGenerator()
        let hex = String(g.next() as UInt64, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }
}
