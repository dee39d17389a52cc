import Dispatch
import Foundation
import Logging
import TurnoutCore

/// Probes every endpoint with `GET health.path` every `interval`, on its own event loop (never a
/// serving loop), feeds the results to each endpoint's `HealthTracker`, and publishes transitions
/// to the routing store. Probes are spread over the interval so many endpoints never fire at once.
final class HealthProber: @unchecked Sendable {
    let loop: EventLoop
    let context: ProxyContext
    private var trackers: [Int: HealthTracker] = [:]
    private var endpoints: [UpstreamEndpoint]
    private var firstRoundPending: Set<Int> = []
    private var firstRoundDone: (@Sendable () -> Void)?
    private var stopped = false
    private var started = false
    /// Probe results per endpoint id: (passed, failed). Loop-confined; read with `probeCounts()`.
    private var results: [Int: (pass: UInt64, fail: UInt64)] = [:]

    func probeCounts() -> [Int: (pass: UInt64, fail: UInt64)] { loop.queue.sync { results } }

    /// The last probe of an endpoint: whether it passed, what it saw, how long it took, when.
    struct LastProbe: Sendable {
        var passed: Bool
        var detail: String
        var latencyMs: Double
        var atUnixMs: Int64
    }
    private var last: [Int: LastProbe] = [:]

    func lastProbes() -> [Int: LastProbe] { loop.queue.sync { last } }

    init(context: ProxyContext) {
        self.context = context
        self.loop = EventLoop(index: 0, label: "turnout.health")
        self.endpoints = context.store.allEndpoints
        for e in endpoints {
            trackers[e.id] = HealthTracker(rise: context.config.health.rise, fall: context.config.health.fall)
        }
    }

    /// Starts probing. `firstRoundDone` runs once every endpoint has a first result.
    func start(firstRoundDone: @escaping @Sendable () -> Void) {
        loop.execute { [self] in
            self.started = true
            self.firstRoundDone = firstRoundDone
            self.firstRoundPending = Set(endpoints.map(\.id))
            if endpoints.isEmpty { finishFirstRound() }
            let spreadMs = min(context.config.health.intervalMs, 200)
            for (i, e) in endpoints.enumerated() {
                let offset = spreadMs * Int64(i) / Int64(max(1, endpoints.count))
                loop.queue.asyncAfter(deadline: .now() + .milliseconds(Int(offset))) { [self] in self.probe(e) }
            }
        }
    }

    func stop() {
        loop.execute { [self] in self.stopped = true }
    }

    private func finishFirstRound() {
        if let done = firstRoundDone {
            firstRoundDone = nil
            done()
        }
    }

    /// After the endpoint set changed (reload, DNS, admin API): probes endpoints that were added
    /// (they start unknown and need `rise` passes once the proxy runs), stops probing those that
    /// were removed, and applies the current rise/fall to every tracker. Interval, timeout and
    /// path are read from the configuration at each probe. Before `start`, endpoints are only
    /// noted: the first round probes them.
    func reconfigure(added: [UpstreamEndpoint], removed: [UpstreamEndpoint]) {
        loop.execute { [self] in
            let health = context.config.health
            for id in Array(trackers.keys) { trackers[id]?.retune(rise: health.rise, fall: health.fall) }
            let gone = Set(removed.map(\.id))
            for id in gone {
                trackers[id] = nil
                results[id] = nil
                last[id] = nil
            }
            endpoints.removeAll { gone.contains($0.id) }
            let spreadMs = min(health.intervalMs, 200)
            for (i, e) in added.enumerated() where trackers[e.id] == nil {
                trackers[e.id] = HealthTracker(rise: health.rise, fall: health.fall, joining: started)
                endpoints.append(e)
                guard started else { continue }
                let offset = spreadMs * Int64(i) / Int64(max(1, added.count))
                loop.queue.asyncAfter(deadline: .now() + .milliseconds(Int(offset))) { [self] in self.probe(e) }
            }
        }
    }

    private func probe(_ endpoint: UpstreamEndpoint) {
        // A removed endpoint has no tracker: its chain of probes ends here.
        guard !stopped, trackers[endpoint.id] != nil else { return }
        let started = DispatchTime.now()
        let next: @Sendable () -> Void = { [self] in
            let interval = DispatchTimeInterval.milliseconds(Int(context.config.health.intervalMs))
            loop.queue.asyncAfter(deadline: started + interval) { [self] in self.probe(endpoint) }
        }
        if SocketAddress.literal(endpoint.address.host, port: endpoint.address.port) == nil {
            // DNS names are resolved off every loop, then the probe continues on the health loop.
            let host = endpoint.address.host
            let port = endpoint.address.port
            DispatchQueue.global().async { [self] in
                let result = Result { try SocketAddress.resolve(host, port: port) }
                loop.execute { [self] in
                    switch result {
                    case .success(let addresses):
                        context.addresses.set(endpoint.id, addresses)
                        runProbe(endpoint, then: next)
                    case .failure(let error):
                        record(endpoint, passed: false, detail: "\(error)")
                        next()
                    }
                }
            }
        } else {
            runProbe(endpoint, then: next)
        }
    }

    private func runProbe(_ endpoint: UpstreamEndpoint, then next: @escaping @Sendable () -> Void) {
        guard let address = context.addresses.addresses(endpoint.id).first else {
            record(endpoint, passed: false, detail: "no address")
            next()
            return
        }
        let started = EventLoop.now()
        let health = context.config.health
        let done: (Bool, String) -> Void = { [self] passed, detail in
            if trackers[endpoint.id] != nil {
                last[endpoint.id] = LastProbe(passed: passed, detail: detail, latencyMs: Double(EventLoop.now() - started) / 1_000_000,
                                              atUnixMs: Int64(Date().timeIntervalSince1970 * 1000))
            }
            record(endpoint, passed: passed, detail: detail)
            next()
        }
        if context.settings.upstreamProtocol(ofEndpoint: endpoint.id) == .http1 {
            ProbeConnection(loop: loop, address: address, host: endpoint.address.description, path: health.path,
                            timeoutMs: health.timeoutMs, completion: done).start()
            return
        }
        // An HTTP/2 endpoint is probed over HTTP/2 (prior knowledge): GET path, or the gRPC health
        // check of the pool's service (health.grpc: the server as a whole).
        let service = context.config.pools.first { $0.name == endpoint.pool }?.grpcHealthService ?? (health.grpc ? "" : nil)
        var request = H2ProbeConnection.Request(path: health.path, authority: endpoint.address.description)
        if let service {
            request.method = "POST"
            request.path = GRPCHealth.path
            request.fields = [("content-type", "application/grpc"), ("te", "trailers")]
            request.body = GRPCHealth.requestBody(service: service)
        }
        var tls: (context: TLSClientContext, host: String, serverName: String?)?
        if context.settings.upstreamProtocol(ofEndpoint: endpoint.id) == .h2 {
            let config = context.settings.upstreamTLS(ofEndpoint: endpoint.id)
            do {
                tls = (try context.upstreamTLSContext(pool: endpoint.pool, config: config), endpoint.address.host, config.serverName)
            } catch {
                return done(false, "\(error)")
            }
        }
        H2ProbeConnection(loop: loop, address: address, request: request, timeoutMs: health.timeoutMs, tls: tls) { result in
            switch result {
            case .success(let r) where service != nil:
                let all = r.trailers + r.fields
                let verdict = GRPCHealth.verdict(httpStatus: r.status, grpcStatus: all.first { $0.0 == "grpc-status" }?.1,
                                                 grpcMessage: all.first { $0.0 == "grpc-message" }?.1, body: r.body)
                done(verdict.passed, "gRPC health \(verdict.detail)")
            case .success(let r):
                done((200..<300).contains(r.status), "status \(r.status)")
            case .failure(let f):
                done(false, f.description)
            }
        }.start()
    }

    private func record(_ endpoint: UpstreamEndpoint, passed: Bool, detail: String) {
        guard !stopped, var tracker = trackers[endpoint.id] else { return }
        if passed { results[endpoint.id, default: (0, 0)].pass += 1 } else { results[endpoint.id, default: (0, 0)].fail += 1 }
        if passed { context.outliers.probePassed(endpoint) }
        let transition = tracker.record(passed: passed)
        trackers[endpoint.id] = tracker
        if let transition {
            context.store.setHealth(endpointID: endpoint.id, transition)
            context.events.publish(TurnoutEvent(
                kind: "health", generation: context.store.state.generation, reason: detail,
                fields: [("pool", JSONWriter.quote(endpoint.pool)), ("endpoint", JSONWriter.quote(endpoint.address.description)),
                         ("health", JSONWriter.quote(transition.rawValue))]))
            if transition == .healthy {
                context.logger.notice("endpoint \(endpoint.address) of pool \(endpoint.pool) is healthy (\(detail))")
            } else {
                context.logger.warning("endpoint \(endpoint.address) of pool \(endpoint.pool) is unhealthy: \(detail)")
            }
        }
        if firstRoundPending.remove(endpoint.id) != nil && firstRoundPending.isEmpty {
            finishFirstRound()
        }
    }
}

/// One health probe: connect, send `GET path`, read the status line, close. 2xx passes.
final class ProbeConnection: ChannelDelegate, LoopTimed, @unchecked Sendable {
    private let loop: EventLoop
    private let address: SocketAddress
    private let request: [UInt8]
    private let deadline: UInt64
    private var channel: SocketChannel?
    private var buffer: [UInt8] = []
    private var completion: ((Bool, String) -> Void)?

    init(loop: EventLoop, address: SocketAddress, host: String, path: String, timeoutMs: Int64,
         completion: @escaping (Bool, String) -> Void) {
        self.loop = loop
        self.address = address
        self.request = Array("GET \(path) HTTP/1.1\r\nHost: \(host)\r\nUser-Agent: turnout-health\r\nConnection: close\r\n\r\n".utf8)
        self.deadline = EventLoop.now() + UInt64(timeoutMs) * 1_000_000
        self.completion = completion
    }

    func start() {
        loop.register(self)
        do {
            let (fd, inProgress) = try Sockets.connect(to: address)
            let ch = SocketChannel(fd: fd, loop: loop, connecting: inProgress)
            channel = ch
            ch.delegate = self
            ch.start()
            if !inProgress { ch.write(request) }
        } catch {
            finish(false, "\(error)")
        }
    }

    func checkTimeouts(now: UInt64) {
        if now >= deadline { finish(false, "probe timed out") }
    }

    func channelConnected(_ channel: SocketChannel) { channel.write(request) }

    func channelRead(_ channel: SocketChannel, _ bytes: UnsafeRawBufferPointer) {
        buffer.append(contentsOf: bytes)
        guard let end = try? HTTPHeadParser.findHeadEnd(buffer, start: 0, end: buffer.count, limit: 64 * 1024) else {
            if buffer.count >= 64 * 1024 { finish(false, "response head too large") }
            return
        }
        do {
            let head = try HTTPHeadParser.parseResponse(buffer, start: 0, end: end)
            finish((200..<300).contains(head.status), "status \(head.status)")
        } catch {
            finish(false, "malformed response: \(error.message)")
        }
    }

    func channelEOF(_ channel: SocketChannel) { finish(false, "connection closed before a response") }

    func channelError(_ channel: SocketChannel, _ error: SystemError) { finish(false, "\(error)") }

    func channelDrained(_ channel: SocketChannel) {}

    private func finish(_ passed: Bool, _ detail: String) {
        guard let completion else { return }
        self.completion = nil
        loop.unregister(self)
        channel?.close()
        channel = nil
        completion(passed, detail)
    }
}
