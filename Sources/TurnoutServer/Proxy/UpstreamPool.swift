import TurnoutCore

/// The idle keep-alive connections of one event loop, per endpoint. Bounded by the pool's
/// `max_idle_connections`, closed after `timeouts.upstream_idle`, and emptied for endpoints that
/// are no longer healthy. Loop-confined: no locks.
final class UpstreamPool: @unchecked Sendable {
    unowned let loop: EventLoop
    let context: ProxyContext
    /// The loop's cached copy of the settings and routing table, read per request.
    let view: LoopView
    /// Idle connections per endpoint id. A list is a class so that it is changed in place: a
    /// dictionary value modified through the dictionary costs an allocation each time.
    private final class IdleList {
        var connections: [UpstreamConnection] = []
    }
    /// Indexed by endpoint id (small and dense), so that taking and giving back a connection
    /// does not hash.
    private var idle: [IdleList?] = []
    /// Open connections per endpoint id on this loop (idle and busy).
    private(set) var openCount: [Int: Int] = [:]
    private var connectRotation: [Int: Int] = [:]

    init(loop: EventLoop, context: ProxyContext) {
        self.loop = loop
        self.context = context
        self.view = LoopView(context: context)
    }

    /// The most recently used idle connection to the endpoint, if any.
    func acquire(_ endpoint: UpstreamEndpoint) -> UpstreamConnection? {
        // Popped in place: a copy of the list taken out of the dictionary would be copied again.
        guard endpoint.id < idle.count, let list = idle[endpoint.id] else { return nil }
        while let c = list.connections.popLast() {
            if !c.isClosed { return c }
        }
        return nil
    }

    /// Opens a new connection to the endpoint.
    func connect(_ endpoint: UpstreamEndpoint, owner: UpstreamOwner) throws(SystemError) -> UpstreamConnection {
        let addresses = context.addresses.addresses(endpoint.id)
        guard !addresses.isEmpty else { throw SystemError("resolve \(endpoint.address.host)", errno: EHOSTUNREACH_) }
        let k = connectRotation[endpoint.id, default: 0]
        connectRotation[endpoint.id] = k &+ 1
        let address = addresses[k % addresses.count]
        let (fd, inProgress) = try Sockets.connect(to: address)
        let channel = SocketChannel(fd: fd, loop: loop, connecting: inProgress)
        let conn = UpstreamConnection(endpoint: endpoint, channel: channel, pool: self, connected: !inProgress)
        conn.owner = owner
        channel.delegate = conn
        channel.start()
        openCount[endpoint.id, default: 0] += 1
        return conn
    }

    /// Takes back a connection whose exchange ended cleanly.
    func release(_ conn: UpstreamConnection) {
        conn.owner = nil
        conn.requestsServed += 1
        let settings = view.settings
        let limit = settings.maxIdleConnections(ofEndpoint: conn.endpoint.id)
        let id = conn.endpoint.id
        idle.grow(toInclude: id, with: nil)
        let list: IdleList
        if let l = idle[id] {
            list = l
        } else {
            list = IdleList()
            idle[id] = list
        }
        let count = list.connections.count
        guard !conn.isClosed, count < limit, isHealthy(conn.endpoint), !context.isDraining else {
            conn.close()
            return
        }
        conn.idleDeadline = loop.coarseNow + UInt64(settings.config.timeouts.upstreamIdleMs) * 1_000_000
        conn.channel.resumeReading()
        list.connections.append(conn)
    }

    func connectionClosed(_ conn: UpstreamConnection) {
        if let n = openCount[conn.endpoint.id] {
            openCount[conn.endpoint.id] = n > 1 ? n - 1 : nil
        }
    }

    func idleConnectionLost(_ conn: UpstreamConnection) {
        conn.close()
        guard conn.endpoint.id < idle.count else { return }
        idle[conn.endpoint.id]?.connections.removeAll { $0 === conn }
    }

    var idleCount: Int { idle.reduce(0) { $0 + ($1?.connections.count ?? 0) } }

    /// Open and idle connections per endpoint id, taken on the loop.
    func connectionCounts() -> [Int: (open: Int, idle: Int)] {
        loop.queue.sync {
            var out: [Int: (open: Int, idle: Int)] = [:]
            for (id, n) in openCount { out[id, default: (0, 0)].open = n }
            for (id, list) in idle.enumerated() {
                guard let list, !list.connections.isEmpty else { continue }
                out[id, default: (0, 0)].idle = list.connections.filter { !$0.isClosed }.count
            }
            return out
        }
    }

    private func isHealthy(_ endpoint: UpstreamEndpoint) -> Bool {
        view.table.isHealthy(endpointID: endpoint.id)
    }

    /// Closes expired idle connections and those to endpoints that are no longer healthy.
    func tick(now: UInt64) {
        for case let list? in idle where !list.connections.isEmpty {
            let healthy = list.connections.first.map { isHealthy($0.endpoint) } ?? true
            var keep: [UpstreamConnection] = []
            for c in list.connections {
                if c.isClosed { continue }
                if !healthy || now >= c.idleDeadline || context.isDraining { c.close() } else { keep.append(c) }
            }
            list.connections = keep
        }
    }

    func closeAllIdle() {
        for case let list? in idle { for c in list.connections { c.close() } }
        idle = []
    }
}

#if canImport(Glibc)
import Glibc
let EHOSTUNREACH_ = EHOSTUNREACH
#endif
