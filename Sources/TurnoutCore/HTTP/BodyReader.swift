/// Reads one message body in its framing from the bytes of a connection: the one body pump of
/// Turnout, used for request bodies from HTTP/1.1 clients, for response bodies from upstreams and
/// for the admin API's request bodies. Body bytes come back as ranges of the caller's buffer, never
/// copied.
public struct BodyReader: Sendable {
    public enum Mode: Sendable {
        case none
        case length(remaining: Int64)
        case chunked(ChunkedDecoder)
        case untilClose
    }

    public enum Step: Equatable, Sendable {
        /// Body bytes at this range of the buffer.
        case data(Range<Int>)
        /// A chunk of this size starts (chunked, when reporting chunks).
        case chunkStart(Int64)
        /// The sender's CRLF after a chunk was read (chunked, when reporting chunks).
        case chunkEnd
        /// Everything up to `end` was consumed and the body goes on.
        case needMore
        /// The body is complete; `index` is just past it.
        case end
    }

    public private(set) var mode: Mode

    public init(_ framing: BodyFraming, reportingChunks: Bool = false) {
        switch framing {
        case .none, .length(0): mode = .none
        case .length(let n): mode = .length(remaining: n)
        case .chunked: mode = .chunked(ChunkedDecoder(reportingChunks: reportingChunks))
        case .untilClose: mode = .untilClose
        }
    }

    /// The body ended (a close-delimited body ends only with its connection).
    public var isComplete: Bool {
        switch mode {
        case .none: return true
        case .length(let n): return n == 0
        case .chunked(let d): return d.isDone
        case .untilClose: return false
        }
    }

    public var isChunked: Bool {
        if case .chunked = mode { return true }
        return false
    }

    /// The next piece of the body in `buffer[index..<end]`, advancing `index` past it.
    public mutating func next(_ buffer: UnsafeRawBufferPointer, index: inout Int, end: Int) throws(HTTPParseError) -> Step {
        switch mode {
        case .none:
            return .end
        case .length(let remaining):
            if remaining == 0 { return .end }
            if index >= end { return .needMore }
            let n = Int(min(Int64(end - index), remaining))
            mode = .length(remaining: remaining - Int64(n))
            index += n
            return .data((index - n)..<index)
        case .untilClose:
            if index >= end { return .needMore }
            defer { index = end }
            return .data(index..<end)
        case .chunked(var decoder):
            let event: ChunkedDecoder.Event
            do {
                event = try decoder.next(buffer, index: &index, end: end)
            } catch {
                mode = .chunked(decoder)
                throw error
            }
            mode = .chunked(decoder)
            switch event {
            case .data(let r): return .data(r)
            case .chunkStart(let n): return .chunkStart(n)
            case .chunkEnd: return .chunkEnd
            case .needMore: return .needMore
            case .end: return .end
            }
        }
    }

    public mutating func next(_ buffer: [UInt8], index: inout Int, end: Int) throws(HTTPParseError) -> Step {
        var i = index
        defer { index = i }
        return try buffer.withUnsafeBytes { raw in Result { () throws(HTTPParseError) -> Step in try next(raw, index: &i, end: end) } }.get()
    }

    /// The first framing error in bytes already in hand, read from the start of a body: a body
    /// whose bad bytes came with its head is refused before anything goes upstream.
    public static func firstError(_ framing: BodyFraming, in buffer: [UInt8], from start: Int, to end: Int) -> HTTPParseError? {
        guard case .chunked = framing else { return nil }
        var reader = BodyReader(framing)
        var index = start
        do {
            while true {
                switch try reader.next(buffer, index: &index, end: end) {
                case .needMore, .end: return nil
                case .data, .chunkStart, .chunkEnd: continue
                }
            }
        } catch {
            return error
        }
    }
}
