#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import TurnoutCore

/// A tiny HTTP/1.1 app for `turnout demo`: answers `/healthz` with 200 and everything else with its
/// colour. Runs on its own event loop with the same socket machinery as the proxy.
public final class DemoApp: @unchecked Sendable {
    public let colour: String
    public let address: SocketAddress
    private let fd: Int32
    private let loop: EventLoop
    private var source: DispatchSourceRead?

    public init(colour: String, host: String = "127.0.0.1", port: UInt16 = 0) throws {
        self.colour = colour
        guard let bindAddress = SocketAddress.literal(host, port: port) else {
            throw StartupError("demo app: invalid address \(host)")
        }
        self.fd = try Sockets.listen(on: bindAddress)
        self.address = Sockets.localAddress(fd) ?? bindAddress
        self.loop = EventLoop(index: 0, label: "turnout.demo.\(colour)")
    }

    public func start() {
        loop.execute { [self] in
            let s = DispatchSource.makeReadSource(fileDescriptor: fd, queue: loop.queue)
            s.setEventHandler { [unowned self] in self.acceptAll() }
            source = s
            s.activate()
        }
    }

    private func acceptAll() {
        while true {
            guard let cfd = (try? Sockets.accept(fd))?.fd else { return }
            let conn = DemoConnection(channel: SocketChannel(fd: cfd, loop: loop), colour: colour)
            conn.start()
        }
    }
}

/// One connection to a demo app.
final class DemoConnection: ChannelDelegate, @unchecked Sendable {
    let channel: SocketChannel
    let colour: String
    private var input: [UInt8] = []
    private var offset = 0
    private var skipBody: Int64 = 0
    private var selfRef: DemoConnection?

    init(channel: SocketChannel, colour: String) {
        self.channel = channel
        self.colour = colour
    }

    func start() {
        selfRef = self
        channel.delegate = self
        channel.start()
    }

    func channelRead(_ channel: SocketChannel, _ bytes: UnsafeRawBufferPointer) {
        input.append(contentsOf: bytes)
        while true {
            if skipBody > 0 {
                let n = Int(min(Int64(input.count - offset), skipBody))
                offset += n
                skipBody -= Int64(n)
                if skipBody > 0 { break }
            }
            guard let end = try? HTTPHeadParser.findHeadEnd(input, start: offset, end: input.count, limit: 64 * 1024),
                  let head = try? HTTPHeadParser.parseRequest(input, start: offset, end: end)
            else {
                if input.count - offset > 64 * 1024 { close() }
                break
            }
            offset = end
            if case .chunked = head.framing {
                respond(head, keepAlive: false)
                close()
                return
            }
            if case .length(let n) = head.framing { skipBody = n }
            respond(head, keepAlive: head.keepAlive)
            if !head.keepAlive {
                close()
                return
            }
        }
        if offset == input.count {
            input.removeAll(keepingCapacity: true)
            offset = 0
        }
    }

    private func respond(_ head: HTTPRequestHead, keepAlive: Bool) {
        let path = head.target.split(separator: "?").first.map(String.init) ?? "/"
        let body = path == "/healthz" ? "ok\n" : "\(colour)\n"
        var out = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nX-Served-By: \(colour)\r\n"
        out += "Content-Length: \(body.utf8.count)\r\n"
        if !keepAlive { out += "Connection: close\r\n" }
        out += "\r\n"
        if head.method != "HEAD" { out += body }
        channel.write(Array(out.utf8))
    }

    private func close() {
        channel.finish()
        // The connection object lives until the peer is gone.
        selfRef = nil
    }

    func channelEOF(_ channel: SocketChannel) {
        channel.close()
        selfRef = nil
    }

    func channelError(_ channel: SocketChannel, _ error: SystemError) { selfRef = nil }

    func channelDrained(_ channel: SocketChannel) {}
}
