import Dispatch
import Logging
import TurnoutCore

/// Watches endpoints and pools that take no new requests until nothing is in flight there and
/// no tunnel is open: then publishes a `drained` event, and lets endpoints that were removed (or
/// vanished from DNS) leave their pool. Checks every 100 ms on its own queue, never a serving loop.
final class DrainWatcher: @unchecked Sendable {
    private let context: ProxyContext
    private let queue = DispatchQueue(label: "turnout.drain-watch")
    private var timer: DispatchSourceTimer?
    /// Endpoint ids that stopped taking requests and have not been reported drained yet.
    private var awaiting: [Int: (pool: String, address: String)] = [:]
    /// Ids that took requests at the last check (so a change to draining is noticed once).
    private var admitting: Set<Int> = []
    /// Pools whose weight went to 0 and that have not been reported drained yet.
    private var awaitingPools: Set<String> = []
    private var weighted: Set<String> = []

    init(context: ProxyContext) {
        self.context = context
    }

    func start() {
        queue.sync {
            let (admitting, weighted) = current()
            self.admitting = admitting
            self.weighted = weighted
            let t = DispatchSource.makeTimerSource(queue: queue)
            t.schedule(deadline: .now() + .milliseconds(100), repeating: .milliseconds(100), leeway: .milliseconds(20))
            t.setEventHandler { [weak self] in self?.check() }
            t.activate()
            timer = t
        }
    }

    func stop() {
        queue.sync {
            timer?.cancel()
            timer = nil
        }
    }

    private func current() -> (Set<Int>, Set<String>) {
        let weights = context.store.state.weights
        var admitting = Set<Int>()
        for (_, members) in context.store.members {
            for m in members where m.admitsRequests { admitting.insert(m.endpoint.id) }
        }
        return (admitting, Set(weights.filter { $0.value > 0 }.keys))
    }

    private func check() {
        let store = context.store
        let (nowAdmitting, nowWeighted) = current()
        let members = store.members
        for (pool, ms) in members {
            for m in ms where admitting.contains(m.endpoint.id) && !nowAdmitting.contains(m.endpoint.id) {
                awaiting[m.endpoint.id] = (pool.name, m.endpoint.address.description)
            }
        }
        for p in weighted where !nowWeighted.contains(p) { awaitingPools.insert(p) }
        for p in nowWeighted { awaitingPools.remove(p) }
        admitting = nowAdmitting
        weighted = nowWeighted
        let byID = Dictionary(members.flatMap { $0.members.map { ($0.endpoint.id, $0.endpoint) } }, uniquingKeysWith: { a, _ in a })
        for (id, where_) in awaiting {
            if nowAdmitting.contains(id) { awaiting[id] = nil; continue }
            let busy = byID[id]?.isBusy ?? false
            if !busy {
                awaiting[id] = nil
                publish(pool: where_.pool, endpoint: where_.address)
            }
        }
        for p in awaitingPools {
            guard let ms = members.first(where: { $0.pool.name == p })?.members else { awaitingPools.remove(p); continue }
            if !ms.contains(where: { $0.endpoint.isBusy }) {
                awaitingPools.remove(p)
                publish(pool: p, endpoint: nil)
            }
        }
        for e in store.releaseDrained() {
            context.logger.notice("endpoint \(e.address) left pool \(e.pool) (drained)")
        }
    }

    private func publish(pool: String, endpoint: String?) {
        let what = endpoint.map { "endpoint \($0) of pool \(pool)" } ?? "pool \(pool)"
        context.logger.notice("\(what) drained: nothing in flight, no tunnel open")
        var fields = [("pool", JSONWriter.quote(pool))]
        fields.append(("endpoint", endpoint.map(JSONWriter.quote) ?? "null"))
        context.events.publish(TurnoutEvent(kind: "drained", generation: context.store.state.generation,
                                            reason: "\(what) drained", fields: fields))
    }
}
