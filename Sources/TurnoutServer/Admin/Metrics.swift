import Foundation
import TurnoutCore

/// `GET /metrics`: the Prometheus text exposition (format 0.0.4) of traffic, latency, health,
/// routing and connection counters.
struct MetricsRenderer {
    let store: RoutingStore
    let traffic: TrafficStats
    let probes: [Int: (pass: UInt64, fail: UInt64)]
    let connections: [Int: UpstreamConnectionCounts]
    let clientConnections: Int
    /// Cluster mode: the agent's view (nil on a single node: no cluster metrics).
    var cluster: ClusterAgent.Status?
    var clusterIsDriver = false
    /// Outlier ejections per endpoint id and trigger, and refused ejections per pool.
    var outliers: (ejections: [Int: [String: UInt64]], refused: [String: UInt64]) = ([:], [:])
    /// Discovery status per discovered pool.
    var discovery: [String: DiscoveryService.Status] = [:]

    /// Histogram bucket edges in seconds.
    static let buckets: [Double] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]

    private var out = ""

    init(store: RoutingStore, traffic: TrafficStats, probes: [Int: (pass: UInt64, fail: UInt64)],
         connections: [Int: UpstreamConnectionCounts], clientConnections: Int) {
        self.store = store
        self.traffic = traffic
        self.probes = probes
        self.connections = connections
        self.clientConnections = clientConnections
    }

    static func label(_ s: String) -> String {
        s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"").replacingOccurrences(of: "\n", with: "\\n")
    }

    private mutating func family(_ name: String, _ type: String, _ help: String) {
        out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
    }

    private mutating func sample(_ name: String, _ labels: [(String, String)], _ value: String) {
        if labels.isEmpty {
            out += "\(name) \(value)\n"
        } else {
            out += "\(name){" + labels.map { "\($0.0)=\"\(Self.label($0.1))\"" }.joined(separator: ",") + "} \(value)\n"
        }
    }

    static func seconds(_ micros: UInt64) -> String { String(format: "%.6f", Double(micros) / 1_000_000) }

    mutating func render() -> String {
        let (state, health) = store.snapshot()
        let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"]

        family("turnout_requests_total", "counter", "Responses sent to clients, by pool, endpoint and status class (endpoint \"none\": no healthy endpoint was found).")
        for entry in store.endpoints {
            for e in entry.endpoints {
                let s = traffic.endpoints[e.id] ?? EndpointStats()
                for (i, c) in classes.enumerated() {
                    sample("turnout_requests_total", [("pool", entry.pool.name), ("endpoint", e.address.description), ("class", c)], "\(s.byClass[i + 1])")
                }
            }
            let none = traffic.poolOnly[entry.pool.name] ?? EndpointStats()
            for (i, c) in classes.enumerated() {
                sample("turnout_requests_total", [("pool", entry.pool.name), ("endpoint", "none"), ("class", c)], "\(none.byClass[i + 1])")
            }
        }

        family("turnout_proxy_errors_total", "counter", "502, 503 and 504 answers Turnout generated, counted against the pool the request was meant for.")
        for entry in store.endpoints {
            let ids = entry.endpoints.map(\.id)
            sample("turnout_proxy_errors_total", [("pool", entry.pool.name)], "\(traffic.pool(entry.pool.name, endpointIDs: ids).proxyErrors)")
        }

        family("turnout_grpc_errors_total", "counter", "gRPC calls answered with a grpc-status in routing.grpc_error_codes, by pool (not in turnout_requests_total's 5xx: the HTTP status was 200).")
        for entry in store.endpoints {
            sample("turnout_grpc_errors_total", [("pool", entry.pool.name)], "\(traffic.pool(entry.pool.name, endpointIDs: entry.endpoints.map(\.id)).grpcErrors)")
        }

        family("turnout_request_duration_seconds", "histogram", "Time from a complete request head to the end of the response, by pool (bucket edges are exact to about 6%).")
        for entry in store.endpoints {
            let h = traffic.pool(entry.pool.name, endpointIDs: entry.endpoints.map(\.id)).latency
            for b in Self.buckets {
                sample("turnout_request_duration_seconds_bucket", [("pool", entry.pool.name), ("le", String(b))], "\(h.count(atMost: UInt64(b * 1_000_000)))")
            }
            sample("turnout_request_duration_seconds_bucket", [("pool", entry.pool.name), ("le", "+Inf")], "\(h.total)")
            sample("turnout_request_duration_seconds_sum", [("pool", entry.pool.name)], Self.seconds(h.sumMicros))
            sample("turnout_request_duration_seconds_count", [("pool", entry.pool.name)], "\(h.total)")
        }

        family("turnout_endpoint_request_duration_seconds", "summary", "Latency quantiles per endpoint since start.")
        for entry in store.endpoints {
            for e in entry.endpoints {
                let h = traffic.endpoints[e.id]?.latency ?? LatencyHistogram()
                for q in [0.5, 0.9, 0.99] {
                    let v = h.quantile(q).map(Self.seconds) ?? "NaN"
                    sample("turnout_endpoint_request_duration_seconds", [("pool", entry.pool.name), ("endpoint", e.address.description), ("quantile", String(q))], v)
                }
                sample("turnout_endpoint_request_duration_seconds_sum", [("pool", entry.pool.name), ("endpoint", e.address.description)], Self.seconds(h.sumMicros))
                sample("turnout_endpoint_request_duration_seconds_count", [("pool", entry.pool.name), ("endpoint", e.address.description)], "\(h.total)")
            }
        }

        family("turnout_in_flight_requests", "gauge", "Requests being served by each endpoint now.")
        for entry in store.endpoints {
            for e in entry.endpoints {
                sample("turnout_in_flight_requests", [("pool", entry.pool.name), ("endpoint", e.address.description)], "\(max(0, e.inFlight.load(ordering: .relaxed)))")
            }
        }

        family("turnout_endpoint_healthy", "gauge", "1 when the endpoint takes traffic, 0 when unhealthy or not yet probed.")
        for entry in store.endpoints {
            for e in entry.endpoints {
                sample("turnout_endpoint_healthy", [("pool", entry.pool.name), ("endpoint", e.address.description)], health[e.id] == .healthy ? "1" : "0")
            }
        }

        family("turnout_health_probes_total", "counter", "Health probe results per endpoint.")
        for entry in store.endpoints {
            for e in entry.endpoints {
                let p = probes[e.id] ?? (0, 0)
                sample("turnout_health_probes_total", [("pool", entry.pool.name), ("endpoint", e.address.description), ("result", "pass")], "\(p.pass)")
                sample("turnout_health_probes_total", [("pool", entry.pool.name), ("endpoint", e.address.description), ("result", "fail")], "\(p.fail)")
            }
        }

        family("turnout_upstream_connections", "gauge", "Upstream connections per endpoint, open (busy and idle) and idle.")
        for entry in store.endpoints {
            for e in entry.endpoints {
                let c = connections[e.id] ?? UpstreamConnectionCounts()
                sample("turnout_upstream_connections", [("pool", entry.pool.name), ("endpoint", e.address.description), ("state", "open")], "\(c.open)")
                sample("turnout_upstream_connections", [("pool", entry.pool.name), ("endpoint", e.address.description), ("state", "idle")], "\(c.idle)")
            }
        }

        family("turnout_upstream_connections_opened_total", "counter", "Upstream connections opened to carry requests (health probes not counted).")
        for entry in store.endpoints {
            for e in entry.endpoints {
                let c = connections[e.id]?.churn ?? UpstreamChurn()
                sample("turnout_upstream_connections_opened_total", [("pool", entry.pool.name), ("endpoint", e.address.description)], "\(c.opened)")
            }
        }
        family("turnout_upstream_connections_reused_total", "counter", "Requests sent on an idle keep-alive upstream connection instead of a new one.")
        for entry in store.endpoints {
            for e in entry.endpoints {
                let c = connections[e.id]?.churn ?? UpstreamChurn()
                sample("turnout_upstream_connections_reused_total", [("pool", entry.pool.name), ("endpoint", e.address.description)], "\(c.reused)")
            }
        }
        family("turnout_upstream_connections_closed_total", "counter", "Upstream connections closed, by reason: idle_timeout, idle_limit, upstream_closed, not_reusable, unhealthy, shutdown.")
        for entry in store.endpoints {
            for e in entry.endpoints {
                let c = connections[e.id]?.churn ?? UpstreamChurn()
                for r in UpstreamCloseReason.allCases {
                    sample("turnout_upstream_connections_closed_total", [("pool", entry.pool.name), ("endpoint", e.address.description), ("reason", r.label)], "\(c.closed[r.rawValue])")
                }
            }
        }

        family("turnout_endpoint_state", "gauge", "1 for each endpoint's state: serving, draining, maintenance (leaving endpoints count as draining).")
        let ejected = store.ejectedIDs
        for (pool, members) in store.members {
            for m in members {
                for st in EndpointAdminState.allCases {
                    sample("turnout_endpoint_state", [("pool", pool.name), ("endpoint", m.endpoint.address.description), ("state", st.rawValue)], m.state == st ? "1" : "0")
                }
            }
        }
        family("turnout_endpoint_ejected", "gauge", "1 while outlier detection keeps the endpoint out of rotation.")
        for (pool, members) in store.members {
            for m in members {
                sample("turnout_endpoint_ejected", [("pool", pool.name), ("endpoint", m.endpoint.address.description)], ejected.contains(m.endpoint.id) ? "1" : "0")
            }
        }
        family("turnout_outlier_ejections_total", "counter", "Ejections by outlier detection, by trigger: consecutive_failures, consecutive_5xx.")
        for (pool, members) in store.members {
            for m in members {
                let e = outliers.ejections[m.endpoint.id] ?? [:]
                for trigger in ["consecutive_failures", "consecutive_5xx"] {
                    sample("turnout_outlier_ejections_total", [("pool", pool.name), ("endpoint", m.endpoint.address.description), ("trigger", trigger)], "\(e[trigger] ?? 0)")
                }
            }
        }
        family("turnout_outlier_ejections_refused_total", "counter", "Ejections not made because max_ejected_percent of the pool was already ejected.")
        for name in store.poolNames { sample("turnout_outlier_ejections_refused_total", [("pool", name)], "\(outliers.refused[name] ?? 0)") }
        if !discovery.isEmpty {
            family("turnout_discovery_addresses", "gauge", "Addresses in the applied DNS answer of a discovered pool.")
            for (pool, d) in discovery.sorted(by: { $0.key < $1.key }) { sample("turnout_discovery_addresses", [("pool", pool)], "\(d.addresses)") }
            family("turnout_discovery_resolutions_total", "counter", "DNS resolutions of a discovered pool, by result: ok, error.")
            for (pool, d) in discovery.sorted(by: { $0.key < $1.key }) {
                sample("turnout_discovery_resolutions_total", [("pool", pool), ("result", "ok")], "\(d.resolutions)")
                sample("turnout_discovery_resolutions_total", [("pool", pool), ("result", "error")], "\(d.errors)")
            }
            family("turnout_discovery_empty_held", "gauge", "1 while an empty DNS answer for a pool carrying traffic is held back (confirm_empty).")
            for (pool, d) in discovery.sorted(by: { $0.key < $1.key }) { sample("turnout_discovery_empty_held", [("pool", pool)], d.emptyHeldSinceMs == nil ? "0" : "1") }
        }

        family("turnout_client_connections", "gauge", "Client connections open now.")
        sample("turnout_client_connections", [], "\(clientConnections)")

        family("turnout_pool_weight_percent", "gauge", "Current traffic weight of each pool in percent.")
        for name in store.poolNames {
            sample("turnout_pool_weight_percent", [("pool", name)], Percent.format(basisPoints: state.weights[name] ?? 0))
        }
        family("turnout_pool_live", "gauge", "1 for the live pool.")
        for name in store.poolNames { sample("turnout_pool_live", [("pool", name)], name == state.live ? "1" : "0") }

        renderMirror(state.mirror)

        family("turnout_generation", "gauge", "Generation of the routing state (bumped by every change).")
        sample("turnout_generation", [], "\(state.generation)")

        family("turnout_ramp_step", "gauge", "Current ramp step (1-based), 0 without a ramp or in its mirroring step.")
        sample("turnout_ramp_step", [], state.ramp.map { $0.isMirroring ? "0" : "\($0.step + 1)" } ?? "0")
        family("turnout_ramp_weight_percent", "gauge", "The ramping pool's weight at the current step, 0 without a ramp.")
        sample("turnout_ramp_weight_percent", [], state.ramp.map { Percent.format(basisPoints: $0.currentWeight) } ?? "0")
        family("turnout_ramp_status", "gauge", "1 for the status of the current or last ramp.")
        for st in ["running", "paused", "completed", "rolled_back", "aborted"] {
            sample("turnout_ramp_status", [("status", st)], state.ramp?.status.rawValue == st ? "1" : "0")
        }
        if let c = cluster {
            family("turnout_cluster_connected", "gauge", "1 while the watch on etcd is open and the last heartbeat read answered.")
            sample("turnout_cluster_connected", [], c.connected ? "1" : "0")
            family("turnout_cluster_applied_revision", "gauge", "The etcd revision of the routing document this replica routes by.")
            sample("turnout_cluster_applied_revision", [], "\(c.appliedRevision)")
            family("turnout_cluster_stale_seconds", "gauge", "Seconds since etcd last answered, while the replica is stale (0 otherwise).")
            sample("turnout_cluster_stale_seconds", [], String(format: "%.3f", c.staleSeconds))
            family("turnout_cluster_replicas", "gauge", "Live replicas in the cluster registry (this one included).")
            sample("turnout_cluster_replicas", [], "\(c.replicas.count)")
            family("turnout_cluster_ramp_driver", "gauge", "1 while this replica holds the ramp-driver key.")
            sample("turnout_cluster_ramp_driver", [], clusterIsDriver ? "1" : "0")
            family("turnout_cluster_watch_restarts_total", "counter", "Times the watch on etcd broke and was opened again.")
            sample("turnout_cluster_watch_restarts_total", [], "\(c.watchRestarts)")
            family("turnout_cluster_write_conflicts_total", "counter", "Writes whose compare-and-swap found the routing document changed by another writer.")
            sample("turnout_cluster_write_conflicts_total", [], "\(c.writeConflicts)")
        }
        return out
    }

    /// The mirror's own figures, for every pool that has been or is the mirror pool.
    private mutating func renderMirror(_ mirror: MirrorSpec?) {
        let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"]
        family("turnout_mirror_percent", "gauge", "Share of eligible requests copied to the mirror pool, in percent (0: mirroring off).")
        for name in store.poolNames {
            sample("turnout_mirror_percent", [("pool", name)], mirror?.pool == name ? Percent.format(basisPoints: mirror!.percentBP) : "0")
        }
        var pools = Set(traffic.mirror.keys).union(traffic.mirrorDropped.keys)
        if let m = mirror { pools.insert(m.pool) }
        let names = pools.sorted()
        family("turnout_mirror_requests_total", "counter", "Mirror copies answered, by mirror pool and status class (Turnout's own 502/503/504 for a copy that failed included).")
        for name in names {
            let s = traffic.mirror[name] ?? EndpointStats()
            for (i, c) in classes.enumerated() { sample("turnout_mirror_requests_total", [("pool", name), ("class", c)], "\(s.byClass[i + 1])") }
        }
        family("turnout_mirror_errors_total", "counter", "Mirror copies that got no answer from the mirror pool (connect failure, reset, timeout).")
        for name in names { sample("turnout_mirror_errors_total", [("pool", name)], "\(traffic.mirror[name]?.proxyErrors ?? 0)") }
        family("turnout_mirror_request_duration_seconds", "summary", "Latency quantiles of mirror copies since start.")
        for name in names {
            let h = traffic.mirror[name]?.latency ?? LatencyHistogram()
            for q in [0.5, 0.9, 0.99] {
                sample("turnout_mirror_request_duration_seconds", [("pool", name), ("quantile", String(q))], h.quantile(q).map(Self.seconds) ?? "NaN")
            }
            sample("turnout_mirror_request_duration_seconds_sum", [("pool", name)], Self.seconds(h.sumMicros))
            sample("turnout_mirror_request_duration_seconds_count", [("pool", name)], "\(h.total)")
        }
        family("turnout_mirror_dropped_total", "counter", "Requests selected for mirroring but not copied, by reason: busy, unavailable, body_too_large, incomplete.")
        for name in names {
            let d = traffic.mirrorDropped[name] ?? []
            for r in MirrorDrop.allCases {
                sample("turnout_mirror_dropped_total", [("pool", name), ("reason", r.label)], "\(d.indices.contains(r.rawValue) ? d[r.rawValue] : 0)")
            }
        }
    }
}
