#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Logging
import TurnoutCore

/// A listening socket. Accepts on its own queue and hands each connection to the next event loop,
/// which owns it from then on. Accepting pauses while `limits.max_client_connections` are open.
final class Listener: @unchecked Sendable {
    let fd: Int32
    let address: SocketAddress
    /// The config entry this listener was made from (a reload matches listeners by address).
    let config: ListenerConfig
    private let queue: DispatchQueue
    private var source: DispatchSourceRead?
    private var suspended = false
    private var closed = false
    private let group: EventLoopGroup
    private let context: ProxyContext
    private let pools: [UpstreamPool]
    private let stats: [LoopStats]
    private let registry: ConnectionRegistry
    /// The listener's TLS configuration (nil: plain HTTP); certificates can be swapped at run time.
    let tls: TLSCertificates?

    init(config: ListenerConfig, group: EventLoopGroup, context: ProxyContext, pools: [UpstreamPool],
         stats: [LoopStats], registry: ConnectionRegistry) throws {
        self.config = config
        let addresses = try SocketAddress.resolve(config.address.host, port: config.address.port)
        self.fd = try Sockets.listen(on: addresses[0])
        self.address = Sockets.localAddress(fd) ?? addresses[0]
        self.queue = DispatchQueue(label: "turnout.accept.\(address)")
        self.group = group
        self.context = context
        self.pools = pools
        self.stats = stats
        self.registry = registry
        self.tls = try config.tls.map { cfg throws(TLSError) in TLSCertificates(try TLSContext(cfg), config: cfg) }
    }

    /// Starts accepting connections.
    func start() {
        let s = DispatchSource.makeReadSource(fileDescriptor: fd, queue: queue)
        s.setEventHandler { [unowned self] in self.acceptBatch() }
        let fd = self.fd
        s.setCancelHandler { Glibc.close(fd) }
        source = s
        s.activate()
        let queue = self.queue
        registry.addWaiter { [weak self] in
            queue.async { [weak self] in self?.resumeIfRoom() }
        }
    }

    private func acceptBatch() {
        for _ in 0..<64 {
            if context.openClientConnections.load(ordering: .relaxed) >= context.config.limits.maxClientConnections {
                pause()
                return
            }
            let accepted: (fd: Int32, peer: SocketAddress?)?
            do {
                accepted = try Sockets.accept(fd)
            } catch {
                // EMFILE and friends: back off for a moment instead of spinning.
                context.logger.error("accept on \(address) failed: \(error)")
                pause()
                queue.asyncAfter(deadline: .now() + .milliseconds(100)) { [weak self] in self?.resumeIfRoom() }
                return
            }
            guard let accepted else { return }
            let client = accepted.fd
            Syscall.setOption(client, Int32(IPPROTO_TCP), TCP_NODELAY, 1)
            let peer = accepted.peer?.ipString ?? "unknown"
            context.openClientConnections.wrappingIncrement(ordering: .relaxed)
            let loop = group.nextLoop()
            let pool = pools[loop.index]
            let stats = self.stats[loop.index]
            let context = self.context
            let registry = self.registry
            let tls = self.tls
            loop.execute {
                let channel = SocketChannel(fd: client, loop: loop)
                let onClose: () -> Void = {
                    context.openClientConnections.wrappingDecrement(ordering: .relaxed)
                    registry.connectionClosed()
                }
                let env = ClientEnvironment(loop: loop, context: context, pool: pool, stats: stats, clientIP: peer,
                                            scheme: tls == nil ? "http" : "https", onClose: onClose)
                guard let tls else {
                    let conn = HTTP1Connection(transport: channel, env: env, acceptsPriorKnowledgeH2: true)
                    conn.start()
                    if context.isDraining { conn.beginDrain() }
                    return
                }
                let transport = TLSTransport(channel: channel, loop: loop, tls: tls.current,
                                             handshakeTimeoutMs: context.config.timeouts.clientHeaderMs,
                                             onHandshake: { transport, alpn in
                    let session: ClientSession
                    if alpn == "h2" {
                        let h2 = HTTP2Connection(transport: transport, env: env)
                        h2.start(initial: [], transportStarted: true)
                        session = h2
                    } else {
                        let h1 = HTTP1Connection(transport: transport, env: env, acceptsPriorKnowledgeH2: false)
                        h1.start()
                        session = h1
                    }
                    if context.isDraining { session.beginDrain() }
                }, onFailure: { reason in
                    context.logger.debug("TLS handshake with \(peer) failed: \(reason)")
                    onClose()
                })
                transport.beginHandshake()
            }
        }
    }

    private func pause() {
        guard !suspended, let s = source else { return }
        suspended = true
        s.suspend()
    }

    private func resumeIfRoom() {
        guard suspended, !closed, let s = source else { return }
        if context.openClientConnections.load(ordering: .relaxed) < context.config.limits.maxClientConnections {
            suspended = false
            s.resume()
        }
    }

    /// Stops accepting and closes the socket.
    func close() {
        queue.sync {
            guard !closed, let s = source else { return }
            closed = true
            if suspended { s.resume() }
            s.cancel()
            source = nil
        }
    }
}

/// Tells listeners when a connection closed, so a paused accept can resume.
final class ConnectionRegistry: @unchecked Sendable {
    private var waiters: [@Sendable () -> Void] = []
    /// Called at start-up, before any connection exists.
    func addWaiter(_ w: @escaping @Sendable () -> Void) { waiters.append(w) }
    func connectionClosed() { for w in waiters { w() } }
}
