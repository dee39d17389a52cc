import Atomics
import Logging
import Synchronization
import TurnoutCore

/// What every event loop shares for the whole life of a proxy: the config, the routing store,
/// resolved upstream addresses, loggers and the drain flag. Everything here is immutable or
/// thread-safe.
final class ProxyContext: Sendable {
    let config: TurnoutConfig
    let store: RoutingStore
    let addresses: AddressBook
    let logger: Logger
    let accessLogger: Logger?
    let draining = ManagedAtomic<Bool>(false)
    let events = EventBus()
    /// Client connections open right now, across loops.
    let openClientConnections = ManagedAtomic<Int>(0)
    /// Per endpoint id: the pool config (for idle limits).
    let poolOfEndpoint: [Int: PoolConfig]
    /// Seconds a client should wait before retrying after a 503.
    let retryAfterSeconds: Int

    init(config: TurnoutConfig, store: RoutingStore, logger: Logger) {
        self.config = config
        self.store = store
        self.addresses = AddressBook()
        self.logger = logger
        var access = logger
        access[metadataKey: "log"] = "access"
        self.accessLogger = config.accessLog ? access : nil
        var map: [Int: PoolConfig] = [:]
        for entry in store.endpoints {
            for e in entry.endpoints { map[e.id] = entry.pool }
        }
        self.poolOfEndpoint = map
        self.retryAfterSeconds = max(1, Int((config.health.intervalMs + 999) / 1000))
        for e in store.allEndpoints {
            if let literal = SocketAddress.literal(e.address.host, port: e.address.port) {
                addresses.set(e.id, [literal])
            }
        }
    }

    var isDraining: Bool { draining.load(ordering: .relaxed) }
}

/// Resolved socket addresses of each endpoint. IP literals are filled in at start-up; DNS names are
/// resolved off the event loops by the health prober before each probe.
final class AddressBook: Sendable {
    private let table = Mutex<[Int: [SocketAddress]]>([:])

    func set(_ id: Int, _ addresses: [SocketAddress]) { table.withLock { $0[id] = addresses } }

    func addresses(_ id: Int) -> [SocketAddress] { table.withLock { $0[id] ?? [] } }
}
