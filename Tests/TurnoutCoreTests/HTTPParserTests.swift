import Testing
@testable import TurnoutCore

private func parseRequest(_ text: String) throws(HTTPParseError) -> HTTPRequestHead {
    let bytes = Array(text.utf8)
    guard let end = try HTTPHeadParser.findHeadEnd(bytes, start: 0, end: bytes.count, limit: 64 * 1024) else {
        throw .bad("incomplete")
    }
    return try HTTPHeadParser.parseRequest(bytes, start: 0, end: end)
}

@Suite struct RequestParsingTests {
    @Test func aPlainGet() throws {
        let h = try parseRequest("GET /a?b=1 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n")
        #expect(h.method == "GET" && h.target == "/a?b=1" && h.version == .http11)
        #expect(h.host == "x" && h.framing == .none && h.keepAlive)
        #expect(h.headers.first("accept") == "*/*")
    }

    @Test func framingAndKeepAlive() throws {
        #expect(try parseRequest("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n").framing == .length(5))
        #expect(try parseRequest("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n").framing == .chunked)
        #expect(try parseRequest("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").keepAlive == false)
        #expect(try parseRequest("GET / HTTP/1.0\r\n\r\n").keepAlive == false)
        #expect(try parseRequest("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keepAlive == true)
    }

    @Test func absoluteFormReplacesHost() throws {
        let h = try parseRequest("GET http://example.com:8080/p?q HTTP/1.1\r\nHost: other\r\n\r\n")
        #expect(h.target == "/p?q" && h.host == "example.com:8080")
    }

    @Test func leadingEmptyLinesAreIgnored() throws {
        #expect(try parseRequest("\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n").method == "GET")
    }

    @Test(arguments: [
        "GET / HTTP/1.1\r\n\r\n",  // no Host
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n",
        // U+212A KELVIN SIGN lowercases to "k" in Unicode: "chun\u{212A}ed" must not read as chunked.
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chun\u{212A}ed\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n",  // obs-fold
        "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nX: a\0b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n",
        "GET / HTTP/1.1\nHost: x\r\n\r\n",
        "GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET / HTTP/1.1 \r\nHost: x\r\n\r\n",
        "G(T / HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET foo HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET / HTTX/1.1\r\nHost: x\r\n\r\n",
        "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
    ])
    func malformedRequestsAreRefused(_ text: String) {
        #expect(throws: HTTPParseError.self) { try parseRequest(text) }
    }

    @Test func statusCodesForLimits() {
        #expect(throws: HTTPParseError.versionNotSupported) { try parseRequest("GET / HTTP/2.0\r\nHost: x\r\n\r\n") }
        #expect(throws: HTTPParseError.methodNotAllowed("CONNECT")) { try parseRequest("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n") }
        let long = "GET /" + String(repeating: "a", count: 9000) + " HTTP/1.1\r\nHost: x\r\n\r\n"
        #expect(throws: HTTPParseError.uriTooLong) { try parseRequest(long) }
        let big = Array(("GET / HTTP/1.1\r\nHost: x\r\nX: " + String(repeating: "a", count: 70_000)).utf8)
        #expect(throws: HTTPParseError.headTooLarge) { try HTTPHeadParser.findHeadEnd(big, start: 0, end: big.count, limit: 64 * 1024) }
    }

    @Test func tooManyHeaders() {
        var text = "GET / HTTP/1.1\r\nHost: x\r\n"
        for i in 0..<150 { text += "X-\(i): v\r\n" }
        text += "\r\n"
        let bytes = Array(text.utf8)
        #expect(throws: HTTPParseError.tooManyHeaders) {
            try HTTPHeadParser.parseRequest(bytes, start: 0, end: bytes.count, maxHeaderCount: 100)
        }
    }

    @Test func headEndIsFoundAcrossPartialReads() throws {
        let bytes = Array("GET / HTTP/1.1\r\nHost: x\r\n\r\nNEXT".utf8)
        #expect(try HTTPHeadParser.findHeadEnd(bytes, start: 0, end: 20, limit: 1024) == nil)
        #expect(try HTTPHeadParser.findHeadEnd(bytes, start: 0, end: bytes.count, limit: 1024) == bytes.count - 4)
    }
}

@Suite struct ResponseParsingTests {
    private func parse(_ text: String) throws(HTTPParseError) -> HTTPResponseHead {
        let b = Array(text.utf8)
        return try HTTPHeadParser.parseResponse(b, start: 0, end: b.count)
    }

    @Test func framingFollowsRFC9112() throws {
        #expect(try parse("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n").framing(requestMethod: "GET") == .length(3))
        #expect(try parse("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n").framing(requestMethod: "HEAD") == .none)
        #expect(try parse("HTTP/1.1 204 No Content\r\n\r\n").framing(requestMethod: "GET") == .none)
        #expect(try parse("HTTP/1.1 304 Not Modified\r\n\r\n").framing(requestMethod: "GET") == .none)
        #expect(try parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").framing(requestMethod: "GET") == .chunked)
        #expect(try parse("HTTP/1.0 200 OK\r\n\r\n").framing(requestMethod: "GET") == .untilClose)
        #expect(try parse("HTTP/1.1 200\r\n\r\n").reason == "")
    }

    @Test func ambiguousResponsesAreRefused() {
        #expect(throws: HTTPParseError.self) {
            try parse("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n").framing(requestMethod: "GET")
        }
        #expect(throws: HTTPParseError.self) {
            try parse("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n").framing(requestMethod: "GET")
        }
        #expect(throws: HTTPParseError.self) {
            // Not chunked: U+212A KELVIN SIGN is no "k", whatever Unicode case mapping says.
            try parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chun\u{212A}ed\r\n\r\n").framing(requestMethod: "GET")
        }
        #expect(throws: HTTPParseError.self) { try parse("HTTP/1.1 20 OK\r\n\r\n") }
        #expect(throws: HTTPParseError.self) { try parse("HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n") }
    }
}

@Suite struct ChunkedDecoderTests {
    private func decode(_ text: String, split: Int? = nil) throws(HTTPParseError) -> (body: String, end: Int?) {
        let bytes = Array(text.utf8)
        var decoder = ChunkedDecoder()
        var body: [UInt8] = []
        var index = 0
        var limit = split ?? bytes.count
        while true {
            let event = try decoder.next(bytes, index: &index, end: limit)
            switch event {
            case .data(let r): body += bytes[r]
            case .chunkStart, .chunkEnd: break
            case .end(let e): return (String(decoding: body, as: UTF8.self), e)
            case .needMore:
                if limit == bytes.count { return (String(decoding: body, as: UTF8.self), nil) }
                limit = bytes.count
            }
        }
    }

    @Test func decodesChunksExtensionsAndTrailers() throws {
        let r = try decode("5;name=v\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT")
        #expect(r.body == "hello world")
        #expect(r.end == "5;name=v\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n".utf8.count)
    }

    @Test func decodesAcrossAnySplit() throws {
        let text = "a\r\n0123456789\r\n3\r\nabc\r\n0\r\n\r\n"
        for split in 0...text.utf8.count {
            let r = try decode(text, split: split)
            #expect(r.body == "0123456789abc" && r.end == text.utf8.count)
        }
    }

    @Test(arguments: [
        "g\r\n", "\r\n", "5\nhello\r\n", "5\r\nhelloX\r\n", "1000000000000000\r\n", "-5\r\n", "0x5\r\n",
        "5\r\nhello\r\n0\r\n bad\r\n\r\n", "0\r\nno-colon\r\n\r\n", "0\r\nX-T : 1\r\n\r\n", "0\r\n:empty\r\n\r\n",
    ])
    func malformedChunksAreRefused(_ text: String) {
        #expect(throws: HTTPParseError.self) { try decode(text) }
    }
}

@Suite struct ListTokenTests {
    @Test func findsTokensInListFieldsWithoutCaringAboutCaseOrSpacing() {
        let h = HTTPHeaders([HTTPField("Connection", " Keep-Alive ,\tUpgrade"), HTTPField("connection", "CLOSE")])
        #expect(h.hasToken("connection", "keep-alive") && h.hasToken("connection", "upgrade") && h.hasToken("Connection", "close"))
        #expect(!h.hasToken("connection", "keep") && !h.hasToken("connection", "alive") && !h.hasToken("te", "close"))
        let odd = HTTPHeaders([HTTPField("Connection", "keep alive, ,close x, closed")])
        #expect(!odd.hasToken("connection", "keep") && !odd.hasToken("connection", "close") && odd.hasToken("connection", "closed"))
        #expect(HTTPHeaders([HTTPField("Connection", "close,")]).hasToken("connection", "close"))
    }

    @Test func tokensAreTrimmedLowercasedAndSkipEmptyElements() {
        let h = HTTPHeaders([HTTPField("Upgrade", " WebSocket ,\th2C,, "), HTTPField("upgrade", "X-Y"), HTTPField("TE", "gzip")])
        #expect(h.tokens("upgrade") == ["websocket", "h2c", "x-y"])
        #expect(h.tokens("connection").isEmpty)
        #expect(HTTPHeaders([HTTPField("Upgrade", "\u{212A}EEP")]).tokens("upgrade") == ["\u{212A}eep"])  // ASCII only
    }
}

@Suite struct HeadLimitTests {
    @Test func endlessEmptyLinesHitTheHeadLimit() {
        let crlfs = [UInt8](repeating: 0, count: 70_000).enumerated().map { $0.offset % 2 == 0 ? 13 : 10 } as [UInt8]
        #expect(throws: HTTPParseError.headTooLarge) {
            try HTTPHeadParser.findHeadEnd(crlfs, start: 0, end: crlfs.count, limit: 64 * 1024)
        }
    }
}

@Suite struct RequestPrefixTests {
    @Test func plausiblePrefixes() {
        for text in ["", "GE", "GET / HTTP/1.1", "GET / HTTP/1.1\r", "GET / HTTP/1.1\r\nHost: x\u{01}", "\r\nGET"] {
            let b = Array(text.utf8)
            #expect(HTTPHeadParser.requestPrefixIsPlausible(b, start: 0, end: b.count), "\(text.debugDescription)")
        }
    }

    @Test func garbageIsRecognisedBeforeTheHeadEnds() {
        for bytes: [UInt8] in [[0x16, 0x03, 0x01, 0x02], [71, 69, 84, 0], [71, 10, 71], [71, 13, 71], [0xFF, 0xFE]] {
            #expect(!HTTPHeadParser.requestPrefixIsPlausible(bytes, start: 0, end: bytes.count))
        }
    }
}
