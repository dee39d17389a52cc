import Foundation
import Testing
@testable import TurnoutCore

@Suite struct RequestIDTests {
    @Test func madeIdsAreThirtyTwoHexDigitsAndDistinct() {
        let ids = (0..<1000).map { _ in RequestID.make() }
        #expect(Set(ids).count == 1000)
        #expect(ids.allSatisfy { $0.utf8.count == 32 && $0.allSatisfy(\.isHexDigit) })
    }

    @Test func aClientsIdIsKeptOnlyWhenUsable() {
        #expect(RequestID.of(HTTPHeaders([HTTPField("X-Request-Id", "abc-123")])) == ("abc-123", false))
        for bad in ["", "has space", "tab\there", String(repeating: "a", count: 201), "naïve"] {
            let (id, made) = RequestID.of(HTTPHeaders([HTTPField("X-Request-Id", bad)]))
            #expect(made && id != bad, "\(bad)")
        }
        #expect(RequestID.of(HTTPHeaders()).made)
    }
}

@Suite struct AccessRecordJSONTests {
    func parse(_ s: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(s.utf8)) as? [String: Any])
    }

    @Test func aRequestLineHasEveryFieldInOrder() throws {
        let r = AccessRecord(clientIP: "10.0.0.1", kind: .request(method: "POST", target: "/a?\"q\"", version: "HTTP/2", status: 201, bytes: 42),
                             pool: "blue", endpoint: "10.0.0.2:80", durationNanos: 2_500_000, attempts: 2, route: "sticky",
                             error: nil, requestID: "rid", bytesIn: 7, upstreamConnectNanos: 1_000_000, upstreamResponseNanos: 1_250_000)
        let line = String(decoding: r.jsonLine(timeNanos: 1_796_292_000_000_000_000).dropLast(), as: UTF8.self)
        #expect(line.hasPrefix("{\"time\":\"2026-12-03T10:00:00.000Z\","))
        let keys = line.split(separator: ",").compactMap { part -> String? in
            guard let m = part.firstRange(of: "\":") else { return nil }
            let head = part[..<m.lowerBound]
            return head.hasPrefix("{\"") || head.hasPrefix("\"") ? String(head.drop { $0 == "{" || $0 == "\"" }) : nil
        }
        #expect(keys == AccessRecord.jsonFields)
        let o = try parse(line)
        #expect(o["path"] as? String == "/a?\"q\"" && o["status"] as? Int == 201 && o["retries"] as? Int == 1)
        #expect(o["bytes_in"] as? Int == 7 && o["bytes_out"] as? Int == 42 && o["duration_ms"] as? Double == 2.5)
        #expect(o["upstream_connect_ms"] as? Double == 1 && o["upstream_response_ms"] as? Double == 1.25)
        #expect(o["error"] is NSNull && o["route"] as? String == "sticky" && o["type"] as? String == "request")
    }

    @Test func aTunnelLineHasTheSameFields() throws {
        let r = AccessRecord(clientIP: "::1", kind: .tunnel(target: "/ws", bytesUp: 5, bytesDown: 9, http2: true),
                             pool: "green", endpoint: nil, durationNanos: 0, error: "upstream closed")
        let o = try parse(String(decoding: r.jsonLine(timeNanos: 0), as: UTF8.self))
        #expect(Set(o.keys) == Set(AccessRecord.jsonFields))
        #expect(o["type"] as? String == "tunnel" && o["method"] as? String == "CONNECT" && o["status"] as? Int == 200)
        #expect(o["bytes_in"] as? Int == 5 && o["bytes_out"] as? Int == 9 && o["endpoint"] is NSNull && o["request_id"] is NSNull)
    }
}
