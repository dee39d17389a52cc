import Dispatch
import Foundation
import Logging
import Synchronization
import TurnoutCore

/// Resolves the `discovery` name of every pool that has one, on its own queue (never a serving
/// loop), and hands each answer's addresses to the routing store as `DiscoveryState` decides:
/// re-resolving on the TTL clamped to `min_ttl`/`max_ttl` with jitter, keeping the last good list
/// on errors, holding back an empty answer for a pool that carries traffic.
final class DiscoveryService: @unchecked Sendable {
    private let context: ProxyContext
    private let queue = DispatchQueue(label: "turnout.discovery")
    /// Per pool; queue-confined.
    private var states: [String: DiscoveryState] = [:]
    /// Bumped when a pool's discovery is replaced (reload), so a scheduled resolution of the old
    /// one ends its chain.
    private var epochs: [String: Int] = [:]
    private var stopped = false

    /// What `/v1/state` and `/metrics` show per discovered pool.
    struct Status: Sendable {
        var name: String
        var type: DNSRecordType
        var addresses = 0
        var resolutions: UInt64 = 0
        var errors: UInt64 = 0
        var lastError: String?
        var lastResolvedAtMs: Int64?
        /// Since when (Unix ms) an empty answer is being held back.
        var emptyHeldSinceMs: Int64?
        var nextInMs: Int64 = 0
    }
    private let statuses = Mutex<[String: Status]>([:])

    init(context: ProxyContext) {
        self.context = context
    }

    func status() -> [String: Status] { statuses.withLock { $0 } }

    private var resolver: DNSResolver {
        let configured = context.config.resolvers
        return DNSResolver(servers: configured.isEmpty ? DNSResolver.systemServers() : configured)
    }

    /// Resolves every discovered pool once (so the first health round probes what DNS has), then
    /// keeps resolving in the background.
    func start() {
        let pools = context.config.pools.filter { $0.discovery != nil }
        guard !pools.isEmpty else { return }
        queue.sync {
            for pool in pools { begin(pool.name, pool.discovery!) }
        }
    }

    func stop() {
        queue.async { [self] in stopped = true }
    }

    /// `,"discovery":{...}` for each discovered pool's object in `GET /v1/state`.
    func stateFields() -> [String: String] {
        var out: [String: String] = [:]
        for (pool, s) in status() {
            var j = ",\"discovery\":{\"dns\":\(JSONWriter.quote(s.name)),\"type\":\"\(s.type.rawValue)\",\"addresses\":\(s.addresses)"
            j += ",\"resolutions\":\(s.resolutions),\"errors\":\(s.errors),\"last_error\":\(s.lastError.map(JSONWriter.quote) ?? "null")"
            j += ",\"last_resolved_at\":\(s.lastResolvedAtMs.map { JSONWriter.quote(Timestamp.iso8601(Date(timeIntervalSince1970: Double($0) / 1000))) } ?? "null")"
            j += ",\"empty_answer_held_since\":\(s.emptyHeldSinceMs.map { JSONWriter.quote(Timestamp.iso8601(Date(timeIntervalSince1970: Double($0) / 1000))) } ?? "null")"
            j += ",\"next_resolution_ms\":\(s.nextInMs)}"
            out[pool] = j
        }
        return out
    }

    /// After a reload: starts discovery of new or changed names, stops it for pools that lost it.
    func reconfigure(_ config: TurnoutConfig) {
        queue.async { [self] in
            guard !stopped else { return }
            let wanted = Dictionary(config.pools.compactMap { p in p.discovery.map { (p.name, $0) } }, uniquingKeysWith: { a, _ in a })
            for (pool, state) in states where wanted[pool] != state.config {
                states[pool] = nil
                epochs[pool, default: 0] += 1
                statuses.withLock { $0[pool] = nil }
                if wanted[pool] == nil, config.pools.contains(where: { $0.name == pool }) {
                    context.store.setDiscovered(pool: pool, [])
                }
            }
            for (pool, d) in wanted where states[pool] == nil { begin(pool, d) }
        }
    }

    private func begin(_ pool: String, _ d: DiscoveryConfig) {
        states[pool] = DiscoveryState(config: d)
        statuses.withLock { $0[pool] = Status(name: d.name, type: d.type) }
        resolve(pool, epoch: epochs[pool, default: 0])
    }

    private func resolve(_ pool: String, epoch: Int) {
        guard !stopped, epochs[pool, default: 0] == epoch, var state = states[pool] else { return }
        let d = state.config
        let jitter = Double.random(in: -1...1)
        let nowMs = Int64(DispatchTime.now().uptimeNanoseconds / 1_000_000)
        let wallMs = Int64(Date().timeIntervalSince1970 * 1000)
        let next: Int64
        do throws(DNSResolver.Failure) {
            let (addresses, ttl) = try resolver.discover(d)
            let routing = context.store.state
            let carries = (routing.weights[pool] ?? 0) > 0 || routing.live == pool
            let (decision, delay) = state.answer(addresses, ttlSeconds: ttl, nowMs: nowMs, carriesTraffic: carries, jitter: jitter)
            next = delay
            var held: Int64?
            switch decision {
            case .keep:
                break
            case .apply(let list):
                apply(pool, d, list)
            case .applyEmpty:
                context.logger.error("pool \(pool): DNS \(d.type.rawValue) \(d.name) has had no address for \(DurationParser.format(milliseconds: d.confirmEmptyMs)); the pool loses its discovered endpoints")
                apply(pool, d, [])
            case .holdEmpty(let remaining, let first):
                held = wallMs - (d.confirmEmptyMs - remaining)
                if first {
                    context.logger.error("pool \(pool) carries traffic but DNS \(d.type.rawValue) \(d.name) answered with no address; keeping its \(state.applied?.count ?? 0) endpoint(s) unless the answer is still empty after \(DurationParser.format(milliseconds: d.confirmEmptyMs))")
                    context.events.publish(TurnoutEvent(kind: "discovery_empty_held", generation: context.store.state.generation,
                                                        reason: "DNS \(d.name) answered with no address; not applied for \(DurationParser.format(milliseconds: d.confirmEmptyMs))",
                                                        fields: [("pool", JSONWriter.quote(pool))]))
                }
            }
            statuses.withLock {
                $0[pool]?.resolutions += 1
                $0[pool]?.lastError = nil
                $0[pool]?.lastResolvedAtMs = wallMs
                $0[pool]?.emptyHeldSinceMs = held
                $0[pool]?.addresses = state.applied?.count ?? 0
                $0[pool]?.nextInMs = next
            }
        } catch {
            next = state.failed(jitter: jitter)
            let first = state.consecutiveErrors == 1
            statuses.withLock {
                $0[pool]?.errors += 1
                $0[pool]?.lastError = error.description
                $0[pool]?.nextInMs = next
            }
            if first {
                context.logger.warning("pool \(pool): resolving \(d.type.rawValue) \(d.name) failed (\(error)); keeping the last \(state.applied?.count ?? 0) address(es), retrying")
            }
        }
        states[pool] = state
        queue.asyncAfter(deadline: .now() + .milliseconds(Int(next))) { [self] in resolve(pool, epoch: epoch) }
    }

    private func apply(_ pool: String, _ d: DiscoveryConfig, _ list: [DiscoveredAddress]) {
        let change = context.store.setDiscovered(pool: pool, list)
        let added = change.added.map(\.address.description)
        // Vanished addresses drain first; the store reports them when they leave.
        context.logger.notice("pool \(pool): DNS \(d.type.rawValue) \(d.name) gives \(list.count) address(es)\(added.isEmpty ? "" : ", new: \(added.joined(separator: " "))")")
        context.events.publish(TurnoutEvent(kind: "discovery", generation: context.store.state.generation,
                                            reason: "DNS \(d.name): \(list.count) address(es)",
                                            fields: [("pool", JSONWriter.quote(pool)),
                                                     ("addresses", "[" + list.map { JSONWriter.quote($0.address.description) }.joined(separator: ",") + "]")]))
    }
}
