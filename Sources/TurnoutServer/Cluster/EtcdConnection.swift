#if canImport(Glibc)
import Glibc
#endif
import COpenSSL
import Foundation
import TurnoutCore

/// Why an etcd call failed.
enum EtcdError: Error, CustomStringConvertible {
    /// No member could be reached, or the connection broke (the call may or may not have been applied).
    case unreachable(String)
    /// etcd answered with an error (HTTP status and its message).
    case server(status: Int, message: String)
    /// The answer was not what the gateway sends.
    case protocolError(String)

    var description: String {
        switch self {
        case .unreachable(let s): return s
        case .server(let status, let message): return "etcd answered \(status): \(message)"
        case .protocolError(let s): return "unexpected answer from etcd: \(s)"
        }
    }

    /// The token expired or was never valid: authenticate again and retry.
    var isAuthFailure: Bool {
        if case .server(let status, let message) = self {
            return status == 401 || message.contains("invalid auth token") || message.contains("user name is empty")
        }
        return false
    }
}

/// One HTTP/1.1 connection to one etcd member's JSON gateway, with blocking I/O bounded by
/// timeouts. Used by one thread at a time: each of the cluster agent's queues owns its own.
/// Plain TCP, or TLS through OpenSSL directly on the socket.
final class EtcdConnection {
    let endpoint: EtcdEndpoint
    private var fd: Int32 = -1
    private var ssl: OpaquePointer?
    private var buffer: [UInt8] = []

    /// Connects within `timeoutMs` (TCP and, for https, the TLS handshake).
    init(endpoint: EtcdEndpoint, tls: EtcdTLSContext?, timeoutMs: Int) throws(EtcdError) {
        self.endpoint = endpoint
        let addresses: [SocketAddress]
        do { addresses = try SocketAddress.resolve(endpoint.host, port: endpoint.port) } catch {
            throw .unreachable("\(endpoint): cannot resolve \(endpoint.host): \(error)")
        }
        guard let address = addresses.first else { throw .unreachable("\(endpoint): \(endpoint.host) has no address") }
        let started: (fd: Int32, inProgress: Bool)
        do { started = try Sockets.connect(to: address) } catch { throw .unreachable("\(endpoint): \(error)") }
        fd = started.fd
        if started.inProgress {
            guard wait(events: Int16(POLLOUT), timeoutMs: timeoutMs) else {
                close()
                throw .unreachable("\(endpoint): connect timed out after \(timeoutMs) ms")
            }
            let err = Syscall.socketError(fd)
            if err != 0 {
                close()
                throw .unreachable("\(endpoint): connect: \(String(cString: strerror(err)))")
            }
        }
        // Blocking from here on; every read and write waits with poll first.
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags & ~O_NONBLOCK)
        if endpoint.secure {
            guard let tls else { close(); throw .unreachable("\(endpoint): https endpoint without a TLS context") }
            try handshake(tls, timeoutMs: timeoutMs)
        }
    }

    deinit { close() }

    var isOpen: Bool { fd >= 0 }

    func close() {
        if let ssl {
            SSL_free(ssl)
            self.ssl = nil
        }
        if fd >= 0 {
            Glibc.close(fd)
            fd = -1
        }
        buffer.removeAll()
    }

    private func handshake(_ tls: EtcdTLSContext, timeoutMs: Int) throws(EtcdError) {
        ERR_clear_error()
        guard let s = SSL_new(tls.context) else { close(); throw .unreachable("\(endpoint): \(TLSContext.opensslError())") }
        ssl = s
        SSL_set_fd(s, fd)
        tls.client.prepare(s, host: endpoint.host, serverName: nil)
        setTimeouts(timeoutMs)
        if SSL_connect(s) != 1 {
            let reason = TLSContext.opensslError()
            let refused = TLSClientContext.verifyFailure(s)
            close()
            if let refused { throw .unreachable("\(endpoint): TLS: \(refused)") }
            throw .unreachable("\(endpoint): TLS handshake failed: \(reason)")
        }
    }

    private func setTimeouts(_ ms: Int) {
        var tv = timeval(tv_sec: ms / 1000, tv_usec: Int((ms % 1000) * 1000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Waits until the socket is ready for `events`; false on timeout.
    private func wait(events: Int16, timeoutMs: Int) -> Bool {
        var p = pollfd(fd: fd, events: events, revents: 0)
        while true {
            let r = poll(&p, 1, Int32(timeoutMs))
            if r < 0 && errno == EINTR { continue }
            return r > 0
        }
    }

    /// Writes all of `bytes`.
    func write(_ bytes: [UInt8], timeoutMs: Int) throws(EtcdError) {
        guard fd >= 0 else { throw .unreachable("\(endpoint): connection closed") }
        setTimeouts(timeoutMs)
        var off = 0
        while off < bytes.count {
            let n: Int = bytes.withUnsafeBytes { p in
                if let ssl { return Int(SSL_write(ssl, p.baseAddress! + off, Int32(p.count - off))) }
                return Glibc.send(fd, p.baseAddress! + off, p.count - off, Int32(MSG_NOSIGNAL))
            }
            if n <= 0 {
                if ssl == nil && n < 0 && errno == EINTR { continue }
                let reason = ssl != nil ? TLSContext.opensslError() : String(cString: strerror(errno))
                close()
                throw .unreachable("\(endpoint): write failed: \(reason)")
            }
            off += n
        }
    }

    /// Reads what is available (waiting up to `timeoutMs`) into the buffer. Returns false on a
    /// timeout with nothing read; throws when the connection ended.
    @discardableResult
    func fill(timeoutMs: Int) throws(EtcdError) -> Bool {
        guard fd >= 0 else { throw .unreachable("\(endpoint): connection closed") }
        if ssl == nil || SSL_pending(ssl) == 0 {
            guard wait(events: Int16(POLLIN), timeoutMs: timeoutMs) else { return false }
        }
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        let n: Int = chunk.withUnsafeMutableBytes { p in
            if let ssl { return Int(SSL_read(ssl, p.baseAddress!, Int32(p.count))) }
            return Glibc.recv(fd, p.baseAddress!, p.count, 0)
        }
        if n <= 0 {
            if ssl == nil && n < 0 && (errno == EINTR || errno == EAGAIN) { return false }
            close()
            throw .unreachable("\(endpoint): connection closed by etcd")
        }
        buffer.append(contentsOf: chunk[0..<n])
        return true
    }

    /// A response head: status and the headers that frame the body.
    struct Head {
        var status: Int
        var contentLength: Int?
        var chunked: Bool
        var keepAlive: Bool
    }

    /// Reads a response head, waiting until `deadline` (uptime nanoseconds).
    func readHead(deadline: UInt64) throws(EtcdError) -> Head {
        while true {
            if let end = Self.find(buffer, [13, 10, 13, 10]) {
                let text = String(decoding: buffer[0..<end], as: UTF8.self)
                buffer.removeFirst(end + 4)
                var lines = text.split(separator: "\r\n", omittingEmptySubsequences: false)
                guard !lines.isEmpty else { throw .protocolError("empty response head") }
                let statusLine = lines.removeFirst().split(separator: " ")
                guard statusLine.count >= 2, let status = Int(statusLine[1]) else { throw .protocolError("bad status line") }
                var head = Head(status: status, contentLength: nil, chunked: false, keepAlive: true)
                for line in lines {
                    guard let colon = line.firstIndex(of: ":") else { continue }
                    let name = line[..<colon].lowercased()
                    let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces).lowercased()
                    switch name {
                    case "content-length": head.contentLength = Int(value)
                    case "transfer-encoding": head.chunked = value.contains("chunked")
                    case "connection": if value.contains("close") { head.keepAlive = false }
                    default: break
                    }
                }
                return head
            }
            if buffer.count > 64 * 1024 { throw .protocolError("response head larger than 64 KiB") }
            try fillBefore(deadline)
        }
    }

    private func fillBefore(_ deadline: UInt64) throws(EtcdError) {
        let now = DispatchTime.now().uptimeNanoseconds
        guard now < deadline else {
            close()
            throw .unreachable("\(endpoint): no answer in time")
        }
        _ = try fill(timeoutMs: max(1, Int((deadline - now) / 1_000_000)))
    }

    /// Reads a whole body framed by `head`.
    func readBody(_ head: Head, deadline: UInt64) throws(EtcdError) -> [UInt8] {
        if let n = head.contentLength {
            while buffer.count < n { try fillBefore(deadline) }
            let body = Array(buffer[0..<n])
            buffer.removeFirst(n)
            return body
        }
        if head.chunked {
            var body: [UInt8] = []
            while let piece = try nextChunk(deadline: deadline) { body += piece }
            return body
        }
        // Until close.
        while true {
            do { try fillBefore(deadline) } catch {
                if fd < 0 { break }
                throw error
            }
        }
        let body = buffer
        buffer.removeAll()
        return body
    }

    /// One chunk taken from the buffer, if it holds a whole one: its data, or the end of the body
    /// (the last chunk, the trailers the gateway sends, `Grpc-Trailer-*`, and the empty line).
    private enum Framed { case chunk([UInt8]), end, needMore }
    private func takeChunk() throws(EtcdError) -> Framed {
        guard let lineEnd = Self.find(buffer, [13, 10]) else { return .needMore }
        let sizeText = String(decoding: buffer[0..<lineEnd], as: UTF8.self).split(separator: ";").first ?? ""
        guard let size = Int(sizeText.trimmingCharacters(in: .whitespaces), radix: 16), size >= 0 else {
            throw .protocolError("bad chunk size")
        }
        if size == 0 {
            if buffer.count >= lineEnd + 4 && buffer[lineEnd + 2] == 13 && buffer[lineEnd + 3] == 10 {
                buffer.removeFirst(lineEnd + 4)
                return .end
            }
            guard let end = Self.find(Array(buffer[(lineEnd + 2)...]), [13, 10, 13, 10]) else { return .needMore }
            buffer.removeFirst(lineEnd + 2 + end + 4)
            return .end
        }
        let need = lineEnd + 2 + size + 2
        guard buffer.count >= need else { return .needMore }
        let data = Array(buffer[(lineEnd + 2)..<(lineEnd + 2 + size)])
        buffer.removeFirst(need)
        return .chunk(data)
    }

    /// The next chunk of a chunked body; nil at its end. Waits until `deadline`.
    func nextChunk(deadline: UInt64) throws(EtcdError) -> [UInt8]? {
        while true {
            switch try takeChunk() {
            case .chunk(let data): return data
            case .end: return nil
            case .needMore: try fillBefore(deadline)
            }
        }
    }

    /// Like `nextChunk`, but a timeout returns `.timedOut` and leaves the stream usable; a read
    /// that brought bytes without a whole chunk returns an empty chunk.
    enum StreamRead { case chunk([UInt8]), end, timedOut }
    func nextStreamChunk(timeoutMs: Int) throws(EtcdError) -> StreamRead {
        switch try takeChunk() {
        case .chunk(let data): return .chunk(data)
        case .end: return .end
        case .needMore: return try fill(timeoutMs: timeoutMs) ? .chunk([]) : .timedOut
        }
    }

    static func find(_ hay: [UInt8], _ needle: [UInt8]) -> Int? {
        guard hay.count >= needle.count else { return nil }
        var i = 0
        while i <= hay.count - needle.count {
            if hay[i] == needle[0] {
                var j = 1
                while j < needle.count && hay[i + j] == needle[j] { j += 1 }
                if j == needle.count { return i }
            }
            i += 1
        }
        return nil
    }
}

/// The OpenSSL client context for https etcd endpoints: verifies the server against `tls.ca` (or
/// the system's CAs), presents a client certificate when one is configured.
final class EtcdTLSContext: @unchecked Sendable {
    let client: TLSClientContext
    var context: OpaquePointer { client.context }

    init(_ config: EtcdTLSConfig?) throws(EtcdError) {
        do {
            client = try TLSClientContext(ca: config?.ca, certificate: config?.certificate, privateKey: config?.privateKey,
                                          keyPath: "cluster.etcd.tls")
        } catch {
            throw .unreachable(error.description)
        }
    }
}
