#if canImport(Glibc)
import Glibc
#endif
import COpenSSL
import Dispatch
import Foundation
import Synchronization
import Testing
import TurnoutCore
@testable import TurnoutServer

/// Echoes plaintext back in upper case; stands in for the HTTP connection after the handshake.
private final class UpperEcho: ChannelDelegate, @unchecked Sendable {
    let transport: TLSTransport
    init(_ transport: TLSTransport) { self.transport = transport }
    func channelRead(_ channel: SocketChannel, _ bytes: UnsafeRawBufferPointer) {
        transport.write(bytes.map { $0 >= 97 && $0 <= 122 ? $0 - 32 : $0 })
    }
    func channelEOF(_ channel: SocketChannel) { transport.finish() }
    func channelError(_ channel: SocketChannel, _ error: SystemError) { transport.close() }
    func channelDrained(_ channel: SocketChannel) {}
}

private let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")

private func serverContext() throws -> TLSContext {
    try TLSContext(TLSConfig(certificates: [TLSCertificate(
        certificate: fixtures.appendingPathComponent("test-cert.pem").path,
        privateKey: fixtures.appendingPathComponent("test-key.pem").path)]))
}

/// A blocking OpenSSL client on `fd` (run off the loop). Returns the ALPN protocol and what came
/// back for `message`.
private func runClient(fd: Int32, alpn: [UInt8], message: [UInt8]) -> (alpn: String?, echo: [UInt8])? {
    guard let ctx = SSL_CTX_new(TLS_client_method()), let ssl = SSL_new(ctx) else { return nil }
    defer { SSL_free(ssl); SSL_CTX_free(ctx) }
    _ = alpn.withUnsafeBufferPointer { SSL_set_alpn_protos(ssl, $0.baseAddress, UInt32($0.count)) }
    SSL_set_fd(ssl, fd)
    guard SSL_connect(ssl) == 1 else { return nil }
    var proto: UnsafePointer<UInt8>?
    var len: UInt32 = 0
    SSL_get0_alpn_selected(ssl, &proto, &len)
    let selected = proto.map { String(decoding: UnsafeBufferPointer(start: $0, count: Int(len)), as: UTF8.self) }
    // Write and read concurrently in effect: small enough pieces that neither side's buffers fill.
    var echo: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    var sent = 0
    while echo.count < message.count {
        if sent < message.count {
            let n = min(16384, message.count - sent)
            let w = message[sent..<(sent + n)].withUnsafeBytes { SSL_write(ssl, $0.baseAddress, Int32(n)) }
            guard w > 0 else { return nil }
            sent += Int(w)
        }
        while echo.count < sent {
            let r = buf.withUnsafeMutableBytes { SSL_read(ssl, $0.baseAddress, Int32($0.count)) }
            guard r > 0 else { return nil }
            echo.append(contentsOf: buf[0..<Int(r)])
        }
    }
    _ = SSL_shutdown(ssl)
    return (selected, echo)
}

private func socketPair() -> (server: Int32, client: Int32) {
    var fds: [Int32] = [0, 0]
    precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
    _ = fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK)
    var tv = timeval(tv_sec: 10, tv_usec: 0)
    _ = setsockopt(fds[1], SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    return (fds[0], fds[1])
}

/// What the server side saw: negotiated protocols and handshake failures.
private final class Seen: Sendable {
    let alpn = Mutex<[String?]>([])
    let failures = Mutex<[String]>([])
}

/// Closes the transport on its loop and lets the loop finish what was queued before it goes away.
private func shutDown(_ transport: TLSTransport, _ loop: EventLoop) {
    loop.queue.sync { transport.close() }
    loop.queue.sync {}
    withExtendedLifetime((transport, loop)) {}
}

@Suite struct TLSTransportTests {
    /// Starts a server transport on a loop; `alpnSeen` receives the negotiated protocol.
    private func serve(_ fd: Int32, loop: EventLoop, context: TLSContext, seen: Seen) -> TLSTransport {
        loop.queue.sync {
            let channel = SocketChannel(fd: fd, loop: loop)
            let t = TLSTransport(channel: channel, loop: loop, tls: context, handshakeTimeoutMs: 5000,
                                 onHandshake: { transport, alpn in
                seen.alpn.withLock { $0.append(alpn) }
                transport.delegate = UpperEcho(transport)
            }, onFailure: { reason in seen.failures.withLock { $0.append(reason) } })
            t.beginHandshake()
            return t
        }
    }

    @Test func handshakeNegotiatesH2AndCarriesPlaintextBothWays() throws {
        let loop = EventLoop(index: 0, label: "test.tls")
        defer { loop.shutdown() }
        let context = try serverContext()
        let (s, c) = socketPair()
        let seen = Seen()
        let transport = serve(s, loop: loop, context: context, seen: seen)
        defer { shutDown(transport, loop) }
        let message = Array(String(repeating: "hello, tls! ", count: 100_000).utf8)  // 1.2 MB
        let result = runClient(fd: c, alpn: [2, 104, 50, 8] + Array("http/1.1".utf8), message: message)
        close(c)
        let r = try #require(result)
        #expect(r.alpn == "h2")
        #expect(r.echo == message.map { $0 >= 97 && $0 <= 122 ? $0 - 32 : $0 })
        #expect(seen.alpn.withLock { $0 } == ["h2"])
        #expect(seen.failures.withLock { $0 }.isEmpty)
    }

    @Test func clientsOfferingOnlyHTTP11GetIt() throws {
        let loop = EventLoop(index: 0, label: "test.tls")
        defer { loop.shutdown() }
        let context = try serverContext()
        let (s, c) = socketPair()
        let seen = Seen()
        let transport = serve(s, loop: loop, context: context, seen: seen)
        defer { shutDown(transport, loop) }
        let result = runClient(fd: c, alpn: [8] + Array("http/1.1".utf8), message: Array("ping".utf8))
        close(c)
        let r = try #require(result)
        #expect(r.alpn == "http/1.1" && r.echo == Array("PING".utf8))
    }

    @Test func aClientThatIsNotSpeakingTLSFailsTheHandshakeAndIsClosed() throws {
        let loop = EventLoop(index: 0, label: "test.tls")
        defer { loop.shutdown() }
        let context = try serverContext()
        let (s, c) = socketPair()
        let seen = Seen()
        let transport = serve(s, loop: loop, context: context, seen: seen)
        defer { shutDown(transport, loop) }
        let garbage = Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8)
        _ = garbage.withUnsafeBytes { write(c, $0.baseAddress, $0.count) }
        // The server answers with at most an alert, then closes: read until EOF.
        var buf = [UInt8](repeating: 0, count: 4096)
        var total = 0
        while true {
            let n = buf.withUnsafeMutableBytes { read(c, $0.baseAddress, $0.count) }
            if n <= 0 { #expect(n == 0); break }
            total += n
        }
        close(c)
        #expect(total < 100)
        #expect(seen.failures.withLock { $0 }.count == 1)
        #expect(seen.alpn.withLock { $0 }.isEmpty)
    }
}
