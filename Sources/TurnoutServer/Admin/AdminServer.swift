#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Foundation
import Logging
import Synchronization
import TurnoutCore

/// The admin API: HTTP/1.1 + JSON on a Unix socket (mode 0600) and optionally on TCP with a bearer
/// token. Runs on its own event loop, so it answers even while the serving loops are busy.
final class AdminServer: @unchecked Sendable {
    let loop: EventLoop
    let router: AdminRouter
    let logger: Logger
    let access: AdminAccess
    private var listeners: [(fd: Int32, source: DispatchSourceRead, requiresToken: Bool)] = []
    private(set) var socketPath: String?
    private(set) var tcpAddress: SocketAddress?

    init(router: AdminRouter, logger: Logger, access: AdminAccess) {
        // Operators' calls should not queue behind data-path work where the OS honours priorities.
        self.loop = EventLoop(index: 0, label: "turnout.admin", qos: .userInteractive)
        self.router = router
        self.logger = logger
        self.access = access
    }

    /// Reads and checks the token file: it must exist, be non-empty and not readable by others.
    static func readToken(path: String, key: String = "admin.token_file") throws -> String {
        guard let data = FileManager.default.contents(atPath: path),
              let text = String(data: data, encoding: .utf8)
        else {
            throw StartupError("\(key) \(path) cannot be read")
        }
        let token = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard token.count >= 16 else {
            throw StartupError("\(key) \(path) must hold a token of at least 16 characters")
        }
        return token
    }

    /// Binds the Unix socket, replacing a stale socket file but never a live one or another file.
    func listenUnix(path: String) throws {
        var st = stat()
        if lstat(path, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFSOCK else {
                throw StartupError("admin.socket \(path) exists and is not a socket; remove it or choose another path")
            }
            if Self.unixSocketAnswers(path) {
                throw StartupError("admin.socket \(path) is in use by a running process (another turnout?)")
            }
            unlink(path)
        }
        let fd = try Syscall.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue))
        // The socket file is created with mode 0600: only this user can talk to the admin API.
        let oldMask = umask(0o177)
        let bound = UnixSocketAddress.with(path: path) { bind(fd, $0, $1) }
        umask(oldMask)
        guard let rc = bound else {
            close(fd)
            throw StartupError("admin.socket path is too long: \(path)")
        }
        if rc != 0 {
            let e = errno
            close(fd)
            throw StartupError("cannot bind admin.socket \(path): \(SystemError("bind", errno: e))")
        }
        chmod(path, 0o600)
        guard Glibc.listen(fd, 64) == 0 else {
            let e = errno
            close(fd)
            throw SystemError("listen", errno: e)
        }
        socketPath = path
        addListener(fd: fd, requiresToken: false)
    }

    func listenTCP(address: HostPort) throws {
        let addresses = try SocketAddress.resolve(address.host, port: address.port)
        let fd = try Sockets.listen(on: addresses[0], backlog: 64)
        tcpAddress = Sockets.localAddress(fd)
        addListener(fd: fd, requiresToken: true)
    }

    private func addListener(fd: Int32, requiresToken: Bool) {
        let source = DispatchSource.makeReadSource(fileDescriptor: fd, queue: loop.queue)
        source.setEventHandler { [unowned self] in self.accept(fd: fd, requiresToken: requiresToken) }
        source.setCancelHandler { Glibc.close(fd) }
        listeners.append((fd, source, requiresToken))
    }

    func start() {
        for l in listeners { l.source.activate() }
    }

    /// Stops listening and removes the socket file.
    func stop() {
        loop.queue.sync {
            for l in listeners { l.source.cancel() }
            listeners = []
            if let socketPath { unlink(socketPath) }
        }
    }

    private func accept(fd: Int32, requiresToken: Bool) {
        for _ in 0..<32 {
            guard let cfd = (try? Sockets.accept(fd))?.fd else { return }
            let conn = AdminConnection(channel: SocketChannel(fd: cfd, loop: loop), server: self, requiresToken: requiresToken)
            conn.start()
        }
    }

    static func unixSocketAnswers(_ path: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return UnixSocketAddress.with(path: path) { connect(fd, $0, $1) } == 0
    }
}

/// One admin client connection: reads a request (body at most 64 KiB), answers, keeps alive.
final class AdminConnection: ChannelDelegate, LoopTimed, @unchecked Sendable {
    let channel: SocketChannel
    unowned let server: AdminServer
    let requiresToken: Bool
    private var input: [UInt8] = []
    private var deadline: UInt64 = 0
    private var closed = false
    private var subscription: ObjectIdentifier?
    /// A deferred answer (a cluster write) is being prepared; later requests wait their turn.
    private var waiting = false
    /// Event lines queued for this stream and not yet written.
    private let pendingEvents = PendingCount()
    static let maxPendingEvents = 1000
    /// Bytes an event stream may have queued in user space before its reader is dropped.
    static let maxPendingBytes = 1024 * 1024

    init(channel: SocketChannel, server: AdminServer, requiresToken: Bool) {
        self.channel = channel
        self.server = server
        self.requiresToken = requiresToken
    }

    func start() {
        server.loop.register(self)
        channel.delegate = self
        channel.start()
        deadline = EventLoop.now() + 30_000_000_000
    }

    func checkTimeouts(now: UInt64) {
        if subscription != nil {
            // Streams live until the client leaves; a comment every 15 s notices dead clients.
            if now >= deadline {
                deadline = now + 15_000_000_000
                channel.write(Array(": keep-alive\n\n".utf8))
            }
            if channel.isClosed { shut() }
            return
        }
        if waiting && !channel.isClosed { return }  // bounded by the deferred work's own timeout
        if now >= deadline || (closed && channel.isClosed) { shut() }
    }

    /// Turns this connection into a `text/event-stream` of the event bus.
    private func startStream() {
        channel.write(Array("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n: turnout events\n\n".utf8))
        deadline = EventLoop.now() + 15_000_000_000
        let loop = server.loop
        let pending = pendingEvents
        subscription = server.router.events.subscribe { [weak self] line in
            guard let self else { return false }
            // Bounded: a reader that falls behind is told and dropped; the proxy never waits for it.
            let accepted = pending.count.withLock { n -> Bool in
                if n >= Self.maxPendingEvents { return false }
                n += 1
                return true
            }
            if !accepted {
                loop.execute { [weak self] in self?.overflow() }
                return false
            }
            loop.execute { [weak self] in
                guard let self else { return }
                pending.count.withLock { $0 -= 1 }
                guard !self.channel.isClosed else { return }
                if self.channel.pendingBytes > Self.maxPendingBytes {
                    self.overflow()
                    return
                }
                self.channel.write(Array("data: \(line)\n\n".utf8))
            }
            return true
        }
    }

    private func overflow() {
        guard !channel.isClosed else { return }
        channel.write(Array("event: overflow\ndata: {\"error\":\"this reader fell behind and was dropped\",\"code\":\"overflow\"}\n\n".utf8))
        closed = true
        channel.finish()
    }

    func channelRead(_ channel: SocketChannel, _ bytes: UnsafeRawBufferPointer) {
        // An event stream only sends; whatever its reader writes is ignored.
        guard !closed, subscription == nil else { return }
        input.append(contentsOf: bytes)
        if !waiting { process() }
    }

    private func process() {
        while !closed {
            let headEnd: Int?
            do {
                headEnd = try HTTPHeadParser.findHeadEnd(input, start: 0, end: input.count, limit: 16 * 1024)
            } catch {
                reply(.error(AdminError(431, "head_too_large", "request head too large")), close: true)
                return
            }
            guard let headEnd else { return }
            let head: HTTPRequestHead
            do {
                head = try HTTPHeadParser.parseRequest(input, start: 0, end: headEnd)
            } catch {
                reply(.error(AdminError(error.status, "bad_request", error.message)), close: true)
                return
            }
            var body: [UInt8] = []
            var consumed = headEnd
            if case .length(let n) = head.framing, n > AdminRouter.maxBody {
                reply(.error(AdminError(413, "body_too_large", "the request body is larger than 64 KiB")), close: true)
                return
            }
            if case .untilClose = head.framing {} else {
                var reader = BodyReader(head.framing)
                var done = false
                do {
                    read: while true {
                        switch try reader.next(input, index: &consumed, end: input.count) {
                        case .data(let r):
                            body += input[r]
                            if body.count > AdminRouter.maxBody {
                                reply(.error(AdminError(413, "body_too_large", "the request body is larger than 64 KiB")), close: true)
                                return
                            }
                        case .chunkStart, .chunkEnd:
                            continue
                        case .end:
                            done = true
                            break read
                        case .needMore:
                            break read
                        }
                    }
                } catch {
                    reply(.error(AdminError(400, "bad_request", error.message)), close: true)
                    return
                }
                if !done {
                    if input.count - headEnd > AdminRouter.maxBody + 4096 {
                        reply(.error(AdminError(413, "body_too_large", "the request body is larger than 64 KiB")), close: true)
                    }
                    return
                }
            }
            input.removeFirst(consumed)
            var response: AdminResponse
            let decision: AdminAccess.Decision = requiresToken
                ? server.access.decide(method: head.method, target: head.target, headers: head.headers, body: body) : .route
            switch decision {
            case .respond(let r):
                response = r
            case .route:
                response = server.router.handle(AdminRequest(method: head.method, path: head.target, headers: head.headers, body: body))
            }
            if requiresToken && server.access.dashboard {
                // The dashboard's answers are never framed by another site.
                response.headers.append(("X-Frame-Options", "DENY"))
                response.headers.append(("X-Content-Type-Options", "nosniff"))
            }
            if response.stream {
                input = []
                startStream()
                return
            }
            if let deferred = response.deferred {
                waiting = true
                let keepAlive = head.keepAlive, isHead = head.method == "HEAD"
                let loop = server.loop
                deferred { [weak self] answer in
                    loop.execute { [weak self] in
                        guard let self, !self.closed else { return }
                        self.waiting = false
                        self.reply(answer, close: !keepAlive, head: isHead)
                        self.deadline = EventLoop.now() + 30_000_000_000
                        self.process()
                    }
                }
                return
            }
            reply(response, close: !head.keepAlive, head: head.method == "HEAD")
            deadline = EventLoop.now() + 30_000_000_000
        }
    }

    private func reply(_ r: AdminResponse, close: Bool, head: Bool = false) {
        let body = r.raw ?? Array((r.body.hasSuffix("\n") ? r.body : r.body + "\n").utf8)
        var out = "HTTP/1.1 \(r.status) \(HeaderRewriter.reasonPhrase(r.status))\r\n"
        if !r.headers.contains(where: { $0.0 == "Content-Type" }) { out += "Content-Type: application/json\r\n" }
        out += "Content-Length: \(body.count)\r\n"
        if !r.headers.contains(where: { $0.0 == "Cache-Control" }) { out += "Cache-Control: no-store\r\n" }
        for (k, v) in r.headers { out += "\(k): \(v)\r\n" }
        if close { out += "Connection: close\r\n" }
        out += "\r\n"
        channel.write(Array(out.utf8) + (head ? [] : body))
        if close {
            closed = true
            channel.finish()
        }
    }

    func channelEOF(_ channel: SocketChannel) { shut() }
    func channelError(_ channel: SocketChannel, _ error: SystemError) { shut() }
    func channelDrained(_ channel: SocketChannel) {}

    private func shut() {
        if let subscription {
            server.router.events.unsubscribe(subscription)
            self.subscription = nil
        }
        closed = true
        channel.close()
        server.loop.unregister(self)
    }
}

/// The number of event lines queued for one stream.
final class PendingCount: Sendable {
    let count = Mutex<Int>(0)
}
