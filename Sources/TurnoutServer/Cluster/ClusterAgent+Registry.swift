import Dispatch
import Foundation
import Logging
import Synchronization
import TurnoutCore

/// Heartbeat reads, the lease, this replica's registry entry and ramp window, the ramp-driver
/// campaign and staleness: all on the agent's background queue.
extension ClusterAgent {
    // MARK: heartbeat, lease, registry

    /// Re-reads the routing document (or, with `full`, every key): a watch that went quiet
    /// without breaking cannot hide a change for longer than one heartbeat.
    func heartbeat(full: Bool) {
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
    func maintainLease() {
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
    func record() -> ReplicaRecord {
        let (applied, at, stale) = shared.withLock { ($0.appliedRevision, $0.appliedAtMicros, $0.stale) }
        let (_, health) = store.snapshot()
        var pools: [String: ReplicaRecord.PoolHealth] = [:]
        for entry in store.endpoints {
            pools[entry.pool.name] = .init(endpoints: entry.endpoints.count,
                                           healthy: entry.endpoints.filter { health[$0.id] == .healthy }.count)
        }
        var r = ReplicaRecord(id: replicaID, address: address, version: TurnoutVersion.number, pid: getpid(),
                              appliedRevision: applied, appliedAtMicros: at, stale: stale, health: pools,
                              updatedAtMillis: Int64(Date().timeIntervalSince1970 * 1000))
        let weights = store.state.weights
        var busy: [String: [Int]] = [:]
        for (pool, members) in store.members {
            let poolIdle = (weights[pool.name] ?? 0) == 0
            for m in members where poolIdle || !m.admitsRequests {
                let inFlight = max(0, m.endpoint.inFlight.load(ordering: .relaxed))
                let tunnels = max(0, m.endpoint.tunnels.load(ordering: .relaxed))
                if inFlight > 0 || tunnels > 0 { busy["\(pool.name)/\(m.endpoint.address)"] = [inFlight, tunnels] }
            }
        }
        r.busy = busy.isEmpty ? nil : busy
        return r
    }

    /// Writes the registry entry when it changed, or every 5 s to show the replica is alive.
    func putRecord(force: Bool) {
        let (lease, last, lastPut) = shared.withLock { ($0.leaseID, $0.lastRecord, $0.lastRecordPut) }
        guard lease != 0 else { return }
        var r = record()
        let now = DispatchTime.now().uptimeNanoseconds
        if let last, !force {
            var same = last
            same.updatedAtMillis = r.updatedAtMillis
            if same == r && elapsed(from: lastPut, to: now) < 5_000_000_000 { return }
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
    func publishWindow() {
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
    func campaign() {
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
    func updateStaleness() {
        let now = DispatchTime.now().uptimeNanoseconds
        let (changed, stale, seconds, error, first) = shared.withLock { s -> (Bool, Bool, Double, String?, Bool) in
            let since = Double(elapsed(from: s.lastContact == 0 ? s.createdAt : s.lastContact, to: now)) / 1e9
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
}

extension ClusterAgent {
    /// What the other live replicas last reported open on a pool (or endpoint) being drained, and
    /// which of them reported before applying the routing this replica routes by (their report
    /// cannot be trusted yet). Reads the cached registry and refreshes it in the background, so a
    /// caller that polls sees each replica's next report.
    func drainReports(pool: String, address: String?) -> (open: [DrainReport.Open], pending: [String]) {
        waitQueue.async { [self] in try? readRegistry(client: waitClient) }
        return shared.withLock { s in
            var open: [DrainReport.Open] = []
            var pending: [String] = []
            for r in s.replicas.values.sorted(by: { $0.id < $1.id }) where r.id != replicaID && !r.stale {
                if r.appliedRevision < s.appliedRevision { pending.append(r.id) }
                for (key, counts) in r.busy ?? [:] {
                    guard let slash = key.firstIndex(of: "/"), key[..<slash] == pool else { continue }
                    let a = String(key[key.index(after: slash)...])
                    if let address, a != address { continue }
                    open.append(DrainReport.Open(replica: r.id, pool: pool, address: a,
                                                 inFlight: counts.first ?? 0, tunnels: counts.count > 1 ? counts[1] : 0))
                }
            }
            return (open, pending)
        }
    }
}
