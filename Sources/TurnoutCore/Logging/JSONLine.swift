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
        bytes.append(literal: name)
        bytes.append(literal: "\":")
    }

    /// A string value (null for nil), escaped as JSON needs.
    public mutating func string(_ name: StaticString, _ value: String?) {
        key(name)
        guard let value else { return null() }
        JSONWriter.appendQuoted(value, to: &bytes)
    }

    /// A string value known to need no escaping.
    public mutating func literal(_ name: StaticString, _ value: StaticString) {
        key(name)
        bytes.append(UInt8(ascii: "\""))
        bytes.append(literal: value)
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

    private mutating func null() { bytes.append(literal: "null") }

    private mutating func appendDecimal(_ value: Int64) {
        if value < 0 { bytes.append(UInt8(ascii: "-")) }
        HeaderRewriter.appendDecimal(&bytes, value.magnitude)
    }

    /// The object, closed.
    public mutating func finish() -> [UInt8] {
        bytes.append(UInt8(ascii: "}"))
        return bytes
    }
}
