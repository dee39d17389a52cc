import Dispatch
import Glibc
import Logging
import Testing
import TurnoutCore
@testable import TurnoutServer

/// The drivers (`HTTP1Connection`, `UpstreamExchange`) on a loop whose clock the test moves: every
/// timeout is reached by advancing the clock, never by waiting for it. The client is one end of a
/// socket pair and the upstream a listening socket, both held by the test; the loop runs the real
/// code between them.
@Suite(.serialized) struct ExchangeDriverTests {
    static let start: UInt64 = 1_000_000_000_000

    /// A blocking socket the test holds. Receives are bounded (10 s) so a broken driver fails the
    /// test instead of hanging it; no test waits for that bound to pass.
    final class Peer {
        let fd: Int32
        private(set) var received: [UInt8] = []
        private(set) var eof = false

        init(fd: Int32) {
            self.fd = fd
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
            var tv = timeval(tv_sec: 10, tv_usec: 0)
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        }

        deinit { Glibc.close(fd) }

        func send(_ text: String) {
            let bytes = Array(text.utf8)
            _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        }

        var text: String { String(decoding: received, as: UTF8.self) }

        /// Reads until `done(text)` holds or the peer closes.
        @discardableResult
        func receive(until done: (String) -> Bool) -> String {
            var buf = [UInt8](repeating: 0, count: 65536)
            while !done(text) && !eof {
                let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if n > 0 { received += buf[0..<n] } else if n == 0 { eof = true } else { break }
            }
            return text
        }

        /// Whether nothing (no byte, no close) is waiting to be read right now.
        var quiet: Bool {
            var b: UInt8 = 0
            let n = recv(fd, &b, 1, Int32(MSG_DONTWAIT | MSG_PEEK))
            return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)
        }
    }

    /// A loop on the test clock, a routing store with one healthy endpoint (the test's listening
    /// socket), and what a client connection needs.
    final class Rig {
        let loop = EventLoop(index: 0, label: "test.driver")
        let listener: Int32
        let context: ProxyContext
        let pool: UpstreamPool
        let stats: LoopStats
        var connections: [HTTP1Connection] = []
        /// Every client and upstream end the rig handed out, so that `deinit` can hang them up.
        private var peers: [Peer] = []

        init(timeouts: String) throws {
            listener = try Sockets.listen(on: SocketAddress.resolve("127.0.0.1", port: 0)[0], backlog: 16)
            _ = fcntl(listener, F_SETFL, fcntl(listener, F_GETFL) & ~O_NONBLOCK)
            var tv = timeval(tv_sec: 10, tv_usec: 0)
            _ = setsockopt(listener, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            let port = Sockets.localAddress(listener)!.port
            let config = try ConfigLoader.parse(yaml: """
                listeners: [ { address: "127.0.0.1:0" } ]
                pools: { blue: { endpoints: ["127.0.0.1:\(port)"] } }
                timeouts: \(timeouts)
                access_log: false
                """)
            let store = RoutingStore(config: config, state: .initial(from: config))
            store.setHealth(endpointID: store.endpoints[0].endpoints[0].id, .healthy)
            context = ProxyContext(config: config, store: store, logger: Logger(label: "test"))
            pool = UpstreamPool(loop: loop, context: context)
            stats = LoopStats(loop: loop)
            loop.queue.sync { loop.testClock = ExchangeDriverTests.start }
        }

        /// The drivers hold the loop, pool and context without a reference count (`Unretained`,
        /// `unowned(unsafe)`), as the server can: its loops and pools live as long as it serves. A
        /// test's loop and pool go with the rig, so every connection on them must be over first,
        /// or a late hang-up would reach a freed pool. The peers hang up, as clients and upstreams
        /// do, and the rig waits until the loop has closed its side of each.
        deinit {
            for p in peers { Glibc.shutdown(p.fd, Int32(SHUT_RDWR)) }
            let connections = self.connections, pool = self.pool
            let over = waitOnLoop {
                connections.allSatisfy(\.isFinished) && pool.connectionCounts().values.allSatisfy { $0.open == 0 && $0.idle == 0 }
            }
            #expect(over, "a connection on the test loop outlived its peers' hang-up")
            guard over else {
                // Kept, not freed: what is still open on them may still reach them.
                _ = Unmanaged.passRetained(loop)
                _ = Unmanaged.passRetained(pool)
                _ = Unmanaged.passRetained(context)
                _ = Unmanaged.passRetained(stats)
                Glibc.close(listener)
                return
            }
            loop.shutdown()
            Glibc.close(listener)
        }

        /// A client connection served by an `HTTP1Connection`; the test holds the other end.
        func client() -> (Peer, HTTP1Connection) {
            var fds: [Int32] = [0, 0]
            precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
            _ = fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK)
            let env = ClientEnvironment(loop: loop, context: context, pool: pool, stats: stats,
                                        mirrors: MirrorRunner(loop: loop, context: context, pool: pool, stats: stats), clientIP: "127.0.0.1",
                                        scheme: "http", onClose: {})
            let conn = HTTP1Connection(transport: SocketChannel(fd: fds[0], loop: loop), env: env, acceptsPriorKnowledgeH2: true)
            loop.queue.sync { conn.start() }
            connections.append(conn)
            let peer = Peer(fd: fds[1])
            peers.append(peer)
            return (peer, conn)
        }

        /// The next connection the proxy opens to the upstream.
        func acceptUpstream() -> Peer {
            let fd = Glibc.accept(listener, nil, nil)
            precondition(fd >= 0, "the proxy never connected to the upstream")
            let peer = Peer(fd: fd)
            peers.append(peer)
            return peer
        }

        /// Moves the loop's clock on by `ms` milliseconds and runs its tick.
        func advance(ms: UInt64) {
            loop.queue.sync { loop.advanceTestClock(to: loop.testClock! + ms * 1_000_000) }
        }

        /// Waits (bounded) until `condition`, read on the loop, holds.
        func waitOnLoop(_ condition: @escaping () -> Bool) -> Bool {
            for _ in 0..<2000 {
                if loop.queue.sync(execute: condition) { return true }
                let s = DispatchSemaphore(value: 0)
                loop.queue.asyncAfter(deadline: .now() + .milliseconds(5)) { s.signal() }
                s.wait()
            }
            return false
        }
    }

    @Test func anUpstreamThatNeverAnswersGetsA504AtItsDeadlineAndNotBefore() throws {
        let rig = try Rig(timeouts: "{ upstream_response: 5s }")
        let (client, _) = rig.client()
        client.send("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        let upstream = rig.acceptUpstream()
        upstream.receive { $0.contains("\r\n\r\n") }
        rig.advance(ms: 4_999)
        #expect(client.quiet && upstream.quiet)
        rig.advance(ms: 2)
        #expect(client.receive { $0.contains("\r\n\r\n") }.hasPrefix("HTTP/1.1 504 "))
        upstream.receive { _ in false }
        #expect(upstream.eof)  // the upstream connection is closed, not reused
    }

    @Test func aResponseThatStallsMidBodyIsCutAtTheDeadlineNeverCompleted() throws {
        let rig = try Rig(timeouts: "{ upstream_response: 5s }")
        let (client, _) = rig.client()
        client.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        let upstream = rig.acceptUpstream()
        upstream.receive { $0.contains("\r\n\r\n") }
        upstream.send("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        #expect(client.receive { $0.hasSuffix("abc") }.hasPrefix("HTTP/1.1 200 OK"))
        rig.advance(ms: 4_999)
        #expect(client.quiet)
        rig.advance(ms: 2)
        client.receive { _ in false }
        #expect(client.eof && client.text.hasSuffix("\r\n\r\nabc"))  // closed short: never looks complete
    }

    @Test func progressPushesTheResponseDeadlineOn() throws {
        let rig = try Rig(timeouts: "{ upstream_response: 5s }")
        let (client, _) = rig.client()
        client.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        let upstream = rig.acceptUpstream()
        upstream.receive { $0.contains("\r\n\r\n") }
        upstream.send("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")
        client.receive { $0.hasSuffix("abc") }
        rig.advance(ms: 4_000)
        upstream.send("de")
        client.receive { $0.hasSuffix("abcde") }
        rig.advance(ms: 4_000)  // 8 s after the head, 4 s after the last bytes
        #expect(client.quiet)
        upstream.send("f")
        #expect(client.receive { $0.hasSuffix("abcdef") }.hasSuffix("abcdef") && !client.eof)
    }

    @Test func aClientThatStopsMidHeadGetsA408AtClientHeader() throws {
        let rig = try Rig(timeouts: "{ client_header: 2s }")
        let (client, conn) = rig.client()
        client.send("GET / HTTP/1.1\r\nHo")
        #expect(rig.waitOnLoop { conn.deadlineKind == .header })
        rig.advance(ms: 1_999)
        #expect(client.quiet)
        rig.advance(ms: 2)
        #expect(client.receive { $0.contains("\r\n\r\n") }.hasPrefix("HTTP/1.1 408 "))
    }

    @Test func aClientThatStallsMidBodyLosesItsUpstreamAtTheIdleDeadline() throws {
        let rig = try Rig(timeouts: "{ idle: 3s }")
        let (client, _) = rig.client()
        client.send("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        let upstream = rig.acceptUpstream()
        upstream.receive { $0.hasSuffix("\r\n\r\nabc") }
        rig.advance(ms: 2_999)
        #expect(upstream.quiet && client.quiet)
        rig.advance(ms: 2)
        upstream.receive { _ in false }
        #expect(upstream.eof && upstream.text.hasSuffix("\r\n\r\nabc"))  // 7 bytes short: never complete
        client.receive { _ in false }
        #expect(client.eof)
    }

    @Test func anIdleKeepAliveClientIsClosedAtTheIdleDeadlineAndItsUpstreamConnectionPooled() throws {
        let rig = try Rig(timeouts: "{ idle: 3s }")
        let (client, conn) = rig.client()
        client.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        let upstream = rig.acceptUpstream()
        upstream.receive { $0.contains("\r\n\r\n") }
        upstream.send("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        #expect(client.receive { $0.hasSuffix("ok") }.hasPrefix("HTTP/1.1 200 OK"))
        #expect(rig.waitOnLoop { conn.deadlineKind == .idle })
        #expect(rig.loop.queue.sync { rig.pool.idleCount } == 1)
        rig.advance(ms: 2_999)
        #expect(client.quiet)
        rig.advance(ms: 2)
        client.receive { _ in false }
        #expect(client.eof)
    }
}
