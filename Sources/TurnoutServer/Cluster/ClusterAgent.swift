#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Foundation
import Logging
import Synchronization
import TurnoutCore

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

    private let tls: EtcdTLSContext?
    private let password: String?
    private let writeQueue = DispatchQueue(label: "turnout.cluster.write", qos: .userInitiated)
    private let background = DispatchQueue(label: "turnout.cluster.background", qos: .userInitiated)
    private var writeClient: EtcdClient
    private var backgroundClient: EtcdClient
    private var timer: DispatchSourceTimer?
    private var watchThread: Thread?
    private let stopped = Atomic<Bool>(false)
    private let watchDone = DispatchSemaphore(value: 0)
    /// Serialises `apply` (the watch, the heartbeat and writes all call it).
    private let applyLock = NSLock()

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
    private let shared = Mutex(Shared())

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
        // Each replica starts on a different member, so a cluster of replicas spreads its load.
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
    private func syncAll(client: EtcdClient) throws(EtcdError) -> UInt64 {
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
    private func seed(client: EtcdClient) throws(EtcdError) {
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

    private func contact(revision: UInt64) {
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
        store.mutate({ (_: RoutingState, _: [Int: HealthStatus]) in state }, persist: { (_: RoutingState) in })
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

    /// The newest state not yet in the state file; the cache queue writes only the latest.
    private let pendingCache = Mutex<RoutingState?>(nil)
    private let cacheQueue = DispatchQueue(label: "turnout.cluster.cache", qos: .utility)

    private func writeCache(_ state: RoutingState) {
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

    // MARK: the watch

    private func watchLoop(from revision: UInt64) {
        defer { watchDone.signal() }
        let client = EtcdClient(config: config.etcd, tls: tls, password: password)
        var next = revision == 0 ? 0 : revision + 1
        var failures = 0
        while !stopped.load(ordering: .relaxed) {
            do throws(EtcdError) {
                if next == 0 { next = try syncAll(client: client) + 1 }
                let watch = try client.watch(from: config.watchedFrom, prefix: config.prefix, startRevision: next)
                defer { watch.close() }
                shared.withLock { $0.watching = true }
                failures = 0
                stream: while !stopped.load(ordering: .relaxed) {
                    switch try watch.next(timeoutMs: 250) {
                    case .timedOut:
                        continue
                    case .created(let rev):
                        contact(revision: rev)
                    case .events(let rev, let events):
                        contact(revision: rev)
                        for e in events {
                            handle(e)
                            next = max(next, e.kv.modRevision + 1)
                        }
                        checkWaiters()
                    case .compacted(let compactRevision):
                        // Changes between `next` and the compaction are gone: read everything again.
                        logger.warning("cluster \(config.name): watch from revision \(next) was compacted (at \(compactRevision)); reading the cluster again")
                        next = 0
                        break stream
                    case .canceled(let why):
                        logger.warning("cluster \(config.name): etcd cancelled the watch (\(why)); resuming from revision \(next)")
                        break stream
                    }
                }
            } catch {
                shared.withLock {
                    $0.watching = false
                    $0.lastError = error.description
                    $0.watchRestarts += 1
                }
                failures += 1
                if failures == 1 || failures % 20 == 0 {
                    logger.warning("cluster \(config.name): watch broken (\(error)); resuming from revision \(next) with backoff")
                }
                // Backoff with jitter: 100 ms doubling to 2 s, each wait 50-100% of its step.
                let step = min(2000.0, 100.0 * pow(2.0, Double(min(failures - 1, 5))))
                let wait = step * Double.random(in: 0.5...1.0)
                var waited = 0.0
                while waited < wait && !stopped.load(ordering: .relaxed) {
                    Thread.sleep(forTimeInterval: 0.05)
                    waited += 50
                }
            }
            shared.withLock { $0.watching = false }
        }
    }

    private func handle(_ e: EtcdEvent) {
        let key = e.kv.key
        if key == config.routingKey {
            if !e.isDelete { apply(e.kv.value, revision: e.kv.modRevision) } else {
                logger.error("cluster \(config.name): the routing document was deleted from etcd; routing by revision \(appliedRevision) until it is written again")
            }
        } else if key == config.driverKey {
            let holder = e.isDelete ? nil : String(decoding: e.kv.value, as: UTF8.self)
            shared.withLock { $0.driver = holder }
            if e.isDelete { background.async { [self] in campaign() } }
        } else if key.hasPrefix(config.windowsPrefix) {
            let id = String(key.dropFirst(config.windowsPrefix.count))
            if e.isDelete {
                _ = shared.withLock { $0.windows.removeValue(forKey: id) }
            } else if let w = ClusterJSON.decode(RampWindowRecord.self, e.kv.value) {
                shared.withLock { $0.windows[w.replica] = w }
            }
        }
    }

    // MARK: heartbeat, lease, registry

    /// Re-reads the routing document (or, with `full`, every key): a watch that went quiet
    /// without breaking cannot hide a change for longer than one heartbeat.
    private func heartbeat(full: Bool) {
        do throws(EtcdError) {
            if full || appliedRevision == 0 {
                try syncAll(client: backgroundClient)
            } else {
                let (revision, kvs) = try backgroundClient.range(config.routingKey)
                contact(revision: revision)
                if let kv = kvs.first { apply(kv.value, revision: kv.modRevision) } else { try seed(client: backgroundClient) }
            }
            shared.withLock { $0.heartbeatOK = true }
        } catch {
            shared.withLock {
                $0.heartbeatOK = false
                $0.lastError = error.description
            }
        }
        maintainLease()
        putRecord(force: false)
        campaign()
    }

    /// Grants the lease when there is none, renews it every third of its TTL.
    private func maintainLease() {
        let (lease, validUntil) = shared.withLock { ($0.leaseID, $0.leaseValidUntil) }
        let now = DispatchTime.now().uptimeNanoseconds
        let ttlNs = UInt64(config.leaseTTLSeconds) * 1_000_000_000
        do throws(EtcdError) {
            if lease == 0 || now >= validUntil {
                let id = try backgroundClient.leaseGrant(ttl: config.leaseTTLSeconds)
                shared.withLock {
                    $0.leaseID = id
                    $0.leaseValidUntil = now + ttlNs
                    $0.lastRecord = nil
                    $0.lastWindowPut = nil
                }
                putRecord(force: true)
            } else if validUntil - now < ttlNs * 2 / 3 {
                let ttl = try backgroundClient.leaseKeepAlive(lease)
                if ttl <= 0 {
                    // Expired (etcd was away longer than the TTL): a new lease, a new registry entry.
                    shared.withLock { $0.leaseID = 0; $0.leaseValidUntil = 0 }
                    maintainLease()
                } else {
                    shared.withLock { $0.leaseValidUntil = now + UInt64(ttl) * 1_000_000_000 }
                }
            }
        } catch {
            shared.withLock { $0.lastError = error.description }
        }
    }

    /// This replica's registry entry, as it is now.
    private func record() -> ReplicaRecord {
        let (applied, at, stale) = shared.withLock { ($0.appliedRevision, $0.appliedAtMicros, $0.stale) }
        let (_, health) = store.snapshot()
        var pools: [String: ReplicaRecord.PoolHealth] = [:]
        for entry in store.endpoints {
            pools[entry.pool.name] = .init(endpoints: entry.endpoints.count,
                                           healthy: entry.endpoints.filter { health[$0.id] == .healthy }.count)
        }
        return ReplicaRecord(id: replicaID, address: address, version: TurnoutVersion.number, pid: getpid(),
                             appliedRevision: applied, appliedAtMicros: at, stale: stale, health: pools,
                             updatedAtMillis: Int64(Date().timeIntervalSince1970 * 1000))
    }

    /// Writes the registry entry when it changed, or every 5 s to show the replica is alive.
    private func putRecord(force: Bool) {
        let (lease, last, lastPut) = shared.withLock { ($0.leaseID, $0.lastRecord, $0.lastRecordPut) }
        guard lease != 0 else { return }
        var r = record()
        let now = DispatchTime.now().uptimeNanoseconds
        if let last {
            var same = last
            same.updatedAtMillis = r.updatedAtMillis
            if same == r && now - lastPut < 5_000_000_000 { return }
            if !force && same == r && now - lastPut < 5_000_000_000 { return }
        }
        r.updatedAtMillis = Int64(Date().timeIntervalSince1970 * 1000)
        do {
            try backgroundClient.put(config.replicasPrefix + replicaID, value: ClusterJSON.encode(r), lease: lease)
            shared.withLock {
                $0.lastRecord = r
                $0.lastRecordPut = now
                $0.replicas[r.id] = r
            }
        } catch {
            shared.withLock { $0.lastError = error.description }
        }
    }

    /// While a ramp runs, puts this replica's window of the current step (when it changed).
    private func publishWindow() {
        guard let (ramp, window) = localWindow() else { return }
        let (lease, last) = shared.withLock { ($0.leaseID, $0.lastWindowPut) }
        guard lease != 0 else { return }
        let rec = RampWindowRecord(replica: replicaID, pool: ramp.plan.pool, step: ramp.step,
                                   stepStartedAt: ramp.stepStartedAt.timeIntervalSince1970, window: window)
        guard rec != last else { return }
        do {
            try backgroundClient.put(config.windowsPrefix + replicaID, value: ClusterJSON.encode(rec), lease: lease)
            shared.withLock { $0.lastWindowPut = rec }
        } catch {
            shared.withLock { $0.lastError = error.description }
        }
    }

    /// While a ramp runs and nobody drives it, tries to take the ramp-driver key (bound to this
    /// replica's lease: if this replica dies, the key goes with it and another one takes over).
    private func campaign() {
        guard store.state.rampIsActive else { return }
        let (driver, lease) = shared.withLock { ($0.driver, $0.leaseID) }
        guard driver == nil, lease != 0 else { return }
        do {
            let (created, holder) = try backgroundClient.createIfAbsent(config.driverKey, value: Array(replicaID.utf8), lease: lease)
            let who = created ? replicaID : holder.map { String(decoding: $0.value, as: UTF8.self) }
            shared.withLock { $0.driver = who }
            if created { logger.notice("cluster \(config.name): this replica (\(replicaID)) drives the ramp") }
        } catch {
            shared.withLock { $0.lastError = error.description }
        }
    }

    /// Marks the replica stale after `stale_after` without an answer from etcd, and back.
    private func updateStaleness() {
        let now = DispatchTime.now().uptimeNanoseconds
        let (changed, stale, seconds, error, first) = shared.withLock { s -> (Bool, Bool, Double, String?, Bool) in
            let since = Double(now - (s.lastContact == 0 ? s.createdAt : s.lastContact)) / 1e9
            let stale = s.lastContact == 0 || since * 1000 > Double(config.staleAfterMs)
            let first = !stale && !s.everConnected
            defer {
                s.stale = stale
                if !stale { s.everConnected = true }
            }
            return (stale != s.stale, stale, since, s.lastError, first)
        }
        guard changed else { return }
        let applied = appliedRevision
        if stale {
            let reason = "no answer from etcd for \(String(format: "%.1fs", seconds))\(error.map { " (\($0))" } ?? ""); serving revision \(applied), refusing changes"
            logger.error("cluster \(config.name): stale: \(reason)")
            events.publish(TurnoutEvent(kind: "stale", generation: applied, reason: reason))
        } else if first {
            logger.notice("cluster \(config.name): connected to etcd; routing by revision \(applied)")
        } else {
            logger.notice("cluster \(config.name): etcd answers again; routing by revision \(applied)")
            events.publish(TurnoutEvent(kind: "cluster_connected", generation: applied, reason: "etcd answers again"))
        }
        putRecord(force: true)
    }

    // MARK: writes

    var appliedRevision: UInt64 { shared.withLock { $0.appliedRevision } }

    /// No answer from etcd within `stale_after` (computed now, not at the last tick).
    var isStale: Bool {
        let now = DispatchTime.now().uptimeNanoseconds
        return shared.withLock { s in
            s.lastContact == 0 || Double(now - s.lastContact) / 1e6 > Double(config.staleAfterMs)
        }
    }

    /// Whether this replica holds the ramp-driver key under a live lease.
    var drivesRamp: Bool {
        let now = DispatchTime.now().uptimeNanoseconds
        return shared.withLock { $0.driver == replicaID && $0.leaseValidUntil > now }
    }

    /// The other replicas' windows of `ramp`'s current step, added up.
    func remoteWindow(for ramp: RampState) -> RampWindow? {
        let windows = shared.withLock { Array($0.windows.values) }
        var total: RampWindow?
        for w in windows where w.replica != replicaID && w.matches(ramp) {
            total = total.map { $0.adding(w.window) } ?? w.window
        }
        return total
    }

    /// Which pools have a healthy endpoint: as this replica sees them, and as every other live
    /// replica reports (a pool one replica cannot reach is not switched to). Also says who
    /// sees no healthy endpoint, per pool.
    func poolView(localHealth: [Int: HealthStatus]) -> (RoutingCommands.PoolView, [String: [String]]) {
        var view = store.poolView(health: localHealth)
        let replicas = shared.withLock { Array($0.replicas.values) }
        var missing: [String: [String]] = [:]
        for name in view.names where !view.healthy.contains(name) { missing[name, default: []].append(replicaID) }
        for r in replicas where r.id != replicaID && !r.stale {
            for name in view.names {
                if let h = r.health[name], h.endpoints > 0, h.healthy == 0 {
                    view.healthy.remove(name)
                    missing[name, default: []].append(r.id)
                }
            }
        }
        return (view, missing)
    }

    /// A routing change as a compare-and-swap on the routing document: `change` runs on the
    /// latest document (read first), and the write commits only if nobody wrote in between
    /// (otherwise it runs again on the newer one; with `expected` set, 412). The answer comes
    /// after etcd committed and this replica applied it.
    func write(expected: UInt64?, kind: String, reason: String,
               _ change: (RoutingState, RoutingCommands.PoolView) throws(AdminError) -> RoutingState) -> Result<RoutingState, AdminError> {
        dispatchPrecondition(condition: .onQueue(writeQueue))
        if isStale || appliedRevision == 0 {
            let why = shared.withLock { $0.lastError } ?? "no answer for \(DurationParser.format(milliseconds: config.staleAfterMs))"
            return .failure(unavailable(why))
        }
        for _ in 0..<10 {
            do throws(EtcdError) {
                // The latest truth first: a client may hold a generation this replica has not applied yet.
                let (revision, kvs) = try writeClient.range(config.routingKey)
                contact(revision: revision)
                if let kv = kvs.first { apply(kv.value, revision: kv.modRevision) }
                // The other replicas' health, as they last reported it (switch refuses a pool
                // that some replica sees without a healthy endpoint).
                let (_, records) = try writeClient.range(config.replicasPrefix, prefix: true)
                var replicas: [String: ReplicaRecord] = [:]
                for kv in records { if let r = ClusterJSON.decode(ReplicaRecord.self, kv.value) { replicas[r.id] = r } }
                shared.withLock { $0.replicas = replicas }
                let base = appliedRevision
                let (current, health) = store.snapshot()
                let next: RoutingState
                do throws(AdminError) {
                    try RoutingCommands.checkGeneration(expected, current)
                    let (view, missing) = poolView(localHealth: health)
                    do throws(AdminError) {
                        next = try change(current, view)
                    } catch {
                        var e = error
                        if e.code == "pool_unhealthy", let pool = view.names.first(where: { e.message.contains("pool \($0) ") }),
                           let who = missing[pool], !who.isEmpty {
                            e.message += " (as seen by \(who.sorted().joined(separator: ", ")))"
                        }
                        throw e
                    }
                } catch {
                    return .failure(error)
                }
                if next == current { return .success(current) }
                let bytes = ClusterDocument.encode(next, change: RoutingChange(kind: kind, reason: reason, by: replicaID))
                switch try writeClient.compareAndSwap(config.routingKey, expectedModRevision: base, value: bytes) {
                case .committed(let revision):
                    contact(revision: revision)
                    apply(bytes, revision: revision)
                    return .success(store.state)
                case .conflict(let now, let revision):
                    contact(revision: revision)
                    shared.withLock { $0.writeConflicts += 1 }
                    if let now { apply(now.value, revision: now.modRevision) }
                    if let expected {
                        return .failure(AdminError(412, "generation_mismatch",
                                                   "the state is at generation \(appliedRevision), not \(expected): another replica changed it first; read it again and retry"))
                    }
                }
            } catch {
                shared.withLock { $0.lastError = error.description }
                return .failure(unavailable(error.description))
            }
        }
        return .failure(AdminError(409, "write_conflict", "the routing document kept changing under this write (10 attempts); try again"))
    }

    /// Runs `write` on the write queue and hands the result to `completion` there.
    func writeAsync(expected: UInt64?, kind: String, reason: String,
                    _ change: @escaping @Sendable (RoutingState, RoutingCommands.PoolView) throws(AdminError) -> RoutingState,
                    completion: @escaping @Sendable (Result<RoutingState, AdminError>) -> Void) {
        writeQueue.async { [self] in
            completion(write(expected: expected, kind: kind, reason: reason, change))
        }
    }

    private func unavailable(_ cause: String) -> AdminError {
        let applied = appliedRevision
        return AdminError(503, "cluster_unavailable",
                          "cannot reach etcd (\(cause)); this replica keeps routing by revision \(applied) and accepts no change until etcd answers")
    }

    // MARK: waiting for convergence

    final class Waiter: @unchecked Sendable {
        let revision: UInt64
        private let lock = NSLock()
        private var done = false
        private let completion: @Sendable ([String]) -> Void
        var timer: DispatchSourceTimer?
        init(revision: UInt64, completion: @escaping @Sendable ([String]) -> Void) {
            self.revision = revision
            self.completion = completion
        }
        /// Calls the completion once: with nobody pending (converged) or who is.
        func finish(pending: [String]) {
            let first = lock.withLock { () -> Bool in
                defer { done = true }
                return !done
            }
            guard first else { return }
            timer?.cancel()
            completion(pending)
        }
    }

    /// The live replicas that have not applied `revision` yet (this one included).
    func pending(revision: UInt64) -> [String] {
        shared.withLock { s in
            var out = s.appliedRevision >= revision ? [] : [replicaID]
            for r in s.replicas.values where r.id != replicaID && r.appliedRevision < revision { out.append(r.id) }
            return out.sorted()
        }
    }

    private let waitQueue = DispatchQueue(label: "turnout.cluster.wait", qos: .userInitiated)
    private lazy var waitClient = EtcdClient(config: config.etcd, tls: tls, password: password)
    private var polling = false

    /// While a write waits for convergence, reads the registry every 10 ms (it is not watched).
    private func pollRegistry() {
        dispatchPrecondition(condition: .onQueue(waitQueue))
        guard shared.withLock({ !$0.waiters.isEmpty }), !stopped.load(ordering: .relaxed) else {
            polling = false
            return
        }
        if let (revision, kvs) = try? waitClient.range(config.replicasPrefix, prefix: true) {
            contact(revision: revision)
            var replicas: [String: ReplicaRecord] = [:]
            for kv in kvs { if let r = ClusterJSON.decode(ReplicaRecord.self, kv.value) { replicas[r.id] = r } }
            shared.withLock { $0.replicas = replicas }
            checkWaiters()
        }
        waitQueue.asyncAfter(deadline: .now() + .milliseconds(10)) { [self] in pollRegistry() }
    }

    /// Calls `completion` with an empty list once every live replica has applied `revision`, or
    /// with those that have not after `timeoutMs`.
    func waitConverged(revision: UInt64, timeoutMs: Int64, completion: @escaping @Sendable ([String]) -> Void) {
        let w = Waiter(revision: revision, completion: completion)
        let id = ObjectIdentifier(w)
        shared.withLock { $0.waiters[id] = w }
        waitQueue.async { [self] in
            if !polling {
                polling = true
                pollRegistry()
            }
        }
        let t = DispatchSource.makeTimerSource(queue: background)
        t.schedule(deadline: .now() + .milliseconds(Int(timeoutMs)))
        t.setEventHandler { [weak self, w] in
            guard let self else { return }
            _ = self.shared.withLock { $0.waiters.removeValue(forKey: id) }
            w.finish(pending: self.pending(revision: w.revision))
        }
        w.timer = t
        t.activate()
        checkWaiters()
    }

    private func checkWaiters() {
        let waiters = shared.withLock { Array($0.waiters) }
        for (id, w) in waiters where pending(revision: w.revision).isEmpty {
            _ = shared.withLock { $0.waiters.removeValue(forKey: id) }
            w.finish(pending: [])
        }
    }

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
            let since = Double(now - (s.lastContact == 0 ? s.createdAt : s.lastContact)) / 1e9
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
