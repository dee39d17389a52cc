#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Foundation
import Logging
import TurnoutCore

/// Errors that stop the proxy from starting, each with a message for the operator.
public struct StartupError: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// A running proxy: event loops, listeners, upstream pools and the health prober, wired to one
/// routing store. `start()` returns once the listeners accept; `drain()` shuts down gracefully.
public final class ProxyServer: @unchecked Sendable {
    /// The configuration in force (a reload replaces it).
    public var config: TurnoutConfig { context.config }
    /// The config file `reload()` reads again (nil: reload is refused).
    public var configPath: String?
    public let store: RoutingStore
    let context: ProxyContext
    let group: EventLoopGroup
    let pools: [UpstreamPool]
    let loopStats: [LoopStats]
    /// Per loop: the mirror copies in flight.
    let mirrors: [MirrorRunner]
    let prober: HealthProber
    let drainWatcher: DrainWatcher
    let discovery: DiscoveryService
    private var dashboardStats: DashboardStats?
    private var listeners: [Listener] = []
    private let listenersLock = NSLock()
    private let registry = ConnectionRegistry()
    let logger: Logger
    let admin: AdminServer
    let router: AdminRouter
    /// The one writer of `state_file` while running (nil without one).
    let stateFile: StateFileWriter?
    private var ramps: RampController?
    /// Cluster mode: the link to etcd (nil on a single node).
    private(set) var cluster: ClusterAgent?

    /// Builds the proxy for `config`, starting from `state`. Reads the admin token file, if any;
    /// nothing listens until `start()`.
    public init(config: TurnoutConfig, state: RoutingState, logger: Logger, configPath: String? = nil) throws {
        self.configPath = configPath
        self.logger = logger
        self.store = RoutingStore(config: config, state: state)
        self.context = ProxyContext(config: config, store: store, logger: logger)
        if config.logFormat == .json {
            // From here on every line is JSON, and each routing event is a line of its own.
            AsyncLogHandler.json.store(true, ordering: .relaxed)
            context.events.logEvents { AsyncLogHandler.writeLine($0.logJSON + "\n") }
        }
        let context = self.context
        self.stateFile = config.stateFile.map { StateFileWriter(path: $0) }
        let router = AdminRouter(store: store, stateFile: stateFile, logger: logger, events: context.events,
                                 isDraining: { context.isDraining })
        var token: String?
        if let tokenFile = config.admin.tokenFile {
            token = try AdminServer.readToken(path: tokenFile)
        }
        var readOnlyToken: String?
        if let file = config.admin.readOnlyTokenFile {
            readOnlyToken = try AdminServer.readToken(path: file, key: "admin.read_only_token_file")
            if readOnlyToken == token { throw StartupError("admin.read_only_token_file must hold a different token than admin.token_file") }
        }
        self.admin = AdminServer(router: router, logger: logger,
                                 access: AdminAccess(token: token, readOnlyToken: readOnlyToken, dashboard: config.admin.dashboard))
        self.router = router
        self.group = try EventLoopGroup(count: config.effectiveWorkers, io: config.io)
        var pools: [UpstreamPool] = []
        for loop in group.loops {
            let pool = UpstreamPool(loop: loop, context: context)
            loop.tickHooks.append { now in pool.tick(now: now) }
            pools.append(pool)
        }
        self.pools = pools
        let loopStats = group.loops.map { LoopStats(loop: $0) }
        self.loopStats = loopStats
        let loops = group.loops
        self.mirrors = loops.indices.map {
            MirrorRunner(loop: loops[$0], context: context, pool: pools[$0], stats: loopStats[$0])
        }
        self.prober = HealthProber(context: context)
        self.drainWatcher = DrainWatcher(context: context)
        self.discovery = DiscoveryService(context: context)
        let prober = self.prober
        // Runs under the store's lock, in order of the changes: both calls only hand work on.
        store.observeTopology { change in
            context.endpointsChanged()
            context.outliers.forget(change.removed.map(\.id))
            context.addresses.remove(change.removed.map(\.id))
            prober.reconfigure(added: change.added, removed: change.removed)
        }
    }

    /// Traffic counters summed over every event loop (each loop's copy is taken on that loop).
    public func trafficStats() -> TrafficStats {
        var total = TrafficStats()
        for s in loopStats { total.add(s.snapshot()) }
        return total
    }

    /// Upstream connections per endpoint id, summed over the loops.
    func upstreamConnectionCounts() -> [Int: UpstreamConnectionCounts] {
        var out: [Int: UpstreamConnectionCounts] = [:]
        for p in pools {
            for (id, c) in p.connectionCounts() { out[id, default: UpstreamConnectionCounts()].add(c) }
        }
        return out
    }

    /// The addresses the listeners are bound to (useful with port 0).
    public var boundAddresses: [SocketAddress] { listenerSnapshot().map(\.address) }

    /// The routing state to start with: the state file when it exists (it wins over the config's
    /// weights), else the config's. A state file that cannot be used stops start-up, unless
    /// `resetState`, which starts from the config and overwrites the file.
    public static func initialState(config: TurnoutConfig, resetState: Bool, logger: Logger) throws -> RoutingState {
        let fromConfig = RoutingState.initial(from: config)
        guard let path = config.stateFile else { return fromConfig }
        if resetState {
            try StateFile.write(fromConfig, to: path)
            logger.notice("--reset-state: state file \(path) reset to the config's weights")
            return fromConfig
        }
        do {
            if let state = try StateFile.load(path: path, config: config) {
                logger.notice("restored state from \(path): generation \(state.generation), live \(state.live)")
                return state
            }
        } catch {
            throw StartupError("\(error)\nstart with --reset-state to discard it and use the config's weights")
        }
        return fromConfig
    }

    /// Binds every listener, runs a first round of health probes (so the first requests do not
    /// meet unknown endpoints), then starts accepting.
    public func start() throws {
        signal(SIGPIPE, SIG_IGN)
        Self.raiseFileLimit(logger: logger, wanted: context.maxClientConnections * 2 + FileLimit.reserve)
        logger.info("accepting up to \(context.maxClientConnections) client connections (open-files limit \(FileLimit.raised))")
        for (i, l) in config.listeners.enumerated() {
            do {
                listeners.append(try makeListener(l))
            } catch let error as TLSError {
                for opened in listeners { opened.close() }
                throw StartupError("listeners[\(i)].tls (\(l.address)): \(error)")
            } catch {
                for opened in listeners { opened.close() }
                throw StartupError("cannot listen on \(l.address): \(error)")
            }
        }
        // Everything the admin loop reads is wired before it serves its first request.
        let ramps = RampController(loop: admin.loop, store: store, stateFile: stateFile, events: context.events,
                                   logger: logger, collectStats: { [unowned self] in trafficStats() })
        router.rampWindow = { [unowned ramps] in ramps.window() }
        router.reload = { [unowned self] in reload() }
        router.poolFields = { [unowned self] in discovery.stateFields() }
        let dashboardStats = DashboardStats(loop: admin.loop, store: store, collect: { [unowned self] in trafficStats() })
        router.stats = { [unowned self] in dashboardStats.json(probes: prober.lastProbes()) }
        router.traffic = { [unowned self] in trafficStats() }
        self.dashboardStats = dashboardStats
        router.metrics = { [unowned self] in
            var r = MetricsRenderer(store: store, traffic: trafficStats(), probes: prober.probeCounts(),
                                    connections: upstreamConnectionCounts(),
                                    clientConnections: context.openClientConnections.load(ordering: .relaxed))
            r.cluster = cluster?.status()
            r.clusterIsDriver = cluster?.drivesRamp ?? false
            r.outliers = context.outliers.counts()
            r.discovery = discovery.status()
            return r.render()
        }
        self.ramps = ramps
        if let clusterConfig = config.cluster {
            let address = listeners.first.map { "\($0.address)" } ?? ""
            let id = clusterConfig.effectiveReplicaID(firstListenerPort: listeners.first?.address.port ?? 0)
            do {
                let agent = try ClusterAgent(config: clusterConfig, replicaID: id, address: address, store: store, stateFile: stateFile,
                                             events: context.events, logger: logger, currentConfig: { [unowned self] in config })
                agent.localWindow = { [unowned ramps] in ramps.localWindow() }
                router.cluster = agent
                ramps.cluster = agent
                cluster = agent
            } catch {
                for opened in listeners { opened.close() }
                throw error
            }
        }
        do {
            try admin.listenUnix(path: config.admin.socket)
            if let address = config.admin.address { try admin.listenTCP(address: address) }
        } catch {
            for opened in listeners { opened.close() }
            admin.stop()
            throw error
        }
        admin.start()
        logger.notice("admin API on unix:\(config.admin.socket)\(admin.tcpAddress.map { " and http://\($0)" } ?? "")")
        // Pools discovered by DNS get their first addresses before the first health round.
        discovery.start()
        let firstRound = DispatchSemaphore(value: 0)
        prober.start { firstRound.signal() }
        let waitMs = Int(config.health.timeoutMs) + 500
        if firstRound.wait(timeout: .now() + .milliseconds(waitMs)) == .timedOut {
            logger.warning("first health probes did not finish within \(waitMs) ms; starting anyway")
        }
        // Cluster mode: the routing truth is read from etcd before the first request is routed
        // (waiting a bounded time; without etcd the replica serves its boot cache, stale).
        // After the first probes, so the registry entry carries real health.
        cluster?.start(timeoutMs: 3000)
        // A persisted ramp resumes only once endpoint health is known: before the first probes
        // every endpoint is "unknown", which a ramp would read as a canary without health.
        self.ramps?.start()
        drainWatcher.start()
        self.dashboardStats?.start()
        for l in listeners {
            l.start()
            logger.notice("listening on \(l.address)")
        }
    }

    /// Raises the soft open-files limit to the hard limit (each client connection needs one
    /// descriptor and usually one upstream descriptor), and warns when a configured
    /// `max_client_connections` needs more than that.
    static func raiseFileLimit(logger: Logger, wanted: Int) {
        let limit = FileLimit.raised
        if limit < wanted {
            logger.warning("open-files limit is \(limit); limits.max_client_connections \((wanted - FileLimit.reserve) / 2) may need about \(wanted) (raise it with ulimit -n)")
        }
    }

    /// Loads the certificates and keys of every TLS listener, as start-up would; returns each
    /// failure with its key path (for `turnout check-config`).
    public static func tlsProblems(_ config: TurnoutConfig) -> [String] {
        var out: [String] = []
        for (i, l) in config.listeners.enumerated() {
            guard let tls = l.tls else { continue }
            do { _ = try TLSContext(tls) } catch { out.append("listeners[\(i)].tls: \(error)") }
        }
        for pool in config.pools where pool.upstreamProtocol == .h2 {
            let t = pool.tls ?? UpstreamTLSConfig()
            do {
                _ = try TLSClientContext(ca: t.ca, certificate: t.certificate, privateKey: t.privateKey, verify: t.verify,
                                         alpn: ["h2"], keyPath: "pools.\(pool.name).tls")
            } catch {
                out.append("\(error)")
            }
        }
        return out
    }

    func makeListener(_ l: ListenerConfig) throws -> Listener {
        try Listener(config: l, group: group, context: context, pools: pools, stats: loopStats, mirrors: mirrors, registry: registry)
    }

    /// The listeners now accepting.
    func listenerSnapshot() -> [Listener] { listenersLock.withLock { listeners } }

    func replaceListeners(kept: [Listener], added: [Listener]) {
        listenersLock.withLock { listeners = kept + added }
    }

    /// Stops accepting, lets in-flight requests finish (up to `timeouts.drain`), closes idle
    /// connections, then calls `completion` with the number of connections that had to be cut.
    /// `announce` runs once the listeners are closed (no new connection is accepted from then on)
    /// and before the wait for open connections begins.
    public func drain(announce: (() -> Void)? = nil, completion: @escaping @Sendable (Int) -> Void) {
        context.draining.store(true, ordering: .relaxed)
        for l in listenerSnapshot() { l.close() }
        announce?()
        prober.stop()
        discovery.stop()
        drainWatcher.stop()
        dashboardStats?.stop()
        for (i, loop) in group.loops.enumerated() {
            let pool = pools[i]
            loop.execute {
                loop.forEachRegistered { ($0 as? ClientSession)?.beginDrain() }
                pool.closeAllIdle()
            }
        }
        let deadline = DispatchTime.now() + .milliseconds(Int(config.timeouts.drainMs))
        let context = self.context
        let queue = DispatchQueue(label: "turnout.drain")
        @Sendable func poll() {
            let open = context.openClientConnections.load(ordering: .relaxed)
            if open == 0 {
                completion(0)
            } else if DispatchTime.now() >= deadline {
                completion(open)
            } else {
                queue.asyncAfter(deadline: .now() + .milliseconds(20)) { poll() }
            }
        }
        queue.async { poll() }
    }

    /// Runs until SIGTERM or SIGINT, then drains and exits the process with status 0.
    public func runUntilSignalled(extraShutdown: (@Sendable () -> Void)? = nil) -> Never {
        let signalQueue = DispatchQueue(label: "turnout.signals")
        var sources: [DispatchSourceSignal] = []
        for sig in [SIGTERM, SIGINT] {
            signal(sig, SIG_IGN)
            let s = DispatchSource.makeSignalSource(signal: sig, queue: signalQueue)
            let logger = self.logger
            s.setEventHandler { [self] in
                drain(announce: {
                    logger.notice("received signal \(sig), draining (up to \(DurationParser.format(milliseconds: self.config.timeouts.drainMs))); listeners closed")
                }) { cut in
                    if cut > 0 { logger.warning("drain timeout: closing \(cut) connection(s) still open") }
                    extraShutdown?()
                    self.cluster?.stop()
                    self.admin.stop()
                    self.stateFile?.close()
                    logger.notice("stopped")
                    AsyncLogHandler.flush()
                    exit(0)
                }
            }
            s.activate()
            sources.append(s)
        }
        // SIGHUP reloads the config file (see reload()); it never stops the proxy.
        signal(SIGHUP, SIG_IGN)
        let hup = DispatchSource.makeSignalSource(signal: SIGHUP, queue: signalQueue)
        hup.setEventHandler { [self] in
            logger.notice("received SIGHUP: reloading \(configPath ?? "the configuration")")
            _ = reload()
        }
        hup.activate()
        sources.append(hup)
        withExtendedLifetime(sources) { dispatchMain() }
    }
}
