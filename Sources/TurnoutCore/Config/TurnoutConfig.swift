import Foundation

/// The whole configuration of one Turnout process, as read from the YAML file and validated.
/// Every field is already checked: code that receives a `TurnoutConfig` never re-validates it.
public struct TurnoutConfig: Sendable, Equatable {
    /// Number of event loops; `nil` means `auto` (one per core).
    public var workers: Int?
    /// How the event loops learn that sockets are ready.
    public var io: IOMode
    public var listeners: [ListenerConfig]
    public var admin: AdminConfig
    public var stateFile: String?
    /// Pools in the order the config file lists them.
    public var pools: [PoolConfig]
    public var routing: RoutingConfig
    public var health: HealthConfig
    public var timeouts: TimeoutConfig
    public var limits: LimitsConfig
    public var accessLog: Bool
    /// How log lines are written: text, or one JSON object per line.
    public var logFormat: LogFormat = .text
    /// Cluster mode: the routing truth lives in etcd (nil: a single node with its state file).
    public var cluster: ClusterConfig?
    /// DNS servers that discovery asks (empty: the nameservers of /etc/resolv.conf).
    public var resolvers: [HostPort] = []

    public init(
        workers: Int? = nil, io: IOMode = .epoll, listeners: [ListenerConfig], admin: AdminConfig = AdminConfig(),
        stateFile: String? = nil, pools: [PoolConfig], routing: RoutingConfig,
        health: HealthConfig = HealthConfig(), timeouts: TimeoutConfig = TimeoutConfig(),
        limits: LimitsConfig = LimitsConfig(), accessLog: Bool = true, cluster: ClusterConfig? = nil
    ) {
        self.workers = workers
        self.io = io
        self.listeners = listeners
        self.admin = admin
        self.stateFile = stateFile
        self.pools = pools
        self.routing = routing
        self.health = health
        self.timeouts = timeouts
        self.limits = limits
        self.accessLog = accessLog
        self.cluster = cluster
    }

    /// The number of event loops to run, resolving `auto` to the number of active cores.
    public var effectiveWorkers: Int {
        workers ?? max(1, ProcessInfo.processInfo.activeProcessorCount)
    }

    public func pool(named name: String) -> PoolConfig? { pools.first { $0.name == name } }
}

/// How an event loop learns that its sockets are ready. Either way a loop is one serial Dispatch
/// queue that owns its connections, woken by Dispatch sources.
/// `log_format`: how every log line (access, events and the rest) is written.
public enum LogFormat: String, Sendable, Equatable, CaseIterable {
    /// `TIME LEVEL turnout: [log=access] MESSAGE`, as always.
    case text
    /// One JSON object per line, with the fields docs/metrics-and-logs.md lists.
    case json
}

public enum IOMode: String, Sendable, Equatable, CaseIterable {
    /// One Dispatch read source per loop, on an epoll set holding all of the loop's sockets
    /// edge-triggered: one wake-up of the loop serves a batch of ready sockets.
    case epoll
    /// A Dispatch read source per socket, and a write source while there is something to write.
    case dispatch
}

/// `host:port` as written in the config. The host may be an IP literal or a DNS name.
public struct HostPort: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: UInt16

    public init(host: String, port: UInt16) {
        self.host = host
        self.port = port
    }

    /// Parses `127.0.0.1:9001`, `[::1]:9001` or `app.internal:80`.
    public static func parse(_ text: String, allowPortZero: Bool = false) -> Result<HostPort, ConfigProblem> {
        var host: Substring
        var portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else {
                return .failure(ConfigProblem("an IPv6 address must look like [::1]:8080"))
            }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { return .failure(ConfigProblem("missing :port after \(text[...close])")) }
            portText = rest.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":") else {
                return .failure(ConfigProblem("expected host:port, got \"\(text)\""))
            }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
            if host.contains(":") {
                return .failure(ConfigProblem("write IPv6 addresses in brackets, e.g. [::1]:8080"))
            }
        }
        guard !host.isEmpty else { return .failure(ConfigProblem("missing host in \"\(text)\"")) }
        guard host.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "." || $0 == "-" || $0 == ":" || $0 == "_" }) else {
            return .failure(ConfigProblem("invalid host \"\(host)\""))
        }
        guard let port = Int(portText), port >= (allowPortZero ? 0 : 1), port <= 65535 else {
            return .failure(ConfigProblem("invalid port \"\(portText)\" (expected \(allowPortZero ? 0 : 1)-65535)"))
        }
        return .success(HostPort(host: String(host), port: UInt16(port)))
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

public struct ListenerConfig: Sendable, Equatable {
    public var address: HostPort
    public var tls: TLSConfig?
    /// HTTP/1.1 served (`http1`).
    public var http1: Bool
    /// HTTP/2 served (`h2c` on a plain listener, with prior knowledge; `h2` by ALPN with TLS).
    public var http2: Bool
    public init(address: HostPort, tls: TLSConfig? = nil, http1: Bool = true, http2: Bool = true) {
        self.address = address
        self.tls = tls
        self.http1 = http1
        self.http2 = http2
    }
}

/// A certificate chain (PEM, leaf first) and its private key (PEM).
public struct TLSCertificate: Sendable, Equatable {
    public var certificate: String
    public var privateKey: String
    public init(certificate: String, privateKey: String) {
        self.certificate = certificate
        self.privateKey = privateKey
    }
}

/// TLS termination on a listener.
public struct TLSConfig: Sendable, Equatable {
    /// The first is the default; another one is chosen when the client's SNI names a host its
    /// certificate covers.
    public var certificates: [TLSCertificate]
    /// What ALPN offers: HTTP/2 and HTTP/1.1 by default (the listener's `protocols`).
    public var http1 = true
    public var http2 = true
    public init(certificates: [TLSCertificate]) { self.certificates = certificates }
}

public struct AdminConfig: Sendable, Equatable {
    public static let defaultSocket = "/tmp/turnout-admin.sock"
    public var socket: String
    public var address: HostPort?
    public var tokenFile: String?
    /// Serve the dashboard page at `GET /` on the TCP admin address.
    public var dashboard: Bool = false
    /// A second token that may read everything (page, state, stats, events) and change nothing.
    public var readOnlyTokenFile: String?
    public init(socket: String = AdminConfig.defaultSocket, address: HostPort? = nil, tokenFile: String? = nil,
                dashboard: Bool = false, readOnlyTokenFile: String? = nil) {
        self.socket = socket
        self.address = address
        self.tokenFile = tokenFile
        self.dashboard = dashboard
        self.readOnlyTokenFile = readOnlyTokenFile
    }
}

/// How a pool spreads requests over its healthy endpoints.
public enum BalanceMode: String, Sendable, Equatable, CaseIterable {
    case roundRobin = "round_robin"
    case leastOutstanding = "least_outstanding"
}

public struct PoolConfig: Sendable, Equatable {
    public var name: String
    /// Endpoints listed in the config (may be empty when `discovery` is set).
    public var endpoints: [HostPort]
    public var balance: BalanceMode
    /// A cap on the idle keep-alive connections kept per endpoint per event loop; nil (the
    /// default): no cap, the idle set follows demand (what the busiest recent moment needed, each
    /// connection let go after `timeouts.upstream_idle` unused).
    public var maxIdleConnections: Int?
    /// Endpoints found by DNS, beside the listed ones.
    public var discovery: DiscoveryConfig?
    /// Passive ejection of endpoints that fail requests.
    public var outlierDetection: OutlierConfig
    /// What the pool's endpoints speak.
    public var upstreamProtocol: UpstreamProtocol = .http1
    /// HTTP/2: connections per endpoint per event loop; past them, streams queue on the
    /// connections there are.
    public var maxConnections = PoolConfig.defaultMaxConnections
    /// HTTP/2: streams per connection at most (the upstream's own SETTINGS may say fewer).
    public var maxStreamsPerConnection = PoolConfig.defaultMaxStreamsPerConnection
    /// `health: { grpc_service: NAME }`: probe with the gRPC health check for this service.
    public var grpcHealthService: String?
    /// `protocol: h2`: how TLS to the endpoints is set up.
    public var tls: UpstreamTLSConfig?
    public static let defaultMaxConnections = 4
    public static let defaultMaxStreamsPerConnection = 100
    public init(name: String, endpoints: [HostPort], balance: BalanceMode = .roundRobin, maxIdleConnections: Int? = nil,
                discovery: DiscoveryConfig? = nil, outlierDetection: OutlierConfig = OutlierConfig()) {
        self.name = name
        self.endpoints = endpoints
        self.balance = balance
        self.maxIdleConnections = maxIdleConnections
        self.discovery = discovery
        self.outlierDetection = outlierDetection
    }
}

/// What a pool's endpoints speak (`pools.NAME.protocol`).
public enum UpstreamProtocol: String, Sendable, Equatable, CaseIterable {
    /// HTTP/1.1, a connection per request in flight, kept alive.
    case http1
    /// HTTP/2 with prior knowledge over plain TCP, many streams per connection.
    case h2c
    /// HTTP/2 over TLS (ALPN h2), many streams per connection.
    case h2

    public var isHTTP2: Bool { self != .http1 }
}

/// TLS to a pool's endpoints (`pools.NAME.tls`, with `protocol: h2`).
public struct UpstreamTLSConfig: Sendable, Equatable {
    /// CA certificates (PEM) that sign the endpoints' certificates; the system's CAs when nil.
    public var ca: String?
    /// A client certificate and key, for endpoints that ask for one.
    public var certificate: String?
    public var privateKey: String?
    /// The name sent as SNI and required in the certificate; the endpoint's host when nil (an IP
    /// address is then matched as an IP).
    public var serverName: String?
    /// Verify the endpoint's certificate (on by default).
    public var verify = true
    public init() {}
}

/// The DNS record type a pool's discovery name is asked for.
public enum DNSRecordType: String, Sendable, Equatable, CaseIterable {
    case a = "A"
    case aaaa = "AAAA"
    case srv = "SRV"
}

/// `pools.NAME.discovery`: every address a DNS name resolves to is an endpoint of the pool.
public struct DiscoveryConfig: Sendable, Equatable {
    public var name: String
    public var type: DNSRecordType
    /// The port of every address (A, AAAA); SRV records carry their own.
    public var port: UInt16?
    /// The record's TTL is clamped to these before it sets the next resolution.
    public var minTTLMs: Int64 = 1000
    public var maxTTLMs: Int64 = 300_000
    /// An answer with no address for a pool that carries traffic is applied only after it has
    /// been the answer for this long.
    public var confirmEmptyMs: Int64 = 30_000
    public init(name: String, type: DNSRecordType, port: UInt16?) {
        self.name = name
        self.type = type
        self.port = port
    }
}

/// `pools.NAME.outlier_detection`: endpoints that fail requests in a row are ejected for a while.
/// A trigger set to 0 is off.
public struct OutlierConfig: Sendable, Equatable {
    /// Connect failures, resets and timeouts in a row.
    public var consecutiveFailures: Int = 3
    /// 5xx responses in a row (off by default).
    public var consecutive5xx: Int = 0
    /// The first ejection lasts this long; each further one lasts one more base time.
    public var baseEjectionMs: Int64 = 30_000
    /// At most this share of a pool's endpoints is ejected at once.
    public var maxEjectedPercent: Int = 50
    public init() {}
}

public enum StickyKey: Sendable, Equatable {
    case cookie(String)
    case header(String)
}

public struct RoutingConfig: Sendable, Equatable {
    /// Weights in basis points (hundredths of a percent): 100% is 10_000.
    public var weights: [String: Int]
    public var sticky: StickyKey?
    public var previewHeader: String?
    public var failover: Bool
    /// Traffic mirroring at start-up (when no state file says otherwise).
    public var mirror: MirrorSpec?
    /// gRPC statuses that count as a failed call (for ramp gates, the dashboard and metrics):
    /// UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE, DATA_LOSS by default, the codes that say
    /// the server failed rather than the caller.
    public var grpcErrorCodes: Set<Int> = RoutingConfig.defaultGRPCErrorCodes
    public static let defaultGRPCErrorCodes: Set<Int> = [2, 4, 13, 14, 15]
    public init(weights: [String: Int], sticky: StickyKey? = nil, previewHeader: String? = nil, failover: Bool = true,
                mirror: MirrorSpec? = nil) {
        self.mirror = mirror
        self.weights = weights
        self.sticky = sticky
        self.previewHeader = previewHeader
        self.failover = failover
    }
}

public struct HealthConfig: Sendable, Equatable {
    public var path: String = "/healthz"
    public var intervalMs: Int64 = 2000
    public var timeoutMs: Int64 = 1000
    public var rise: Int = 2
    public var fall: Int = 3
    /// HTTP/2 pools are probed with the gRPC health check (service "") instead of `GET path`.
    public var grpc = false
    public init() {}
}

public struct TimeoutConfig: Sendable, Equatable {
    public var connectMs: Int64 = 2000
    public var upstreamResponseMs: Int64 = 30_000
    public var clientHeaderMs: Int64 = 10_000
    public var idleMs: Int64 = 60_000
    public var drainMs: Int64 = 30_000
    public var upstreamIdleMs: Int64 = 15_000
    /// An upgraded connection (WebSocket...) with no byte either way for this long is closed.
    public var tunnelMs: Int64 = 3_600_000
    public init() {}
}

/// Size limits that protect the proxy from oversized input.
public struct LimitsConfig: Sendable, Equatable {
    /// Largest request head (request line plus header fields) accepted; larger gets 431.
    public var maxRequestHeadBytes: Int = 64 * 1024
    /// Most header fields in one request; more gets 431.
    public var maxHeaderCount: Int = 100
    /// Largest request body accepted (nil: unlimited); larger gets 413.
    public var maxBodyBytes: Int64? = nil
    /// Most client connections open at once per process; past it, accepting pauses. nil (the
    /// default, `auto`): half the open-files limit less a reserve, as HAProxy derives `maxconn`,
    /// so that every client connection has a descriptor for itself and one for an upstream.
    public var maxClientConnections: Int? = nil
    /// Streams one HTTP/2 client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    public var h2MaxConcurrentStreams: Int = 100
    public init() {}
}

/// One problem found in a config file, with the key path it was found at.
public struct ConfigProblem: Error, Sendable, Equatable, CustomStringConvertible {
    public var path: String
    public var message: String
    public init(_ message: String, path: String = "") {
        self.message = message
        self.path = path
    }
    public var description: String { path.isEmpty ? message : "\(path): \(message)" }
}

/// Every problem found in a config file. Loading never stops at the first one.
public struct ConfigErrors: Error, Sendable, CustomStringConvertible {
    public var problems: [ConfigProblem]
    public var description: String { problems.map(\.description).joined(separator: "\n") }
}
