import TurnoutCore

/// Why an upstream connection was closed (the `reason` label of
/// `turnout_upstream_connections_closed_total`).
enum UpstreamCloseReason: Int, CaseIterable, Sendable {
    /// Unused for `timeouts.upstream_idle`.
    case idleTimeout
    /// Given back while the endpoint already had `max_idle_connections` idle ones.
    case idleLimit
    /// The upstream closed it or reset it, or sent something while idle.
    case upstreamClosed
    /// The exchange that held it could not give it back (the upstream asked to close, the
    /// response was cut or timed out, the client went away mid-response, a tunnel ended).
    case notReusable
    /// Its endpoint stopped passing health checks.
    case unhealthy
    /// Turnout is draining or stopping.
    case shutdown

    var label: String {
        switch self {
        case .idleTimeout: "idle_timeout"
        case .idleLimit: "idle_limit"
        case .upstreamClosed: "upstream_closed"
        case .notReusable: "not_reusable"
        case .unhealthy: "unhealthy"
        case .shutdown: "shutdown"
        }
    }
}

/// Upstream connections opened, reused and closed for one endpoint on one loop (or summed).
struct UpstreamChurn: Sendable, Equatable {
    var opened: UInt64 = 0
    /// Requests sent on a connection taken from the idle set.
    var reused: UInt64 = 0
    /// Closed connections, indexed by `UpstreamCloseReason.rawValue`.
    var closed = [UInt64](repeating: 0, count: UpstreamCloseReason.allCases.count)

    mutating func add(_ o: UpstreamChurn) {
        opened += o.opened
        reused += o.reused
        for i in closed.indices { closed[i] += o.closed[i] }
    }
}

/// Receives an upstream connection's events while it serves a request.
protocol UpstreamOwner: AnyObject, Sendable {
    func upstreamConnected(_ upstream: UpstreamConnection)
    func upstreamRead(_ upstream: UpstreamConnection, _ bytes: UnsafeRawBufferPointer)
    /// The upstream closed (error nil) or failed. The connection is already closed.
    func upstreamClosed(_ upstream: UpstreamConnection, error: SystemError?)
    func upstreamDrained(_ upstream: UpstreamConnection)
}

/// One TCP connection to an upstream endpoint. While it serves a request its owner is the client
/// connection; while idle it sits in its loop's `UpstreamPool`, which closes it if the upstream
/// closes it or sends anything unasked.
final class UpstreamConnection: ChannelDelegate, @unchecked Sendable {
    let endpoint: UpstreamEndpoint
    let channel: SocketChannel
    /// The pool, which owns the connection and outlives it (`unowned(unsafe)`: no reference count per use).
    unowned(unsafe) let pool: UpstreamPool
    /// Held strongly, not weakly: a weak reference would cost each exchange a side table, and
    /// every retain and release of it the slow path. The owner lets go (`owner = nil`) when it
    /// is done with the connection, and a closed connection lets go of its owner.
    var owner: UpstreamOwner?
    /// Requests this connection finished; > 0 means it came from the idle pool.
    var requestsServed = 0
    var idleDeadline: UInt64 = 0
    private(set) var isConnected: Bool

    init(endpoint: UpstreamEndpoint, channel: SocketChannel, pool: UpstreamPool, connected: Bool) {
        self.endpoint = endpoint
        self.channel = channel
        self.pool = pool
        self.isConnected = connected
    }

    var isClosed: Bool { channel.isClosed }

    /// Closes the connection (once; later calls do nothing). The reason is counted in
    /// `turnout_upstream_connections_closed_total`: by default the exchange that held it could not
    /// give it back (the upstream asked to close, the response was cut, a timeout, a tunnel ended).
    func close(_ reason: UpstreamCloseReason = .notReusable) {
        owner = nil
        guard !channel.isClosed else { return }
        channel.close()
        pool.connectionClosed(self, reason)
    }

    func channelConnected(_ channel: SocketChannel) {
        isConnected = true
        owner?.upstreamConnected(self)
    }

    func channelRead(_ channel: SocketChannel, _ bytes: UnsafeRawBufferPointer) {
        if let owner {
            owner.upstreamRead(self, bytes)
        } else {
            // Idle connections must stay silent; anything else makes the connection unusable.
            pool.idleConnectionLost(self)
        }
    }

    func channelEOF(_ channel: SocketChannel) {
        let o = owner
        close(.upstreamClosed)
        if let o { o.upstreamClosed(self, error: nil) } else { pool.idleConnectionLost(self) }
    }

    func channelError(_ channel: SocketChannel, _ error: SystemError) {
        let o = owner
        owner = nil
        pool.connectionClosed(self, .upstreamClosed)
        if let o { o.upstreamClosed(self, error: error) } else { pool.idleConnectionLost(self) }
    }

    func channelClosed(_ channel: SocketChannel) {
        owner = nil
    }

    func channelDrained(_ channel: SocketChannel) {
        owner?.upstreamDrained(self)
    }
}
