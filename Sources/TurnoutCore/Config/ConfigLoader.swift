import Foundation
import Yams

/// Reads a YAML config file into a validated `TurnoutConfig`, collecting every problem with the key
/// path where it was found (`pools.blue.endpoints[1]: invalid port "99999"`), never only the first.
public enum ConfigLoader {
    public static func load(path: String) throws(ConfigErrors) -> TurnoutConfig {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigErrors(problems: [ConfigProblem("cannot read config file \(path): \(error.localizedDescription)")])
        }
        return try parse(yaml: text, baseDirectory: (path as NSString).deletingLastPathComponent)
    }

    /// Parses config text. Relative file paths in the config (TLS files, token file) are resolved
    /// against `baseDirectory` when they do not exist relative to the working directory.
    public static func parse(yaml: String, baseDirectory: String = ".") throws(ConfigErrors) -> TurnoutConfig {
        var reader = Reader()
        reader.baseDirectory = baseDirectory
        let root: Node
        do {
            guard let node = try Yams.compose(yaml: yaml) else {
                throw ConfigErrors(problems: [ConfigProblem("the config file is empty")])
            }
            root = node
        } catch let error as ConfigErrors {
            throw error
        } catch {
            throw ConfigErrors(problems: [ConfigProblem("not valid YAML: \(error)")])
        }
        let config = reader.readRoot(root)
        if let config, reader.problems.isEmpty { return config }
        throw ConfigErrors(problems: reader.problems)
    }
}

private struct Reader {
    var problems: [ConfigProblem] = []
    var baseDirectory = ""

    mutating func fail(_ path: String, _ message: String) {
        problems.append(ConfigProblem(message, path: path))
    }

    /// Returns the mapping's entries keyed by string, reporting non-string keys, duplicates and keys
    /// outside `allowed`.
    mutating func entries(_ node: Node, _ path: String, allowed: Set<String>?) -> [(String, Node)]? {
        guard case .mapping(let mapping) = node else {
            fail(path, "expected a mapping (key: value pairs), got \(describe(node))")
            return nil
        }
        var seen = Set<String>()
        var out: [(String, Node)] = []
        for (key, value) in mapping {
            guard case .scalar(let k) = key else {
                fail(path, "keys must be plain strings")
                continue
            }
            let name = k.string
            let childPath = path.isEmpty ? name : "\(path).\(name)"
            if !seen.insert(name).inserted {
                fail(childPath, "duplicate key")
                continue
            }
            if let allowed, !allowed.contains(name) {
                fail(childPath, "unknown key (expected one of: \(allowed.sorted().joined(separator: ", ")))")
                continue
            }
            out.append((name, value))
        }
        return out
    }

    func describe(_ node: Node) -> String {
        switch node {
        case .scalar(let s): return "\"\(s.string)\""
        case .mapping: return "a mapping"
        case .sequence: return "a list"
        case .alias: return "an alias"
        }
    }

    mutating func string(_ node: Node, _ path: String) -> String? {
        guard case .scalar(let s) = node else {
            fail(path, "expected a string, got \(describe(node))")
            return nil
        }
        return s.string
    }

    /// One of an enum's raw values; anything else names them all ("expected a or b, got ...").
    mutating func choice<E: RawRepresentable & CaseIterable>(_ node: Node, _ path: String) -> E? where E.RawValue == String {
        guard let s = string(node, path) else { return nil }
        if let value = E(rawValue: s) { return value }
        fail(path, "expected \(E.allCases.map(\.rawValue).joined(separator: " or ")), got \"\(s)\"")
        return nil
    }

    mutating func nonEmptyString(_ node: Node, _ path: String) -> String? {
        guard let s = string(node, path) else { return nil }
        if s.isEmpty { fail(path, "must not be empty"); return nil }
        return s
    }

    mutating func bool(_ node: Node, _ path: String) -> Bool? {
        guard case .scalar(let s) = node else { fail(path, "expected true or false, got \(describe(node))"); return nil }
        switch s.string.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default: fail(path, "expected true or false, got \"\(s.string)\""); return nil
        }
    }

    mutating func int(_ node: Node, _ path: String, min: Int, max: Int) -> Int? {
        guard case .scalar(let s) = node, let v = Int(s.string) else {
            fail(path, "expected a whole number, got \(describe(node))")
            return nil
        }
        guard v >= min, v <= max else { fail(path, "must be between \(min) and \(max), got \(v)"); return nil }
        return v
    }

    mutating func duration(_ node: Node, _ path: String, allowZero: Bool = false) -> Int64? {
        guard case .scalar(let s) = node, let ms = DurationParser.milliseconds(s.string) else {
            fail(path, "expected a duration such as 500ms, 2s, 1m, got \(describe(node))")
            return nil
        }
        if ms == 0 && !allowZero { fail(path, "must be greater than zero"); return nil }
        return ms
    }

    mutating func hostPort(_ node: Node, _ path: String, allowPortZero: Bool) -> HostPort? {
        guard let text = string(node, path) else { return nil }
        switch HostPort.parse(text, allowPortZero: allowPortZero) {
        case .success(let hp): return hp
        case .failure(let p): fail(path, p.message); return nil
        }
    }

    mutating func readRoot(_ root: Node) -> TurnoutConfig? {
        let allowed: Set<String> = [
            "workers", "io", "listeners", "admin", "state_file", "pools", "routing", "health", "timeouts", "limits", "access_log", "cluster",
            "resolvers", "log_format",
        ]
        guard let items = entries(root, "", allowed: allowed) else { return nil }
        var workers: Int?
        var io = IOMode.epoll
        var listeners: [ListenerConfig] = []
        var admin = AdminConfig()
        var stateFile: String?
        var pools: [PoolConfig] = []
        var routingNode: Node?
        var health = HealthConfig()
        var timeouts = TimeoutConfig()
        var limits = LimitsConfig()
        var accessLog = true
        var logFormat = LogFormat.text
        var cluster: ClusterConfig?
        var resolvers: [HostPort] = []
        var sawListeners = false
        var sawPools = false
        for (key, value) in items {
            switch key {
            case "workers":
                if case .scalar(let s) = value, s.string == "auto" { workers = nil } else {
                    workers = int(value, "workers", min: 1, max: 256)
                }
            case "io": io = choice(value, "io") ?? io
            case "listeners":
                sawListeners = true
                listeners = readListeners(value)
            case "admin": admin = readAdmin(value) ?? admin
            case "state_file": stateFile = nonEmptyString(value, "state_file")
            case "pools":
                sawPools = true
                pools = readPools(value)
            case "routing": routingNode = value
            case "health": health = readHealth(value)
            case "timeouts": timeouts = readTimeouts(value)
            case "limits": limits = readLimits(value)
            case "access_log": accessLog = bool(value, "access_log") ?? true
            case "log_format": logFormat = choice(value, "log_format") ?? logFormat
            case "cluster": cluster = readCluster(value)
            case "resolvers":
                guard case .sequence(let seq) = value, !seq.isEmpty else {
                    fail("resolvers", "expected a list of DNS servers as host:port, e.g. [\"127.0.0.1:53\"]")
                    continue
                }
                for (i, r) in seq.enumerated() {
                    guard let hp = hostPort(r, "resolvers[\(i)]", allowPortZero: false) else { continue }
                    if !hp.host.contains(":") && !hp.host.allSatisfy({ $0.isNumber || $0 == "." }) {
                        fail("resolvers[\(i)]", "a resolver must be an IP address, not a name (\(hp.host))")
                    } else {
                        resolvers.append(hp)
                    }
                }
            default: break
            }
        }
        if !sawListeners { fail("listeners", "at least one listener is required") }
        if !sawPools { fail("pools", "at least one pool is required") }
        let routing = readRouting(routingNode, pools: pools)
        var seenAddresses = Set<String>()
        for (i, l) in listeners.enumerated() where l.address.port != 0 {
            if !seenAddresses.insert(l.address.description).inserted {
                fail("listeners[\(i)].address", "\(l.address) is listed twice")
            }
        }
        if admin.address != nil && admin.tokenFile == nil {
            fail("admin.token_file", "a TCP admin address requires token_file (the bearer token clients must send)")
        }
        var config = TurnoutConfig(
            workers: workers, io: io, listeners: listeners, admin: admin, stateFile: stateFile, pools: pools,
            routing: routing, health: health, timeouts: timeouts, limits: limits, accessLog: accessLog, cluster: cluster)
        config.resolvers = resolvers
        config.logFormat = logFormat
        return config
    }

    mutating func readListeners(_ node: Node) -> [ListenerConfig] {
        guard case .sequence(let seq) = node else {
            fail("listeners", "expected a list of listeners, got \(describe(node))")
            return []
        }
        if seq.isEmpty { fail("listeners", "at least one listener is required") }
        var out: [ListenerConfig] = []
        for (i, item) in seq.enumerated() {
            let path = "listeners[\(i)]"
            guard let fields = entries(item, path, allowed: ["address", "tls", "protocols"]) else { continue }
            var address: HostPort?
            var tls: TLSConfig?
            var protocols: Node?
            for (key, value) in fields {
                switch key {
                case "address": address = hostPort(value, "\(path).address", allowPortZero: true)
                case "tls": tls = readTLS(value, "\(path).tls")
                case "protocols": protocols = value
                default: break
                }
            }
            if !fields.contains(where: { $0.0 == "address" }) { fail("\(path).address", "required") }
            var (http1, http2) = (true, true)
            if let protocols {
                let secure = fields.contains { $0.0 == "tls" }
                (http1, http2) = listenerProtocols(protocols, "\(path).protocols", tls: secure)
            }
            tls?.http1 = http1
            tls?.http2 = http2
            if let address { out.append(ListenerConfig(address: address, tls: tls, http1: http1, http2: http2)) }
        }
        return out
    }

    /// `[http1, h2c]` (plain) or `[http1, h2]` (TLS), or one of them: which protocols a listener serves.
    mutating func listenerProtocols(_ node: Node, _ path: String, tls: Bool) -> (http1: Bool, http2: Bool) {
        let http2Name = tls ? "h2" : "h2c"
        let expected = "a list of http1 and \(http2Name)"
        guard case .sequence(let items) = node, !items.isEmpty else {
            fail(path, "expected \(expected)")
            return (true, true)
        }
        var http1 = false, http2 = false
        for item in items {
            guard case .scalar(let s) = item else {
                fail(path, "expected \(expected)")
                continue
            }
            switch s.string {
            case "http1": http1 = true
            case http2Name: http2 = true
            case "h2" where !tls: fail(path, "h2 is HTTP/2 over TLS; this listener has no tls (h2c is HTTP/2 in the clear)")
            case "h2c" where tls: fail(path, "h2c is HTTP/2 in the clear; this listener has tls (h2 is HTTP/2 over TLS)")
            default: fail(path, "unknown protocol \"\(s.string)\"; expected \(expected)")
            }
        }
        return (http1, http2)
    }

    /// `{ certificate, private_key }` or `{ certificates: [{ certificate, private_key }, ...] }`.
    mutating func readTLS(_ node: Node, _ path: String) -> TLSConfig? {
        guard let fields = entries(node, path, allowed: ["certificate", "private_key", "certificates"]) else { return nil }
        if let list = fields.first(where: { $0.0 == "certificates" })?.1 {
            if fields.contains(where: { $0.0 != "certificates" }) {
                fail(path, "give either certificate and private_key, or certificates, not both")
                return nil
            }
            guard case .sequence(let seq) = list, !seq.isEmpty else {
                fail("\(path).certificates", "expected a non-empty list of { certificate, private_key }")
                return nil
            }
            var out: [TLSCertificate] = []
            for (i, item) in seq.enumerated() {
                let itemPath = "\(path).certificates[\(i)]"
                guard let itemFields = entries(item, itemPath, allowed: ["certificate", "private_key"]) else { continue }
                if let c = readCertificate(itemFields, itemPath) { out.append(c) }
            }
            return out.count == seq.count ? TLSConfig(certificates: out) : nil
        }
        return readCertificate(fields, path).map { TLSConfig(certificates: [$0]) }
    }

    mutating func readCertificate(_ fields: [(String, Node)], _ path: String) -> TLSCertificate? {
        var cert: String?
        var key: String?
        for (k, v) in fields {
            if k == "certificate" { cert = nonEmptyString(v, "\(path).certificate").map(resolvePath) }
            if k == "private_key" { key = nonEmptyString(v, "\(path).private_key").map(resolvePath) }
        }
        if cert == nil && !fields.contains(where: { $0.0 == "certificate" }) { fail("\(path).certificate", "required") }
        if key == nil && !fields.contains(where: { $0.0 == "private_key" }) { fail("\(path).private_key", "required") }
        guard let cert, let key else { return nil }
        return TLSCertificate(certificate: cert, privateKey: key)
    }

    /// A relative path that does not exist relative to the working directory but does next to
    /// the config file is taken from there.
    func resolvePath(_ path: String) -> String {
        if path.hasPrefix("/") || FileManager.default.fileExists(atPath: path) || baseDirectory.isEmpty { return path }
        let candidate = (baseDirectory as NSString).appendingPathComponent(path)
        return FileManager.default.fileExists(atPath: candidate) ? candidate : path
    }

    mutating func readAdmin(_ node: Node) -> AdminConfig? {
        guard let fields = entries(node, "admin", allowed: ["socket", "address", "token_file", "dashboard", "read_only_token_file"]) else { return nil }
        var admin = AdminConfig()
        for (k, v) in fields {
            switch k {
            case "socket": admin.socket = nonEmptyString(v, "admin.socket") ?? admin.socket
            case "address": admin.address = hostPort(v, "admin.address", allowPortZero: true)
            case "token_file": admin.tokenFile = nonEmptyString(v, "admin.token_file").map(resolvePath)
            case "dashboard": admin.dashboard = bool(v, "admin.dashboard") ?? false
            case "read_only_token_file": admin.readOnlyTokenFile = nonEmptyString(v, "admin.read_only_token_file").map(resolvePath)
            default: break
            }
        }
        if admin.dashboard && admin.address == nil {
            fail("admin.dashboard", "the dashboard is served on the TCP admin address: set admin.address (and token_file)")
        }
        if admin.readOnlyTokenFile != nil && admin.address == nil {
            fail("admin.read_only_token_file", "a read-only token is for the TCP admin address: set admin.address (and token_file)")
        }
        return admin
    }

    /// A file the process must be able to read (checked now, so `check-config` reports it).
    mutating func readableFile(_ node: Node, _ path: String) -> String? {
        guard let raw = nonEmptyString(node, path) else { return nil }
        let file = resolvePath(raw)
        if !FileManager.default.isReadableFile(atPath: file) {
            fail(path, "cannot read \(file)")
            return nil
        }
        return file
    }

    mutating func readCluster(_ node: Node) -> ClusterConfig? {
        let allowed: Set<String> = ["name", "replica_id", "etcd", "stale_after", "heartbeat", "lease_ttl"]
        guard let fields = entries(node, "cluster", allowed: allowed) else { return nil }
        var name: String?
        var replicaID: String?
        var etcd: EtcdConfig?
        var staleAfter: Int64 = 10_000
        var heartbeat: Int64 = 1_000
        var leaseTTL = 10
        var sawEtcd = false
        for (k, v) in fields {
            let path = "cluster.\(k)"
            switch k {
            case "name":
                if let s = nonEmptyString(v, path) {
                    if ClusterConfig.isValidName(s, allowColon: false) { name = s } else {
                        fail(path, "use letters, digits, '.', '-' and '_' (at most 128 characters)")
                    }
                }
            case "replica_id":
                if let s = nonEmptyString(v, path) {
                    if ClusterConfig.isValidName(s, allowColon: true) { replicaID = s } else {
                        fail(path, "use letters, digits, '.', '-', '_' and ':' (at most 128 characters)")
                    }
                }
            case "etcd":
                sawEtcd = true
                etcd = readEtcd(v)
            case "stale_after": staleAfter = duration(v, path) ?? staleAfter
            case "heartbeat": heartbeat = duration(v, path) ?? heartbeat
            case "lease_ttl":
                if let ms = duration(v, path) {
                    if ms < 2000 || ms > 600_000 || ms % 1000 != 0 {
                        fail(path, "must be whole seconds between 2s and 10m (etcd leases count seconds)")
                    } else {
                        leaseTTL = Int(ms / 1000)
                    }
                }
            default: break
            }
        }
        if name == nil && !fields.contains(where: { $0.0 == "name" }) { fail("cluster.name", "required (the cluster's key prefix, e.g. prod)") }
        if !sawEtcd { fail("cluster.etcd", "required (etcd: { endpoints: [\"http://127.0.0.1:2379\"] })") }
        if staleAfter < 1000 { fail("cluster.stale_after", "must be at least 1s") }
        if heartbeat >= staleAfter { fail("cluster.heartbeat", "must be shorter than stale_after (\(DurationParser.format(milliseconds: staleAfter)))") }
        guard let name, let etcd else { return nil }
        return ClusterConfig(name: name, replicaID: replicaID, etcd: etcd, staleAfterMs: staleAfter,
                             heartbeatMs: heartbeat, leaseTTLSeconds: leaseTTL)
    }

    mutating func readEtcd(_ node: Node) -> EtcdConfig? {
        guard let fields = entries(node, "cluster.etcd", allowed: ["endpoints", "tls", "username", "password_file"]) else { return nil }
        var endpoints: [EtcdEndpoint] = []
        var tls: EtcdTLSConfig?
        var username: String?
        var passwordFile: String?
        var sawEndpoints = false
        for (k, v) in fields {
            let path = "cluster.etcd.\(k)"
            switch k {
            case "endpoints":
                sawEndpoints = true
                guard case .sequence(let seq) = v, !seq.isEmpty else {
                    fail(path, "expected a non-empty list of URLs such as http://127.0.0.1:2379")
                    continue
                }
                for (i, e) in seq.enumerated() {
                    guard let text = string(e, "\(path)[\(i)]") else { continue }
                    switch EtcdEndpoint.parse(text) {
                    case .success(let ep):
                        if endpoints.contains(ep) { fail("\(path)[\(i)]", "\(ep) is listed twice") } else { endpoints.append(ep) }
                    case .failure(let p): fail("\(path)[\(i)]", p.message)
                    }
                }
            case "tls":
                guard let t = readClientTLS(v, path, allowed: ["ca", "certificate", "private_key"]) else { continue }
                tls = EtcdTLSConfig(ca: t.ca, certificate: t.certificate, privateKey: t.privateKey)
            case "username": username = nonEmptyString(v, path)
            case "password_file": passwordFile = readableFile(v, path)
            default: break
            }
        }
        if !sawEndpoints { fail("cluster.etcd.endpoints", "required") }
        let hasUser = fields.contains { $0.0 == "username" }, hasPassword = fields.contains { $0.0 == "password_file" }
        if hasUser != hasPassword { fail("cluster.etcd", "username and password_file go together") }
        if tls != nil && !endpoints.contains(where: \.secure) && !endpoints.isEmpty {
            fail("cluster.etcd.tls", "set, but every endpoint is http://; use https:// URLs to talk TLS to etcd")
        }
        return EtcdConfig(endpoints: endpoints, tls: tls, username: username, passwordFile: passwordFile)
    }

    /// A TLS client block: `ca`, `certificate` and `private_key` (readable files; the last two
    /// together), and where `allowed` has them, `server_name` and `verify`.
    mutating func readClientTLS(_ node: Node, _ path: String, allowed: Set<String>) -> UpstreamTLSConfig? {
        guard let tf = entries(node, path, allowed: allowed) else { return nil }
        var t = UpstreamTLSConfig()
        for (tk, tv) in tf {
            switch tk {
            case "ca": t.ca = readableFile(tv, "\(path).ca")
            case "certificate": t.certificate = readableFile(tv, "\(path).certificate")
            case "private_key": t.privateKey = readableFile(tv, "\(path).private_key")
            case "server_name": t.serverName = nonEmptyString(tv, "\(path).server_name")
            case "verify": t.verify = bool(tv, "\(path).verify") ?? true
            default: break
            }
        }
        let hasCert = tf.contains { $0.0 == "certificate" }, hasKey = tf.contains { $0.0 == "private_key" }
        if hasCert != hasKey { fail(path, "certificate and private_key go together (client-certificate auth needs both)") }
        return t
    }

    mutating func readUpstreamTLS(_ node: Node, _ path: String) -> UpstreamTLSConfig? {
        readClientTLS(node, path, allowed: ["ca", "certificate", "private_key", "server_name", "verify"])
    }

    mutating func readPools(_ node: Node) -> [PoolConfig] {
        guard let items = entries(node, "pools", allowed: nil) else { return [] }
        if items.isEmpty { fail("pools", "at least one pool is required") }
        var out: [PoolConfig] = []
        for (name, value) in items {
            let path = "pools.\(name)"
            guard isValidPoolName(name) else {
                fail(path, "pool names use letters, digits, '-' and '_' (at most 64 characters)")
                continue
            }
            guard let fields = entries(value, path, allowed: ["endpoints", "balance", "max_idle_connections", "discovery", "outlier_detection",
                                                              "protocol", "max_connections", "max_streams_per_connection", "health", "tls"]) else { continue }
            var tls: UpstreamTLSConfig?
            var grpcService: String?
            var proto = UpstreamProtocol.http1
            var maxConnections: Int?
            var maxStreams: Int?
            var endpoints: [HostPort] = []
            var balance = BalanceMode.roundRobin
            var maxIdle: Int? = nil
            var sawEndpoints = false
            var discovery: DiscoveryConfig?
            var outliers = OutlierConfig()
            for (k, v) in fields {
                switch k {
                case "endpoints":
                    sawEndpoints = true
                    guard case .sequence(let seq) = v else {
                        fail("\(path).endpoints", "expected a list of host:port, got \(describe(v))")
                        continue
                    }
                    if seq.isEmpty && !fields.contains(where: { $0.0 == "discovery" }) {
                        fail("\(path).endpoints", "a pool needs at least one endpoint (or discovery)")
                    }
                    var seen = Set<String>()
                    for (i, e) in seq.enumerated() {
                        if let hp = hostPort(e, "\(path).endpoints[\(i)]", allowPortZero: false) {
                            if seen.insert(hp.description).inserted { endpoints.append(hp) } else {
                                fail("\(path).endpoints[\(i)]", "\(hp) is listed twice")
                            }
                        }
                    }
                case "balance": balance = choice(v, "\(path).balance") ?? balance
                case "max_idle_connections":
                    maxIdle = int(v, "\(path).max_idle_connections", min: 0, max: 1_000_000) ?? maxIdle
                case "discovery": discovery = readDiscovery(v, "\(path).discovery")
                case "outlier_detection": outliers = readOutliers(v, "\(path).outlier_detection")
                case "protocol": proto = choice(v, "\(path).protocol") ?? proto
                case "max_connections": maxConnections = int(v, "\(path).max_connections", min: 1, max: 10_000)
                case "max_streams_per_connection": maxStreams = int(v, "\(path).max_streams_per_connection", min: 1, max: 100_000)
                case "tls": tls = readUpstreamTLS(v, "\(path).tls")
                case "health":
                    guard let hf = entries(v, "\(path).health", allowed: ["grpc_service"]) else { continue }
                    for (hk, hv) in hf where hk == "grpc_service" {
                        if let s = string(hv, "\(path).health.grpc_service") { grpcService = s }
                    }
                default: break
                }
            }
            if proto == .http1 {
                for key in ["max_connections", "max_streams_per_connection"] where fields.contains(where: { $0.0 == key }) {
                    fail("\(path).\(key)", "applies to HTTP/2 upstreams only (protocol: h2c or h2)")
                }
                if grpcService != nil {
                    fail("\(path).health.grpc_service", "gRPC health checks need an HTTP/2 pool (protocol: h2c or h2)")
                }
            } else if maxIdle != nil {
                fail("\(path).max_idle_connections", "applies to HTTP/1.1 upstreams only; for HTTP/2 see max_connections")
            }
            if tls != nil && proto != .h2 {
                fail("\(path).tls", "TLS to the endpoints needs protocol: h2 (HTTP/2 over TLS)")
            }
            if !sawEndpoints && !fields.contains(where: { $0.0 == "discovery" }) {
                fail("\(path).endpoints", "required (or discovery: { dns: NAME, type: A, port: N })")
            }
            var pool = PoolConfig(name: name, endpoints: endpoints, balance: balance, maxIdleConnections: maxIdle,
                                  discovery: discovery, outlierDetection: outliers)
            pool.upstreamProtocol = proto
            if let maxConnections { pool.maxConnections = maxConnections }
            if let maxStreams { pool.maxStreamsPerConnection = maxStreams }
            pool.grpcHealthService = grpcService
            if proto == .h2 { pool.tls = tls ?? UpstreamTLSConfig() }
            out.append(pool)
        }
        return out
    }

    mutating func readRouting(_ node: Node?, pools: [PoolConfig]) -> RoutingConfig {
        var weights: [String: Int] = [:]
        var sticky: StickyKey?
        var preview: String?
        var failover = true
        var sawWeights = false
        var mirror: MirrorSpec?
        var grpcCodes = RoutingConfig.defaultGRPCErrorCodes
        if let node, let fields = entries(node, "routing", allowed: ["weights", "sticky", "preview_header", "failover", "mirror", "grpc_error_codes"]) {
            for (k, v) in fields {
                switch k {
                case "weights":
                    sawWeights = true
                    guard let ws = entries(v, "routing.weights", allowed: nil) else { continue }
                    var ok = true
                    for (pool, w) in ws {
                        let path = "routing.weights.\(pool)"
                        if !pools.contains(where: { $0.name == pool }) {
                            fail(path, "no pool named \"\(pool)\" (pools: \(pools.map(\.name).joined(separator: ", ")))")
                            ok = false
                            continue
                        }
                        guard case .scalar(let s) = w else { fail(path, "expected a percentage"); ok = false; continue }
                        switch Percent.parseBasisPoints(s.string) {
                        case .success(let bp): weights[pool] = bp
                        case .failure(let p): fail(path, p.message); ok = false
                        }
                    }
                    if ok {
                        let sum = weights.values.reduce(0, +)
                        if sum != 10_000 {
                            fail("routing.weights", "weights must sum to 100, they sum to \(Percent.format(basisPoints: sum))")
                        }
                    }
                case "sticky":
                    guard let sf = entries(v, "routing.sticky", allowed: ["cookie", "header"]) else { continue }
                    if sf.count != 1 {
                        fail("routing.sticky", "give exactly one of cookie or header")
                        continue
                    }
                    let (kind, val) = sf[0]
                    guard let name = nonEmptyString(val, "routing.sticky.\(kind)") else { continue }
                    guard HTTPSyntax.isToken(name) else {
                        fail("routing.sticky.\(kind)", "\"\(name)\" is not a valid \(kind) name")
                        continue
                    }
                    sticky = kind == "cookie" ? .cookie(name) : .header(name)
                case "preview_header":
                    if let name = nonEmptyString(v, "routing.preview_header") {
                        if HTTPSyntax.isToken(name) { preview = name } else {
                            fail("routing.preview_header", "\"\(name)\" is not a valid header name")
                        }
                    }
                case "failover": failover = bool(v, "routing.failover") ?? true
                case "mirror": mirror = readMirror(v, pools: pools)
                case "grpc_error_codes":
                    guard case .sequence(let items) = v else { fail("routing.grpc_error_codes", "expected a list of gRPC status codes such as [13, 14]"); continue }
                    var codes = Set<Int>()
                    for (i, item) in items.enumerated() {
                        if let c = int(item, "routing.grpc_error_codes[\(i)]", min: 1, max: 16) { codes.insert(c) }
                    }
                    grpcCodes = codes
                default: break
                }
            }
        }
        if !sawWeights, let first = pools.first(where: { $0.name == "blue" }) ?? pools.first {
            weights[first.name] = 10_000
        }
        for p in pools where weights[p.name] == nil { weights[p.name] = 0 }
        var routing = RoutingConfig(weights: weights, sticky: sticky, previewHeader: preview, failover: failover, mirror: mirror)
        routing.grpcErrorCodes = grpcCodes
        return routing
    }

    /// `routing.mirror: { pool, percent, methods, max_body_bytes, max_in_flight }`, or `off`.
    mutating func readMirror(_ node: Node, pools: [PoolConfig]) -> MirrorSpec? {
        if case .scalar(let s) = node, s.string == "off" || s.string == "false" { return nil }
        guard let fields = entries(node, "routing.mirror", allowed: ["pool", "percent", "methods", "max_body_bytes", "max_in_flight"]) else {
            return nil
        }
        var pool: String?
        var percent: Int?
        var spec = MirrorSpec(pool: "", percentBP: 0)
        var ok = true
        for (k, v) in fields {
            let path = "routing.mirror.\(k)"
            switch k {
            case "pool":
                pool = nonEmptyString(v, path)
                if let p = pool, !pools.contains(where: { $0.name == p }) {
                    fail(path, "no pool named \"\(p)\" (pools: \(pools.map(\.name).joined(separator: ", ")))")
                    ok = false
                }
            case "percent":
                guard case .scalar(let s) = v else { fail(path, "expected a percentage"); ok = false; continue }
                switch Percent.parseBasisPoints(s.string) {
                case .success(let bp) where bp > 0: percent = bp
                case .success: fail(path, "must be above 0 (to mirror nothing, leave routing.mirror out)"); ok = false
                case .failure(let p): fail(path, p.message); ok = false
                }
            case "methods":
                guard case .sequence(let items) = v else { fail(path, "expected a list of methods such as [GET, HEAD]"); ok = false; continue }
                var methods: [String] = []
                for item in items {
                    guard let m = nonEmptyString(item, path) else { ok = false; continue }
                    methods.append(m.uppercased())
                }
                spec.methods = methods
            case "max_body_bytes":
                if let n = int(v, path, min: 0, max: MirrorSpec.maxMaxBodyBytes) { spec.maxBodyBytes = n } else { ok = false }
            case "max_in_flight":
                if let n = int(v, path, min: 1, max: MirrorSpec.maxMaxInFlight) { spec.maxInFlight = n } else { ok = false }
            default: break
            }
        }
        if pool == nil { fail("routing.mirror.pool", "required: the pool that receives the copies"); ok = false }
        if percent == nil && fields.allSatisfy({ $0.0 != "percent" }) {
            fail("routing.mirror.percent", "required: the share of requests copied, e.g. 10")
            ok = false
        }
        guard ok, let pool, let percent else { return nil }
        spec.pool = pool
        spec.percentBP = percent
        if let problem = spec.problem(pools: pools.map(\.name)) {
            fail("routing.mirror", problem)
            return nil
        }
        return spec
    }

    mutating func readHealth(_ node: Node) -> HealthConfig {
        var h = HealthConfig()
        guard let fields = entries(node, "health", allowed: ["path", "interval", "timeout", "rise", "fall", "grpc"]) else { return h }
        for (k, v) in fields {
            switch k {
            case "path":
                if let p = nonEmptyString(v, "health.path") {
                    if p.hasPrefix("/") && HTTPSyntax.isValidOriginTarget(p) { h.path = p } else {
                        fail("health.path", "must be a path starting with /, got \"\(p)\"")
                    }
                }
            case "interval": h.intervalMs = duration(v, "health.interval") ?? h.intervalMs
            case "timeout": h.timeoutMs = duration(v, "health.timeout") ?? h.timeoutMs
            case "rise": h.rise = int(v, "health.rise", min: 1, max: 100) ?? h.rise
            case "fall": h.fall = int(v, "health.fall", min: 1, max: 100) ?? h.fall
            case "grpc": h.grpc = bool(v, "health.grpc") ?? h.grpc
            default: break
            }
        }
        return h
    }

    mutating func readTimeouts(_ node: Node) -> TimeoutConfig {
        var t = TimeoutConfig()
        let allowed: Set<String> = ["connect", "upstream_response", "client_header", "idle", "drain", "upstream_idle", "tunnel"]
        guard let fields = entries(node, "timeouts", allowed: allowed) else { return t }
        for (k, v) in fields {
            let path = "timeouts.\(k)"
            switch k {
            case "connect": t.connectMs = duration(v, path) ?? t.connectMs
            case "upstream_response": t.upstreamResponseMs = duration(v, path) ?? t.upstreamResponseMs
            case "client_header": t.clientHeaderMs = duration(v, path) ?? t.clientHeaderMs
            case "idle": t.idleMs = duration(v, path) ?? t.idleMs
            case "drain": t.drainMs = duration(v, path, allowZero: true) ?? t.drainMs
            case "upstream_idle": t.upstreamIdleMs = duration(v, path) ?? t.upstreamIdleMs
            case "tunnel": t.tunnelMs = duration(v, path) ?? t.tunnelMs
            default: break
            }
        }
        return t
    }

    mutating func readLimits(_ node: Node) -> LimitsConfig {
        var l = LimitsConfig()
        let allowed: Set<String> = ["max_request_head_bytes", "max_header_count", "max_body_bytes", "max_client_connections", "h2_max_concurrent_streams"]
        guard let fields = entries(node, "limits", allowed: allowed) else { return l }
        for (k, v) in fields {
            let path = "limits.\(k)"
            switch k {
            case "max_request_head_bytes": l.maxRequestHeadBytes = int(v, path, min: 1024, max: 1 << 20) ?? l.maxRequestHeadBytes
            case "max_header_count": l.maxHeaderCount = int(v, path, min: 1, max: 10_000) ?? l.maxHeaderCount
            case "max_body_bytes": l.maxBodyBytes = int(v, path, min: 0, max: Int.max).map(Int64.init)
            case "max_client_connections":
                if case .scalar(let s) = v, s.string == "auto" {
                    l.maxClientConnections = nil
                } else if case .scalar(let s) = v, Int(s.string) == nil {
                    fail(path, "expected a whole number or auto, got \(describe(v))")
                } else {
                    l.maxClientConnections = int(v, path, min: 1, max: 10_000_000) ?? l.maxClientConnections
                }
            case "h2_max_concurrent_streams": l.h2MaxConcurrentStreams = int(v, path, min: 1, max: 10_000) ?? l.h2MaxConcurrentStreams
            default: break
            }
        }
        return l
    }

    mutating func readDiscovery(_ node: Node, _ path: String) -> DiscoveryConfig? {
        guard let fields = entries(node, path, allowed: ["dns", "type", "port", "min_ttl", "max_ttl", "confirm_empty"]) else { return nil }
        var name: String?
        var type = DNSRecordType.a
        var port: UInt16?
        var minTTL: Int64?
        var maxTTL: Int64?
        var confirm: Int64?
        for (k, v) in fields {
            switch k {
            case "dns":
                if let n = nonEmptyString(v, "\(path).dns") {
                    let trimmed = n.hasSuffix(".") ? String(n.dropLast()) : n
                    let labels = trimmed.split(separator: ".", omittingEmptySubsequences: false)
                    if trimmed.utf8.count > 253 || labels.contains(where: { $0.isEmpty || $0.utf8.count > 63 })
                        || !trimmed.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == ".") }) {
                        fail("\(path).dns", "\"\(n)\" is not a DNS name")
                    } else {
                        name = trimmed
                    }
                }
            case "type":
                if let t = string(v, "\(path).type") {
                    if let r = DNSRecordType(rawValue: t.uppercased()) { type = r } else {
                        fail("\(path).type", "expected A, AAAA or SRV, got \"\(t)\"")
                    }
                }
            case "port": port = int(v, "\(path).port", min: 1, max: 65535).map { UInt16($0) }
            case "min_ttl": minTTL = duration(v, "\(path).min_ttl")
            case "max_ttl": maxTTL = duration(v, "\(path).max_ttl")
            case "confirm_empty": confirm = duration(v, "\(path).confirm_empty", allowZero: true)
            default: break
            }
        }
        guard let name else {
            if !fields.contains(where: { $0.0 == "dns" }) { fail("\(path).dns", "required (the name to resolve)") }
            return nil
        }
        if type == .srv && port != nil { fail("\(path).port", "not used with SRV: each record carries its port") }
        if type != .srv && port == nil && !fields.contains(where: { $0.0 == "port" }) {
            fail("\(path).port", "required with type \(type.rawValue) (the port of every address)")
        }
        var d = DiscoveryConfig(name: name, type: type, port: port)
        d.minTTLMs = minTTL ?? d.minTTLMs
        d.maxTTLMs = maxTTL ?? max(d.maxTTLMs, d.minTTLMs)
        d.confirmEmptyMs = confirm ?? d.confirmEmptyMs
        if d.minTTLMs > d.maxTTLMs { fail("\(path).min_ttl", "must not exceed max_ttl") }
        return d
    }

    mutating func readOutliers(_ node: Node, _ path: String) -> OutlierConfig {
        var o = OutlierConfig()
        guard let fields = entries(node, path, allowed: ["consecutive_failures", "consecutive_5xx", "base_ejection", "max_ejected_percent"]) else { return o }
        for (k, v) in fields {
            switch k {
            case "consecutive_failures": o.consecutiveFailures = int(v, "\(path).\(k)", min: 0, max: 1000) ?? o.consecutiveFailures
            case "consecutive_5xx": o.consecutive5xx = int(v, "\(path).\(k)", min: 0, max: 1000) ?? o.consecutive5xx
            case "base_ejection": o.baseEjectionMs = duration(v, "\(path).\(k)") ?? o.baseEjectionMs
            case "max_ejected_percent": o.maxEjectedPercent = int(v, "\(path).\(k)", min: 0, max: 100) ?? o.maxEjectedPercent
            default: break
            }
        }
        return o
    }

    func isValidPoolName(_ name: String) -> Bool {
        !name.isEmpty && name.count <= 64
            && name.unicodeScalars.allSatisfy { ($0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0))) || $0 == "-" || $0 == "_" }
    }
}
