import Testing
@testable import TurnoutCore

private func request(_ text: String, maxHeaderCount: Int = 100) throws(HTTPParseError) -> HTTPRequestHead {
    let bytes = Array(text.utf8)
    return try HTTPHeadParser.parseRequest(bytes, start: 0, end: bytes.count, maxHeaderCount: maxHeaderCount)
}

@Suite struct HTTPSyntaxTests {
    @Test func tokenBytesAreExactlyTchar() {
        let tchar = Set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".utf8)
        for b in 0...255 {
            #expect(HTTPSyntax.isTokenByte(UInt8(b)) == tchar.contains(UInt8(b)), "byte \(b)")
        }
    }
}

/// Fields kept as one copy of their bytes with offsets (HTTPHeaders), and the one-pass field parser.
@Suite struct HTTPHeadersStorageTests {
    @Test func parsedFieldsKeepCaseOrderAndTrimmedValues() throws {
        let h = try request("GET / HTTP/1.1\r\nHost: x\r\nX-A:  one \t\r\nx-a:two\r\nEmpty:\r\nAccept: */*\r\n\r\n")
        #expect(h.headers.fields == [HTTPField("Host", "x"), HTTPField("X-A", "one"), HTTPField("x-a", "two"),
                                     HTTPField("Empty", ""), HTTPField("Accept", "*/*")])
        #expect(h.headers.values("X-a") == ["one", "two"])
        #expect(h.headers.count("x-A") == 2 && h.headers.count("nope") == 0)
        #expect(h.headers.first("empty") == "" && h.headers.first("nope") == nil)
    }

    @Test func aHeadAtAnOffsetInAReadBufferIsCopiedOut() throws {
        let text = "junk before|HTTP/1.1 204 No Content\r\nServer: s\r\nVia: 1.0 a\r\n\r\nbody after"
        var bytes = Array(text.utf8)
        let start = 12
        let end = bytes.count - 10
        let head = try bytes.withUnsafeBufferPointer { b throws(HTTPParseError) in
            try HTTPHeadParser.parseResponse(b, start: start, end: end)
        }
        // The head owns its bytes: the read buffer can be reused.
        for i in bytes.indices { bytes[i] = 0x58 }
        #expect(head.status == 204 && head.reason == "No Content")
        #expect(head.headers.fields == [HTTPField("Server", "s"), HTTPField("Via", "1.0 a")])
    }

    @Test func aHeadWithoutFieldsHasNone() throws {
        #expect(try request("GET / HTTP/1.0\r\n\r\n").headers.count == 0)
        #expect(try request("\r\nGET / HTTP/1.0\r\n\r\n").headers.fields.isEmpty)
    }

    @Test func theFieldLimitCountsFields() throws {
        let fields = (1...5).map { "X-\($0): v\r\n" }.joined()
        #expect(try request("GET / HTTP/1.1\r\nHost: x\r\n\(fields)\r\n", maxHeaderCount: 6).headers.count == 6)
        #expect(throws: HTTPParseError.tooManyHeaders) {
            try request("GET / HTTP/1.1\r\nHost: x\r\n\(fields)\r\n", maxHeaderCount: 5)
        }
    }

    @Test(arguments: [
        ("GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n", "bare CR in message head"),
        ("GET / HTTP/1.1\r\nHost: x\r\nX: a\nY: b\r\n\r\n", "bare LF in message head"),
        ("GET / HTTP/1.1\r\nHost: x\r\nX\rY: b\r\n\r\n", "bare CR in message head"),
        ("GET / HTTP/1.1\r\nHost: x\r\nX\nY: b\r\n\r\n", "bare LF in message head"),
        ("GET / HTTP/1.1\nHost: x\r\n\r\n", "bare LF in message head"),
        ("GET / HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n", "header line without a colon"),
        ("GET / HTTP/1.1\r\nHost: x\r\n: v\r\n\r\n", "empty field name"),
        ("GET / HTTP/1.1\r\nHost: x\r\nX Y: v\r\n\r\n", "whitespace between a field name and the colon"),
        ("GET / HTTP/1.1\r\nHost: x\r\nX(: v\r\n\r\n", "invalid character in a field name"),
        ("GET / HTTP/1.1\r\nHost: x\r\nX: a\u{7F}\r\n\r\n", "invalid character in the value of a header field"),
        ("GET / HTTP/1.1\r\nHost: x\r\n\tX: a\r\n\r\n", "obsolete line folding is not accepted"),
        ("GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continu\u{212A}\r\n\r\n", "unsupported Expect value"),
        ("GET / HTTP/1.1\r\nHost: x@y\r\n\r\n", "invalid Host header"),
        ("\r\n\r\n", "empty request"),
    ])
    func malformedHeadsAreRefusedWithTheirReason(text: String, reason: String) {
        #expect(throws: HTTPParseError.bad(reason)) { try request(text) }
    }

    @Test func contentLengthIsDigitsOnlyAndAtMostEighteen() throws {
        #expect(try request("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 007\r\n\r\n").framing == .length(7))
        #expect(try request("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999999999\r\n\r\n").framing
            == .length(999_999_999_999_999_999))
        #expect(throws: HTTPParseError.bad("invalid Content-Length")) {
            try request("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000000000\r\n\r\n")
        }
        #expect(HTTPHeadParser.parseContentLength("") == nil && HTTPHeadParser.parseContentLength("1 ") == nil)
    }

    @Test func builtFieldsAreEqualToParsedOnesWhateverTheStorage() throws {
        let parsed = try request("GET / HTTP/1.1\r\nHost: x\r\nDrop: me\r\nKeep: v\r\n\r\n").headers
        var edited = parsed
        edited.remove("drop")
        #expect(edited.fields == [HTTPField("Host", "x"), HTTPField("Keep", "v")])
        #expect(edited == HTTPHeaders([HTTPField("Host", "x"), HTTPField("Keep", "v")]))
        #expect(edited != HTTPHeaders([HTTPField("host", "x"), HTTPField("Keep", "v")]))  // names compare byte for byte
        #expect(parsed.count == 3)  // the copy it came from is untouched
        edited.prepend("First", "1")
        edited.set("keep", "w")
        #expect(edited.fields == [HTTPField("First", "1"), HTTPField("Host", "x"), HTTPField("keep", "w")])
    }

    @Test func forEachValueStopsWhenTold() {
        let h = HTTPHeaders([HTTPField("A", "1"), HTTPField("b", "2"), HTTPField("a", "3"), HTTPField("A", "4")])
        var seen: [String] = []
        let finished = h.forEachValue("a") { v in
            seen.append(String(decoding: v, as: UTF8.self))
            return seen.count < 2
        }
        #expect(seen == ["1", "3"] && !finished)
        #expect(h.forEachValue("b") { _ in true })
    }

    @Test func anAbsoluteTargetReplacesHostInTheFields() throws {
        let h = try request("GET http://example.com/p HTTP/1.1\r\nHost: other\r\nAccept: a\r\n\r\n")
        #expect(h.headers.fields == [HTTPField("Accept", "a"), HTTPField("Host", "example.com")])
    }
}
