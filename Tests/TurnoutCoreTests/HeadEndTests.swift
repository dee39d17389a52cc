import Testing
import TurnoutCore

@Suite struct HeadEndTests {
    /// The first CRLF CRLF, found the slow way.
    static func naive(_ bytes: [UInt8]) -> Int? {
        guard bytes.count >= 4 else { return nil }
        for i in 3..<bytes.count where bytes[i - 3] == 13 && bytes[i - 2] == 10 && bytes[i - 1] == 13 && bytes[i] == 10 {
            return i + 1
        }
        return nil
    }

    static func headEnd(_ bytes: [UInt8]) -> Int? {
        bytes.withUnsafeBytes { HTTPHeadParser.scanHeadEnd($0, from: 0, to: $0.count) }
    }

    @Test func findsTheEndOfAHead() {
        let response = Array("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nblue\n".utf8)
        #expect(Self.headEnd(response) == response.count - 5)
        #expect(Self.headEnd(Array("\r\n\r\n".utf8)) == 4)
        #expect(Self.headEnd(Array("HTTP/1.1 200 OK\r\n\r".utf8)) == nil)
        #expect(Self.headEnd(Array("HTTP/1.1 200 OK\n\n".utf8)) == nil)  // bare LF: left to the parser
        #expect(Self.headEnd([]) == nil)
    }

    @Test func agreesWithANaiveSearchOnRandomBytes() {
        var rng = SystemRandomNumberGenerator()
        let alphabet: [UInt8] = [13, 10, 13, 10, 65, 32, 58]
        for _ in 0..<20_000 {
            let n = Int.random(in: 0...40, using: &rng)
            let bytes = (0..<n).map { _ in alphabet.randomElement(using: &rng)! }
            #expect(Self.headEnd(bytes) == Self.naive(bytes), "\(bytes)")
        }
    }
}
