import Testing
@testable import TurnoutCore

@Suite struct DNSMessageTests {
    /// A response to `query` with the given answer records, name compression included.
    func response(to query: [UInt8], rcode: UInt8 = 0, answers: [[UInt8]], additional: [[UInt8]] = []) -> [UInt8] {
        var r = query
        r[2] = 0x81
        r[3] = 0x80 | rcode
        r[6] = 0; r[7] = UInt8(answers.count)
        r[10] = 0; r[11] = UInt8(additional.count)
        for a in answers + additional { r += a }
        return r
    }

    /// A record whose owner is the question's name (pointer to offset 12).
    func record(type: UInt16, ttl: UInt32, rdata: [UInt8], owner: [UInt8] = [0xc0, 12]) -> [UInt8] {
        owner + [UInt8(type >> 8), UInt8(type & 0xff), 0, 1,
                 UInt8(ttl >> 24), UInt8((ttl >> 16) & 0xff), UInt8((ttl >> 8) & 0xff), UInt8(ttl & 0xff),
                 UInt8(rdata.count >> 8), UInt8(rdata.count & 0xff)] + rdata
    }

    @Test func buildsAQueryAndReadsAAAAAAndSRVAnswers() throws {
        let q = DNSMessage.query(id: 0x1234, name: "blue.test", type: DNSMessage.typeA)
        #expect(Array(q[0..<4]) == [0x12, 0x34, 0x01, 0x00])
        #expect(Array(q[12...]) == [4] + Array("blue".utf8) + [4] + Array("test".utf8) + [0, 0, 1, 0, 1])
        let a = try DNSMessage.parse(response(to: q, answers: [
            record(type: DNSMessage.typeCNAME, ttl: 60, rdata: [0xc0, 12]),
            record(type: DNSMessage.typeA, ttl: 30, rdata: [10, 0, 0, 5]),
            record(type: DNSMessage.typeAAAA, ttl: 0x8000_0001, rdata: [0x20, 0x01, 0x0d, 0xb8] + [UInt8](repeating: 0, count: 11) + [1]),
        ]))
        #expect(a.id == 0x1234 && a.rcode == 0 && !a.truncated)
        #expect(a.answers.map(\.data) == [.cname("blue.test"), .a("10.0.0.5"), .aaaa("2001:db8:0:0:0:0:0:1")])
        // A TTL with its top bit set counts as 0.
        #expect(a.answers.map(\.ttl) == [60, 30, 0])
        let srvQ = DNSMessage.query(id: 7, name: "_http._tcp.blue.test", type: DNSMessage.typeSRV)
        let target: [UInt8] = [1, UInt8(ascii: "a"), 0xc0, 12]
        let srv = try DNSMessage.parse(response(to: srvQ, answers: [
            record(type: DNSMessage.typeSRV, ttl: 5, rdata: [0, 10, 0, 3, 0x1f, 0x90] + target),
        ]))
        #expect(srv.answers.first?.data == .srv(priority: 10, weight: 3, port: 8080, target: "a._http._tcp.blue.test"))
        let nx = try DNSMessage.parse(response(to: q, rcode: 3, answers: []))
        #expect(nx.rcode == 3 && nx.answers.isEmpty)
    }

    @Test func refusesMalformedMessagesWithoutCrashing() {
        let q = DNSMessage.query(id: 1, name: "x.test", type: DNSMessage.typeA)
        #expect(throws: DNSMessage.ParseError.self) { try DNSMessage.parse(Array(q.prefix(5))) }
        #expect(throws: DNSMessage.ParseError.self) { try DNSMessage.parse(q) }  // a query, not a response
        // A pointer loop and a record running past the end.
        var loop = response(to: q, answers: [[0xc0, UInt8(q.count)]])
        loop += [0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 1, 2, 3, 4]
        #expect(throws: DNSMessage.ParseError.self) { try DNSMessage.parse(loop) }
        let cut = response(to: q, answers: [record(type: DNSMessage.typeA, ttl: 1, rdata: [1, 2, 3, 4])]).dropLast(2)
        #expect(throws: DNSMessage.ParseError.self) { try DNSMessage.parse(Array(cut)) }
        // Random bytes never trap.
        var g = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            var b = response(to: q, answers: [record(type: DNSMessage.typeSRV, ttl: 1, rdata: [0, 1, 0, 1, 0, 80, 1, 65, 0])])
            for _ in 0..<3 { b[Int.random(in: 0..<b.count, using: &g)] = UInt8.random(in: 0...255, using: &g) }
            _ = try? DNSMessage.parse(b)
        }
    }
}

@Suite struct DiscoveryStateTests {
    let a = DiscoveredAddress(address: HostPort(host: "10.0.0.1", port: 80))
    let b = DiscoveredAddress(address: HostPort(host: "10.0.0.2", port: 80))

    func config(confirmMs: Int64 = 30_000) -> DiscoveryConfig {
        var c = DiscoveryConfig(name: "blue.test", type: .a, port: 80)
        c.minTTLMs = 1000
        c.maxTTLMs = 60_000
        c.confirmEmptyMs = confirmMs
        return c
    }

    @Test func followsTheTTLClampedWithJitter() {
        var s = DiscoveryState(config: config())
        #expect(s.answer([a], ttlSeconds: 30, nowMs: 0, carriesTraffic: true, jitter: 0) == (.apply([a]), 30_000))
        #expect(s.answer([a], ttlSeconds: 0, nowMs: 1, carriesTraffic: true, jitter: 0) == (.keep, 1000))
        #expect(s.answer([a], ttlSeconds: 86_400, nowMs: 2, carriesTraffic: true, jitter: 1) == (.keep, 66_000))
        #expect(s.answer([a, b], ttlSeconds: 10, nowMs: 3, carriesTraffic: true, jitter: -1) == (.apply([a, b]), 9000))
    }

    @Test func errorsKeepTheListAndBackOff() {
        var s = DiscoveryState(config: config())
        _ = s.answer([a], ttlSeconds: 5, nowMs: 0, carriesTraffic: true, jitter: 0)
        #expect(s.failed(jitter: 0) == 1000 && s.failed(jitter: 0) == 2000 && s.failed(jitter: 0) == 4000)
        for _ in 0..<10 { _ = s.failed(jitter: 0) }
        #expect(s.failed(jitter: 0) == 30_000)
        #expect(s.applied == [a])
        // Never later than max_ttl.
        var quick = DiscoveryState(config: { var c = config(); c.maxTTLMs = 2000; return c }())
        #expect(quick.failed(jitter: 0) == 1000 && quick.failed(jitter: 0) == 2000 && quick.failed(jitter: 0) == 2000)
        #expect(s.answer([a], ttlSeconds: 5, nowMs: 1, carriesTraffic: true, jitter: 0).0 == .keep)
        #expect(s.consecutiveErrors == 0)
    }

    @Test func anEmptyAnswerForAPoolWithTrafficIsHeldForTheConfirmationPeriod() {
        var s = DiscoveryState(config: config(confirmMs: 10_000))
        _ = s.answer([a], ttlSeconds: 5, nowMs: 0, carriesTraffic: true, jitter: 0)
        #expect(s.answer([], ttlSeconds: 5, nowMs: 1000, carriesTraffic: true, jitter: 0) == (.holdEmpty(remainingMs: 10_000, first: true), 5000))
        #expect(s.answer([], ttlSeconds: 5, nowMs: 8000, carriesTraffic: true, jitter: 0) == (.holdEmpty(remainingMs: 3000, first: false), 3000))
        // An answer with an address ends the hold; the next empty one starts it again.
        #expect(s.answer([a], ttlSeconds: 5, nowMs: 9000, carriesTraffic: true, jitter: 0).0 == .keep)
        #expect(s.answer([], ttlSeconds: 5, nowMs: 10_000, carriesTraffic: true, jitter: 0).0 == .holdEmpty(remainingMs: 10_000, first: true))
        #expect(s.answer([], ttlSeconds: 5, nowMs: 20_000, carriesTraffic: true, jitter: 0).0 == .applyEmpty)
        #expect(s.applied == [])
        // A pool without traffic takes an empty answer at once.
        var idle = DiscoveryState(config: config())
        _ = idle.answer([a], ttlSeconds: 5, nowMs: 0, carriesTraffic: false, jitter: 0)
        #expect(idle.answer([], ttlSeconds: 5, nowMs: 1, carriesTraffic: false, jitter: 0).0 == .apply([]))
    }
}
