/// Header fields in raw memory, for handing to nghttp2 as they lie: names and values one after
/// another in `bytes`, and each field's place in `spans`. Written through pointers, so that a
/// head's dozen fields cost no uniqueness or capacity check per byte; grown (doubled, copied)
/// when a write would not fit. A plain struct over memory its owner allocates once and frees in
/// its `deinit` (`HTTP2RequestFields`, `HTTP2HeaderBlock`): copies share the memory.
public struct FieldBuffer {
    /// A field as offsets into `bytes`. `indexed` is false for a value HPACK must not put in its
    /// dynamic table (RFC 7541 6.2.2).
    public typealias Span = (name: Int, nameLength: Int, value: Int, valueLength: Int, indexed: Bool)

    public private(set) var bytes: UnsafeMutablePointer<UInt8>
    public private(set) var count = 0
    public private(set) var capacity: Int
    public private(set) var spans: UnsafeMutablePointer<Span>
    public private(set) var spanCount = 0
    public private(set) var spanCapacity: Int

    public init(bytes: Int, fields: Int) {
        capacity = max(bytes, 16)
        self.bytes = .allocate(capacity: capacity)
        spanCapacity = max(fields, 4)
        spans = .allocate(capacity: spanCapacity)
    }

    public func deallocate() {
        bytes.deallocate()
        spans.deallocate()
    }

    /// Empties it, keeping the memory.
    public mutating func removeAll() {
        count = 0
        spanCount = 0
    }

    public var isEmpty: Bool { spanCount == 0 }

    @inline(__always)
    public mutating func write(_ source: UnsafeBufferPointer<UInt8>) {
        let n = source.count
        if count + n > capacity { grow(to: count + n) }
        if n > 0 { (bytes + count).update(from: source.baseAddress!, count: n) }
        count += n
    }

    @inline(__always)
    public mutating func write(_ text: String) {
        var text = text
        text.withUTF8 { write($0) }
    }

    @inline(__always)
    public mutating func write(_ literal: StaticString) { literal.withUTF8Buffer { write($0) } }

    /// Writes `source` with ASCII letters lowercased (HTTP/2 field names are lowercase), eight
    /// bytes at a time: a byte gets 0x20 when it is in "A"..."Z" (no byte of 0x80 or above is
    /// touched). Lowercased on the way from the source, not in place after a copy: reading back
    /// bytes just stored in smaller pieces would stall the load on the stores.
    public mutating func writeLowercased(_ source: UnsafeBufferPointer<UInt8>) {
        let n = source.count
        guard n > 0, let src = source.baseAddress else { return }
        if count + n > capacity { grow(to: count + n) }
        let dst = bytes + count
        var i = 0
        let ones: UInt64 = 0x0101_0101_0101_0101
        while i + 8 <= n {
            let w = UnsafeRawPointer(src + i).loadUnaligned(as: UInt64.self)
            let low7 = w & (ones &* 0x7F)
            let atLeastA = low7 &+ ones &* (0x80 - 0x41)  // high bit: byte >= "A"
            let aboveZ = low7 &+ ones &* (0x80 - 0x5B)    // high bit: byte > "Z"
            let upper = atLeastA & ~aboveZ & ~w & (ones &* 0x80)
            UnsafeMutableRawPointer(dst + i).storeBytes(of: w | (upper >> 2), as: UInt64.self)
            i += 8
        }
        while i < n {
            let c = src[i]
            dst[i] = c >= 65 && c <= 90 ? c | 0x20 : c
            i += 1
        }
        count += n
    }

    @inline(__always)
    public mutating func writeLowercased(_ literal: StaticString) { literal.withUTF8Buffer { writeLowercased($0) } }

    private mutating func grow(to needed: Int) {
        var c = capacity * 2
        while c < needed { c *= 2 }
        let b = UnsafeMutablePointer<UInt8>.allocate(capacity: c)
        b.update(from: bytes, count: count)
        bytes.deallocate()
        bytes = b
        capacity = c
    }

    /// Adds a field, last.
    @inline(__always)
    public mutating func addSpan(_ span: Span) {
        if spanCount == spanCapacity { growSpans() }
        (spans + spanCount).initialize(to: span)
        spanCount += 1
    }

    /// Adds a field at `index` (the later ones move up).
    public mutating func insertSpan(_ span: Span, at index: Int) {
        guard index < spanCount else { return addSpan(span) }
        if spanCount == spanCapacity { growSpans() }
        (spans + index + 1).moveInitialize(from: spans + index, count: spanCount - index)
        (spans + index).initialize(to: span)
        spanCount += 1
    }

    private mutating func growSpans() {
        let s = UnsafeMutablePointer<Span>.allocate(capacity: spanCapacity * 2)
        s.moveInitialize(from: spans, count: spanCount)
        spans.deallocate()
        spans = s
        spanCapacity *= 2
    }

    /// A whole field: `name` lowercased, `value` as it is.
    public mutating func append(name: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>, indexed: Bool = true) {
        let n = count
        writeLowercased(name)
        let v = count
        write(value)
        addSpan((n, v - n, v, count - v, indexed))
    }

    /// A whole field from strings: `name` lowercased, `value` as it is.
    public mutating func append(_ name: String, _ value: String) {
        var name = name, value = value
        name.withUTF8 { n in value.withUTF8 { v in append(name: n, value: v) } }
    }

    /// The fields as (name, value) strings, in order (for tests and logs).
    public var pairs: [(String, String)] {
        (0..<spanCount).map { i in
            let s = spans[i]
            return (String(decoding: UnsafeBufferPointer(start: bytes + s.name, count: s.nameLength), as: UTF8.self),
                    String(decoding: UnsafeBufferPointer(start: bytes + s.value, count: s.valueLength), as: UTF8.self))
        }
    }
}
