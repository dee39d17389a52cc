/// One proxied request's life, as a value: fed what happens (the upstream connected or failed,
/// request body arrived or ended, a response head or response bytes came, time passed, the
/// client went away) and answering with what to do. The rules of a proxied request live here and
/// nowhere else:
///
/// - **framing**: how the request body is framed upstream (the client's chunks are kept, and a
///   chunk's CRLF goes upstream only after the client's own), how the response body ends
///   (RFC 9112 6.3: HEAD, 1xx, 204 and 304 have none);
/// - **reuse**: an upstream connection goes back to the pool only after a fully framed response to
///   a fully sent request, with keep-alive and nothing after the response;
/// - **retry**: another attempt only before any byte of the request reached the upstream, or for
///   an idempotent request without a body that got no byte of answer; one retry at most;
/// - **abort**: a failure before the response head is answered with Turnout's own 502/504; after
///   it, the client's transfer is broken, never made to look complete;
/// - **timeouts**: the connect deadline, then the response deadline, pushed on by progress.
///
/// `UpstreamExchange` carries the actions out on sockets; this type never touches one, so every
/// rule is tested as a value (`ExchangeMachineTests`).
public struct ExchangeMachine: Sendable {
    /// What the machine needs to know about the request.
    public struct Request: Sendable, Equatable {
        public var method: String
        /// How the client frames the body: for an HTTP/1.1 client its `Content-Length` or chunks;
        /// for HTTP/2, `.length` when it declared one, else `.chunked` (DATA frames go upstream as
        /// chunks), `.none` when the HEADERS ended the stream.
        public var framing: BodyFraming
        /// The body comes framed by the client (HTTP/1.1) rather than in DATA frames (HTTP/2).
        public var framedByClient: Bool
        public var idempotent: Bool
        /// The client asked for `Expect: 100-continue`.
        public var expectsContinue: Bool
        /// The client takes interim (1xx) responses: HTTP/1.1 and HTTP/2 do, HTTP/1.0 does not.
        public var takesInterim: Bool
        /// The request asks for a protocol switch; a 101 opens a tunnel.
        public var upgrade: Bool

        public init(method: String, framing: BodyFraming, framedByClient: Bool, idempotent: Bool,
                    expectsContinue: Bool = false, takesInterim: Bool = true, upgrade: Bool = false) {
            self.method = method
            self.framing = framing
            self.framedByClient = framedByClient
            self.idempotent = idempotent
            self.expectsContinue = expectsContinue
            self.takesInterim = takesInterim
            self.upgrade = upgrade
        }

        public init(_ head: HTTPRequestHead, upgrade: Bool) {
            self.init(method: head.method, framing: head.framing, framedByClient: head.version != .http2,
                      idempotent: head.isIdempotent, expectsContinue: head.expectsContinue,
                      takesInterim: head.version != .http10, upgrade: upgrade)
        }
    }

    public struct Timeouts: Sendable, Equatable {
        public var connectNanos: UInt64
        public var responseNanos: UInt64
        public init(connectNanos: UInt64, responseNanos: UInt64) {
            self.connectNanos = connectNanos
            self.responseNanos = responseNanos
        }
    }

    /// One try at one endpoint.
    public struct Attempt: Sendable, Equatable {
        public var number: Int
        /// The connection came from the idle pool (it may have been closed under us).
        public var pooled: Bool
    }

    public enum State: Sendable {
        /// Created; `start` connects.
        case idle
        /// Waiting for a connection.
        case connecting(Attempt)
        /// The head went upstream; nothing of an answer yet.
        case awaitingResponse(Attempt)
        /// Part of an answer came (a partial head, an interim 1xx) but no final head.
        case readingHead(Attempt)
        /// The final head went to the client; its body streams. `reusable`: the upstream said
        /// keep-alive and sent nothing beyond the response so far.
        case responding(Attempt, BodyReader, reusable: Bool)
        /// Over.
        case ended(Ending)
    }

    public enum Ending: Sendable, Equatable {
        /// The whole response went to the client.
        case completed(reusable: Bool)
        /// Turnout answered with its own error (no response head had gone out).
        case answered(status: Int)
        /// The transfer broke after the response head; `upstreamCut`: the upstream's fault.
        case aborted(upstreamCut: Bool)
        /// The client went away.
        case cancelled
        /// A 101: the connection is a tunnel now.
        case upgraded
    }

    /// What a new connection, or a connection's readiness, asks for.
    public enum ConnectAction: Sendable, Equatable {
        /// Write the request head; `wantBody`: then ask the client side for body.
        case sendHead(wantBody: Bool)
        /// Nothing (the machine is over or not waiting for this).
        case none
    }

    /// How an upstream failure is handled.
    public enum FailureAction: Sendable, Equatable {
        /// Close the connection and try another endpoint with a fresh connection (`sameEndpoint`:
        /// the same one is acceptable when no other is, after a pooled connection was found
        /// closed). When there is none, call `noRetryTarget()`.
        case retry(sameEndpoint: Bool)
        /// Close the connection and answer the client with Turnout's own error.
        case respond(status: Int)
        /// Close the connection and break the client's transfer.
        case abort(reason: String)
        /// The response was delimited by the close and is complete (not reusable).
        case complete
        /// Nothing to do (already over).
        case none
    }

    public enum Failure: Sendable, Equatable {
        case connectFailed
        case connectTimedOut
        /// The connection closed (`error`: with an error rather than a clean FIN).
        case closed(error: Bool)
        /// An HTTP/2 upstream refused the stream (REFUSED_STREAM, or a GOAWAY below it): it did not
        /// process the request, whatever its method (RFC 9113 8.7). `bodyHeld`: the driver kept
        /// the body bytes sent so far and can send them again.
        case refused(bodyHeld: Bool)
    }

    public enum HeadAction: Sendable, Equatable {
        /// An interim response for the client.
        case interim
        /// An interim response the client does not take (100 it did not ask for, or HTTP/1.0).
        case dropInterim
        /// The final head: send it to the client with this body framing, then feed body bytes.
        case respond(BodyFraming)
        /// The upstream switched protocols as asked: hand the connection to a tunnel.
        case switchProtocols
        /// Answer with Turnout's own error.
        case fail(status: Int, message: String)
        case none
    }

    public enum ResponseStep: Sendable, Equatable {
        /// Body bytes for the client at this range.
        case deliver(Range<Int>)
        /// Everything was consumed; more is to come.
        case needMore
        /// The response is complete: release the upstream connection to the pool if `reusable`,
        /// else close it.
        case complete(reusable: Bool)
        /// The upstream's framing is broken: break the client's transfer.
        case abort(reason: String)
    }

    /// What to write upstream for request body (HTTP/1.1 client: the client's framing decoded).
    public enum RequestStep: Sendable, Equatable {
        /// Body bytes at this range, as they are.
        case forward(Range<Int>)
        /// A chunk starts: write its size line.
        case chunkHeader(Int64)
        /// The client's chunk ended: write the CRLF.
        case chunkEnd
        /// The client's body ended: write the last chunk (chunked) or nothing; the request is complete.
        case end(lastChunk: Bool)
        case needMore
        /// The client's framing is broken: answer 400 (or abort).
        case invalid(String)
    }

    /// What to write upstream for request body that came without framing (HTTP/2 DATA).
    public enum DataAction: Sendable, Equatable {
        /// Write as they are (declared length).
        case forward
        /// Write as one chunk (size line, bytes, CRLF).
        case forwardChunk
        case invalid(String)
    }

    /// The client's body (HTTP/2: END_STREAM) ended.
    public enum EndAction: Sendable, Equatable {
        case end(lastChunk: Bool)
        case invalid(String)
    }

    public enum TimeoutAction: Sendable, Equatable {
        /// Treat as `Failure.connectTimedOut` (call `upstreamFailed`).
        case connectTimedOut
        case respond(status: Int, message: String)
        case abort(reason: String)
    }

    public let timeouts: Timeouts
    public let request: Request
    public private(set) var state: State = .idle
    /// When the current wait ends (0: none).
    public private(set) var deadline: UInt64 = 0
    /// The status the client got (0 before a final head; 499 for a client gone first).
    public private(set) var status = 0

    /// How much request body is still to go upstream.
    private enum RequestLeft: Sendable {
        case complete
        case length(remaining: Int64)
        case chunked
    }

    private var requestLeft: RequestLeft
    /// The HTTP/1.1 client's body, decoded (chunks reported, so chunk boundaries are kept).
    private var clientReader: BodyReader?
    /// Request body bytes written upstream (a body that went cannot be replayed).
    public private(set) var bodyBytesSent: Int64 = 0
    private let maxAttempts = 2
    /// Streams an HTTP/2 upstream refused (never processed) and that were sent again; these do
    /// not use up the attempts, but are bounded on their own.
    private var refusals = 0
    public static let maxRefusals = 4

    public init(_ request: Request, timeouts: Timeouts) {
        self.request = request
        self.timeouts = timeouts
        switch request.framing {
        case .none, .untilClose, .length(0): requestLeft = .complete
        case .length(let n): requestLeft = .length(remaining: n)
        case .chunked: requestLeft = .chunked
        }
        if request.framedByClient && !requestComplete {
            clientReader = BodyReader(request.framing, reportingChunks: true)
        }
    }

    // MARK: facts

    public var isOver: Bool { if case .ended = state { return true } else { return false } }
    public var requestComplete: Bool { if case .complete = requestLeft { return true } else { return false } }
    /// The upstream connection is up and the request head was written.
    public var isConnected: Bool {
        switch state {
        case .awaitingResponse, .readingHead, .responding: return true
        default: return false
        }
    }
    /// The attempt under way (nil before the start and once over).
    public var attempt: Attempt? {
        switch state {
        case .connecting(let a), .awaitingResponse(let a), .readingHead(let a), .responding(let a, _, _): return a
        default: return nil
        }
    }
    /// The answer is Turnout's own, not the upstream's.
    public var proxyGenerated: Bool { if case .ended(.answered) = state { return true } else { return false } }
    /// The status stats should record: a response the upstream cut short counts as its 502.
    public var recordedStatus: Int { if case .ended(.aborted(upstreamCut: true)) = state { return 502 } else { return status } }
    /// Whether the outcome belongs in the per-endpoint stats (a client gone before any response does not).
    public var recordsOutcome: Bool {
        switch state {
        case .ended(.cancelled): return false
        case .ended: return true
        default: return false
        }
    }

    // MARK: connecting

    /// The first attempt: take a pooled connection or open one.
    public mutating func start() {
        guard case .idle = state else { return }
        state = .connecting(Attempt(number: 1, pooled: false))
    }

    /// A connect was started and is not done yet: its deadline runs from `now`.
    public mutating func connecting(now: UInt64) {
        guard case .connecting = state else { return }
        deadline = now + timeouts.connectNanos
    }

    /// The connection is up (`pooled`: taken from the idle pool).
    public mutating func connected(pooled: Bool, now: UInt64) -> ConnectAction {
        guard case .connecting(var a) = state else { return .none }
        a.pooled = pooled
        state = .awaitingResponse(a)
        deadline = now + timeouts.responseNanos
        return .sendHead(wantBody: !requestComplete)
    }

    /// The connection failed or closed.
    /// Returns whether this failure counts against the endpoint (`countsAgainstEndpoint`) too.
    public mutating func upstreamFailed(_ failure: Failure) -> (action: FailureAction, countsAgainstEndpoint: Bool) {
        let a: Attempt
        let heardAnything: Bool
        switch state {
        case .idle, .ended:
            return (.none, false)
        case .connecting(let at):
            a = at
            heardAnything = false
        case .awaitingResponse(let at):
            a = at
            heardAnything = false
        case .readingHead(let at):
            a = at
            heardAnything = true
        case .responding(_, let reader, _):
            if case .untilClose = reader.mode, failure == .closed(error: false) {
                state = .ended(.completed(reusable: false))
                return (.complete, false)
            }
            state = .ended(.aborted(upstreamCut: true))
            return (.abort(reason: "upstream closed mid-response"), true)
        }
        let connectFailure = failure == .connectFailed || failure == .connectTimedOut
        var refused = false
        var bodyHeld = false
        if case .refused(let held) = failure {
            refused = true
            bodyHeld = held
        }
        // A refused stream was not processed: it goes again (an upstream restarting sends
        // GOAWAY on each connection in turn), as long as its body can go again too.
        if refused && (bodyBytesSent == 0 || bodyHeld) && refusals < Self.maxRefusals {
            refusals += 1
            state = .connecting(Attempt(number: a.number, pooled: false))
            deadline = 0
            return (.retry(sameEndpoint: true), false)
        }
        // A pooled connection the upstream closed just before it was reused is the keep-alive
        // race, not the endpoint failing; a refused stream is an upstream going away in order.
        let counts = !refused && (connectFailure || !a.pooled || heardAnything)
        // Retry only when nothing of the request reached the upstream (it never connected), or
        // for an idempotent request without a body that got no byte of answer.
        let replayable = connectFailure || (!heardAnything && bodyBytesSent == 0 && !hasBody && request.idempotent)
        if replayable && a.number < maxAttempts {
            state = .connecting(Attempt(number: a.number + 1, pooled: false))
            deadline = 0
            return (.retry(sameEndpoint: a.pooled && !connectFailure), counts)
        }
        let status = failure == .connectTimedOut ? 504 : 502
        answer(status)
        return (.respond(status: status), counts)
    }

    private var hasBody: Bool {
        switch request.framing {
        case .none, .length(0): return false
        default: return true
        }
    }

    /// A retry was allowed but there is no endpoint to retry on.
    public mutating func noRetryTarget(status: Int = 502) -> FailureAction {
        guard case .connecting = state else { return .none }
        answer(status)
        return .respond(status: status)
    }

    // MARK: request body

    /// The client's framed body (HTTP/1.1) from `buffer[index..<end]`: what to write upstream next.
    public mutating func clientBody(_ buffer: UnsafeRawBufferPointer, index: inout Int, end: Int, now: UInt64) -> RequestStep {
        guard !requestComplete, var reader = clientReader else { return .end(lastChunk: false) }
        let step: BodyReader.Step
        do {
            step = try reader.next(buffer, index: &index, end: end)
        } catch {
            clientReader = reader
            return .invalid(error.message)
        }
        clientReader = reader
        switch step {
        case .data(let r):
            bodyBytesSent += Int64(r.count)
            if case .length(let n) = requestLeft { requestLeft = .length(remaining: n - Int64(r.count)) }
            progressed(now: now)
            return .forward(r)
        case .chunkStart(let n):
            return .chunkHeader(n)
        case .chunkEnd:
            return .chunkEnd
        case .needMore:
            return .needMore
        case .end:
            let chunked = reader.isChunked
            requestLeft = .complete
            progressed(now: now)
            return .end(lastChunk: chunked)
        }
    }

    /// Body bytes that came without framing (HTTP/2 DATA).
    public mutating func requestData(count: Int, now: UInt64) -> DataAction {
        guard count > 0 else { return .forward }
        switch requestLeft {
        case .complete:
            return .invalid("the request body is longer than its content-length")
        case .length(let remaining):
            guard Int64(count) <= remaining else { return .invalid("the request body is longer than its content-length") }
            requestLeft = .length(remaining: remaining - Int64(count))
            bodyBytesSent += Int64(count)
            progressed(now: now)
            return .forward
        case .chunked:
            bodyBytesSent += Int64(count)
            progressed(now: now)
            return .forwardChunk
        }
    }

    /// The client's unframed body (HTTP/2) ended.
    public mutating func requestDataEnded(now: UInt64) -> EndAction {
        switch requestLeft {
        case .complete:
            return .end(lastChunk: false)
        case .length(let remaining):
            if remaining > 0 { return .invalid("the request body is shorter than its content-length") }
            requestLeft = .complete
            return .end(lastChunk: false)
        case .chunked:
            requestLeft = .complete
            progressed(now: now)
            return .end(lastChunk: true)
        }
    }

    private mutating func progressed(now: UInt64) {
        switch state {
        case .awaitingResponse, .readingHead, .responding: deadline = now + timeouts.responseNanos
        default: break
        }
    }

    // MARK: the response

    /// Some bytes of an answer arrived (before the final head was parsed).
    public mutating func heardFromUpstream(now: UInt64) {
        if case .awaitingResponse(let a) = state { state = .readingHead(a) }
        progressed(now: now)
    }

    /// A response head was parsed.
    public mutating func responseHead(_ head: HTTPResponseHead, now: UInt64) -> HeadAction {
        let a: Attempt
        switch state {
        case .awaitingResponse(let at), .readingHead(let at): a = at
        default: return .none
        }
        state = .readingHead(a)
        deadline = now + timeouts.responseNanos
        if head.status == 101 {
            if request.upgrade {
                status = 101
                state = .ended(.upgraded)
                deadline = 0
                return .switchProtocols
            }
            answer(502)
            return .fail(status: 502, message: "the upstream switched protocols without an upgrade request")
        }
        if (100..<200).contains(head.status) {
            if !request.takesInterim { return .dropInterim }
            if head.status == 100 && !request.expectsContinue { return .dropInterim }
            return .interim
        }
        let framing: BodyFraming
        do {
            framing = try head.framing(requestMethod: request.method)
        } catch {
            answer(502)
            return .fail(status: 502, message: "the upstream sent a malformed response: \(error.message)")
        }
        status = head.status
        state = .responding(a, BodyReader(framing), reusable: head.keepAlive && framing != .untilClose)
        return .respond(framing)
    }

    /// A response head could not be parsed.
    public mutating func malformedResponse(_ message: String) -> HeadAction {
        switch state {
        case .awaitingResponse, .readingHead:
            answer(502)
            return .fail(status: 502, message: message)
        default:
            return .none
        }
    }

    /// Response body from `buffer[index..<end]`. Call until `needMore`, `complete` or `abort`.
    public mutating func responseBody(_ buffer: UnsafeRawBufferPointer, index: inout Int, end: Int, now: UInt64) -> ResponseStep {
        guard case .responding(let a, var reader, var reusable) = state else { return .needMore }
        let step: BodyReader.Step
        do {
            step = try reader.next(buffer, index: &index, end: end)
        } catch {
            state = .ended(.aborted(upstreamCut: true))
            deadline = 0
            return .abort(reason: "upstream sent malformed chunked framing: \(error.message)")
        }
        switch step {
        case .data(let r):
            deadline = now + timeouts.responseNanos
            state = .responding(a, reader, reusable: reusable)
            return .deliver(r)
        case .chunkStart, .chunkEnd, .needMore:
            state = .responding(a, reader, reusable: reusable)
            return .needMore
        case .end:
            // Bytes after a complete response: the connection is out of step, never reuse it.
            // An upstream that answered before it read the whole request cannot be reused either:
            // the rest of the body would be taken for a next request.
            if index < end || !requestComplete { reusable = false }
            state = .ended(.completed(reusable: reusable))
            deadline = 0
            return .complete(reusable: reusable)
        }
    }

    // MARK: time and the client

    /// Time passed; `nil` while nothing is due.
    public mutating func tick(now: UInt64) -> TimeoutAction? {
        guard deadline != 0, now >= deadline else { return nil }
        switch state {
        case .connecting:
            return .connectTimedOut
        case .awaitingResponse, .readingHead:
            answer(504)
            return .respond(status: 504, message: "the upstream did not answer within \(DurationParser.format(milliseconds: Int64(timeouts.responseNanos / 1_000_000)))")
        case .responding:
            state = .ended(.aborted(upstreamCut: true))
            deadline = 0
            return .abort(reason: "upstream stalled mid-response")
        case .idle, .ended:
            return nil
        }
    }

    /// The client went away, or its request turned out bad after the response started: stop.
    /// Returns false when already over.
    @discardableResult
    public mutating func clientGone() -> Bool {
        if isOver { return false }
        if case .responding = state {
            state = .ended(.aborted(upstreamCut: false))
        } else {
            status = 499
            state = .ended(.cancelled)
        }
        deadline = 0
        return true
    }

    /// The client's request turned out bad (400 mid-body): Turnout answers, unless the response
    /// already started, in which case the transfer is broken. Returns the action taken.
    public mutating func requestInvalid(status: Int) -> FailureAction {
        switch state {
        case .ended: return .none
        case .responding:
            state = .ended(.aborted(upstreamCut: false))
            deadline = 0
            return .abort(reason: "the request body was malformed")
        default:
            answer(status)
            return .respond(status: status)
        }
    }

    private mutating func answer(_ status: Int) {
        self.status = status
        state = .ended(.answered(status: status))
        deadline = 0
    }
}
