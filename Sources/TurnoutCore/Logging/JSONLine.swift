/// Builds one JSON object as bytes, field by field: the access log's line. Cheaper than joining
/// Strings: one buffer, strings copied as they are unless a byte needs escaping, numbers written
/// digit by digit.
public struct JSONLine {
    public private(set) var bytes: [UInt8] = []
    private var first = true

    public init(capacity: Int = 512) {
        bytes.reserveCapacity(capacity)
        bytes.append(UInt8(ascii: "{"))
    }

    @inline(__always)
    private mutating func key(_ name: StaticString) {
        if !first { bytes.append(UInt8(ascii: ",")) }
        first = false
        bytes.append(UInt8(ascii: "\""))
        bytes.append(contentsOf: UnsafeBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount))
        bytes.append(UInt8(ascii: "\""))
        bytes.append(UInt8(ascii: ":"))
    }

    /// A string value (null for nil), escaped as JSON needs.
    public mutating func string(_ name: StaticString, _ value: String?) {
        key(name)
        guard var v = value else { return null() }
        bytes.append(UInt8(ascii: "\""))
        v.withUTF8 { u in
            if !u.contains(where: { $0 < 0x20 || $0 == 0x22 || $0 == 0x5C }) {
                bytes.append(contentsOf: u)
                return
            }
            for c in u {
                switch c {
                case 0x22: bytes.append(contentsOf: [0x5C, 0x22])
                case 0x5C: bytes.append(contentsOf: [0x5C, 0x5C])
                case 0x0A: bytes.append(contentsOf: [0x5C, UInt8(ascii: "n")])
                case 0x0D: bytes.append(contentsOf: [0x5C, UInt8(ascii: "r")])
                case 0x09: bytes.append(contentsOf: [0x5C, UInt8(ascii: "t")])
                case ..<0x20:
                    let hex: StaticString = "0123456789abcdef"
                    bytes.append(contentsOf: [0x5C, UInt8(ascii: "u"), 0x30, 0x30,
                                              hex.utf8Start[Int(c >> 4)], hex.utf8Start[Int(c & 0xF)]])
                default: bytes.append(c)
                }
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }

    /// A string value known to need no escaping.
    public mutating func literal(_ name: StaticString, _ value: StaticString) {
        key(name)
        bytes.append(UInt8(ascii: "\""))
        bytes.append(contentsOf: UnsafeBufferPointer(start: value.utf8Start, count: value.utf8CodeUnitCount))
        bytes.append(UInt8(ascii: "\""))
    }

    public mutating func int(_ name: StaticString, _ value: Int64) {
        key(name)
        appendDecimal(value)
    }

    /// Nanoseconds as milliseconds with three decimals (`1.250`); null for nil.
    public mutating func milliseconds(_ name: StaticString, nanos: UInt64?) {
        key(name)
        guard let n = nanos else { return null() }
        let micros = n / 1000
        appendDecimal(Int64(micros / 1000))
        bytes.append(UInt8(ascii: "."))
        let frac = Int(micros % 1000)
        bytes.append(UInt8(48 + frac / 100))
        bytes.append(UInt8(48 + frac / 10 % 10))
        bytes.append(UInt8(48 + frac % 10))
    }

    /// The time as `Timestamp` writes it, in quotes.
    public mutating func time(_ name: StaticString, _ nanosSinceEpoch: UInt64) {
        key(name)
        bytes.append(UInt8(ascii: "\""))
        Timestamp.append(nanosSinceEpoch: nanosSinceEpoch, to: &bytes)
        bytes.append(UInt8(ascii: "\""))
    }

    private mutating func null() { bytes.append(contentsOf: [110, 117, 108, 108]) }

    private mutating func appendDecimal(_ value: Int64) {
        if value < 0 {
            bytes.append(UInt8(ascii: "-"))
            return appendDecimal(value == .min ? .max : -value)
        }
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                     UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var n = value
        var count = 0
        withUnsafeMutableBytes(of: &digits) { d in
            repeat {
                d[19 - count] = UInt8(48 + n % 10)
                n /= 10
                count += 1
            } while n > 0
            bytes.append(contentsOf: d[(20 - count)...])
        }
    }

    /// The object, closed.
    public mutating func finish() -> [UInt8] {
        bytes.append(UInt8(ascii: "}"))
        return bytes
    }
}
