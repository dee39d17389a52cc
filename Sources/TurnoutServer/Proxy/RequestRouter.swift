import TurnoutCore

/// What both client protocols do with a request's plan (`RequestPlan`, in TurnoutCore): start the
/// exchange it names, or count and log the answer given without an upstream.
enum RequestRouter {
    /// The exchange of a planned request; `sink` is the client connection or stream. The caller
    /// holds it as its exchange, then calls `start` (which may call the sink back at once).
    /// `table` is the routing table the plan was made on; its mirror decides whether the request
    /// is also copied to the mirror pool.
    static func exchange(_ plan: RequestPlan.Forward, table: RoutingTable, env: ClientEnvironment,
                         sink: ExchangeSink) -> UpstreamExchange {
        let ex = UpstreamExchange(upstream: plan.upstream, poolName: plan.poolName, endpoint: plan.endpoint,
                                  reason: plan.reason, setCookie: plan.setCookie, clientIP: env.clientIP,
                                  context: env.context, pool: env.pool, stats: env.stats, sink: sink, upgrade: plan.upgrade)
        if table.mirror != nil, let tee = env.mirrors.tee(for: plan.upstream.head, plan: plan, table: table, clientIP: env.clientIP) {
            ex.mirror(tee, runner: env.mirrors)
        }
        return ex
    }

    /// Counts and logs an answer Turnout gave without reaching an upstream (a 503).
    static func recordUnforwarded(_ head: HTTPRequestHead, status: Int, pool: String, bytes: Int, clientIP: String,
                                  context: ProxyContext, stats: LoopStats) {
        stats.record(endpoint: nil, pool: pool, status: status, startedAt: EventLoop.now(), proxyGenerated: status >= 500)
        if let access = context.accessLog {
            // Never forwarded: the client's id if it sent one, else one made for the log line.
            access.write(AccessRecord(clientIP: clientIP,
                                      kind: .request(method: head.method, target: head.target, version: head.version.text,
                                                     status: status, bytes: Int64(bytes)),
                                      pool: pool, endpoint: nil, durationNanos: 0, requestID: RequestID.of(head.headers).id))
        }
    }
}

extension String {
    func leftPadded(to n: Int) -> String {
        count >= n ? self : String(repeating: "0", count: n - count) + self
    }
}
