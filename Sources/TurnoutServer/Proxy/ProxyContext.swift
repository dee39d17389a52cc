import Atomics
import Logging
import Synchronization
import TurnoutCore

/// What every event loop shares for the whole life of a proxy: the configuration in force, the
/// routing store, resolved upstream addresses, loggers and the drain flag. Everything here is
/// immutable or thread-safe; the configuration is swapped whole by a reload.
final class ProxyContext: Sendable {
    /// The configuration and what is derived from it, replaced as one value by a reload.
    final class Settings: Sendable {
        let config: TurnoutConfig
        /// Per endpoint id (small and dense): its pool's `max_idle_connections`.
        private let maxIdleOfEndpoint: [Int]
        /// Per endpoint id: what its pool speaks, and for HTTP/2 its caps.
        private let protocolOfEndpoint: [UpstreamProtocol]
        private let h2CapsOfEndpoint: [(connections: Int, streams: Int)]
        private let poolNameOfEndpoint: [String]
        /// Seconds a client should wait before retrying after a 503.
        let retryAfterSeconds: Int
        /// `limits.max_client_connections`, with `auto` worked out from the open-files limit.
        let maxClientConnections: Int

        init(config: TurnoutConfig, store: RoutingStore) {
            self.config = config
            let endpoints = store.endpoints
            let size = endpoints.lazy.flatMap(\.endpoints).idTableSize
            var map = [Int](repeating: 0, count: size)
            var protocols = [UpstreamProtocol](repeating: .http1, count: size)
            var caps = [(connections: Int, streams: Int)](repeating: (PoolConfig.defaultMaxConnections, PoolConfig.defaultMaxStreamsPerConnection),
                                                          count: size)
            var names = [String](repeating: "", count: size)
            for entry in endpoints {
                for e in entry.endpoints {
                    names[e.id] = entry.pool.name
                    map[e.id] = entry.pool.maxIdleConnections ?? Int.max
                    protocols[e.id] = entry.pool.upstreamProtocol
                    caps[e.id] = (entry.pool.maxConnections, entry.pool.maxStreamsPerConnection)
                }
            }
            self.maxIdleOfEndpoint = map
            self.protocolOfEndpoint = protocols
            self.h2CapsOfEndpoint = caps
            self.poolNameOfEndpoint = names
            self.retryAfterSeconds = max(1, Int((config.health.intervalMs + 999) / 1000))
            self.maxClientConnections = config.limits.maxClientConnections ?? FileLimit.automaticMaxClientConnections
        }

        /// How many idle connections to keep to an endpoint: its pool's cap, `Int.max` without one,
        /// 0 for an endpoint no longer configured.
        @inline(__always)
        func maxIdleConnections(ofEndpoint id: Int) -> Int {
            id >= 0 && id < maxIdleOfEndpoint.count ? maxIdleOfEndpoint[id] : 0
        }

        /// What the endpoint speaks (HTTP/1.1 for one no longer configured).
        @inline(__always)
        func upstreamProtocol(ofEndpoint id: Int) -> UpstreamProtocol {
            id >= 0 && id < protocolOfEndpoint.count ? protocolOfEndpoint[id] : .http1
        }

        /// `protocol: h2`: the TLS settings of the endpoint's pool.
        func upstreamTLS(ofEndpoint id: Int) -> UpstreamTLSConfig {
            guard id >= 0 && id < poolNameOfEndpoint.count else { return UpstreamTLSConfig() }
            let name = poolNameOfEndpoint[id]
            return config.pools.first { $0.name == name }?.tls ?? UpstreamTLSConfig()
        }

        /// HTTP/2: connections per endpoint per loop, and streams per connection.
        func h2Caps(ofEndpoint id: Int) -> (connections: Int, streams: Int) {
            id >= 0 && id < h2CapsOfEndpoint.count ? h2CapsOfEndpoint[id] : (PoolConfig.defaultMaxConnections, PoolConfig.defaultMaxStreamsPerConnection)
        }
    }

    private let current: ManagedAtomic<Settings>
    /// Counts replacements of the settings (see `RoutingStore.version`).
    private let replacements = Atomic<UInt64>(0)
    let store: RoutingStore
    let addresses: AddressBook
    let logger: Logger
    let accessLog: AccessLog?
    let draining = ManagedAtomic<Bool>(false)
    let events = EventBus()
    /// Passive outlier detection; the data path reports failures and answers to it.
    let outliers: OutlierDetector
    /// Client connections open right now, across loops.
    let openClientConnections = ManagedAtomic<Int>(0)

    init(config: TurnoutConfig, store: RoutingStore, logger: Logger) {
        let current = ManagedAtomic(Settings(config: config, store: store))
        self.current = current
        self.store = store
        self.addresses = AddressBook()
        self.logger = logger
        var access = logger
        access[metadataKey: "log"] = "access"
        // Whether access lines are logged is fixed at start-up (`access_log` needs a restart).
        self.accessLog = config.accessLog ? AccessLog(format: config.logFormat, logger: access) : nil
        self.outliers = OutlierDetector(store: store, events: events, logger: logger,
                                        config: { current.load(ordering: .acquiring).config })
        addLiteralAddresses()
    }

    /// The settings in force. Load once per operation that needs several values; the data path
    /// reads them through its loop's `LoopView`.
    var settings: Settings { current.load(ordering: .acquiring) }
    /// How many times the settings have been replaced.
    @inline(__always)
    var settingsVersion: UInt64 { replacements.load(ordering: .acquiring) }
    var config: TurnoutConfig { settings.config }
    /// The timeouts and limits in force, read without copying the whole configuration (the hot
    /// path reads these per request).
    var timeouts: TimeoutConfig { settings.config.timeouts }
    var limits: LimitsConfig { settings.config.limits }
    var maxClientConnections: Int { settings.maxClientConnections }
    var retryAfterSeconds: Int { settings.retryAfterSeconds }

    /// Publishes a reloaded configuration (after the routing store took its pools).
    func replace(config: TurnoutConfig) {
        // Upstream TLS files are read again for the connections opened from now on.
        upstreamTLS.withLock { $0.removeAll() }
        settingsWriter.withLock { _ in
            current.store(Settings(config: config, store: store), ordering: .releasing)
            replacements.add(1, ordering: .releasing)
        }
        addLiteralAddresses()
    }

    /// The endpoint set changed (DNS, admin API): per-endpoint settings are derived again.
    func endpointsChanged() {
        settingsWriter.withLock { _ in
            current.store(Settings(config: settings.config, store: store), ordering: .releasing)
            replacements.add(1, ordering: .releasing)
        }
        addLiteralAddresses()
    }

    /// Serialises the two writers of the settings (a reload, an endpoint change), so neither
    /// stores settings derived from a config the other has replaced.
    private let settingsWriter = Mutex<Void>(())

    /// Endpoints given as IP literals need no resolution.
    private func addLiteralAddresses() {
        for e in store.allEndpoints where addresses.addresses(e.id).isEmpty {
            if let literal = SocketAddress.literal(e.address.host, port: e.address.port) {
                addresses.set(e.id, [literal])
            }
        }
    }

    var isDraining: Bool { draining.load(ordering: .relaxed) }

    /// TLS client contexts of `protocol: h2` pools, by pool: built on first use, and again when
    /// the pool's `tls` changed (a reload).
    private let upstreamTLS = Mutex<[String: (config: UpstreamTLSConfig, context: TLSClientContext)]>([:])

    func upstreamTLSContext(pool: String, config: UpstreamTLSConfig) throws(TLSError) -> TLSClientContext {
        if let cached = upstreamTLS.withLock({ $0[pool] }), cached.config == config { return cached.context }
        let context = try TLSClientContext(ca: config.ca, certificate: config.certificate, privateKey: config.privateKey,
                                           verify: config.verify, alpn: ["h2"], keyPath: "pools.\(pool).tls")
        upstreamTLS.withLock { $0[pool] = (config, context) }
        return context
    }
}

/// Resolved socket addresses of each endpoint. IP literals are filled in at start-up; DNS names are
/// resolved off the event loops by the health prober before each probe.
final class AddressBook: Sendable {
    private let table = Mutex<[Int: [SocketAddress]]>([:])

    func set(_ id: Int, _ addresses: [SocketAddress]) { table.withLock { $0[id] = addresses } }

    func addresses(_ id: Int) -> [SocketAddress] { table.withLock { $0[id] ?? [] } }

    /// Forgets endpoints that left their pools.
    func remove(_ ids: [Int]) { table.withLock { t in for id in ids { t[id] = nil } } }
}

extension ProxyContext.Settings: AtomicReference {}
