import Testing
import TurnoutCore
@testable import TurnoutServer

@Suite struct ConnectionFieldTests {
    @Test(arguments: [
        ("close", true), ("keep-alive", true), ("Keep-Alive", true), (" close , keep-alive ", true),
        ("", true), (",,", true), ("close,\tKEEP-ALIVE", true),
        ("upgrade", false), ("close, x-secret", false), ("closed", false), ("keep-alive2", false),
        ("clos", false), ("x, close", false),
    ])
    func onlyCloseOrKeepAliveIsToldWithoutTokenising(value: String, expected: Bool) {
        let headers = HTTPHeaders([HTTPField("Connection", value)])
        #expect(HeaderRewriter.namedByConnection(headers).isEmpty == expected)
    }

    @Test func namedFieldsComeFromEveryConnectionField() {
        var h = HTTPHeaders()
        h.append("Connection", "keep-alive")
        #expect(HeaderRewriter.namedByConnection(h).isEmpty)
        h.append("connection", "close, X-Secret")
        #expect(HeaderRewriter.namedByConnection(h) == ["x-secret"])
        h.append("Connection", " Upgrade ")
        #expect(HeaderRewriter.namedByConnection(h) == ["x-secret", "upgrade"])
    }
}
