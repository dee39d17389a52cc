/// DNS messages (RFC 1035, RFC 2782 for SRV, RFC 3596 for AAAA): the query discovery sends and the
/// parts of an answer it reads. Pure bytes in, values out; the resolver does the I/O.
public enum DNSMessage {
    public static let typeA: UInt16 = 1
    public static let typeCNAME: UInt16 = 5
    public static let typeAAAA: UInt16 = 28
    public static let typeSRV: UInt16 = 33

    public static func type(of t: DNSRecordType) -> UInt16 {
        switch t {
        case .a: return typeA
        case .aaaa: return typeAAAA
        case .srv: return typeSRV
        }
    }

    /// A recursive query for `name` and `type` (class IN) with message id `id`.
    public static func query(id: UInt16, name: String, type: UInt16) -> [UInt8] {
        var out: [UInt8] = [UInt8(id >> 8), UInt8(id & 0xff), 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]
        for label in name.split(separator: ".") {
            let bytes = Array(label.utf8.prefix(63))
            out.append(UInt8(bytes.count))
            out += bytes
        }
        out.append(0)
        out += [UInt8(type >> 8), UInt8(type & 0xff), 0, 1]
        return out
    }

    public enum RecordData: Sendable, Equatable {
        case a(String)
        case aaaa(String)
        case srv(priority: UInt16, weight: UInt16, port: UInt16, target: String)
        case cname(String)
        case other
    }

    public struct Record: Sendable, Equatable {
        public var name: String
        public var type: UInt16
        public var ttl: UInt32
        public var data: RecordData
    }

    public struct Response: Sendable, Equatable {
        public var id: UInt16
        public var rcode: Int
        public var truncated: Bool
        public var answers: [Record]
        public var additional: [Record]
    }

    public struct ParseError: Error, Sendable, CustomStringConvertible {
        public let description: String
        init(_ d: String) { description = d }
    }

    /// Parses a response. Throws on anything malformed (a truncated message, a bad name pointer).
    public static func parse(_ b: [UInt8]) throws(ParseError) -> Response {
        guard b.count >= 12 else { throw ParseError("a DNS message shorter than its header") }
        func u16(_ i: Int) throws(ParseError) -> UInt16 {
            guard i + 2 <= b.count else { throw ParseError("a DNS message cut short") }
            return UInt16(b[i]) << 8 | UInt16(b[i + 1])
        }
        func u32(_ i: Int) throws(ParseError) -> UInt32 {
            UInt32(try u16(i)) << 16 | UInt32(try u16(i + 2))
        }
        /// A possibly compressed name at `start`; returns it and the offset after it in place.
        func name(_ start: Int) throws(ParseError) -> (String, Int) {
            var labels: [String] = []
            var i = start
            var end: Int?
            var jumps = 0
            while true {
                guard i < b.count else { throw ParseError("a DNS name runs past the message") }
                let len = Int(b[i])
                if len == 0 {
                    if end == nil { end = i + 1 }
                    break
                }
                if len & 0xc0 == 0xc0 {
                    let target = Int(try u16(i) & 0x3fff)
                    if end == nil { end = i + 2 }
                    jumps += 1
                    guard jumps < 64, target < b.count else { throw ParseError("a DNS name with a bad pointer") }
                    i = target
                    continue
                }
                guard len & 0xc0 == 0, i + 1 + len <= b.count else { throw ParseError("a DNS name with a bad label") }
                labels.append(String(decoding: b[(i + 1)..<(i + 1 + len)], as: UTF8.self))
                i += 1 + len
            }
            return (labels.joined(separator: "."), end!)
        }
        let id = try u16(0)
        let flags = try u16(2)
        guard flags & 0x8000 != 0 else { throw ParseError("not a DNS response") }
        let qd = Int(try u16(4)), an = Int(try u16(6)), ns = Int(try u16(8)), ar = Int(try u16(10))
        var i = 12
        for _ in 0..<qd {
            i = try name(i).1 + 4
        }
        func records(_ n: Int) throws(ParseError) -> [Record] {
            var out: [Record] = []
            for _ in 0..<n {
                let (owner, after) = try name(i)
                let type = try u16(after)
                let ttl = try u32(after + 4)
                let rdlen = Int(try u16(after + 8))
                let rd = after + 10
                guard rd + rdlen <= b.count else { throw ParseError("a DNS record runs past the message") }
                var data = RecordData.other
                switch type {
                case typeA where rdlen == 4:
                    data = .a(b[rd..<(rd + 4)].map(String.init).joined(separator: "."))
                case typeAAAA where rdlen == 16:
                    var groups: [String] = []
                    for g in 0..<8 { groups.append(String(UInt16(b[rd + 2 * g]) << 8 | UInt16(b[rd + 2 * g + 1]), radix: 16)) }
                    data = .aaaa(groups.joined(separator: ":"))
                case typeSRV where rdlen >= 7:
                    data = .srv(priority: try u16(rd), weight: try u16(rd + 2), port: try u16(rd + 4), target: try name(rd + 6).0)
                case typeCNAME:
                    data = .cname(try name(rd).0)
                default:
                    break
                }
                // A TTL with the top bit set is treated as 0 (RFC 2181 section 8).
                out.append(Record(name: owner, type: type, ttl: ttl & 0x8000_0000 != 0 ? 0 : ttl, data: data))
                i = rd + rdlen
            }
            return out
        }
        let answers = try records(an)
        _ = try records(ns)
        let additional = try records(ar)
        return Response(id: id, rcode: Int(flags & 0x000f), truncated: flags & 0x0200 != 0, answers: answers, additional: additional)
    }
}
