import Dispatch
import Foundation
import Logging
import Synchronization
import TurnoutCore

/// Compare-and-swap writes of the routing document, and waiting until every replica applied one.
extension ClusterAgent {
    // MARK: writes

    var appliedRevision: UInt64 { shared.withLock { $0.appliedRevision } }

    /// No answer from etcd within `stale_after` (computed now, not at the last tick).
    var isStale: Bool {
        let now = DispatchTime.now().uptimeNanoseconds
        return shared.withLock { s in
            s.lastContact == 0 || Double(elapsed(from: s.lastContact, to: now)) / 1e6 > Double(config.staleAfterMs)
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
        var view = store.poolView()
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
                try readRegistry(client: writeClient)
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

    func unavailable(_ cause: String) -> AdminError {
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


    /// Reads the whole registry and replaces this replica's view of it.
    func readRegistry(client: EtcdClient) throws(EtcdError) {
        let (revision, kvs) = try client.range(config.replicasPrefix, prefix: true)
        contact(revision: revision)
        var replicas: [String: ReplicaRecord] = [:]
        for kv in kvs { if let r = ClusterJSON.decode(ReplicaRecord.self, kv.value) { replicas[r.id] = r } }
        shared.withLock { $0.replicas = replicas }
    }

    /// While a write waits for convergence, reads the registry every 10 ms (it is not watched).
    func pollRegistry() {
        dispatchPrecondition(condition: .onQueue(waitQueue))
        guard shared.withLock({ !$0.waiters.isEmpty }), !stopped.load(ordering: .relaxed) else {
            polling = false
            return
        }
        if (try? readRegistry(client: waitClient)) != nil { checkWaiters() }
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

    func checkWaiters() {
        let waiters = shared.withLock { Array($0.waiters) }
        for (id, w) in waiters where pending(revision: w.revision).isEmpty {
            _ = shared.withLock { $0.waiters.removeValue(forKey: id) }
            w.finish(pending: [])
        }
    }
}
