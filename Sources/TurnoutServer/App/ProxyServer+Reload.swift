import Dispatch
import Foundation
import Logging
import TurnoutCore

/// What a reload did.
public struct ReloadOutcome: Sendable {
    /// Human-readable changes that took effect, e.g. "pool canary added".
    public var changes: [String] = []
    /// Settings that changed in the file but only take effect after a restart.
    public var restartRequired: [String] = []
}

/// Why a reload changed nothing.
public enum ReloadError: Error, Sendable, CustomStringConvertible {
    /// The new config has problems (every one is listed); the old config stays in force.
    case invalid([String])
    /// The new config is valid but cannot be applied to the running state (the reason says why).
    case refused(String)

    public var description: String {
        switch self {
        case .invalid(let problems): return "the new config is invalid: " + problems.joined(separator: "; ")
        case .refused(let reason): return "the new config was refused: \(reason)"
        }
    }
}

private let reloadQueue = DispatchQueue(label: "turnout.reload")

extension ProxyServer {
    /// Reads the config file again and applies it without dropping a connection: pools and
    /// endpoints (kept endpoints keep their health and connections; new ones are probed before
    /// they take traffic; removed ones get no new requests and their idle connections close),
    /// routing options, health settings, timeouts, limits, listeners (new ones bind, removed ones
    /// stop accepting while their connections finish) and TLS certificates. Runtime weights and
    /// the live pool are kept. Anything wrong changes nothing. Serialised: SIGHUP and
    /// `POST /v1/reload` never interleave.
    public func reload() -> Result<ReloadOutcome, ReloadError> {
        reloadQueue.sync {
            let result = applyReload()
            switch result {
            case .success(let outcome):
                let what = outcome.changes.isEmpty ? "nothing changed" : outcome.changes.joined(separator: "; ")
                logger.notice("config reloaded: \(what)")
                if !outcome.restartRequired.isEmpty {
                    logger.warning("config changes that need a restart were not applied: \(outcome.restartRequired.joined(separator: "; "))")
                }
                context.events.publish(TurnoutEvent(kind: "reload", generation: store.state.generation, reason: what, fields: []))
            case .failure(let error):
                logger.error("config not reloaded, the running config is kept: \(error)")
            }
            return result
        }
    }

    private func applyReload() -> Result<ReloadOutcome, ReloadError> {
        guard let path = configPath else { return .failure(.refused("this proxy was not started from a config file")) }
        guard !context.isDraining else { return .failure(.refused("the proxy is shutting down")) }
        let new: TurnoutConfig
        do {
            new = try ConfigLoader.load(path: path)
        } catch {
            return .failure(.invalid(error.problems.map(\.description)))
        }
        let old = config
        let tlsProblems = Self.tlsProblems(new)
        if !tlsProblems.isEmpty { return .failure(.invalid(tlsProblems)) }
        var outcome = ReloadOutcome()
        if new.effectiveWorkers != old.effectiveWorkers { outcome.restartRequired.append("workers") }
        if new.io != old.io { outcome.restartRequired.append("io") }
        if new.admin != old.admin { outcome.restartRequired.append("admin") }
        if new.stateFile != old.stateFile { outcome.restartRequired.append("state_file") }
        if new.accessLog != old.accessLog { outcome.restartRequired.append("access_log") }
        if new.logFormat != old.logFormat { outcome.restartRequired.append("log_format") }

        // Listeners: bind the new ones first, so a port in use changes nothing.
        let current = listenerSnapshot()
        var bound: [Listener] = []
        var kept: [(Listener, ListenerConfig)] = []
        for (i, l) in new.listeners.enumerated() {
            let isTLS = l.tls != nil
            let unclaimed = current.filter { c in !kept.contains { $0.0 === c } }
            if let existing = unclaimed.first(where: { $0.config.address == l.address && ($0.config.tls != nil) == isTLS }) {
                kept.append((existing, l))
                continue
            }
            if l.address.port != 0, let existing = unclaimed.first(where: { $0.config.address == l.address }) {
                // The socket is bound with the other protocol: it stays as it is until a restart.
                outcome.restartRequired.append("listeners[\(i)] (\(l.address)): turning TLS on or off")
                kept.append((existing, existing.config))
                continue
            }
            do {
                bound.append(try makeListener(l))
            } catch {
                for b in bound { b.close() }
                return .failure(.invalid(["listeners[\(i)] (\(l.address)): \(error)"]))
            }
        }

        // Pools and endpoints: the routing store refuses removals that would strand traffic.
        let stateFile = self.stateFile
        let reconfiguration: RoutingStore.Reconfiguration
        do {
            reconfiguration = try store.reconfigure(new, persist: { (state: RoutingState) throws(ReloadError) in
                guard let stateFile else { return }
                do { try stateFile.write(state) } catch {
                    throw ReloadError.refused("cannot write the state file: \(error)")
                }
            }, refuse: { ReloadError.refused($0) })
        } catch {
            for b in bound { b.close() }
            return .failure(error)
        }

        // From here on nothing can fail: publish the new settings.
        var applied = new
        applied.workers = old.workers
        applied.io = old.io
        applied.admin = old.admin
        applied.stateFile = old.stateFile
        applied.accessLog = old.accessLog
        applied.logFormat = old.logFormat
        context.replace(config: applied)
        discovery.reconfigure(applied)
        for (l, cfg) in kept {
            if let tls = l.tls, let newTLS = cfg.tls {
                do {
                    try tls.replace(config: newTLS)
                } catch {
                    outcome.changes.append("\(l.address): TLS certificates not reloaded (\(error)), the old ones stay in use")
                }
            }
        }
        let removedListeners = current.filter { c in !kept.contains { $0.0 === c } }
        for l in removedListeners { l.close() }
        for l in bound {
            l.start()
            logger.notice("listening on \(l.address)")
        }
        replaceListeners(kept: kept.map(\.0), added: bound)

        for p in reconfiguration.addedPools { outcome.changes.append("pool \(p) added (weight 0)") }
        for p in reconfiguration.removedPools { outcome.changes.append("pool \(p) removed") }
        for e in reconfiguration.added where !reconfiguration.addedPools.contains(e.pool) {
            outcome.changes.append("endpoint \(e.address) added to pool \(e.pool)")
        }
        for e in reconfiguration.removed where !reconfiguration.removedPools.contains(e.pool) {
            outcome.changes.append("endpoint \(e.address) removed from pool \(e.pool)")
        }
        for l in bound { outcome.changes.append("listener \(l.address) added") }
        for l in removedListeners { outcome.changes.append("listener \(l.config.address) removed") }
        if new.routing.sticky != old.routing.sticky || new.routing.previewHeader != old.routing.previewHeader
            || new.routing.failover != old.routing.failover { outcome.changes.append("routing options changed") }
        if new.pools.map(\.balance) != old.pools.map(\.balance) || new.pools.map(\.maxIdleConnections) != old.pools.map(\.maxIdleConnections) {
            outcome.changes.append("pool settings changed")
        }
        if new.health != old.health { outcome.changes.append("health settings changed") }
        if new.resolvers != old.resolvers || new.pools.map(\.discovery) != old.pools.map(\.discovery) {
            outcome.changes.append("discovery settings changed")
        }
        if new.pools.map(\.outlierDetection) != old.pools.map(\.outlierDetection) { outcome.changes.append("outlier detection changed") }
        if new.timeouts != old.timeouts { outcome.changes.append("timeouts changed") }
        if new.limits != old.limits { outcome.changes.append("limits changed") }
        if kept.contains(where: { $0.0.tls != nil }) { outcome.changes.append("TLS certificates reloaded") }
        return .success(outcome)
    }
}
