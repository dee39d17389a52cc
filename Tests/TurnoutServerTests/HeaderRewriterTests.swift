import CNghttp2
import Testing
@testable import TurnoutCore
@testable import TurnoutServer

private func response(_ text: String) -> HTTPResponseHead {
    let b = Array(text.utf8)
    return try! HTTPHeadParser.parseResponse(b, start: 0, end: b.count)
}

/// The heads Turnout writes, byte for byte: fields are copied from the parsed head's bytes.
@Suite struct HeaderRewriterOutputTests {
    @Test func theClientResponseIsExactlyTheEndToEndFieldsThenTurnoutsOwn() {
        let head = response("HTTP/1.1 200 OK\r\nServer: nginx\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nVia: 1.0 a\r\n"
            + "Content-Length: 5\r\nKeep-Alive: timeout=5\r\nvia: 1.1 b\r\nX-Case: MiXeD  \r\n\r\n")
        let out = HeaderRewriter.clientResponse(head, clientFraming: .length(5), keepAlive: true, clientVersion: .http11,
                                                setCookie: "c=1; Path=/")
        #expect(String(decoding: out, as: UTF8.self) == "HTTP/1.1 200 OK\r\nServer: nginx\r\nX-Case: MiXeD\r\n"
            + "Via: 1.0 a, 1.1 b, 1.1 turnout\r\nSet-Cookie: c=1; Path=/\r\nContent-Length: 5\r\n\r\n")
    }

    @Test func aClosingOrHTTP10ClientIsToldItsConnectionState() {
        let head = response("HTTP/1.0 404 Not Found\r\n\r\n")
        let closing = HeaderRewriter.clientResponse(head, clientFraming: .chunked, keepAlive: false, clientVersion: .http11, setCookie: nil)
        #expect(String(decoding: closing, as: UTF8.self)
            == "HTTP/1.1 404 Not Found\r\nVia: 1.0 turnout\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        let old = HeaderRewriter.clientResponse(head, clientFraming: .length(0), keepAlive: true, clientVersion: .http10, setCookie: nil)
        #expect(String(decoding: old, as: UTF8.self)
            == "HTTP/1.1 404 Not Found\r\nVia: 1.0 turnout\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n")
    }

    @Test func theUpstreamRequestIsExactlyTheEndToEndFieldsThenForwarding() {
        let head = HTTPRequestHeadFixture.make("POST /p?q=1 HTTP/1.1\r\nHost: shop\r\nX-Forwarded-For: 10.0.0.1\r\n"
            + "X-Forwarded-Proto: https\r\nContent-Length: 3\r\nx-forwarded-for: 10.0.0.2\r\nAccept: a\r\n\r\n")
        let out = HeaderRewriter.upstreamRequest(head, clientIP: "192.0.2.9", scheme: "http", fallbackHost: "u:1")
        #expect(String(decoding: out, as: UTF8.self) == "POST /p?q=1 HTTP/1.1\r\nHost: shop\r\nAccept: a\r\n"
            + "X-Forwarded-For: 10.0.0.1, 10.0.0.2, 192.0.2.9\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: shop\r\n"
            + "Via: 1.1 turnout\r\nContent-Length: 3\r\n\r\n")
    }

    @Test func decimalsAreWrittenWithoutStrings() {
        for n: Int64 in [0, 7, 10, 999, 1_048_576, Int64.max] {
            var out: [UInt8] = [65]
            HeaderRewriter.appendDecimal(&out, n)
            #expect(String(decoding: out, as: UTF8.self) == "A\(n)")
        }
    }

    @Test(arguments: [
        ("a=1; cohort=abc; b=2", "abc"),
        ("cohort=abc", "abc"),
        (" cohort=x y ;cohort=second", "x y"),
        ("xcohort=1; cohortx=2", nil),
        ("cohort=; cohort=later", nil),  // the first pair decides, and it is empty
        ("cohort", nil),
        (";;cohort=z", "z"),
        ("Cohort=upper", nil),  // cookie names are case-sensitive
    ] as [(String, String?)])
    func theCohortCookieIsFoundInTheCookieFields(value: String, expected: String?) {
        let headers = HTTPHeaders([HTTPField("Cookie", "other=1"), HTTPField("cookie", value)])
        #expect(HeaderRewriter.cookie("cohort", in: headers) == expected)
    }

    @Test func anHTTP2BlockHasLowercaseNamesAndTheViaChain() {
        let head = response("HTTP/1.1 201 Created\r\nX-Up: A\r\nConnection: close\r\nVia: 1.0 edge\r\nSec-WebSocket-Accept: k\r\n\r\n")
        let block = HTTP2HeaderBlock(status: 201, response: head, setCookie: "c=2", keepLength: false, except: "sec-websocket-accept")
        var fields: [String] = []
        block.withNV { nva, count in
            for i in 0..<count {
                let nv = nva[i]
                let name = String(decoding: UnsafeBufferPointer(start: nv.name, count: nv.namelen), as: UTF8.self)
                let value = String(decoding: UnsafeBufferPointer(start: nv.value, count: nv.valuelen), as: UTF8.self)
                fields.append("\(name)=\(value)")
            }
        }
        #expect(fields == [":status=201", "x-up=A", "via=1.0 edge, 1.1 turnout", "set-cookie=c=2"])
    }
}
