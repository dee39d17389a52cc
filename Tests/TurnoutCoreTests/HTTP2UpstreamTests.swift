import Testing
@testable import TurnoutCore

@Suite struct HTTP2RequestFieldsTests {
    func fields(_ head: String, scheme: String = "http", te: Bool = false) throws -> [(String, String)] {
        let bytes = Array(head.utf8)
        return try bytes.withUnsafeBytes { raw in try HTTP2RequestFields(head: raw, scheme: scheme, teTrailers: te).pairs }
    }

    @Test func theRewrittenHeadBecomesPseudoHeadersAndLowercaseFields() throws {
        let got = try fields("POST /a?b=1 HTTP/1.1\r\nHost: app.example\r\nContent-Length: 3\r\nX-Forwarded-For: 10.0.0.1\r\n"
                             + "Content-Type:  application/grpc \r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n"
                             + "Keep-Alive: 5\r\nTE: trailers\r\nUpgrade: h2c\r\nProxy-Connection: x\r\nVia: 1.1 turnout\r\n\r\n")
        #expect(got.map(\.0) == [":method", ":scheme", ":path", ":authority", "content-length", "x-forwarded-for", "content-type", "via"])
        #expect(got.map(\.1) == ["POST", "http", "/a?b=1", "app.example", "3", "10.0.0.1", "application/grpc", "1.1 turnout"])
    }

    @Test func teTrailersIsSentOnlyWhenTheClientAskedAndSchemeFollowsTheUpstream() throws {
        let got = try fields("GET / HTTP/1.1\r\nHost: h\r\n\r\n", scheme: "https", te: true)
        #expect(got.map(\.0) == [":method", ":scheme", ":path", ":authority", "te"])
        #expect(got[1].1 == "https" && got[4].1 == "trailers")
    }

    @Test func onlyTheFirstHostIsTheAuthority() throws {
        let got = try fields("GET / HTTP/1.1\r\nHost: one\r\nHost: two\r\n\r\n")
        #expect(got.filter { $0.0 == ":authority" }.map(\.1) == ["one"])
        #expect(!got.contains { $0.0 == "host" })
    }

    @Test func onlyTheRequestIdIsKeptOutOfTheHPACKTable() throws {
        let bytes = Array("GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: 0123abcd\r\nX-Forwarded-For: 10.0.0.1\r\nx-request-idx: 1\r\n\r\n".utf8)
        let f = try bytes.withUnsafeBytes { raw in try HTTP2RequestFields(head: raw, scheme: "http", teTrailers: false) }
        #expect(zip(f.pairs, f.spans).filter { !$0.1.indexed }.map(\.0.0) == ["x-request-id"])
    }

    @Test func aMalformedHeadIsRefused() {
        #expect(throws: HTTP2RequestFields.Invalid.self) { try fields("GARBAGE\r\n\r\n") }
        #expect(throws: HTTP2RequestFields.Invalid.self) { try fields("GET / HTTP/1.1\r\nNoColon\r\n\r\n") }
    }
}

@Suite struct GRPCHealthTests {
    @Test func theRequestIsOneLengthPrefixedMessage() {
        #expect(GRPCHealth.requestBody(service: "") == [0, 0, 0, 0, 0])
        #expect(GRPCHealth.requestBody(service: "a.B") == [0, 0, 0, 0, 5, 0x0a, 3, 0x61, 0x2e, 0x42])
    }

    @Test func servingPassesAndEverythingElseFailsWithWhy() {
        let serving: [UInt8] = [0, 0, 0, 0, 2, 0x08, 1]
        #expect(GRPCHealth.verdict(httpStatus: 200, grpcStatus: "0", grpcMessage: nil, body: serving) == (true, "SERVING"))
        #expect(GRPCHealth.verdict(httpStatus: 200, grpcStatus: "0", grpcMessage: nil, body: [0, 0, 0, 0, 2, 0x08, 2]) == (false, "NOT_SERVING"))
        // proto3 leaves an UNKNOWN (0) status out: an empty message.
        #expect(GRPCHealth.verdict(httpStatus: 200, grpcStatus: "0", grpcMessage: nil, body: [0, 0, 0, 0, 0]) == (false, "UNKNOWN"))
        #expect(GRPCHealth.verdict(httpStatus: 200, grpcStatus: "5", grpcMessage: "unknown service", body: []) == (false, "grpc-status 5: unknown service"))
        #expect(GRPCHealth.verdict(httpStatus: 200, grpcStatus: nil, grpcMessage: nil, body: serving).passed == false)
        #expect(GRPCHealth.verdict(httpStatus: 503, grpcStatus: "0", grpcMessage: nil, body: serving) == (false, "HTTP status 503"))
        #expect(GRPCHealth.verdict(httpStatus: 200, grpcStatus: "0", grpcMessage: nil, body: [0, 0, 0, 0, 9, 0x08]).passed == false)
        // An unknown field before the status is skipped.
        #expect(GRPCHealth.verdict(httpStatus: 200, grpcStatus: "0", grpcMessage: nil, body: [0, 0, 0, 0, 5, 0x12, 1, 0x61, 0x08, 1]) == (true, "SERVING"))
    }

    @Test func httpErrorsMapToGRPCCodes() {
        #expect(GRPCStatus.code(forHTTP: 503) == 14 && GRPCStatus.code(forHTTP: 502) == 14 && GRPCStatus.code(forHTTP: 504) == 14)
        #expect(GRPCStatus.code(forHTTP: 400) == 13 && GRPCStatus.code(forHTTP: 431) == 8 && GRPCStatus.code(forHTTP: 418) == 2)
        #expect(GRPCStatus.encodeMessage("no 100% é") == "no 100%25 %C3%A9")
        #expect(GRPCStatus.isGRPC(contentType: "application/grpc+proto") && GRPCStatus.isGRPC(contentType: "Application/GRPC"))
        #expect(!GRPCStatus.isGRPC(contentType: "application/grpc-web") && !GRPCStatus.isGRPC(contentType: nil))
    }
}
