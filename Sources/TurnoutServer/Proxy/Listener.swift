#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Foundation
import Logging
import Synchronization
import TurnoutCore

/// A listening socket. Accepting pauses while `limits.max_client_connections` are open.
///
/// With `io: epoll` one event loop's poller watches the socket (edge-triggered; listeners are
/// spread over the loops), and that loop accepts. With `io: dispatch` the listener accepts on its
/// own queue. Either way connections are dealt to the loops round-robin; one dealt to the loop
/// that accepted it is set up there and then, without a hand-over between threads.
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
    private let mirrors: [MirrorRunner]
    private let registry: ConnectionRegistry
    /// The listener's TLS configuration (nil: plain HTTP); certificates can be swapped at run time.
    let tls: TLSCertificates?
    /// `io: epoll`: the registration with the accepting loop's poller, and the accept state that
    /// loop and the ones closing connections share.
    private var watch: ListenerWatch?
    private let lock = NSLock()
    private var accepting = false
    private var pausedAtLimit = false
    /// Signalled when the cancel handler closed the socket (`io: dispatch`).
    private let closedFD = DispatchSemaphore(value: 0)

    init(config: ListenerConfig, group: EventLoopGroup, context: ProxyContext, pools: [UpstreamPool],
         stats: [LoopStats], mirrors: [MirrorRunner], registry: ConnectionRegistry) throws {
        self.config = config
        let addresses = try SocketAddress.resolve(config.address.host, port: config.address.port)
        self.fd = try Sockets.listen(on: addresses[0])
        self.address = Sockets.localAddress(fd) ?? addresses[0]
        self.queue = DispatchQueue(label: "turnout.accept.\(address)")
        self.group = group
        self.context = context
        self.pools = pools
        self.mirrors = mirrors
        self.stats = stats
        self.registry = registry
        do {
            self.tls = try config.tls.map { cfg throws(TLSError) in TLSCertificates(try TLSContext(cfg), config: cfg) }
            if group.loops.first?.poller != nil {
                // Listeners take turns over the loops, so several do not all accept on loop 0.
                let loop = group.nextLoop()
                let watch = ListenerWatch(fd: fd, loop: loop, listener: self)
                let result = loop.queue.sync { Result { () throws(SystemError) in try loop.poller?.add(watch, listening: true) } }
                try result.get()
                self.watch = watch
            }
        } catch {
            Glibc.close(fd)
            throw error
        }
    }

    /// Starts accepting connections.
    func start() {
        if let loop = watch?.loop {
            lock.withLock { accepting = true }
            registry.addWaiter(self) { [weak self] in self?.resumeIfRoomOnLoop() }
            // Connections that arrived since the socket was bound raised their edge already.
            loop.execute { [weak self] in self?.accept(on: loop) }
            return
        }
        let s = DispatchSource.makeReadSource(fileDescriptor: fd, queue: queue)
        s.setEventHandler { [unowned self] in self.acceptBatch() }
        let fd = self.fd
        let closedFD = self.closedFD
        s.setCancelHandler {
            Glibc.close(fd)
            closedFD.signal()
        }
        source = s
        s.activate()
        let queue = self.queue
        registry.addWaiter(self) { [weak self] in
            queue.async { [weak self] in self?.resumeIfRoom() }
        }
    }

    private var atConnectionLimit: Bool {
        context.openClientConnections.load(ordering: .relaxed) >= context.maxClientConnections
    }

    /// Accepts one connection, or tells why not: nil when none is waiting, an error after logging
    /// it (EMFILE and friends).
    private func acceptOne() -> Result<(fd: Int32, peer: String)?, SystemError> {
        do {
            guard let accepted = try Sockets.accept(fd) else { return .success(nil) }
            Syscall.setOption(accepted.fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1)
            context.openClientConnections.wrappingIncrement(ordering: .relaxed)
            return .success((accepted.fd, accepted.peer?.ipString ?? "unknown"))
        } catch {
            context.logger.error("accept on \(address) failed: \(error)")
            return .failure(error)
        }
    }

    // MARK: io: epoll

    /// Accepts on `loop` until none is waiting, within a budget.
    fileprivate func accept(on loop: EventLoop) {
        for _ in 0..<64 {
            let stop: Bool = lock.withLock {
                guard accepting else { return true }
                if atConnectionLimit {
                    pausedAtLimit = true
                    return true
                }
                return false
            }
            if stop { return }
            switch acceptOne() {
            case .success(nil):
                return
            case .success(let accepted?):
                deal(accepted, from: loop)
            case .failure:
                // Back off for a moment instead of spinning; the edge is spent, so look again then.
                loop.queue.asyncAfter(deadline: .now() + .milliseconds(100)) { [weak self] in self?.accept(on: loop) }
                return
            }
        }
        // More may be waiting, and their edge is spent: go on after the loop's other work.
        loop.execute { [weak self] in self?.accept(on: loop) }
    }

    /// Called whenever a client connection closes, on any loop: cheap unless accepting paused.
    private func resumeIfRoomOnLoop() {
        let resume: Bool = lock.withLock {
            guard pausedAtLimit, accepting, !atConnectionLimit else { return false }
            pausedAtLimit = false
            return true
        }
        guard resume, let loop = watch?.loop else { return }
        loop.execute { [weak self] in self?.accept(on: loop) }
    }

    // MARK: io: dispatch

    private func acceptBatch() {
        for _ in 0..<64 {
            if atConnectionLimit {
                pause()
                return
            }
            switch acceptOne() {
            case .success(nil):
                return
            case .success(let accepted?):
                deal(accepted, from: nil)
            case .failure:
                pause()
                queue.asyncAfter(deadline: .now() + .milliseconds(100)) { [weak self] in self?.resumeIfRoom() }
                return
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
        if !atConnectionLimit {
            suspended = false
            s.resume()
        }
    }

    // MARK: serving

    /// Gives an accepted connection to the next loop: set up at once when that is the accepting
    /// loop (`from`), else on that loop's queue.
    private func deal(_ accepted: (fd: Int32, peer: String), from current: EventLoop?) {
        let loop = group.nextLoop()
        if loop === current {
            serve(accepted.fd, peer: accepted.peer, on: loop)
        } else {
            loop.execute { [self] in serve(accepted.fd, peer: accepted.peer, on: loop) }
        }
    }

    /// Sets up an accepted connection on the loop that will own it. Runs on that loop.
    private func serve(_ client: Int32, peer: String, on loop: EventLoop) {
        let pool = pools[loop.index]
        let stats = self.stats[loop.index]
        let context = self.context
        let registry = self.registry
        let channel = SocketChannel(fd: client, loop: loop)
        let onClose: () -> Void = {
            context.openClientConnections.wrappingDecrement(ordering: .relaxed)
            registry.connectionClosed()
        }
        let env = ClientEnvironment(loop: loop, context: context, pool: pool, stats: stats, mirrors: mirrors[loop.index], clientIP: peer,
                                    scheme: tls == nil ? "http" : "https", onClose: onClose)
        guard let tls else {
            let session: ClientSession
            if !config.http1 {
                // An h2c-only listener: the connection preface is required, and anything else is
                // refused as HTTP/2 (GOAWAY), not read as HTTP/1.1.
                let h2 = HTTP2Connection(transport: channel, env: env)
                h2.start(initial: [], transportStarted: false)
                session = h2
            } else {
                let h1 = HTTP1Connection(transport: channel, env: env, acceptsPriorKnowledgeH2: config.http2)
                h1.start()
                session = h1
            }
            if context.isDraining { session.beginDrain() }
            return
        }
        let servesHTTP1 = config.http1
        let transport = TLSTransport(channel: channel, loop: loop, tls: tls.current,
                                     handshakeTimeoutMs: context.timeouts.clientHeaderMs,
                                     onHandshake: { transport, alpn in
            let session: ClientSession
            if alpn == "h2" || (alpn == nil && !servesHTTP1) {
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

    /// Stops accepting and closes the socket. Not to be called on an event loop.
    func close() {
        registry.removeWaiter(self)
        if let watch {
            let wasOpen = lock.withLock { () -> Bool in
                defer { accepting = false; closed = true }
                return !closed
            }
            guard wasOpen else { return }
            watch.loop.queue.sync { watch.loop.poller?.remove(watch, deregister: true) }
            Glibc.close(fd)
            return
        }
        let cancelled: Bool = queue.sync {
            guard !closed else { return false }
            closed = true
            guard let s = source else {
                Glibc.close(fd)  // never started
                return false
            }
            if suspended { s.resume() }
            s.cancel()
            source = nil
            return true
        }
        // The socket is closed by the cancel handler, which Dispatch runs a moment later: wait for
        // it, so that once close() returns no new connection is accepted by the kernel.
        if cancelled { _ = closedFD.wait(timeout: .now() + 1) }
    }
}

/// A listener's registration with its loop's poller (`io: epoll`).
final class ListenerWatch: PollTarget {
    let fd: Int32
    unowned let loop: EventLoop
    weak var listener: Listener?

    init(fd: Int32, loop: EventLoop, listener: Listener) {
        self.fd = fd
        self.loop = loop
        self.listener = listener
    }

    func handleEvents(_ events: UInt32) { listener?.accept(on: loop) }
}

/// Tells listeners when a connection closed, so a paused accept can resume.
final class ConnectionRegistry: Sendable {
    /// Keyed by listener, so a reload adds and removes entries while every loop may be calling
    /// `connectionClosed()`: the table is replaced whole under the lock and read as one value.
    private let waiters = Mutex<[ObjectIdentifier: @Sendable () -> Void]>([:])

    func addWaiter(_ owner: AnyObject, _ w: @escaping @Sendable () -> Void) {
        waiters.withLock { $0[ObjectIdentifier(owner)] = w }
    }

    func removeWaiter(_ owner: AnyObject) {
        _ = waiters.withLock { $0.removeValue(forKey: ObjectIdentifier(owner)) }
    }

    var count: Int { waiters.withLock { $0.count } }

    func connectionClosed() {
        let current = waiters.withLock { $0 }
        for w in current.values { w() }
    }
}

