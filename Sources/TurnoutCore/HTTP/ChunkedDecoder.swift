/// Incremental decoder for `Transfer-Encoding: chunked` (RFC 9112 7.1). Chunk data is returned as
/// ranges of the caller's buffer so body bytes are never copied; extensions and trailers are
/// validated and dropped.
public struct ChunkedDecoder: Sendable {
    /// At most this many hex digits in a chunk size (16 would overflow 64 bits).
    public static let maxSizeDigits = 15
    /// Largest trailer section accepted.
    public static let maxTrailerBytes = 16 * 1024
    static let maxExtensionBytes = 4 * 1024

    enum State: Sendable {
        case size(value: Int64, digits: Int)
        case extensionText(value: Int64, bytes: Int)
        case sizeLF(value: Int64)
        case data(remaining: Int64)
        case dataCR
        case dataLF
        case trailerLineStart(total: Int)
        case trailerName(total: Int)
        case trailerLine(total: Int)
        case trailerLF(total: Int, empty: Bool)
        case done
    }

    public enum Event: Equatable, Sendable {
        /// A chunk of this size starts (only when reporting chunks).
        case chunkStart(Int64)
        /// Body bytes at this range of the buffer.
        case data(Range<Int>)
        /// The CRLF after a chunk's data was read (only when reporting chunks).
        case chunkEnd
        /// The whole buffer up to `end` was consumed; feed more.
        case needMore
        /// The final chunk and trailers ended; the index is just past the message.
        case end(Int)
    }

    var state: State = .size(value: 0, digits: 0)
    /// Also report where each chunk starts and ends (`chunkStart`, `chunkEnd`): a proxy that keeps
    /// the sender's chunks forwards a chunk's closing CRLF only once the sender's own arrived.
    public let reportsChunks: Bool

    public init(reportingChunks: Bool = false) {
        reportsChunks = reportingChunks
    }

    public var isDone: Bool { if case .done = state { return true } else { return false } }

    /// Decodes from `buffer[index..<end]`, advancing `index` past what it consumed.
    public mutating func next(_ buffer: [UInt8], index: inout Int, end: Int) throws(HTTPParseError) -> Event {
        var i = index
        defer { index = i }
        return try buffer.withUnsafeBytes { raw in Result { () throws(HTTPParseError) -> Event in try next(raw, index: &i, end: end) } }.get()
    }

    /// Decodes from `buffer[index..<end]`, advancing `index` past what it consumed. Data ranges
    /// are indices of `buffer`.
    public mutating func next(_ buffer: UnsafeRawBufferPointer, index: inout Int, end: Int) throws(HTTPParseError) -> Event {
        while index < end {
            let b = buffer[index]
            switch state {
            case .size(let value, let digits):
                if let d = hexValue(b) {
                    guard digits < Self.maxSizeDigits else { throw .bad("chunk size too long") }
                    state = .size(value: value << 4 | Int64(d), digits: digits + 1)
                    index += 1
                } else if digits == 0 {
                    throw .bad("malformed chunk size")
                } else if b == 59 || b == 32 || b == 9 {  // ';' or BWS before an extension
                    state = .extensionText(value: value, bytes: 0)
                    index += 1
                } else if b == 13 {
                    state = .sizeLF(value: value)
                    index += 1
                } else {
                    throw .bad("malformed chunk size")
                }
            case .extensionText(let value, let bytes):
                if b == 13 {
                    state = .sizeLF(value: value)
                } else {
                    guard HTTPSyntax.isFieldValueByte(b), bytes < Self.maxExtensionBytes else {
                        throw .bad("malformed chunk extension")
                    }
                    state = .extensionText(value: value, bytes: bytes + 1)
                }
                index += 1
            case .sizeLF(let value):
                guard b == 10 else { throw .bad("bare CR after chunk size") }
                index += 1
                state = value == 0 ? .trailerLineStart(total: 0) : .data(remaining: value)
                if reportsChunks && value > 0 { return .chunkStart(value) }
            case .data(let remaining):
                let n = Int(min(Int64(end - index), remaining))
                let range = index..<(index + n)
                index += n
                state = remaining - Int64(n) == 0 ? .dataCR : .data(remaining: remaining - Int64(n))
                return .data(range)
            case .dataCR:
                guard b == 13 else { throw .bad("chunk data not followed by CRLF") }
                state = .dataLF
                index += 1
            case .dataLF:
                guard b == 10 else { throw .bad("chunk data not followed by CRLF") }
                state = .size(value: 0, digits: 0)
                index += 1
                if reportsChunks { return .chunkEnd }
            case .trailerLineStart(let total):
                if b == 13 {
                    state = .trailerLF(total: total, empty: true)
                } else {
                    guard HTTPSyntax.isTokenByte(b) else { throw .bad("malformed trailer field") }
                    state = .trailerName(total: total + 1)
                }
                index += 1
            case .trailerName(let total):
                // A field name, then a colon (RFC 9112 5: no whitespace before it).
                guard total < Self.maxTrailerBytes else { throw .bad("trailer section too large") }
                if b == 58 {
                    state = .trailerLine(total: total + 1)
                } else {
                    guard HTTPSyntax.isTokenByte(b) else { throw .bad("malformed trailer field") }
                    state = .trailerName(total: total + 1)
                }
                index += 1
            case .trailerLine(let total):
                guard total < Self.maxTrailerBytes else { throw .bad("trailer section too large") }
                if b == 13 {
                    state = .trailerLF(total: total, empty: false)
                } else {
                    guard HTTPSyntax.isFieldValueByte(b) else { throw .bad("invalid character in trailer") }
                    state = .trailerLine(total: total + 1)
                }
                index += 1
            case .trailerLF(let total, let empty):
                guard b == 10 else { throw .bad("bare CR in trailer section") }
                index += 1
                if empty {
                    state = .done
                    return .end(index)
                }
                state = .trailerLineStart(total: total + 2)
            case .done:
                return .end(index)
            }
        }
        if case .done = state { return .end(index) }
        return .needMore
    }

    @inline(__always)
    func hexValue(_ b: UInt8) -> UInt8? {
        switch b {
        case 48...57: return b - 48
        case 65...70: return b - 55
        case 97...102: return b - 87
        default: return nil
        }
    }
}

/// Writes chunked framing around body bytes.
public enum ChunkedEncoder {
    public static func chunkHeader(size: Int) -> [UInt8] { Array(String(size, radix: 16).utf8) + [13, 10] }
    public static let chunkTrailer: [UInt8] = [13, 10]
    public static let lastChunk: [UInt8] = Array("0\r\n\r\n".utf8)
}
