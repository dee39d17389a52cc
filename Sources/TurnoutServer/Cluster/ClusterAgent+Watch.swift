import Dispatch
import Foundation
import Logging
import Synchronization
import TurnoutCore

/// The watch on the cluster's keys: its own thread, resumed from the last revision seen.
extension ClusterAgent {
    // MARK: the watch

    func watchLoop(from revision: UInt64) {
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

    func handle(_ e: EtcdEvent) {
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
}
