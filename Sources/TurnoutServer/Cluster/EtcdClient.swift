import Dispatch
import Foundation
import TurnoutCore

/// A key-value pair as etcd returns it.
struct EtcdKeyValue {
    var key: String
    var value: [UInt8]
    var modRevision: UInt64
    var createRevision: UInt64
    var lease: Int64
}

/// One change seen on a watch.
struct EtcdEvent {
    var isDelete: Bool
    var kv: EtcdKeyValue
}

/// etcd v3 through its JSON gateway over HTTP/1.1 (`/v3/kv/range`, `/v3/kv/txn`, `/v3/lease/*`,
/// `/v3/auth/authenticate`): keys and values travel base64-encoded, 64-bit numbers as strings,
/// and fields with zero values are left out of answers. Fails over across the listed members: a
/// member that cannot be reached, or has no leader, is skipped for the next one. Not thread-safe:
/// every queue of the cluster agent has its own client (and its own connection).
final class EtcdClient {
    let config: EtcdConfig
    let tls: EtcdTLSContext?
    private let password: String?
    private var connection: EtcdConnection?
    /// The member tried first: the last one that answered.
    private var current: Int
    private var token: String?
    var requestTimeoutMs = 3000
    var connectTimeoutMs = 1000

    init(config: EtcdConfig, tls: EtcdTLSContext?, password: String?, first: Int = 0) {
        self.config = config
        self.tls = tls
        self.password = password
        self.current = first % max(1, config.endpoints.count)
    }

    /// The member this client last talked to.
    var endpoint: EtcdEndpoint { config.endpoints[current] }

    func close() {
        connection?.close()
        connection = nil
    }

    // MARK: encoding

    static func b64(_ s: String) -> String { Data(s.utf8).base64EncodedString() }
    static func b64(_ b: [UInt8]) -> String { Data(b).base64EncodedString() }

    /// The range end that makes a range cover every key starting with `prefix`.
    static func prefixEnd(_ prefix: String) -> String {
        var bytes = Array(prefix.utf8)
        while let last = bytes.last {
            if last < 0xff {
                bytes[bytes.count - 1] = last + 1
                return Data(bytes).base64EncodedString()
            }
            bytes.removeLast()
        }
        return Data([0]).base64EncodedString()
    }

    /// A 64-bit number the gateway sent (as a string, or absent for zero).
    static func number(_ v: Any?) -> UInt64 {
        if let s = v as? String { return UInt64(s) ?? 0 }
        if let n = v as? NSNumber { return n.uint64Value }
        return 0
    }

    static func keyValue(_ obj: [String: Any]) -> EtcdKeyValue? {
        guard let k = obj["key"] as? String, let key = Data(base64Encoded: k) else { return nil }
        let value = (obj["value"] as? String).flatMap { Data(base64Encoded: $0) }.map { Array($0) } ?? []
        return EtcdKeyValue(key: String(decoding: key, as: UTF8.self), value: value,
                            modRevision: number(obj["mod_revision"]), createRevision: number(obj["create_revision"]),
                            lease: Int64(bitPattern: number(obj["lease"])))
    }

    // MARK: calls

    /// POSTs `body` to `path` and returns the answer's JSON object. `idempotent`: on a broken
    /// connection after the request was sent, it may be sent again to another member; a write
    /// that is not idempotent reports `.unreachable` instead (its outcome is unknown).
    func call(_ path: String, _ body: [String: Any], idempotent: Bool = true) throws(EtcdError) -> [String: Any] {
        var lastError = EtcdError.unreachable("no etcd endpoint configured")
        var authRetried = false
        var attempts = 0
        while attempts < config.endpoints.count {
            let ep = config.endpoints[current]
            var sent = false
            do throws(EtcdError) {
                if connection == nil || connection?.isOpen != true {
                    connection = try EtcdConnection(endpoint: ep, tls: tls, timeoutMs: connectTimeoutMs)
                    if config.username != nil && token == nil { try authenticate() }
                }
                let conn = connection!
                let json = (try? JSONSerialization.data(withJSONObject: body)) ?? Data("{}".utf8)
                var head = "POST \(path) HTTP/1.1\r\nHost: \(HostPort(host: ep.host, port: ep.port))\r\nContent-Type: application/json\r\n"
                if let token { head += "Authorization: \(token)\r\n" }
                head += "Content-Length: \(json.count)\r\n\r\n"
                try conn.write(Array(head.utf8) + Array(json), timeoutMs: requestTimeoutMs)
                sent = true
                let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(requestTimeoutMs) * 1_000_000
                let h = try conn.readHead(deadline: deadline)
                let bytes = try conn.readBody(h, deadline: deadline)
                if !h.keepAlive { close() }
                let obj = (try? JSONSerialization.jsonObject(with: Data(bytes))) as? [String: Any]
                guard h.status == 200 else {
                    let message = (obj?["error"] as? String) ?? (obj?["message"] as? String) ?? String(decoding: bytes.prefix(200), as: UTF8.self)
                    throw EtcdError.server(status: h.status, message: message)
                }
                guard let obj else { throw EtcdError.protocolError("\(path): the answer is not a JSON object") }
                return obj
            } catch {
                if error.isAuthFailure && config.username != nil && !authRetried {
                    authRetried = true
                    token = nil
                    close()
                    continue
                }
                lastError = error
                let memberTrouble: Bool
                switch error {
                case .unreachable: memberTrouble = true
                case .server(let status, let message):
                    memberTrouble = status >= 500 && (message.contains("no leader") || message.contains("not capable")
                        || message.contains("leader changed") || message.contains("stopped") || message.contains("timed out"))
                case .protocolError: memberTrouble = true
                }
                guard memberTrouble else { throw error }
                close()
                if sent && !idempotent {
                    throw .unreachable("\(error); the change may or may not have been committed")
                }
                current = (current + 1) % config.endpoints.count
                attempts += 1
            }
        }
        throw lastError
    }

    /// Exchanges user and password for a token (etcd's simple or JWT tokens).
    private func authenticate() throws(EtcdError) {
        guard let user = config.username, let password else { return }
        token = nil
        let obj = try callUnauthenticated("/v3/auth/authenticate", ["name": user, "password": password])
        guard let t = obj["token"] as? String else { throw .protocolError("authenticate: no token in the answer") }
        token = t
    }

    private func callUnauthenticated(_ path: String, _ body: [String: Any]) throws(EtcdError) -> [String: Any] {
        guard let conn = connection else { throw .unreachable("not connected") }
        let json = (try? JSONSerialization.data(withJSONObject: body)) ?? Data()
        let ep = conn.endpoint
        let head = "POST \(path) HTTP/1.1\r\nHost: \(HostPort(host: ep.host, port: ep.port))\r\nContent-Type: application/json\r\nContent-Length: \(json.count)\r\n\r\n"
        try conn.write(Array(head.utf8) + Array(json), timeoutMs: requestTimeoutMs)
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(requestTimeoutMs) * 1_000_000
        let h = try conn.readHead(deadline: deadline)
        let bytes = try conn.readBody(h, deadline: deadline)
        let obj = (try? JSONSerialization.jsonObject(with: Data(bytes))) as? [String: Any]
        guard h.status == 200, let obj else {
            let message = (obj?["error"] as? String) ?? (obj?["message"] as? String) ?? "status \(h.status)"
            throw .server(status: h.status == 200 ? 500 : h.status, message: "authentication failed: \(message)")
        }
        return obj
    }

    /// The keys at `key` (or under it, with `prefix`) and the store's revision.
    func range(_ key: String, prefix: Bool = false) throws(EtcdError) -> (revision: UInt64, kvs: [EtcdKeyValue]) {
        var body: [String: Any] = ["key": Self.b64(key)]
        if prefix { body["range_end"] = Self.prefixEnd(key) }
        let obj = try call("/v3/kv/range", body)
        let revision = Self.number((obj["header"] as? [String: Any])?["revision"])
        let kvs = ((obj["kvs"] as? [[String: Any]]) ?? []).compactMap(Self.keyValue)
        return (revision, kvs)
    }

    /// Puts `value` at `key` only if the key's mod_revision is still `expected` (0: the key does
    /// not exist). Returns the new revision, or the key's current value when the compare failed.
    enum SwapResult {
        case committed(revision: UInt64)
        case conflict(current: EtcdKeyValue?, revision: UInt64)
    }
    func compareAndSwap(_ key: String, expectedModRevision: UInt64, value: [UInt8], lease: Int64 = 0) throws(EtcdError) -> SwapResult {
        var put: [String: Any] = ["key": Self.b64(key), "value": Self.b64(value)]
        if lease != 0 { put["lease"] = String(lease) }
        let body: [String: Any] = [
            "compare": [["target": "MOD", "key": Self.b64(key), "mod_revision": String(expectedModRevision), "result": "EQUAL"]],
            "success": [["request_put": put]],
            "failure": [["request_range": ["key": Self.b64(key)]]],
        ]
        let obj = try call("/v3/kv/txn", body, idempotent: false)
        let revision = Self.number((obj["header"] as? [String: Any])?["revision"])
        if obj["succeeded"] as? Bool == true { return .committed(revision: revision) }
        let responses = (obj["responses"] as? [[String: Any]]) ?? []
        let range = responses.first?["response_range"] as? [String: Any]
        let kv = ((range?["kvs"] as? [[String: Any]]) ?? []).compactMap(Self.keyValue).first
        return .conflict(current: kv, revision: revision)
    }

    /// Creates `key` bound to `lease` unless it exists; returns who holds it afterwards.
    func createIfAbsent(_ key: String, value: [UInt8], lease: Int64) throws(EtcdError) -> (created: Bool, holder: EtcdKeyValue?) {
        let body: [String: Any] = [
            "compare": [["target": "CREATE", "key": Self.b64(key), "create_revision": "0", "result": "EQUAL"]],
            "success": [["request_put": ["key": Self.b64(key), "value": Self.b64(value), "lease": String(lease)]]],
            "failure": [["request_range": ["key": Self.b64(key)]]],
        ]
        let obj = try call("/v3/kv/txn", body)
        if obj["succeeded"] as? Bool == true { return (true, nil) }
        let responses = (obj["responses"] as? [[String: Any]]) ?? []
        let range = responses.first?["response_range"] as? [String: Any]
        return (false, ((range?["kvs"] as? [[String: Any]]) ?? []).compactMap(Self.keyValue).first)
    }

    func put(_ key: String, value: [UInt8], lease: Int64 = 0) throws(EtcdError) {
        var body: [String: Any] = ["key": Self.b64(key), "value": Self.b64(value)]
        if lease != 0 { body["lease"] = String(lease) }
        _ = try call("/v3/kv/put", body)
    }

    func leaseGrant(ttl: Int) throws(EtcdError) -> Int64 {
        let obj = try call("/v3/lease/grant", ["TTL": String(ttl)])
        let id = Int64(bitPattern: Self.number(obj["ID"]))
        guard id != 0 else { throw .protocolError("lease grant: no ID (\(obj["error"] ?? ""))") }
        return id
    }

    /// Renews a lease; returns its remaining TTL (0 or less: the lease is gone).
    func leaseKeepAlive(_ id: Int64) throws(EtcdError) -> Int {
        let obj = try call("/v3/lease/keepalive", ["ID": String(id)])
        let result = (obj["result"] as? [String: Any]) ?? obj
        return Int(Int64(bitPattern: Self.number(result["TTL"])))
    }

    func leaseRevoke(_ id: Int64) throws(EtcdError) {
        _ = try call("/v3/lease/revoke", ["ID": String(id)])
    }

    /// Opens a watch of the keys from `from` to the end of `prefix`, from `startRevision`, on its
    /// own connection.
    func watch(from: String, prefix: String, startRevision: UInt64) throws(EtcdError) -> EtcdWatch {
        var lastError = EtcdError.unreachable("no etcd endpoint configured")
        for _ in 0..<config.endpoints.count {
            let ep = config.endpoints[current]
            do throws(EtcdError) {
                if config.username != nil && token == nil {
                    if connection == nil || connection?.isOpen != true {
                        connection = try EtcdConnection(endpoint: ep, tls: tls, timeoutMs: connectTimeoutMs)
                    }
                    try authenticate()
                }
                let conn = try EtcdConnection(endpoint: ep, tls: tls, timeoutMs: connectTimeoutMs)
                let create: [String: Any] = ["create_request": [
                    "key": Self.b64(from), "range_end": Self.prefixEnd(prefix), "start_revision": String(startRevision),
                ]]
                let json = (try? JSONSerialization.data(withJSONObject: create)) ?? Data()
                var head = "POST /v3/watch HTTP/1.1\r\nHost: \(HostPort(host: ep.host, port: ep.port))\r\nContent-Type: application/json\r\n"
                if let token { head += "Authorization: \(token)\r\n" }
                head += "Content-Length: \(json.count)\r\n\r\n"
                try conn.write(Array(head.utf8) + Array(json), timeoutMs: requestTimeoutMs)
                let h = try conn.readHead(deadline: DispatchTime.now().uptimeNanoseconds + UInt64(requestTimeoutMs) * 1_000_000)
                guard h.status == 200, h.chunked else {
                    let body = (try? conn.readBody(h, deadline: DispatchTime.now().uptimeNanoseconds + 1_000_000_000)) ?? []
                    throw EtcdError.server(status: h.status, message: String(decoding: body.prefix(200), as: UTF8.self))
                }
                return EtcdWatch(connection: conn)
            } catch {
                lastError = error
                if error.isAuthFailure { token = nil }
                current = (current + 1) % config.endpoints.count
            }
        }
        throw lastError
    }
}

/// A watch stream: the gateway's chunked answer to `/v3/watch`, one JSON message per line.
final class EtcdWatch {
    private let connection: EtcdConnection
    private var pending: [UInt8] = []

    init(connection: EtcdConnection) { self.connection = connection }

    var endpoint: EtcdEndpoint { connection.endpoint }

    func close() { connection.close() }

    enum Message {
        case created(revision: UInt64)
        case events(revision: UInt64, [EtcdEvent])
        /// The start revision was compacted away: read again whole, then watch from there.
        case compacted(compactRevision: UInt64)
        case canceled(String)
        case timedOut
    }

    /// The next message, waiting up to `timeoutMs`; throws when the stream broke.
    func next(timeoutMs: Int) throws(EtcdError) -> Message {
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(timeoutMs) * 1_000_000
        while true {
            if let nl = pending.firstIndex(of: 10) {
                let line = Array(pending[0..<nl])
                pending.removeFirst(nl + 1)
                if line.allSatisfy({ $0 == 32 || $0 == 13 }) { continue }
                return try parse(line)
            }
            let now = DispatchTime.now().uptimeNanoseconds
            if now >= deadline { return .timedOut }
            switch try connection.nextStreamChunk(timeoutMs: max(1, Int((deadline - now) / 1_000_000))) {
            case .chunk(let bytes): pending += bytes
            case .end: throw .unreachable("\(connection.endpoint): the watch stream ended")
            case .timedOut: return .timedOut
            }
        }
    }

    private func parse(_ line: [UInt8]) throws(EtcdError) -> Message {
        guard let obj = (try? JSONSerialization.jsonObject(with: Data(line))) as? [String: Any] else {
            throw .protocolError("watch: a line that is not JSON")
        }
        if let err = obj["error"] as? [String: Any] {
            throw .server(status: Int(EtcdClient.number(err["http_code"])), message: (err["message"] as? String) ?? "watch error")
        }
        guard let result = obj["result"] as? [String: Any] else { throw .protocolError("watch: no result") }
        let revision = EtcdClient.number((result["header"] as? [String: Any])?["revision"])
        if result["canceled"] as? Bool == true {
            let compact = EtcdClient.number(result["compact_revision"])
            if compact > 0 { return .compacted(compactRevision: compact) }
            return .canceled((result["cancel_reason"] as? String) ?? "canceled by etcd")
        }
        if result["created"] as? Bool == true && result["events"] == nil { return .created(revision: revision) }
        let events = ((result["events"] as? [[String: Any]]) ?? []).compactMap { e -> EtcdEvent? in
            guard let kvObj = e["kv"] as? [String: Any], let kv = EtcdClient.keyValue(kvObj) else { return nil }
            return EtcdEvent(isDelete: (e["type"] as? String) == "DELETE", kv: kv)
        }
        return .events(revision: revision, events)
    }
}
