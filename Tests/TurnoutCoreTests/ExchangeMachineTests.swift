import Testing
@testable import TurnoutCore

/// The rules of one proxied request, as values: each test feeds `ExchangeMachine` events and
/// checks the actions it answers with. No socket, no clock but the numbers passed in.
@Suite struct ExchangeMachineTests {
    static let timeouts = ExchangeMachine.Timeouts(connectNanos: 1_000, responseNanos: 10_000)

    static func machine(_ method: String = "GET", framing: BodyFraming = .none, http2: Bool = false,
                        expectsContinue: Bool = false, http10: Bool = false, upgrade: Bool = false,
                        idempotent: Bool? = nil) -> ExchangeMachine {
        let request = ExchangeMachine.Request(method: method, framing: framing, framedByClient: !http2,
                                              idempotent: idempotent ?? ["GET", "HEAD", "PUT", "DELETE", "OPTIONS"].contains(method),
                                              expectsContinue: expectsContinue, takesInterim: !http10, upgrade: upgrade)
        return ExchangeMachine(request, timeouts: timeouts)
    }

    /// A machine connected on a fresh (or pooled) connection.
    static func connected(_ m: ExchangeMachine, pooled: Bool = false, now: UInt64 = 0) -> ExchangeMachine {
        var m = m
        m.start()
        _ = m.connected(pooled: pooled, now: now)
        return m
    }

    static func head(_ text: String) -> HTTPResponseHead {
        let b = Array(text.utf8)
        return try! HTTPHeadParser.parseResponse(b, start: 0, end: b.count)
    }

    /// Feeds `text` as response body; returns the delivered body and the last step.
    static func body(_ m: inout ExchangeMachine, _ text: String, now: UInt64 = 0) -> (String, ExchangeMachine.ResponseStep) {
        let bytes = Array(text.utf8)
        var out: [UInt8] = []
        var index = 0
        return bytes.withUnsafeBytes { raw in
            while true {
                let step = m.responseBody(raw, index: &index, end: bytes.count, now: now)
                if case .deliver(let r) = step { out += bytes[r]; continue }
                return (String(decoding: out, as: UTF8.self), step)
            }
        }
    }

    /// Feeds `text` as an HTTP/1.1 client's framed body; returns what went upstream, as text, and
    /// the last step.
    static func clientBody(_ m: inout ExchangeMachine, _ text: String) -> (String, ExchangeMachine.RequestStep) {
        let bytes = Array(text.utf8)
        var upstream = ""
        var index = 0
        return bytes.withUnsafeBytes { raw in
            while true {
                let step = m.clientBody(raw, index: &index, end: bytes.count, now: 0)
                switch step {
                case .forward(let r): upstream += String(decoding: bytes[r], as: UTF8.self)
                case .chunkHeader(let n): upstream += String(n, radix: 16) + "\r\n"
                case .chunkEnd: upstream += "\r\n"
                case .end(let last):
                    if last { upstream += "0\r\n\r\n" }
                    return (upstream, step)
                case .needMore, .invalid: return (upstream, step)
                }
            }
        }
    }

    // MARK: request framing

    @Test func contentLengthBodyGoesAsItCameAndCompletesTheRequest() {
        var m = Self.machine("POST", framing: .length(5))
        m.start()
        #expect(m.connected(pooled: false, now: 0) == .sendHead(wantBody: true))
        var (sent, step) = Self.clientBody(&m, "hel")
        #expect(sent == "hel" && step == .needMore && !m.requestComplete)
        (sent, step) = Self.clientBody(&m, "loGET / HTTP/1.1")
        #expect(sent == "lo" && step == .end(lastChunk: false) && m.requestComplete)
        #expect(m.bodyBytesSent == 5)
    }

    @Test func aBodylessRequestIsCompleteAndAsksForNoBody() {
        var m = Self.machine()
        m.start()
        #expect(m.connected(pooled: false, now: 0) == .sendHead(wantBody: false))
        #expect(m.requestComplete)
    }

    @Test func chunksAreKeptAndTheirCRLFWaitsForTheClients() {
        var m = Self.connected(Self.machine("POST", framing: .chunked))
        var (sent, step) = Self.clientBody(&m, "5;ext=1\r\nhel")
        // The chunk's size line and the bytes in hand go; its CRLF does not, the client's is not here.
        #expect(sent == "5\r\nhel" && step == .needMore)
        (sent, step) = Self.clientBody(&m, "lo")
        #expect(sent == "lo" && step == .needMore)
        (sent, step) = Self.clientBody(&m, "\r\n")
        #expect(sent == "\r\n" && step == .needMore)
        (sent, step) = Self.clientBody(&m, "0\r\nX-Trailer: 1\r\n\r\n")
        #expect(sent == "0\r\n\r\n" && step == .end(lastChunk: true) && m.requestComplete)
    }

    @Test func aChunkFollowedByGarbageInsteadOfCRLFNeverLooksComplete() {
        var m = Self.connected(Self.machine("POST", framing: .chunked))
        let (sent, step) = Self.clientBody(&m, "1\r\nAX")
        #expect(sent == "1\r\nA")
        guard case .invalid = step else { Issue.record("\(step)"); return }
    }

    static let malformedChunked = ["0_2e\r\n\r\n", "-0x0\r\n\r\n", "\r\n", "1\rX", "1these-bytes-never-get-validated\r\n",
                                   "0x5\r\nhello\r\n0\r\n\r\n", "5\r\nhelloXX", "0\r\nbad trailer\r\n\r\n"]

    @Test(arguments: malformedChunked)
    func malformedChunkedBodiesAreRefusedBeforeTheBadBytesGoUpstream(_ text: String) {
        #expect(BodyReader.firstError(.chunked, in: Array(text.utf8), from: 0, to: text.utf8.count) != nil)
        var m = Self.connected(Self.machine("POST", framing: .chunked))
        let (_, step) = Self.clientBody(&m, text)
        guard case .invalid = step else { Issue.record("\(text.debugDescription): \(step)"); return }
        #expect(!m.requestComplete)
    }

    @Test func validBodiesInHandHaveNoFirstError() {
        for text in ["5\r\nhel", "5\r\nhello\r\n0\r\n\r\n", "", "a;x=y\r\n"] {
            #expect(BodyReader.firstError(.chunked, in: Array(text.utf8), from: 0, to: text.utf8.count) == nil, "\(text)")
        }
        #expect(BodyReader.firstError(.length(3), in: Array("garbage".utf8), from: 0, to: 7) == nil)
    }

    @Test func http2DataIsCheckedAgainstTheDeclaredLength() {
        var m = Self.connected(Self.machine("POST", framing: .length(4), http2: true))
        #expect(m.requestData(count: 3, now: 0) == .forward)
        #expect(m.requestData(count: 2, now: 0) == .invalid("the request body is longer than its content-length"))
        #expect(m.requestDataEnded(now: 0) == .invalid("the request body is shorter than its content-length"))
        #expect(m.requestData(count: 1, now: 0) == .forward)
        #expect(m.requestDataEnded(now: 0) == .end(lastChunk: false))
        #expect(m.requestComplete)
    }

    @Test func http2DataWithoutALengthGoesUpstreamAsChunks() {
        var m = Self.connected(Self.machine("POST", framing: .chunked, http2: true))
        #expect(m.requestData(count: 10, now: 0) == .forwardChunk)
        #expect(m.requestDataEnded(now: 0) == .end(lastChunk: true))
        #expect(m.requestComplete && m.bodyBytesSent == 10)
    }

    // MARK: response framing

    @Test func contentLengthResponseCompletesAndIsReusable() {
        var m = Self.connected(Self.machine())
        #expect(m.responseHead(Self.head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"), now: 0) == .respond(.length(5)))
        var (got, step) = Self.body(&m, "hel")
        #expect(got == "hel" && step == .needMore)
        (got, step) = Self.body(&m, "lo")
        #expect(got == "lo" && step == .complete(reusable: true))
        #expect(m.status == 200 && m.isOver && m.recordsOutcome && !m.proxyGenerated)
    }

    @Test func chunkedResponseIsDecodedAndCompletes() {
        var m = Self.connected(Self.machine())
        #expect(m.responseHead(Self.head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), now: 0) == .respond(.chunked))
        var (got, step) = Self.body(&m, "3\r\nabc\r\n")
        #expect(got == "abc" && step == .needMore)
        (got, step) = Self.body(&m, "2\r\nde\r\n0\r\n\r\n")
        #expect(got == "de" && step == .complete(reusable: true))
    }

    @Test func bytesAfterACompleteResponseForbidReuse() {
        var m = Self.connected(Self.machine())
        _ = m.responseHead(Self.head("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"), now: 0)
        let (got, step) = Self.body(&m, "okHTTP/1.1 200 OK\r\n")
        #expect(got == "ok" && step == .complete(reusable: false))
    }

    @Test func malformedChunkedResponseBreaksTheTransfer() {
        var m = Self.connected(Self.machine())
        _ = m.responseHead(Self.head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), now: 0)
        let (got, step) = Self.body(&m, "3\r\nabcZZ")
        #expect(got == "abc")
        guard case .abort = step else { Issue.record("\(step)"); return }
        #expect(m.recordedStatus == 502 && m.status == 200)
    }

    @Test(arguments: [("HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", 200),
                      ("GET", "HTTP/1.1 204 No Content\r\nContent-Length: 100\r\n\r\n", 204),
                      ("GET", "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", 304)])
    func responsesWithoutABodyEndWithTheirHead(_ method: String, _ head: String, _ status: Int) {
        var m = Self.connected(Self.machine(method))
        #expect(m.responseHead(Self.head(head), now: 0) == .respond(.none))
        let (got, step) = Self.body(&m, "")
        #expect(got == "" && step == .complete(reusable: true) && m.status == status)
    }

    @Test func aResponseDelimitedByCloseEndsCleanlyOnlyWithAFin() {
        var m = Self.connected(Self.machine())
        #expect(m.responseHead(Self.head("HTTP/1.1 200 OK\r\n\r\n"), now: 0) == .respond(.untilClose))
        let (got, step) = Self.body(&m, "some")
        #expect(got == "some" && step == .needMore)
        let (action, counts) = m.upstreamFailed(.closed(error: false))
        #expect(action == .complete && !counts && m.state.endedAs == .completed(reusable: false))

        var cut = Self.connected(Self.machine())
        _ = cut.responseHead(Self.head("HTTP/1.1 200 OK\r\n\r\n"), now: 0)
        let (a2, c2) = cut.upstreamFailed(.closed(error: true))
        #expect(a2 == .abort(reason: "upstream closed mid-response") && c2)
    }

    @Test func connectionCloseForbidsReuse() {
        var m = Self.connected(Self.machine())
        _ = m.responseHead(Self.head("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"), now: 0)
        #expect(Self.body(&m, "").1 == .complete(reusable: false))
    }

    @Test func anAnswerBeforeTheWholeRequestForbidsReuse() {
        var m = Self.connected(Self.machine("POST", framing: .length(100)))
        _ = Self.clientBody(&m, "only part")
        _ = m.responseHead(Self.head("HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n"), now: 0)
        #expect(Self.body(&m, "").1 == .complete(reusable: false))
    }

    // MARK: interim responses and upgrades

    @Test func interimResponsesGoOnlyToClientsThatTakeThem() {
        var m = Self.connected(Self.machine())
        #expect(m.responseHead(Self.head("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"), now: 0) == .interim)
        #expect(m.responseHead(Self.head("HTTP/1.1 100 Continue\r\n\r\n"), now: 0) == .dropInterim)
        #expect(m.responseHead(Self.head("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), now: 0) == .respond(.length(0)))

        var expecting = Self.connected(Self.machine("PUT", framing: .length(3), expectsContinue: true))
        #expect(expecting.responseHead(Self.head("HTTP/1.1 100 Continue\r\n\r\n"), now: 0) == .interim)

        var old = Self.connected(Self.machine(http10: true))
        #expect(old.responseHead(Self.head("HTTP/1.1 103 Early Hints\r\n\r\n"), now: 0) == .dropInterim)
    }

    @Test func expectContinueRefusedBeforeTheBodyClosesTheUpstream() {
        var m = Self.connected(Self.machine("PUT", framing: .length(3), expectsContinue: true))
        _ = m.responseHead(Self.head("HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n"), now: 0)
        #expect(Self.body(&m, "").1 == .complete(reusable: false))
        #expect(!m.requestComplete && m.status == 417)
    }

    @Test func aSwitchIsATunnelOnlyWhenOneWasAskedFor() {
        var m = Self.connected(Self.machine(upgrade: true))
        #expect(m.responseHead(Self.head("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"), now: 0) == .switchProtocols)
        #expect(m.state.endedAs == .upgraded && m.status == 101)

        var unasked = Self.connected(Self.machine())
        #expect(unasked.responseHead(Self.head("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"), now: 0)
                == .fail(status: 502, message: "the upstream switched protocols without an upgrade request"))
        #expect(unasked.proxyGenerated)
    }

    // MARK: failures and retries

    @Test func aConnectFailureIsRetriedOnceEvenForAPostWithABody() {
        var m = Self.machine("POST", framing: .length(5))
        m.start()
        var (action, counts) = m.upstreamFailed(.connectFailed)
        #expect(action == .retry(sameEndpoint: false) && counts && m.attempt?.number == 2)
        (action, counts) = m.upstreamFailed(.connectFailed)
        #expect(action == .respond(status: 502) && counts && m.proxyGenerated)
    }

    @Test func aConnectTimeoutIsRetriedThenA504() {
        var m = Self.machine()
        m.start()
        m.connecting(now: 100)
        #expect(m.tick(now: 1_099) == nil)
        #expect(m.tick(now: 1_100) == .connectTimedOut)
        #expect(m.upstreamFailed(.connectTimedOut).action == .retry(sameEndpoint: false))
        m.connecting(now: 2_000)
        #expect(m.tick(now: 3_000) == .connectTimedOut)
        #expect(m.upstreamFailed(.connectTimedOut).action == .respond(status: 504))
    }

    @Test func aNonIdempotentRequestThatReachedTheUpstreamIsNeverRetried() {
        var m = Self.connected(Self.machine("POST"))
        #expect(m.upstreamFailed(.closed(error: true)).action == .respond(status: 502))
    }

    @Test func anIdempotentBodylessRequestWithNoAnswerIsRetried() {
        var m = Self.connected(Self.machine("GET"))
        #expect(m.upstreamFailed(.closed(error: true)).action == .retry(sameEndpoint: false))
    }

    @Test func noRetryOnceTheUpstreamSaidAnything() {
        var m = Self.connected(Self.machine("GET"))
        m.heardFromUpstream(now: 0)
        #expect(m.upstreamFailed(.closed(error: false)).action == .respond(status: 502))
    }

    @Test func noRetryOnceRequestBodyWent() {
        var m = Self.connected(Self.machine("PUT", framing: .length(10)))
        _ = Self.clientBody(&m, "abc")
        #expect(m.upstreamFailed(.closed(error: true)).action == .respond(status: 502))
    }

    @Test func aRefusedStreamGoesAgainEvenForAPostUpToTheBoundThenA502() {
        var m = Self.connected(Self.machine("POST", framing: .length(5), http2: true))
        for _ in 0..<ExchangeMachine.maxRefusals {
            let (action, counts) = m.upstreamFailed(.refused(bodyHeld: false))
            #expect(action == .retry(sameEndpoint: true) && !counts && m.attempt?.number == 1)
            m = Self.connected(m)
        }
        // Past the bound, a refusal is a failure like the others: a POST that reached the upstream.
        #expect(m.upstreamFailed(.refused(bodyHeld: false)).action == .respond(status: 502))
    }

    @Test func aRefusedStreamWhoseBodyWentGoesAgainOnlyWhenTheBodyIsHeld() {
        var m = Self.connected(Self.machine("POST", framing: .length(5), http2: true))
        _ = m.requestData(count: 2, now: 0)
        var held = m
        #expect(m.upstreamFailed(.refused(bodyHeld: false)).action == .respond(status: 502))
        #expect(held.upstreamFailed(.refused(bodyHeld: true)).action == .retry(sameEndpoint: true))
    }

    @Test func theKeepAliveRaceIsRetriedOnTheSameEndpointAndNotCountedAgainstIt() {
        var m = Self.connected(Self.machine("GET"), pooled: true)
        let (action, counts) = m.upstreamFailed(.closed(error: false))
        #expect(action == .retry(sameEndpoint: true) && !counts)
        #expect(m.noRetryTarget() == .respond(status: 502))
    }

    @Test func aFailureMidResponseBreaksTheTransfer() {
        var m = Self.connected(Self.machine())
        _ = m.responseHead(Self.head("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"), now: 0)
        _ = Self.body(&m, "abc")
        let (action, counts) = m.upstreamFailed(.closed(error: true))
        #expect(action == .abort(reason: "upstream closed mid-response") && counts)
        #expect(m.recordedStatus == 502 && m.recordsOutcome && !m.proxyGenerated)
    }

    // MARK: timeouts

    @Test func theResponseDeadlineAnswers504AndProgressPushesItOn() {
        var m = Self.connected(Self.machine("POST", framing: .length(4), http2: true), now: 0)
        #expect(m.tick(now: 9_999) == nil)
        _ = m.requestData(count: 2, now: 5_000)
        #expect(m.tick(now: 10_000) == nil)
        guard case .respond(504, _) = m.tick(now: 15_000) else { Issue.record("no 504"); return }
        #expect(m.proxyGenerated && m.status == 504)
    }

    @Test func aStalledResponseBodyIsBrokenNotCompleted() {
        var m = Self.connected(Self.machine())
        _ = m.responseHead(Self.head("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"), now: 100)
        _ = Self.body(&m, "abc", now: 5_000)
        #expect(m.tick(now: 14_999) == nil)
        #expect(m.tick(now: 15_000) == .abort(reason: "upstream stalled mid-response"))
        #expect(m.recordedStatus == 502)
    }

    // MARK: the client going away

    @Test func aClientGoneBeforeTheResponseIsA499NotRecorded() {
        for connect in [false, true] {
            var m = Self.machine()
            m.start()
            if connect { _ = m.connected(pooled: false, now: 0) }
            let gone = m.clientGone()
            #expect(gone)
            #expect(m.status == 499 && m.isOver && !m.recordsOutcome && m.tick(now: .max) == nil)
            let again = m.clientGone()
            #expect(!again)
        }
        var idle = Self.machine()
        let gone = idle.clientGone()
        #expect(gone && idle.status == 499)
    }

    @Test func aClientGoneMidResponseIsRecordedWithTheUpstreamsStatus() {
        var m = Self.connected(Self.machine())
        _ = m.responseHead(Self.head("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"), now: 0)
        let gone = m.clientGone()
        #expect(gone)
        #expect(m.state.endedAs == .aborted(upstreamCut: false) && m.recordedStatus == 200 && m.recordsOutcome)
        // Nothing more happens to an ended exchange.
        #expect(m.upstreamFailed(.closed(error: true)).action == .none)
        #expect(Self.body(&m, "abc").1 == .needMore)
    }

    @Test func aBadRequestBodyIsAnsweredBeforeTheResponseAndBreaksItAfter() {
        var m = Self.connected(Self.machine("POST", framing: .chunked))
        #expect(m.requestInvalid(status: 400) == .respond(status: 400) && m.proxyGenerated)

        var late = Self.connected(Self.machine("POST", framing: .chunked))
        _ = late.responseHead(Self.head("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"), now: 0)
        guard case .abort = late.requestInvalid(status: 400) else { Issue.record("not aborted"); return }
    }
}

extension ExchangeMachine.State {
    var endedAs: ExchangeMachine.Ending? { if case .ended(let e) = self { return e } else { return nil } }
}
