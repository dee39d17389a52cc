/// One header field as received: the name keeps its case, comparisons ignore it.
public struct HTTPField: Sendable, Equatable {
    public var name: String
    public var value: String
    public init(_ name: String, _ value: String) {
        self.name = name
        self.value = value
    }
}

/// An ordered list of header fields with case-insensitive look-up.
public struct HTTPHeaders: Sendable, Equatable, Sequence {
    public var fields: [HTTPField]

    public init(_ fields: [HTTPField] = []) { self.fields = fields }

    public func makeIterator() -> IndexingIterator<[HTTPField]> { fields.makeIterator() }

    public var count: Int { fields.count }

    public func first(_ name: String) -> String? {
        for f in fields where f.name.equalsIgnoringASCIICase(name) { return f.value }
        return nil
    }

    public func values(_ name: String) -> [String] {
        fields.filter { $0.name.equalsIgnoringASCIICase(name) }.map(\.value)
    }

    public func contains(_ name: String) -> Bool { first(name) != nil }

    /// How many fields are named `name`, and the first one's value: what framing checks need,
    /// without building an array per message.
    public func count(_ name: String) -> (count: Int, first: String?) {
        var n = 0
        var value: String?
        for f in fields where f.name.equalsIgnoringASCIICase(name) {
            if n == 0 { value = f.value }
            n += 1
        }
        return (n, value)
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
        for f in fields where f.name.equalsIgnoringASCIICase(name) {
            var value = f.value
            let all = value.withUTF8 { v -> Bool in
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
            if !all { return false }
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

    public mutating func append(_ name: String, _ value: String) { fields.append(HTTPField(name, value)) }

    public mutating func remove(_ name: String) { fields.removeAll { $0.name.equalsIgnoringASCIICase(name) } }

    public mutating func set(_ name: String, _ value: String) {
        remove(name)
        append(name, value)
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
