import Foundation

/// Cluster mode (`cluster:` in the config): several Turnout replicas share one routing truth in
/// etcd v3. Absent, Turnout runs as a single node with its state file, exactly as without it.
public struct ClusterConfig: Sendable, Equatable {
    /// The cluster's name: its keys live under `/turnout/v1/<name>/`.
    public var name: String
    /// This replica's id in the registry; nil: `hostname:<first listener port>`.
    public var replicaID: String?
    public var etcd: EtcdConfig
    /// No contact with etcd for this long: the replica reports itself stale.
    public var staleAfterMs: Int64
    /// How often the routing key is read again although the watch is open (etcd 3.4 sends watch
    /// progress only every 10 minutes, so a silent watch proves nothing).
    public var heartbeatMs: Int64
    /// Time to live of the lease that holds the registry entry, the ramp-driver key and the
    /// published ramp windows: a replica that dies disappears from the cluster after this long.
    public var leaseTTLSeconds: Int

    public init(name: String, replicaID: String? = nil, etcd: EtcdConfig, staleAfterMs: Int64 = 10_000,
                heartbeatMs: Int64 = 1_000, leaseTTLSeconds: Int = 10) {
        self.name = name
        self.replicaID = replicaID
        self.etcd = etcd
        self.staleAfterMs = staleAfterMs
        self.heartbeatMs = heartbeatMs
        self.leaseTTLSeconds = leaseTTLSeconds
    }

    /// `/turnout/v1/<name>/`: every key of the cluster starts with it.
    public var prefix: String { "/turnout/v1/\(name)/" }
    /// The one key that holds the routing document.
    public var routingKey: String { prefix + "routing" }
    /// The replica registry. It sorts before `watchedFrom`, so the watch every replica keeps does
    /// not carry every replica's registry writes to every other replica (N² deliveries per change);
    /// the registry is read whole instead, every few heartbeats and while a write waits on it.
    public var replicasPrefix: String { prefix + "live-replicas/" }
    public var windowsPrefix: String { prefix + "ramp/windows/" }
    public var driverKey: String { prefix + "ramp/driver" }
    /// The watch covers `[watchedFrom, end of prefix)`: the ramp keys and the routing document.
    public var watchedFrom: String { prefix + "ramp/" }

    /// The replica id in force: the configured one, or `hostname:port`.
    public func effectiveReplicaID(firstListenerPort: UInt16) -> String {
        if let replicaID { return replicaID }
        return "\(ProcessInfo.processInfo.hostName):\(firstListenerPort)"
    }

    /// A name or replica id: letters, digits, '.', '-', '_' and ':' (no '/', which would change
    /// the key layout), at most 128 characters.
    public static func isValidName(_ s: String, allowColon: Bool) -> Bool {
        !s.isEmpty && s.count <= 128 && s.allSatisfy { c in
            c.isASCII && (c.isLetter || c.isNumber || c == "." || c == "-" || c == "_" || (allowColon && c == ":"))
        }
    }
}

/// How to reach etcd.
public struct EtcdConfig: Sendable, Equatable {
    public var endpoints: [EtcdEndpoint]
    public var tls: EtcdTLSConfig?
    public var username: String?
    /// The file holding the password (its content, trailing newline removed, is never logged).
    public var passwordFile: String?
    public init(endpoints: [EtcdEndpoint], tls: EtcdTLSConfig? = nil, username: String? = nil, passwordFile: String? = nil) {
        self.endpoints = endpoints
        self.tls = tls
        self.username = username
        self.passwordFile = passwordFile
    }
}

/// One etcd member's client URL: `http://host:port` or `https://host:port`.
public struct EtcdEndpoint: Sendable, Equatable, CustomStringConvertible {
    public var secure: Bool
    public var host: String
    public var port: UInt16
    public init(secure: Bool, host: String, port: UInt16) {
        self.secure = secure
        self.host = host
        self.port = port
    }

    /// Parses `http://127.0.0.1:2379`; `host:port` alone means http.
    public static func parse(_ text: String) -> Result<EtcdEndpoint, ConfigProblem> {
        var rest = Substring(text)
        var secure = false
        if rest.hasPrefix("http://") {
            rest = rest.dropFirst(7)
        } else if rest.hasPrefix("https://") {
            rest = rest.dropFirst(8)
            secure = true
        } else if rest.contains("://") {
            return .failure(ConfigProblem("etcd endpoints are http:// or https:// URLs, got \"\(text)\""))
        }
        if rest.hasSuffix("/") { rest = rest.dropLast() }
        guard !rest.contains("/") else {
            return .failure(ConfigProblem("an etcd endpoint is scheme://host:port without a path, got \"\(text)\""))
        }
        switch HostPort.parse(String(rest)) {
        case .success(let hp): return .success(EtcdEndpoint(secure: secure, host: hp.host, port: hp.port))
        case .failure(let p): return .failure(p)
        }
    }

    public var description: String {
        "\(secure ? "https" : "http")://\(HostPort(host: host, port: port))"
    }
}

/// TLS towards etcd: the CA that signed its certificates and, for client-certificate auth, this
/// replica's certificate and key (PEM files).
public struct EtcdTLSConfig: Sendable, Equatable {
    public var ca: String?
    public var certificate: String?
    public var privateKey: String?
    public init(ca: String? = nil, certificate: String? = nil, privateKey: String? = nil) {
        self.ca = ca
        self.certificate = certificate
        self.privateKey = privateKey
    }
}
