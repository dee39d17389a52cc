import TurnoutCore

/// The idle keep-alive connections of one event loop, per endpoint. The idle set follows demand:
/// a connection is given back after every clean exchange and taken again most-recently-used
/// first, so the connections that the busiest recent moment needed stay while those at the bottom
/// of the stack, unused for `timeouts.upstream_idle`, are closed. Uncapped by default (like
/// HAProxy's `pool-max-conn` and nghttpx's backend connections); a pool's `max_idle_connections`
/// caps it. Emptied for endpoints that are no longer healthy. Loop-confined: no locks.
final class UpstreamPool: @unchecked Sendable {
    /// The loop that owns the pool (`unowned(unsafe)`: not counted when stored; each use still is).
    unowned(unsafe) let loop: EventLoop
    /// The same loop, for holders that read it per request (an exchange) without any count.
    let loopRef: Unretained<EventLoop>
    let context: ProxyContext
    /// The loop's cached copy of the settings and routing table, read per request.
    let view: LoopView
    /// The same, held without a reference count: kept by whoever reads the view per request (a
    /// client connection, an exchange), whose `viewRef.with` then costs no count at all.
    let viewRef: Unretained<LoopView>
    /// Idle connections per endpoint id. A list is a class so that it is changed in place: a
    /// dictionary value modified through the dictionary costs an allocation each time.
    private final class IdleList {
        var connections: [UpstreamConnection] = []
    }
    /// Indexed by endpoint id (small and dense), so that taking and giving back a connection
    /// does not hash.
    private var idle: [IdleList?] = []
    private var connectRotation: [Int: Int] = [:]
    /// Per endpoint id: open and idle connections, and how many were opened, reused and closed,
    /// published for `/metrics` to read without entering the loop.
    private let counters = EndpointCounterTable(slots: Slot.count)
    enum Slot {
        static let open = 0
        static let idle = 1
        static let opened = 2
        static let reused = 3
        /// Closed connections, from here on by `UpstreamCloseReason.rawValue`.
        static let closed = 4
        static let count = closed + UpstreamCloseReason.allCases.count
    }

    init(loop: EventLoop, context: ProxyContext) {
        self.loop = loop
        self.loopRef = Unretained(loop)
        self.context = context
        let view = LoopView(context: context)
        self.view = view
        self.viewRef = Unretained(view)
    }

    /// The most recently used idle connection to the endpoint, if any.
    func acquire(_ endpoint: UpstreamEndpoint) -> UpstreamConnection? {
        // Popped in place: a copy of the list taken out of the dictionary would be copied again.
        guard endpoint.id < idle.count, let list = idle[endpoint.id] else { return nil }
        defer { counters.withBlock(endpoint.id) { $0.set(Slot.idle, UInt64(list.connections.count)) } }
        while let c = list.connections.popLast() {
            if !c.isClosed {
                counters.withBlock(endpoint.id) { $0.add(Slot.reused) }
                return c
            }
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
        counters.withBlock(endpoint.id) { block in
            block.add(Slot.open)
            block.add(Slot.opened)
        }
        return conn
    }

    // MARK: HTTP/2 upstreams

    /// HTTP/2 connections per endpoint id (pools with `protocol: h2c`).
    /// HTTP/2 connections by endpoint id (ids are small and dense: an array, read per request
    /// without hashing).
    private var h2Sessions: [[H2UpstreamSession]] = []
    private var h2SessionCount = 0

    /// A stream for a request to an HTTP/2 endpoint: on a connection with room (the fullest, so
    /// that few connections carry the load), on a new one while the endpoint has fewer than
    /// `max_connections`, else queued on the least busy (nghttp2 holds it until a stream ends).
    func h2Stream(_ endpoint: UpstreamEndpoint, owner: H2StreamOwner) throws(SystemError) -> H2UpstreamStream {
        let caps = view.settings.h2Caps(ofEndpoint: endpoint.id)
        let sessions = endpoint.id < h2Sessions.count ? h2Sessions[endpoint.id] : []
        var best: H2UpstreamSession?
        for s in sessions where s.hasRoom(cap: caps.streams) {
            if best == nil || s.active > best!.active { best = s }
        }
        if let best {
            if best.isOpen { counters.withBlock(endpoint.id) { $0.add(Slot.reused) } }
            return best.join(owner: owner)
        }
        let usable = sessions.filter { !$0.goingAway && !$0.closed }
        if usable.count >= caps.connections, let least = usable.min(by: { $0.active < $1.active }) {
            return least.join(owner: owner)
        }
        let addresses = context.addresses.addresses(endpoint.id)
        guard !addresses.isEmpty else { throw SystemError("resolve \(endpoint.address.host)", errno: EHOSTUNREACH_) }
        let k = connectRotation[endpoint.id, default: 0]
        connectRotation[endpoint.id] = k &+ 1
        let settings = view.settings
        var tlsContext: TLSClientContext?
        var tlsConfig = UpstreamTLSConfig()
        if settings.upstreamProtocol(ofEndpoint: endpoint.id) == .h2 {
            tlsConfig = settings.upstreamTLS(ofEndpoint: endpoint.id)
            do {
                tlsContext = try context.upstreamTLSContext(pool: endpoint.pool, config: tlsConfig)
            } catch {
                context.logger.error("\(error)")
                throw SystemError("TLS to \(endpoint.address): \(error)", errno: EPROTO)
            }
        }
        let (fd, inProgress) = try Sockets.connect(to: addresses[k % addresses.count])
        let channel = SocketChannel(fd: fd, loop: loop, connecting: inProgress)
        let session: H2UpstreamSession
        if let tlsContext {
            // HTTP/2 over TLS: the session takes over once the handshake chose h2.
            final class SessionRef { weak var session: H2UpstreamSession? }
            let ref = SessionRef()
            let tls = TLSTransport(clientChannel: channel, loop: loop, context: tlsContext, host: endpoint.address.host,
                                   serverName: tlsConfig.serverName, handshakeTimeoutMs: settings.config.timeouts.connectMs,
                                   onHandshake: { transport, alpn in
                                       guard let s = ref.session else { return transport.close() }
                                       guard alpn == "h2" else {
                                           transport.close()
                                           return s.handshakeFailed("the upstream did not choose h2 by ALPN (\(alpn.map { "it chose \($0)" } ?? "no ALPN answer"))")
                                       }
                                       transport.delegate = s
                                       s.transportReady()
                                   },
                                   onFailure: { reason in ref.session?.handshakeFailed(reason) })
            session = H2UpstreamSession(endpoint: endpoint, pool: self, transport: tls, scheme: "https", connected: false)
            ref.session = session
            tls.beginHandshake()
        } else {
            session = H2UpstreamSession(endpoint: endpoint, pool: self, transport: channel, scheme: "http", connected: !inProgress)
            channel.delegate = session
            channel.start()
        }
        if endpoint.id >= h2Sessions.count {
            h2Sessions.append(contentsOf: repeatElement([], count: endpoint.id + 1 - h2Sessions.count))
        }
        h2Sessions[endpoint.id].append(session)
        h2SessionCount += 1
        counters.withBlock(endpoint.id) { block in
            block.add(Slot.open)
            block.add(Slot.opened)
        }
        let stream = session.join(owner: owner)
        if session.isOpen { session.flush() }
        return stream
    }

    func h2SessionClosed(_ session: H2UpstreamSession, _ reason: UpstreamCloseReason) {
        let id = session.endpoint.id
        if id < h2Sessions.count, let i = h2Sessions[id].firstIndex(where: { $0 === session }) {
            h2Sessions[id].remove(at: i)
            h2SessionCount -= 1
        }
        counters.withBlock(id) { block in
            block.set(Slot.open, block.load(Slot.open) &- 1)
            block.add(Slot.closed + reason.rawValue)
        }
    }

    /// Closes HTTP/2 connections with no stream for `upstream_idle`, and idle ones to endpoints
    /// no longer healthy or while draining.
    private func h2Tick(now: UInt64) {
        guard h2SessionCount > 0 else { return }
        let idleNanos = UInt64(view.timeouts.upstreamIdleMs) * 1_000_000
        let connectNanos = UInt64(view.timeouts.connectMs) * 1_000_000
        let draining = context.isDraining
        for sessions in h2Sessions where !sessions.isEmpty {
            for s in sessions where !s.isOpen && !s.closed && now >= s.startedAt + connectNanos { s.connectTimedOut() }
            for s in sessions where s.isOpen && !s.closed { s.checkLiveness(now: now, answerNanos: connectNanos) }
            for s in sessions where s.active == 0 && !s.closed {
                if draining {
                    s.close(.shutdown)
                } else if !isHealthy(s.endpoint) {
                    s.close(.unhealthy)
                } else if s.idleSince != 0 && now >= s.idleSince + idleNanos {
                    s.close(.idleTimeout)
                }
            }
        }
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
        if conn.isClosed { return }
        if context.isDraining { return conn.close(.shutdown) }
        if !isHealthy(conn.endpoint) { return conn.close(.unhealthy) }
        if list.connections.count >= limit { return conn.close(.idleLimit) }
        conn.idleDeadline = loop.coarseNow + UInt64(settings.config.timeouts.upstreamIdleMs) * 1_000_000
        conn.channel.resumeReading()
        list.connections.append(conn)
        counters.withBlock(id) { $0.set(Slot.idle, UInt64(list.connections.count)) }
    }

    func connectionClosed(_ conn: UpstreamConnection, _ reason: UpstreamCloseReason) {
        counters.withBlock(conn.endpoint.id) { block in
            block.set(Slot.open, block.load(Slot.open) &- 1)
            block.add(Slot.closed + reason.rawValue)
        }
    }

    func idleConnectionLost(_ conn: UpstreamConnection) {
        conn.close(.upstreamClosed)
        guard conn.endpoint.id < idle.count, let list = idle[conn.endpoint.id] else { return }
        list.connections.removeAll { $0 === conn }
        counters.withBlock(conn.endpoint.id) { $0.set(Slot.idle, UInt64(list.connections.count)) }
    }

    var idleCount: Int { idle.reduce(0) { $0 + ($1?.connections.count ?? 0) } }

    /// Open and idle connections per endpoint id, and how many were opened, reused and closed;
    /// from any thread, without entering the loop.
    func connectionCounts() -> [Int: UpstreamConnectionCounts] {
        var out: [Int: UpstreamConnectionCounts] = [:]
        for (id, b) in counters.blocks() {
            var c = UpstreamConnectionCounts()
            c.open = Int(Int64(bitPattern: b.load(Slot.open)))
            c.idle = Int(b.load(Slot.idle))
            c.churn.opened = b.load(Slot.opened)
            c.churn.reused = b.load(Slot.reused)
            for r in UpstreamCloseReason.allCases { c.churn.closed[r.rawValue] = b.load(Slot.closed + r.rawValue) }
            if c.open != 0 || c.idle != 0 || c.churn != UpstreamChurn() { out[id] = c }
        }
        return out
    }

    private func isHealthy(_ endpoint: UpstreamEndpoint) -> Bool {
        view.table.isHealthy(endpointID: endpoint.id)
    }

    /// Closes expired idle connections and those to endpoints that are no longer healthy.
    func tick(now: UInt64) {
        h2Tick(now: now)
        for case let list? in idle where !list.connections.isEmpty {
            let id = list.connections[0].endpoint.id
            let healthy = list.connections.first.map { isHealthy($0.endpoint) } ?? true
            let draining = context.isDraining
            var keep: [UpstreamConnection] = []
            for c in list.connections {
                if c.isClosed { continue }
                if draining {
                    c.close(.shutdown)
                } else if !healthy {
                    c.close(.unhealthy)
                } else if now >= c.idleDeadline {
                    c.close(.idleTimeout)
                } else {
                    keep.append(c)
                }
            }
            list.connections = keep
            counters.withBlock(id) { $0.set(Slot.idle, UInt64(keep.count)) }
        }
    }

    func closeAllIdle() {
        for sessions in h2Sessions {
            for s in sessions where s.active == 0 { s.close(.shutdown) }
        }
        for case let list? in idle {
            for c in list.connections {
                c.close(.shutdown)
                counters.withBlock(c.endpoint.id) { $0.set(Slot.idle, 0) }
            }
        }
        idle = []
    }
}

/// One endpoint's upstream connections on one loop (or summed over the loops).
struct UpstreamConnectionCounts: Sendable {
    var open = 0
    var idle = 0
    var churn = UpstreamChurn()

    mutating func add(_ o: UpstreamConnectionCounts) {
        open += o.open
        idle += o.idle
        churn.add(o.churn)
    }
}

#if canImport(Glibc)
import Glibc
let EHOSTUNREACH_ = EHOSTUNREACH
#endif
