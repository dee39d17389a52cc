import Testing
@testable import TurnoutCore

@Suite struct HTTP2RequestFieldsTests {
    func request(_ head: String, upgrade: String? = nil, requestID: String? = nil, mirror: Bool = false) throws -> UpstreamRequest {
        let bytes = Array(head.utf8)
        return UpstreamRequest(head: try HTTPHeadParser.parseRequest(bytes, start: 0, end: bytes.count), clientIP: "192.0.2.9",
                               scheme: "https", fallbackHost: "u:1", upgrade: upgrade, requestID: requestID,
                               madeRequestID: requestID != nil, mirrorCopy: mirror)
    }

    func fields(_ head: String, scheme: String = "http", te: Bool = false) throws -> [(String, String)] {
        HTTP2RequestFields(try request(head), scheme: scheme, teTrailers: te).pairs
    }

    @Test func theRewrittenHeadBecomesPseudoHeadersAndLowercaseFields() throws {
        let got = try fields("POST /a?b=1 HTTP/1.1\r\nHost: app.example\r\nContent-Length: 3\r\nX-Forwarded-For: 10.0.0.1\r\n"
                             + "Content-Type:  application/grpc \r\nConnection: keep-alive\r\n"
                             + "Keep-Alive: 5\r\nTE: trailers\r\nProxy-Connection: x\r\nVia: 1.1 edge\r\n\r\n")
        #expect(got.map(\.0) == [":method", ":scheme", ":path", ":authority", "content-type", "x-forwarded-for", "x-forwarded-proto",
                                 "x-forwarded-host", "via", "content-length"])
        #expect(got.map(\.1) == ["POST", "http", "/a?b=1", "app.example", "application/grpc", "10.0.0.1, 192.0.2.9", "https",
                                 "app.example", "1.1 edge, 1.1 turnout", "3"])
    }

    @Test func teTrailersIsSentOnlyWhenTheClientAskedAndSchemeFollowsTheUpstream() throws {
        let got = try fields("GET / HTTP/1.1\r\nHost: h\r\n\r\n", scheme: "https", te: true)
        #expect(got.map(\.0) == [":method", ":scheme", ":path", ":authority", "x-forwarded-for", "x-forwarded-proto",
                                 "x-forwarded-host", "via", "te"])
        #expect(got[1].1 == "https" && got.last!.1 == "trailers")
    }

    @Test func withoutHostTheEndpointIsTheAuthority() throws {
        let got = try fields("GET / HTTP/1.0\r\nAccept: */*\r\n\r\n")
        #expect(got.filter { $0.0 == ":authority" }.map(\.1) == ["u:1"])
        #expect(got[3].0 == ":authority" && !got.contains { $0.0 == "host" })
    }

    @Test func onlyTheRequestIdIsKeptOutOfTheHPACKTable() throws {
        for id in [nil, "f00d"] {
            let r = try request("GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: 0123abcd\r\nx-request-idx: 1\r\n\r\n", requestID: id)
            let f = HTTP2RequestFields(r, scheme: "http", teTrailers: false)
            #expect(zip(f.pairs, f.indexed).filter { !$0.1 }.map { "\($0.0.0)=\($0.0.1)" } == ["x-request-id=\(id ?? "0123abcd")"])
        }
    }

    /// What an HTTP/2 upstream gets says what an HTTP/1.1 upstream gets: the HTTP/1.1 head,
    /// parsed again, less the connection-specific fields, with Host as `:authority`.
    @Test func bothFormsOfTheUpstreamRequestAgree() throws {
        let cases: [(String, String?, String?, Bool)] = [
            ("GET /x HTTP/1.1\r\nHost: a\r\nCookie: c=1\r\nX-Forwarded-For: 10.1.1.1\r\nVia: 1.0 p\r\n\r\n", nil, nil, false),
            ("POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n\r\n", nil, "id-7", true),
            ("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, X-Drop\r\nUpgrade: websocket\r\nX-Drop: 1\r\n\r\n",
             "websocket", nil, false),
            ("PUT /p HTTP/1.1\r\nContent-Length: 0\r\nX-Request-Id: bad id\r\nHost: a\r\n\r\n", nil, "id-8", false),
            ("GET / HTTP/1.0\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: evil\r\n\r\n", nil, nil, true),
        ]
        for (head, upgrade, id, mirror) in cases {
            let r = try request(head, upgrade: upgrade, requestID: id, mirror: mirror)
            let h1 = r.http1Head()
            let parsed = try HTTPHeadParser.parseRequest(h1, start: 0, end: h1.count)
            var expected = [(":method", parsed.method), (":scheme", "http"), (":path", parsed.target)]
            var authority: String?
            let dropped: Set<String> = ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer"]
            parsed.headers.forEach { n, v in
                let name = String(decoding: n, as: UTF8.self).lowercased(), value = String(decoding: v, as: UTF8.self)
                if name == "host" {
                    if authority == nil { authority = value }
                } else if !dropped.contains(name) {
                    expected.append((name, value))
                }
            }
            expected.insert((":authority", authority ?? "?"), at: 3)
            let got = HTTP2RequestFields(r, scheme: "http", teTrailers: false).pairs
            #expect(got.map(\.0) == expected.map(\.0), "\(head)")
            #expect(got.map(\.1) == expected.map(\.1), "\(head)")
            #expect(got.contains { $0 == ("x-turnout-mirror", "1") } == mirror)
        }
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
        #expect(GRPCStatus.isGRPC(contentType: "application/grpc;charset=utf-8") && GRPCStatus.isGRPC(contentType: "application/grpc"))
        for notGRPC in ["", "application/grp", "application/json", "xapplication/grpc", "application/grpcx"] {
            #expect(!GRPCStatus.isGRPC(contentType: notGRPC), "\(notGRPC)")
        }
    }
}

@Suite struct FieldBufferTests {
    /// Eight bytes at a time or one: only "A"..."Z" change, whatever their place; bytes of 0x80
    /// and above, "@", "[", digits and punctuation stay as they are.
    @Test func lowercasingChangesOnlyASCIICapitals() {
        var all: [UInt8] = Array(0...255)
        all += Array("X-Forwarded-For@[Z]`a{Ä".utf8)
        for offset in 0..<9 {
            var buf = FieldBuffer(bytes: 8, fields: 1)
            defer { buf.deallocate() }
            let input = Array(all[offset...])
            input.withUnsafeBufferPointer { buf.writeLowercased($0) }
            let got = Array(UnsafeBufferPointer(start: buf.bytes, count: buf.count))
            #expect(got == input.map { $0 >= 65 && $0 <= 90 ? $0 | 0x20 : $0 })
        }
    }
}

@Suite struct StreamMapTests {
    final class Box { let n: Int32; init(_ n: Int32) { self.n = n } }

    /// Random inserts, look-ups and removals (ids as clients and upstream sessions use them, and
    /// ids that collide) give what a Dictionary gives, through growth and backward shifts.
    @Test func behavesLikeADictionary() {
        var g = SystemRandomNumberGenerator()
        for pattern in 0..<3 {
            var map = StreamMap<Box>()
            var reference: [Int32: Box] = [:]
            var next: Int32 = 1
            for _ in 0..<20_000 {
                let id: Int32
                switch pattern {
                case 0: id = Int32.random(in: 1...4_000, using: &g)          // dense, reused
                case 1: id = Int32.random(in: 1...Int32.max, using: &g)      // anywhere
                default: id = next; next = next < Int32.max - 2048 ? next + 2048 : 1  // strided
                }
                switch Int.random(in: 0..<3, using: &g) {
                case 0, 1:
                    let b = Box(id)
                    map[id] = b
                    reference[id] = b
                default:
                    #expect(map.lookup(id) === reference[id])
                    #expect(map.removeValue(forKey: id) === reference.removeValue(forKey: id))
                }
                #expect(map.count == reference.count)
            }
            for (k, v) in reference { #expect(map[k] === v) }
            #expect(Set(map.values.map(\.n)) == Set(reference.keys))
            #expect(map[0] == nil && map[-3] == nil)
            map.removeAll()
            #expect(map.isEmpty && map.values.isEmpty && map[reference.keys.first ?? 1] == nil)
        }
    }

    /// The table owns its entries, which move in and out without a copy: an entry only the table
    /// holds stays alive through growth and backward shifts, and is freed once removed or replaced.
    @Test func theTableOwnsItsEntries() {
        struct Weak { weak var box: Box? }
        var map = StreamMap<Box>()
        var seen: [Int32: Weak] = [:]
        // Colliding ids (strided by the table size) so that removals shift entries back.
        let ids: [Int32] = (0..<40).map { 1 + $0 * 64 }
        for id in ids {
            let b = Box(id)
            seen[id] = Weak(box: b)
            map[id] = b
        }
        for id in ids { #expect(seen[id]?.box?.n == id) }
        for id in ids where id % 3 == 0 {
            _ = map.removeValue(forKey: id)
            #expect(seen[id]?.box == nil, "removed, so freed")
        }
        for id in ids where id % 3 != 0 {
            #expect(map.unretained(id)?.takeUnretainedValue().n == id)
            #expect(seen[id]?.box != nil, "still in the table")
        }
        let replaced = ids[1]
        map[replaced] = Box(replaced)
        #expect(seen[replaced]?.box == nil, "replaced, so freed")
        map.removeAll()
        #expect(seen.values.allSatisfy { $0.box == nil })
    }

    /// The entry remembered for runs of look-ups is the one in the table, and is forgotten when it
    /// leaves: a removed or replaced stream is never handed out again.
    @Test func theRecentEntryLeavesWithItsStream() {
        var map = StreamMap<Box>()
        let a = Box(1), b = Box(3)
        map[1] = a
        map[3] = b
        #expect(map.lookup(1) === a)
        #expect(map.withEntry(3) { $0 } === b)
        #expect(map.withEntry(3) { $0.n } == 3)
        // Removed while remembered (`b` is still alive here, held by the test).
        #expect(map.removeValue(forKey: 3) === b)
        #expect(map.withEntry(3) { $0 } == nil)
        #expect(map.lookup(3) == nil)
        // Replaced while remembered.
        #expect(map.lookup(1) === a)
        let a2 = Box(1)
        map[1] = a2
        #expect(map.lookup(1) === a2)
        map[1] = nil
        #expect(map.lookup(1) == nil)
        // Emptied while remembered.
        map[5] = b
        #expect(map.lookup(5) === b)
        map.removeAll()
        #expect(map.withEntry(5) { $0 } == nil)
        #expect(a.n == 1 && b.n == 3)
    }
}
