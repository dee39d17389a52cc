/// One header field as Strings: for building heads by hand and for tests. The data path reads
/// fields as bytes (`HTTPHeaders.forEach`).
public struct HTTPField: Sendable, Equatable {
    public var name: String
    public var value: String
    public init(_ name: String, _ value: String) {
        self.name = name
        self.value = value
    }
}

/// An ordered list of header fields with case-insensitive look-up. Names keep their case.
///
/// The fields are kept as bytes: one array holds every name and value back to back, a second
/// one where each starts and ends. A parsed head is one copy of its bytes and one array of
/// spans, whatever its number of fields, and a field goes out again as a copy of its bytes,
/// without being decoded into a `String` and encoded back. Look-ups by name compare bytes.
public struct HTTPHeaders: Sendable {
    @usableFromInline
    struct Span: Sendable {
        @usableFromInline var nameStart: Int32
        @usableFromInline var nameEnd: Int32
        @usableFromInline var valueStart: Int32
        @usableFromInline var valueEnd: Int32

        @inlinable
        init(nameStart: Int, nameEnd: Int, valueStart: Int, valueEnd: Int) {
            self.nameStart = Int32(truncatingIfNeeded: nameStart)
            self.nameEnd = Int32(truncatingIfNeeded: nameEnd)
            self.valueStart = Int32(truncatingIfNeeded: valueStart)
            self.valueEnd = Int32(truncatingIfNeeded: valueEnd)
        }
    }

    @usableFromInline var bytes: [UInt8]
    @usableFromInline var spans: [Span]

    public init() {
        bytes = []
        spans = []
    }

    public init(_ fields: [HTTPField]) {
        self.init()
        for f in fields { append(f.name, f.value) }
    }

    /// Fields over `bytes` as a parser found them (offsets into `bytes`).
    @usableFromInline
    init(bytes: [UInt8], spans: [Span]) {
        self.bytes = bytes
        self.spans = spans
    }

    public var count: Int { spans.count }

    /// Makes room for `fields` fields of `bytes` bytes in all, so that appending them allocates
    /// once (a head arriving field by field, as HTTP/2 delivers it).
    public mutating func reserveCapacity(bytes: Int, fields: Int) {
        self.bytes.reserveCapacity(bytes)
        spans.reserveCapacity(fields)
    }

    /// Bytes of the names and values (an upper bound: removed fields still count), to size an
    /// output buffer.
    public var byteCount: Int { bytes.count + 4 * spans.count }

    /// The fields as Strings, in order. Allocates: for tests, diagnostics and cold paths.
    public var fields: [HTTPField] {
        var out: [HTTPField] = []
        out.reserveCapacity(spans.count)
        forEach { n, v in out.append(HTTPField(String(decoding: n, as: UTF8.self), String(decoding: v, as: UTF8.self))) }
        return out
    }

    /// Calls `body` with each field's name and value bytes, in order. The buffers are valid only
    /// during the call.
    @inlinable
    public func forEach(_ body: (_ name: UnsafeBufferPointer<UInt8>, _ value: UnsafeBufferPointer<UInt8>) throws -> Void) rethrows {
        try bytes.withUnsafeBufferPointer { all in
            for s in spans {
                try body(UnsafeBufferPointer(rebasing: all[Int(s.nameStart)..<Int(s.nameEnd)]),
                         UnsafeBufferPointer(rebasing: all[Int(s.valueStart)..<Int(s.valueEnd)]))
            }
        }
    }

    /// Calls `body` with the value of each field named `name` (ASCII case-insensitive), in order;
    /// `body` returns false to stop. Returns false when it was stopped.
    @inlinable
    @discardableResult
    public func forEachValue(_ name: String, _ body: (UnsafeBufferPointer<UInt8>) throws -> Bool) rethrows -> Bool {
        var name = name
        return try name.withUTF8 { want in
            try bytes.withUnsafeBufferPointer { all in
                for s in spans where Int(s.nameEnd - s.nameStart) == want.count {
                    let n = UnsafeBufferPointer(rebasing: all[Int(s.nameStart)..<Int(s.nameEnd)])
                    guard n.equalsIgnoringASCIICase(want) else { continue }
                    if try !body(UnsafeBufferPointer(rebasing: all[Int(s.valueStart)..<Int(s.valueEnd)])) { return false }
                }
                return true
            }
        }
    }

    public func first(_ name: String) -> String? {
        var value: String?
        forEachValue(name) { v in
            value = String(decoding: v, as: UTF8.self)
            return false
        }
        return value
    }

    public func values(_ name: String) -> [String] {
        var out: [String] = []
        forEachValue(name) { v in
            out.append(String(decoding: v, as: UTF8.self))
            return true
        }
        return out
    }

    public func contains(_ name: String) -> Bool { !forEachValue(name) { _ in false } }

    /// How many fields are named `name`.
    public func count(_ name: String) -> Int {
        var n = 0
        forEachValue(name) { _ in
            n += 1
            return true
        }
        return n
    }

    /// How many fields are named `name`, and what `read` makes of the first one's value: what
    /// framing checks need, without allocating.
    @inlinable
    public func count<T>(_ name: String, readingFirst read: (UnsafeBufferPointer<UInt8>) -> T) -> (count: Int, first: T?) {
        var n = 0
        var first: T?
        forEachValue(name) { v in
            if n == 0 { first = read(v) }
            n += 1
            return true
        }
        return (n, first)
    }

    /// Whether a comma-separated list field holds `token` (ASCII case-insensitive), without allocating.
    public func hasToken(_ name: String, _ token: String) -> Bool {
        var token = token
        return token.withUTF8 { want in
            !allListElements(name) { !$0.equalsIgnoringASCIICase(want) }
        }
    }

    /// Whether `satisfy` holds for every element of the comma-separated list fields named `name`:
    /// each element trimmed of spaces and tabs, empty ones skipped, given as bytes without
    /// allocating. Stops at the first element that fails.
    public func allListElements(_ name: String, satisfy: (UnsafeBufferPointer<UInt8>) -> Bool) -> Bool {
        forEachValue(name) { v in HTTPHeaders.allListElements(of: v, satisfy: satisfy) }
    }

    /// Whether `satisfy` holds for every element of one comma-separated list value.
    @inlinable
    public static func allListElements(of v: UnsafeBufferPointer<UInt8>, satisfy: (UnsafeBufferPointer<UInt8>) -> Bool) -> Bool {
        var i = 0
        while i <= v.count {
            var end = i
            while end < v.count && v[end] != 44 { end += 1 }  // ','
            var s = i, e = end
            while s < e && (v[s] == 32 || v[s] == 9) { s += 1 }
            while e > s && (v[e - 1] == 32 || v[e - 1] == 9) { e -= 1 }
            if s < e && !satisfy(UnsafeBufferPointer(rebasing: v[s..<e])) { return false }
            i = end + 1
        }
        return true
    }

    /// Comma-separated list elements across every field with this name, trimmed and lowercased
    /// (ASCII only: Unicode case mapping would turn U+212A KELVIN SIGN into "k").
    public func tokens(_ name: String) -> [String] {
        var out: [String] = []
        _ = allListElements(name) { element in
            out.append(String(decoding: element.lazy.map { $0 >= 65 && $0 <= 90 ? $0 | 0x20 : $0 }, as: UTF8.self))
            return true
        }
        return out
    }

    public mutating func append(_ name: String, _ value: String) {
        var name = name, value = value
        name.withUTF8 { n in value.withUTF8 { v in append(name: n, value: v) } }
    }

    /// Appends a field given as bytes (copied).
    public mutating func append(name: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>) {
        let nameStart = bytes.count
        bytes.append(contentsOf: name)
        let valueStart = bytes.count
        bytes.append(contentsOf: value)
        spans.append(Span(nameStart: nameStart, nameEnd: valueStart, valueStart: valueStart, valueEnd: bytes.count))
    }

    /// Puts a field before all others.
    public mutating func prepend(_ name: String, _ value: String) {
        append(name, value)
        spans.insert(spans.removeLast(), at: 0)
    }

    /// Removes every field, keeping the memory when no other copy shares it.
    public mutating func removeAll() {
        bytes.removeAll(keepingCapacity: true)
        spans.removeAll(keepingCapacity: true)
    }

    /// Removes every field named `name`. Their bytes stay in the storage, unused.
    public mutating func remove(_ name: String) {
        var name = name
        let bytes = self.bytes
        name.withUTF8 { want in
            bytes.withUnsafeBufferPointer { all in
                spans.removeAll { s in
                    UnsafeBufferPointer(rebasing: all[Int(s.nameStart)..<Int(s.nameEnd)]).equalsIgnoringASCIICase(want)
                }
            }
        }
    }

    public mutating func set(_ name: String, _ value: String) {
        remove(name)
        append(name, value)
    }
}

extension HTTPHeaders: Equatable {
    /// The same fields in the same order, names and values byte for byte.
    public static func == (a: HTTPHeaders, b: HTTPHeaders) -> Bool {
        guard a.spans.count == b.spans.count else { return false }
        return a.bytes.withUnsafeBufferPointer { x in
            b.bytes.withUnsafeBufferPointer { y in
                for (s, t) in zip(a.spans, b.spans) {
                    guard x[Int(s.nameStart)..<Int(s.nameEnd)].elementsEqual(y[Int(t.nameStart)..<Int(t.nameEnd)]),
                          x[Int(s.valueStart)..<Int(s.valueEnd)].elementsEqual(y[Int(t.valueStart)..<Int(t.valueEnd)])
                    else { return false }
                }
                return true
            }
        }
    }
}

extension String {
    /// ASCII case-insensitive equality, as header names need.
    @inlinable
    public func equalsIgnoringASCIICase(_ other: String) -> Bool {
        let a = self.utf8
        let b = other.utf8
        guard a.count == b.count else { return false }
        // Native strings are contiguous UTF-8: compare the bytes directly.
        if let same = a.withContiguousStorageIfAvailable({ pa in
            b.withContiguousStorageIfAvailable { pb in pa.equalsIgnoringASCIICase(pb) }
        }), let same {
            return same
        }
        for (x, y) in zip(a, b) where x != y {
            let lx = (x >= 65 && x <= 90) ? x | 0x20 : x
            let ly = (y >= 65 && y <= 90) ? y | 0x20 : y
            if lx != ly { return false }
        }
        return true
    }
}

extension UnsafeBufferPointer where Element == UInt8 {
    /// ASCII case-insensitive equality of two byte strings.
    @inlinable
    public func equalsIgnoringASCIICase(_ other: UnsafeBufferPointer<UInt8>) -> Bool {
        guard count == other.count else { return false }
        for i in 0..<count where self[i] != other[i] {
            let x = self[i], y = other[i]
            if (x >= 65 && x <= 90 ? x | 0x20 : x) != (y >= 65 && y <= 90 ? y | 0x20 : y) { return false }
        }
        return true
    }

    /// ASCII case-insensitive equality with a literal, e.g. `name.equalsIgnoringASCIICase("host")`.
    @inlinable
    public func equalsIgnoringASCIICase(_ literal: StaticString) -> Bool {
        guard count == literal.utf8CodeUnitCount else { return false }
        return literal.withUTF8Buffer { equalsIgnoringASCIICase($0) }
    }

    /// Whether the bytes equal `literal` exactly.
    @inlinable
    public func equals(_ literal: StaticString) -> Bool {
        guard count == literal.utf8CodeUnitCount else { return false }
        return literal.withUTF8Buffer { l in
            for i in 0..<count where self[i] != l[i] { return false }
            return true
        }
    }
}

extension Array where Element == UInt8 {
    /// Appends the UTF-8 of a String without going through a generic sequence copy.
    @inlinable
    public mutating func appendUTF8(_ s: String) {
        var s = s
        s.withUTF8 { append(contentsOf: $0) }
    }

    /// Appends the bytes of a literal.
    @inlinable
    public mutating func append(literal: StaticString) {
        literal.withUTF8Buffer { append(contentsOf: $0) }
    }
}

extension StringProtocol {
    /// Trims spaces and tabs (HTTP's OWS) from both ends.
    public func trimmingHTTPWhitespace() -> String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" { s.removeLast() }
        return String(s)
    }
}
