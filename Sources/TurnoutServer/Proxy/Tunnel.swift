import Logging
import TurnoutCore

/// A protocol switched with `101 Switching Protocols` (WebSocket and other `Upgrade`s): bytes pass
/// both ways between the client and the upstream connection until either side closes, with
/// backpressure each way. The tunnel stays on the endpoint it was opened on, whatever routing
/// does later, and counts as in flight there (and in `tunnels`) while it lasts. Loop-confined.
final class Tunnel: ChannelDelegate, UpstreamOwner, ClientSession, @unchecked Sendable {
    /// The request id of the request that opened the tunnel, for its access line.
    var requestID: String?
    let client: ClientTransport
    let upstream: UpstreamConnection
    unowned let loop: EventLoop
    private let context: ProxyContext
    private let clientIP: String
    private let poolName: String
    private let target: String
    private let onClose: () -> Void
    private let startTime = EventLoop.now()
    private var bytesUp: Int64 = 0
    private var bytesDown: Int64 = 0
    private var idleDeadline: UInt64 = 0
    private var upstreamDone = false
    private var ended = false

    init(client: ClientTransport, upstream: UpstreamConnection, env: ClientEnvironment, poolName: String, target: String) {
        self.client = client
        self.upstream = upstream
        self.loop = env.loop
        self.context = env.context
        self.clientIP = env.clientIP
        self.poolName = poolName
        self.target = target
        self.onClose = env.onClose
    }

    /// Takes over both connections. `fromClient` and `fromUpstream` are bytes each side sent
    /// after the request head and the 101 head, already read.
    func start(fromClient: ArraySlice<UInt8>, fromUpstream: ArraySlice<UInt8>) {
        upstream.endpoint.tunnelOpened()
        loop.register(self)
        client.delegate = self
        upstream.owner = self
        touch()
        if !fromUpstream.isEmpty {
            client.write(fromUpstream)
            bytesDown += Int64(fromUpstream.count)
        }
        if !fromClient.isEmpty {
            upstream.channel.write(fromClient)
            bytesUp += Int64(fromClient.count)
        }
        client.resumeReading()
        upstream.channel.resumeReading()
        applyBackpressure()
    }

    private func touch() {
        idleDeadline = EventLoop.now() + UInt64(context.timeouts.tunnelMs) * 1_000_000
    }

    private func applyBackpressure() {
        guard !ended else { return }
        if upstream.channel.pendingBytes > SocketChannel.highWatermark { client.pauseReading() } else { client.resumeReading() }
        if client.pendingBytes > SocketChannel.highWatermark { upstream.channel.pauseReading() } else { upstream.channel.resumeReading() }
    }

    // MARK: the client's side

    func channelRead(_ channel: SocketChannel, _ bytes: UnsafeRawBufferPointer) {
        guard !ended else { return }
        upstream.channel.write(bytes)
        bytesUp += Int64(bytes.count)
        touch()
        applyBackpressure()
    }

    func channelEOF(_ channel: SocketChannel) {
        end(reason: nil)
        // The client already closed its side: nothing it still expects can reach it.
        if !client.isClosed { client.close() }
        if upstream.isClosed { release() }
    }

    func channelError(_ channel: SocketChannel, _ error: SystemError) {
        end(reason: "client connection failed: \(error)")
    }

    func channelDrained(_ channel: SocketChannel) {
        if !ended { applyBackpressure() }
    }

    // MARK: the upstream's side

    func upstreamConnected(_ upstream: UpstreamConnection) {}

    func upstreamRead(_ upstream: UpstreamConnection, _ bytes: UnsafeRawBufferPointer) {
        guard !ended else { return }
        client.write(bytes)
        bytesDown += Int64(bytes.count)
        touch()
        applyBackpressure()
    }

    func upstreamClosed(_ upstream: UpstreamConnection, error: SystemError?) {
        upstreamDone = true
        end(reason: error.map { "upstream connection failed: \($0)" })
    }

    func upstreamDrained(_ upstream: UpstreamConnection) {
        if ended {
            upstream.close()
            if client.isClosed { release() }
            return
        }
        applyBackpressure()
    }

    // MARK: ending

    func checkTimeouts(now: UInt64) {
        if ended {
            if (client.isClosed && upstream.isClosed) || now >= closeDeadline {
                client.close()
                upstream.close()
                release()
            }
            return
        }
        if now >= idleDeadline { end(reason: "tunnel idle for \(DurationParser.format(milliseconds: context.timeouts.tunnelMs))") }
    }

    /// Open tunnels keep going while the proxy drains; the drain deadline ends them.
    func beginDrain() {}

    private var closeDeadline: UInt64 = 0

    /// One side ended: what the other side still has queued is delivered (for up to two
    /// seconds), then both close.
    private func end(reason: String?) {
        guard !ended else { return }
        ended = true
        closeDeadline = EventLoop.now() + 2_000_000_000
        upstream.endpoint.tunnelClosed()
        upstream.endpoint.requestEnded()
        if upstreamDone || upstream.channel.pendingBytes == 0 { upstream.close() }
        if reason != nil || client.pendingBytes == 0 { client.close() } else { client.finish() }
        if let access = context.accessLog {
            access.write(AccessRecord(clientIP: clientIP, kind: .tunnel(target: target, bytesUp: Int64(bytesUp), bytesDown: Int64(bytesDown), http2: false),
                                      pool: poolName, endpoint: "\(upstream.endpoint.address)",
                                      durationNanos: EventLoop.now() - startTime, error: reason, requestID: requestID,
                                      bytesIn: Int64(bytesUp)))
        }
        if client.isClosed && upstream.isClosed { release() }
    }

    private var released = false
    private func release() {
        guard !released else { return }
        released = true
        upstream.owner = nil
        loop.unregister(self)
        onClose()
    }
}
