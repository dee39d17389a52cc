import TurnoutCore

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
    unowned let pool: UpstreamPool
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

    func close() {
        owner = nil
        guard !channel.isClosed else { return }
        channel.close()
        pool.connectionClosed(self)
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
        close()
        if let o { o.upstreamClosed(self, error: nil) } else { pool.idleConnectionLost(self) }
    }

    func channelError(_ channel: SocketChannel, _ error: SystemError) {
        let o = owner
        owner = nil
        pool.connectionClosed(self)
        if let o { o.upstreamClosed(self, error: error) } else { pool.idleConnectionLost(self) }
    }

    func channelClosed(_ channel: SocketChannel) {
        owner = nil
    }

    func channelDrained(_ channel: SocketChannel) {
        owner?.upstreamDrained(self)
    }
}
