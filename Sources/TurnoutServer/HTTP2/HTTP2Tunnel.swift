import CNghttp2
import Logging
import TurnoutCore

/// A WebSocket over one HTTP/2 stream (RFC 8441 extended CONNECT), bridged to an HTTP/1.1
/// upstream that answered the upgrade with 101: the stream's DATA goes to the upstream socket and
/// the upstream's bytes come back as DATA, with flow control and backpressure both ways. The
/// tunnel stays on its endpoint whatever routing does later. Owned by its `HTTP2Stream`.
final class HTTP2Tunnel: UpstreamOwner, @unchecked Sendable {
    /// The request id of the request that opened the tunnel, for its access line.
    var requestID: String?
    unowned let stream: HTTP2Stream
    let upstream: UpstreamConnection
    private let context: ProxyContext
    private let clientIP: String
    private let poolName: String
    private let target: String
    private let startTime = EventLoop.now()
    private var idleDeadline: UInt64 = 0
    /// Client bytes the upstream has not taken yet (not yet acknowledged to the client).
    private var pending: [UInt8] = []
    private var bytesUp: Int64 = 0
    private var bytesDown: Int64 = 0
    private(set) var ended = false

    init(stream: HTTP2Stream, upstream: UpstreamConnection, context: ProxyContext, clientIP: String,
         poolName: String, target: String) {
        self.stream = stream
        self.upstream = upstream
        self.context = context
        self.clientIP = clientIP
        self.poolName = poolName
        self.target = target
    }

    func start(fromClient: [UInt8], fromUpstream: ArraySlice<UInt8>) {
        upstream.endpoint.tunnelOpened()
        upstream.owner = self
        touch()
        if !fromUpstream.isEmpty {
            fromUpstream.withUnsafeBytes { stream.tunnelBytes($0) }
            bytesDown += Int64(fromUpstream.count)
        }
        if !fromClient.isEmpty { fromClient.withUnsafeBytes { self.fromClient($0) } }
        upstream.channel.resumeReading()
    }

    private func touch() {
        idleDeadline = EventLoop.now() + UInt64(context.timeouts.tunnelMs) * 1_000_000
    }

    /// DATA from the client: straight to the upstream while it keeps up, else held (and not yet
    /// acknowledged, so the client's window closes).
    func fromClient(_ bytes: UnsafeRawBufferPointer) {
        guard !ended else {
            stream.connection.consume(stream.id, bytes.count)
            return
        }
        touch()
        bytesUp += Int64(bytes.count)
        if pending.isEmpty && upstream.channel.pendingBytes <= SocketChannel.highWatermark {
            upstream.channel.write(bytes)
            stream.connection.consume(stream.id, bytes.count)
        } else {
            pending.append(contentsOf: bytes)
        }
    }

    /// The client sent END_STREAM: it will send nothing more; the upstream side goes on until it closes.
    func clientEnded() {}

    /// The client's side has room again: read the upstream again.
    func clientDrained() {
        guard !ended else { return }
        upstream.channel.resumeReading()
    }

    func checkTimeouts(now: UInt64) {
        guard !ended, now >= idleDeadline else { return }
        end(reason: "tunnel idle for \(DurationParser.format(milliseconds: context.timeouts.tunnelMs))", resetStream: true)
    }

    // MARK: the upstream's side

    func upstreamConnected(_ upstream: UpstreamConnection) {}

    func upstreamRead(_ upstream: UpstreamConnection, _ bytes: UnsafeRawBufferPointer) {
        guard !ended else { return }
        touch()
        bytesDown += Int64(bytes.count)
        stream.tunnelBytes(bytes)
        if stream.sinkPendingBytes > SocketChannel.highWatermark {
            upstream.channel.pauseReading()
            stream.connection.waitForDrain(stream)
        }
    }

    func upstreamDrained(_ upstream: UpstreamConnection) {
        guard !ended, !pending.isEmpty else { return }
        let n = pending.count
        upstream.channel.write(pending)
        pending = []
        stream.connection.consume(stream.id, n)
        stream.connection.scheduleFlush()
    }

    func upstreamClosed(_ upstream: UpstreamConnection, error: SystemError?) {
        // The upstream is done: what it sent is delivered, then the stream ends.
        end(reason: error.map { "upstream connection failed: \($0)" }, resetStream: error != nil)
    }

    /// Ends the tunnel: the stream ends cleanly (or is reset), the upstream connection closes.
    func end(reason: String?, resetStream: Bool) {
        guard !ended else { return }
        ended = true
        upstream.owner = nil
        upstream.close()
        upstream.endpoint.tunnelClosed()
        upstream.endpoint.requestEnded()
        if resetStream { stream.connection.resetStream(stream.id, code: NGHTTP2_CANCEL) } else { stream.endTunnelOutput() }
        if let access = context.accessLog {
            access.write(AccessRecord(clientIP: clientIP, kind: .tunnel(target: target, bytesUp: Int64(bytesUp), bytesDown: Int64(bytesDown), http2: true),
                                      pool: poolName, endpoint: "\(upstream.endpoint.address)",
                                      durationNanos: EventLoop.now() - startTime, error: reason, requestID: requestID,
                                      bytesIn: Int64(bytesUp)))
        }
    }
}
