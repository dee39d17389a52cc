#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Foundation
import Logging
import Synchronization
import TurnoutCore

/// Nanoseconds from `start` to `end`; 0 when `start` is the later one (another thread stored it
/// after `end` was read), where plain subtraction would trap.
@inline(__always)
func elapsed(from start: UInt64, to end: UInt64) -> UInt64 { end > start ? end - start : 0 }

/// A replica's link to the cluster's routing truth in etcd (cluster mode).
///
/// It reads the routing document, watches the cluster's prefix from the read's revision + 1, and
/// re-reads the document every `heartbeat` (etcd 3.4 sends watch progress only every 10 minutes);
/// every document it sees goes through `apply`, the one path into the routing store, which also
/// writes the local state file (the boot cache for a restart while etcd is away). Writes are
/// compare-and-swap transactions on the document's `mod_revision`, which is the generation clients
/// see. It keeps this replica's lease-bound registry entry (applied revision, health, staleness)
/// and, while a ramp runs, its ramp window; it campaigns for the ramp-driver key.
///
/// None of this runs on a serving loop or the admin loop: the watch has its own thread, writes
/// their own queue, and heartbeats, lease and registry a background queue; each has its own etcd
/// connection. Shared state sits behind one lock.
final class ClusterAgent: @unchecked Sendable {
    let config: ClusterConfig
    let replicaID: String
    let address: String
    let store: RoutingStore
    let stateFile: StateFileWriter?
    let events: EventBus
    let logger: Logger
    /// The config in force (a reload may change the pools a document is checked against).
    let currentConfig: @Sendable () -> TurnoutConfig

    let tls: EtcdTLSContext?
    let password: String?
    let writeQueue = DispatchQueue(label: "turnout.cluster.write", qos: .userInitiated)
    let background = DispatchQueue(label: "turnout.cluster.background", qos: .userInitiated)
    var writeClient: EtcdClient
    var backgroundClient: EtcdClient
    var timer: DispatchSourceTimer?
    var watchThread: Thread?
    let stopped = Atomic<Bool>(false)
    let watchDone = DispatchSemaphore(value: 0)
    /// Serialises `apply` (the watch, the heartbeat and writes all call it).
    let applyLock = NSLock()

    struct Shared {
        /// The routing document revision the store holds (0: never read from etcd).
        var appliedRevision: UInt64 = 0
        var appliedAtMicros: Int64 = 0
        /// The latest store revision any answer carried.
        var clusterRevision: UInt64 = 0
        /// Uptime (ns) of the last answer from etcd; 0: none yet.
        var lastContact: UInt64 = 0
        var watching = false
        var heartbeatOK = false
        /// Until the first answer from etcd, a replica serves its boot cache: stale.
        var stale = true
        var everConnected = false
        /// Uptime (ns) when the agent was made: "stale since" for a replica that never reached etcd.
        var createdAt = DispatchTime.now().uptimeNanoseconds
        var lastError: String?
        var replicas: [String: ReplicaRecord] = [:]
        var windows: [String: RampWindowRecord] = [:]
        /// Who holds the ramp-driver key.
        var driver: String?
        var leaseID: Int64 = 0
        /// Uptime (ns) until which the lease is known to live.
        var leaseValidUntil: UInt64 = 0
        var waiters: [ObjectIdentifier: Waiter] = [:]
        var rejectedRevision: UInt64 = 0
        var watchRestarts: UInt64 = 0
        var writeConflicts: UInt64 = 0
        var lastRecord: ReplicaRecord?
        var lastRecordPut: UInt64 = 0
        var lastWindowPut: RampWindowRecord?
    }
    let shared = Mutex(Shared())

    /// The newest state not yet in the state file; the cache queue writes only the latest.
    let pendingCache = Mutex<RoutingState?>(nil)
    let cacheQueue = DispatchQueue(label: "turnout.cluster.cache", qos: .utility)
    /// While a write waits for convergence, the registry is polled here.
    let waitQueue = DispatchQueue(label: "turnout.cluster.wait", qos: .userInitiated)
    lazy var waitClient = EtcdClient(config: config.etcd, tls: tls, password: password)
    var polling = false

    /// The ramp window this replica publishes (set by the server: the ramp controller's).
    var localWindow: @Sendable () -> (RampState, RampWindow)? = { nil }

    init(config: ClusterConfig, replicaID: String, address: String, store: RoutingStore, stateFile: StateFileWriter?,
         events: EventBus, logger: Logger, currentConfig: @escaping @Sendable () -> TurnoutConfig) throws {
        self.config = config
        self.replicaID = replicaID
        self.address = address
        self.store = store
        self.stateFile = stateFile
        self.events = events
        self.logger = logger
        self.currentConfig = currentConfig
        if let file = config.etcd.passwordFile {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
                throw StartupError("cluster.etcd.password_file: cannot read \(file)")
            }
            password = text.trimmingCharacters(in: .newlines)
        } else {
            password = nil
        }
        if config.etcd.endpoints.contains(where: \.secure) {
            do { tls = try EtcdTLSContext(config.etcd.tls) } catch { throw StartupError("\(error)") }
        } else {
            tls = nil
        }
        // Each replica starts on a member picked by a per-process hash of its id, so replicas
        // spread their connections over the members.
        let first = Int(UInt(bitPattern: replicaID.hashValue) % UInt(max(1, config.etcd.endpoints.count)))
        writeClient = EtcdClient(config: config.etcd, tls: tls, password: password, first: first)
        backgroundClient = EtcdClient(config: config.etcd, tls: tls, password: password, first: first)
    }

    // MARK: start and stop

    /// Reads (or seeds) the routing document, waiting up to `timeoutMs` for etcd; then starts the
    /// watch and the heartbeat. When etcd does not answer in time the replica serves what it has
    /// (state file or config) and reports itself stale until etcd answers.
    func start(timeoutMs: Int) {
        let synced = DispatchSemaphore(value: 0)
        let startRevision = Atomic<UInt64>(0)
        background.async { [self] in
            let deadline = DispatchTime.now() + .milliseconds(timeoutMs)
            var revision: UInt64?
            repeat {
                do throws(EtcdError) {
                    revision = try syncAll(client: backgroundClient)
                } catch {
                    shared.withLock { $0.lastError = error.description }
                    Thread.sleep(forTimeInterval: 0.2)
                }
            } while revision == nil && DispatchTime.now() < deadline && !stopped.load(ordering: .relaxed)
            if let revision { startRevision.store(revision, ordering: .relaxed) }
            updateStaleness()
            synced.signal()
        }
        synced.wait()
        let revision = startRevision.load(ordering: .relaxed)
        if revision == 0 {
            let (state, _) = store.snapshot()
            let why = shared.withLock { $0.lastError } ?? "no answer"
            logger.warning("cluster \(config.name): etcd (\(config.etcd.endpoints.map(\.description).joined(separator: ", "))) did not answer within \(timeoutMs) ms (\(why)); serving the last known routing (generation \(state.generation), live \(state.live)) and refusing changes until it does")
        } else {
            logger.notice("cluster \(config.name): replica \(replicaID) joined at revision \(revision); routing document revision \(appliedRevision)")
        }
        let thread = Thread { [self] in watchLoop(from: revision) }
        thread.name = "turnout.cluster.watch"
        thread.start()
        watchThread = thread
        let t = DispatchSource.makeTimerSource(queue: background)
        let tick = min(250, Int(config.heartbeatMs))
        t.schedule(deadline: .now() + .milliseconds(tick), repeating: .milliseconds(tick), leeway: .milliseconds(20))
        var beats = 0
        var lastHeartbeat = DispatchTime.now().uptimeNanoseconds
        t.setEventHandler { [unowned self] in
            let now = DispatchTime.now().uptimeNanoseconds
            if now - lastHeartbeat >= UInt64(config.heartbeatMs) * 1_000_000 {
                lastHeartbeat = now
                beats += 1
                // Every fifth heartbeat reads every key (the registry is not watched).
                heartbeat(full: beats % 5 == 0)
            }
            publishWindow()
            updateStaleness()
        }
        t.activate()
        timer = t
        background.async { [self] in maintainLease() }
    }

    /// Stops the watch and the timers and revokes the lease, so the registry forgets this replica
    /// at once (not after the lease's TTL). Bounded: gives up on etcd after about a second.
    func stop() {
        stopped.store(true, ordering: .relaxed)
        // Bounded: the background queue may be inside a call to an etcd member that hangs.
        let revoked = DispatchSemaphore(value: 0)
        background.async { [self] in
            timer?.cancel()
            timer = nil
            let lease = shared.withLock { $0.leaseID }
            if lease != 0 {
                backgroundClient.requestTimeoutMs = 1000
                backgroundClient.connectTimeoutMs = 300
                try? backgroundClient.leaseRevoke(lease)
            }
            backgroundClient.close()
            revoked.signal()
        }
        if revoked.wait(timeout: .now() + 3) == .timedOut {
            logger.warning("cluster \(config.name): etcd did not answer the lease revocation; the registry forgets this replica after lease_ttl")
        }
        if watchThread != nil { _ = watchDone.wait(timeout: .now() + 2) }
        flushCache()
        let waiters = shared.withLock { s -> [Waiter] in
            defer { s.waiters.removeAll() }
            return Array(s.waiters.values)
        }
        for w in waiters { w.finish(pending: ["(this replica is stopping)"]) }
    }

    // MARK: reading the truth

    /// Reads every key of the cluster, applies the routing document (seeding it from this
    /// replica's state when the cluster has none), and replaces the registry and window views.
    /// Returns the store revision of the read.
    @discardableResult
    func syncAll(client: EtcdClient) throws(EtcdError) -> UInt64 {
        let (revision, kvs) = try client.range(config.prefix, prefix: true)
        contact(revision: revision)
        var replicas: [String: ReplicaRecord] = [:]
        var windows: [String: RampWindowRecord] = [:]
        var driver: String?
        var routing: EtcdKeyValue?
        for kv in kvs {
            if kv.key == config.routingKey {
                routing = kv
            } else if kv.key == config.driverKey {
                driver = String(decoding: kv.value, as: UTF8.self)
            } else if kv.key.hasPrefix(config.replicasPrefix), let r = ClusterJSON.decode(ReplicaRecord.self, kv.value) {
                replicas[r.id] = r
            } else if kv.key.hasPrefix(config.windowsPrefix), let w = ClusterJSON.decode(RampWindowRecord.self, kv.value) {
                windows[w.replica] = w
            }
        }
        shared.withLock {
            $0.replicas = replicas
            $0.windows = windows
            $0.driver = driver
        }
        if let routing {
            apply(routing.value, revision: routing.modRevision)
        } else {
            try seed(client: client)
        }
        checkWaiters()
        return revision
    }

    /// The cluster has no routing document yet: the first replica to get here writes its own
    /// state (from its state file or config); the others read the winner's.
    func seed(client: EtcdClient) throws(EtcdError) {
        let (state, _) = store.snapshot()
        let change = RoutingChange(kind: "cluster_seeded", reason: "routing document created by \(replicaID) from its local state", by: replicaID)
        switch try client.compareAndSwap(config.routingKey, expectedModRevision: 0, value: ClusterDocument.encode(state, change: change)) {
        case .committed(let revision):
            logger.notice("cluster \(config.name): no routing document yet; seeded it from this replica's state (live \(state.live)) at revision \(revision)")
            apply(ClusterDocument.encode(state, change: change), revision: revision)
        case .conflict(let current, _):
            if let current { apply(current.value, revision: current.modRevision) }
        }
    }

    func contact(revision: UInt64) {
        shared.withLock {
            $0.lastContact = DispatchTime.now().uptimeNanoseconds
            $0.clusterRevision = max($0.clusterRevision, revision)
            $0.lastError = nil
        }
    }

    /// The one path by which the cluster's routing reaches this replica: a document newer than the
    /// one applied is checked, published to the routing store, written to the state file, and
    /// reported (event and log) as the change it records.
    func apply(_ bytes: [UInt8], revision: UInt64) {
        applyLock.lock()
        defer { applyLock.unlock() }
        let (applied, rejected) = shared.withLock { ($0.appliedRevision, $0.rejectedRevision) }
        guard revision > applied else { return }
        let state: RoutingState
        let change: RoutingChange?
        do {
            (state, change) = try ClusterDocument.decode(bytes, revision: revision, config: currentConfig())
        } catch {
            if rejected != revision {
                shared.withLock { $0.rejectedRevision = revision }
                logger.error("cluster \(config.name): cannot apply revision \(revision): \(error); still routing by revision \(applied)")
                events.publish(TurnoutEvent(kind: "cluster_rejected", generation: revision, reason: error.description))
            }
            return
        }
        // etcd holds the truth durably: the replica routes by it at once, and the state file (the
        // boot cache for a restart while etcd is away) is written after, off this path.
        store.mutate({ (_: RoutingState, _: [Int: HealthStatus]) in state }, persist: nil)
        writeCache(state)
        let now = Int64(Date().timeIntervalSince1970 * 1_000_000)
        shared.withLock {
            $0.appliedRevision = revision
            $0.appliedAtMicros = now
        }
        let names = store.poolNames
        let weights = names.map { "\($0)=\(Percent.format(basisPoints: state.weights[$0] ?? 0))" }.joined(separator: " ")
        let kind = change?.kind ?? "cluster_update"
        let reason = change?.reason ?? "routing document changed in etcd"
        logger.notice("\(reason) (by \(change?.by ?? "etcd")): revision \(revision), live \(state.live), weights \(weights)")
        var fields: [(String, String)] = [
            ("live", JSONWriter.quote(state.live)), ("weights", JSONWriter.weights(state.weights, order: names)),
            ("previous", state.previousWeights.map { JSONWriter.weights($0, order: names) } ?? "null"),
            ("by", JSONWriter.quote(change?.by ?? "")),
        ]
        if let ramp = state.ramp, kind.hasPrefix("ramp") || kind == "rollback" {
            fields.append(("pool", JSONWriter.quote(ramp.plan.pool)))
            fields.append(("step", "\(ramp.step + 1)"))
            fields.append(("weight", Percent.format(basisPoints: ramp.currentWeight)))
        }
        events.publish(TurnoutEvent(kind: kind, generation: revision, reason: reason, fields: fields))
        background.async { [self] in putRecord(force: true) }
        checkWaiters()
    }


    func writeCache(_ state: RoutingState) {
        guard let stateFile else { return }
        let first = pendingCache.withLock { p -> Bool in
            defer { p = state }
            return p == nil
        }
        guard first else { return }
        cacheQueue.async { [self] in
            guard let latest = pendingCache.withLock({ p -> RoutingState? in
                defer { p = nil }
                return p
            }) else { return }
            do { try stateFile.write(latest) } catch {
                logger.warning("cluster \(config.name): cannot write the state file (the boot cache): \(error)")
            }
        }
    }

    /// Waits until the state file holds the last applied state (at shutdown).
    func flushCache() { cacheQueue.sync {} }

    // MARK: reporting

    struct Status {
        var revision: UInt64
        var appliedRevision: UInt64
        var connected: Bool
        var stale: Bool
        var staleSeconds: Double
        var replicas: [ReplicaRecord]
        var driver: String?
        var lastError: String?
        var watchRestarts: UInt64
        var writeConflicts: UInt64
    }

    func status() -> Status {
        let now = DispatchTime.now().uptimeNanoseconds
        // This replica as it is now, not as its last registry write said (etcd may be away).
        let me = record()
        return shared.withLock { s in
            let since = Double(elapsed(from: s.lastContact == 0 ? s.createdAt : s.lastContact, to: now)) / 1e9
            var replicas = s.replicas
            replicas[replicaID] = me
            return Status(revision: s.clusterRevision, appliedRevision: s.appliedRevision,
                          connected: s.watching && s.heartbeatOK && !s.stale, stale: s.stale,
                          staleSeconds: s.stale ? max(0, since) : 0,
                          replicas: replicas.values.sorted { $0.id < $1.id }, driver: s.driver, lastError: s.lastError,
                          watchRestarts: s.watchRestarts, writeConflicts: s.writeConflicts)
        }
    }

    /// The `cluster` object of `GET /v1/state`.
    func stateJSON() -> String {
        let s = status()
        let nowMs = Int64(Date().timeIntervalSince1970 * 1000)
        var out = "{\"name\":\(JSONWriter.quote(config.name)),\"replica_id\":\(JSONWriter.quote(replicaID))"
        out += ",\"revision\":\(s.revision),\"applied_revision\":\(s.appliedRevision),\"connected\":\(s.connected),\"stale\":\(s.stale)"
        out += ",\"stale_seconds\":\(String(format: "%.3f", s.staleSeconds))"
        out += ",\"ramp_driver\":\(s.driver.map(JSONWriter.quote) ?? "null")"
        out += ",\"last_error\":\(s.lastError.map(JSONWriter.quote) ?? "null")"
        out += ",\"replicas\":[" + s.replicas.map { r in
            let lag = s.appliedRevision > r.appliedRevision ? "behind" : "current"
            return "{\"id\":\(JSONWriter.quote(r.id)),\"address\":\(JSONWriter.quote(r.address)),\"version\":\(JSONWriter.quote(r.version))"
                + ",\"applied_revision\":\(r.appliedRevision),\"lag\":\(JSONWriter.quote(lag)),\"stale\":\(r.stale)"
                + ",\"last_seen\":\(JSONWriter.quote(Timestamp.iso8601(Date(timeIntervalSince1970: Double(r.updatedAtMillis) / 1000))))"
                + ",\"last_seen_ms_ago\":\(max(0, nowMs - r.updatedAtMillis))"
                + ",\"applied_at_us\":\(r.appliedAtMicros)}"
        }.joined(separator: ",") + "]}"
        return out
    }
}
