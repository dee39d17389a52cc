#if canImport(Glibc)
import Glibc
#endif
import Foundation
import TurnoutCore

/// Where the admin API is: a Unix socket path or an `http://host:port` address.
public enum AdminEndpoint: CustomStringConvertible, Sendable, Equatable {
    case unix(String)
    case tcp(HostPort)

    /// Parses `unix:/path`, `/path`, `./path` or `http://host:port`.
    public static func parse(_ text: String) -> AdminEndpoint? {
        if text.hasPrefix("http://") {
            var rest = String(text.dropFirst("http://".count))
            if rest.hasSuffix("/") { rest.removeLast() }
            guard case .success(let hp) = HostPort.parse(rest) else { return nil }
            return .tcp(hp)
        }
        if text.hasPrefix("https://") { return nil }
        if text.hasPrefix("unix:") { return .unix(String(text.dropFirst("unix:".count))) }
        return text.isEmpty ? nil : .unix(text)
    }

    public var description: String {
        switch self {
        case .unix(let p): return "unix:\(p)"
        case .tcp(let hp): return "http://\(hp)"
        }
    }
}

/// A blocking HTTP/1.1 client for the admin API, used by the CLI (never by the proxy itself).
public struct AdminClient: Sendable {
    public let endpoint: AdminEndpoint
    public let token: String?
    public var timeoutSeconds = 10

    public init(endpoint: AdminEndpoint, token: String?) {
        self.endpoint = endpoint
        self.token = token
    }

    public struct Unreachable: Error, CustomStringConvertible {
        public let endpoint: AdminEndpoint
        public let reason: String
        public var description: String { "cannot reach the admin API at \(endpoint): \(reason)" }
    }

    public struct Response: Sendable {
        public let status: Int
        public let headers: HTTPHeaders
        public let body: String
    }

    public func request(_ method: String, _ path: String, json: String? = nil, headers: [(String, String)] = []) throws(Unreachable) -> Response {
        let fd = try connectSocket()
        defer { close(fd) }
        let body = Array((json ?? "").utf8)
        var extra = headers + [("Connection", "close")]
        if json != nil { extra += [("Content-Type", "application/json"), ("Content-Length", "\(body.count)")] }
        try sendAll(fd, requestHead(method, path, extra) + body)
        var input: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
            if n == 0 { break }
            if n < 0 {
                if errno == EINTR { continue }
                throw Unreachable(endpoint: endpoint, reason: errno == EAGAIN ? "no answer within \(timeoutSeconds)s" : String(cString: strerror(errno)))
            }
            input += buf[0..<n]
        }
        guard let end = try? HTTPHeadParser.findHeadEnd(input, start: 0, end: input.count, limit: 64 * 1024),
              let resp = try? HTTPHeadParser.parseResponse(input, start: 0, end: end)
        else {
            throw Unreachable(endpoint: endpoint, reason: "the answer was not HTTP (is this a turnout admin endpoint?)")
        }
        return Response(status: resp.status, headers: resp.headers, body: String(decoding: input[end...], as: UTF8.self))
    }

    /// Sends a GET and hands each line of the streamed answer to `onLine` until the server closes.
    public func stream(_ path: String, onLine: (String) -> Void) throws(Unreachable) {
        let fd = try connectSocket()
        defer { close(fd) }
        try sendAll(fd, requestHead("GET", path, [("Accept", "text/event-stream")]))
        // A stream may be quiet for a long time: no receive timeout from here on.
        var tv = timeval(tv_sec: 0, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var buffer: [UInt8] = []
        var sawHead = false
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
            if n == 0 { return }
            if n < 0 {
                if errno == EINTR { continue }
                throw Unreachable(endpoint: endpoint, reason: String(cString: strerror(errno)))
            }
            buffer += chunk[0..<n]
            if !sawHead {
                guard let end = try? HTTPHeadParser.findHeadEnd(buffer, start: 0, end: buffer.count, limit: 64 * 1024) else { continue }
                guard let resp = try? HTTPHeadParser.parseResponse(buffer, start: 0, end: end) else {
                    throw Unreachable(endpoint: endpoint, reason: "the answer was not HTTP")
                }
                guard resp.status == 200 else {
                    throw Unreachable(endpoint: endpoint, reason: "the event stream answered \(resp.status): \(String(decoding: buffer[end...], as: UTF8.self))")
                }
                buffer.removeFirst(end)
                sawHead = true
            }
            while let nl = buffer.firstIndex(of: 10) {
                let line = String(decoding: buffer[..<nl], as: UTF8.self)
                buffer.removeFirst(nl + 1)
                if !line.isEmpty { onLine(line) }
            }
        }
    }

    private func requestHead(_ method: String, _ path: String, _ headers: [(String, String)]) -> [UInt8] {
        var head = "\(method) \(path) HTTP/1.1\r\nHost: turnout\r\nUser-Agent: turnout-cli\r\n"
        if let token { head += "Authorization: Bearer \(token)\r\n" }
        for (k, v) in headers { head += "\(k): \(v)\r\n" }
        return Array((head + "\r\n").utf8)
    }

    /// Sends every byte, retrying short writes and EINTR.
    private func sendAll(_ fd: Int32, _ out: [UInt8]) throws(Unreachable) {
        var off = 0
        while off < out.count {
            let n = out.withUnsafeBytes { send(fd, $0.baseAddress! + off, out.count - off, Int32(MSG_NOSIGNAL)) }
            if n <= 0 {
                if n < 0 && errno == EINTR { continue }
                throw Unreachable(endpoint: endpoint, reason: String(cString: strerror(errno)))
            }
            off += n
        }
    }

    private func connectSocket() throws(Unreachable) -> Int32 {
        switch endpoint {
        case .unix(let path):
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw Unreachable(endpoint: endpoint, reason: String(cString: strerror(errno))) }
            setTimeouts(fd)
            guard let rc = UnixSocketAddress.with(path: path, { Glibc.connect(fd, $0, $1) }) else {
                close(fd)
                throw Unreachable(endpoint: endpoint, reason: "socket path too long")
            }
            if rc != 0 {
                let e = errno
                close(fd)
                throw Unreachable(endpoint: endpoint, reason: String(cString: strerror(e)) + (e == ENOENT ? " (is turnout running?)" : ""))
            }
            return fd
        case .tcp(let hp):
            let addresses: [SocketAddress]
            do { addresses = try SocketAddress.resolve(hp.host, port: hp.port) } catch {
                throw Unreachable(endpoint: endpoint, reason: "\(error)")
            }
            let address = addresses[0]
            let fd = socket(address.family, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw Unreachable(endpoint: endpoint, reason: String(cString: strerror(errno))) }
            setTimeouts(fd)
            let rc = address.withSockAddr { Glibc.connect(fd, $0, $1) }
            if rc != 0 {
                let e = errno
                close(fd)
                throw Unreachable(endpoint: endpoint, reason: String(cString: strerror(e)))
            }
            return fd
        }
    }

    private func setTimeouts(_ fd: Int32) {
        var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }
}
