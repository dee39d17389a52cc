import Testing
@testable import TurnoutServer

@Suite struct SocketAddressTests {
    @Test func literalsParseWithoutDNS() {
        #expect(SocketAddress.literal("127.0.0.1", port: 80)?.description == "127.0.0.1:80")
        #expect(SocketAddress.literal("::1", port: 443)?.description == "[::1]:443")
        #expect(SocketAddress.literal("localhost", port: 80) == nil)
    }

    @Test func theRewriterAddsAMadeRequestIdInsteadOfTheClients() {
        let head = HTTPRequestHeadFixture.make("GET / HTTP/1.1\r\nHost: a\r\nx-request-id: bad id\r\n\r\n")
        let out = String(decoding: HeaderRewriter.upstreamRequest(head, clientIP: "1.2.3.4", scheme: "http", fallbackHost: "h",
                                                                  addRequestID: "0123"), as: UTF8.self)
        #expect(out.contains("X-Request-Id: 0123\r\n") && !out.contains("bad id"))
        let kept = String(decoding: HeaderRewriter.upstreamRequest(head, clientIP: "1.2.3.4", scheme: "http", fallbackHost: "h"), as: UTF8.self)
        #expect(kept.contains("x-request-id: bad id\r\n"))
    }

    @Test func headerRewriterDropsHopByHopAndAddsForwarding() {
        let head = HTTPRequestHeadFixture.make(
            "GET /x HTTP/1.1\r\nHost: shop\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Forwarded-For: 10.0.0.1\r\nVia: 1.1 edge\r\nUpgrade: h2c\r\nProxy-Connection: x\r\nAccept: a\r\n\r\n")
        let out = String(decoding: HeaderRewriter.upstreamRequest(head, clientIP: "127.0.0.1", scheme: "http", fallbackHost: "u:1"), as: UTF8.self)
        #expect(out.hasPrefix("GET /x HTTP/1.1\r\n"))
        for gone in ["X-Secret", "Keep-Alive", "TE:", "Upgrade", "Proxy-Connection", "Connection"] {
            #expect(!out.contains(gone), "\(gone) was forwarded")
        }
        #expect(out.contains("X-Forwarded-For: 10.0.0.1, 127.0.0.1\r\n"))
        #expect(out.contains("X-Forwarded-Proto: http\r\n"))
        #expect(out.contains("X-Forwarded-Host: shop\r\n"))
        #expect(out.contains("Via: 1.1 edge, 1.1 turnout\r\n"))
        #expect(out.contains("Accept: a\r\n"))
    }
}

import TurnoutCore

enum HTTPRequestHeadFixture {
    static func make(_ text: String) -> HTTPRequestHead {
        let b = Array(text.utf8)
        return try! HTTPHeadParser.parseRequest(b, start: 0, end: b.count)
    }
}
