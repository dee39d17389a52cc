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

    /// Whether a comma-separated list field holds `token` (ASCII case-insensitive), without allocating.
    public func hasToken(_ name: String, _ token: String) -> Bool {
        if let found = token.utf8.withContiguousStorageIfAvailable({ hasToken(name, $0) }) { return found }
        return hasToken(name, Array(token.utf8))
    }

    private func hasToken<C: RandomAccessCollection>(_ name: String, _ want: C) -> Bool where C.Element == UInt8, C.Index == Int {
        for f in fields where f.name.equalsIgnoringASCIICase(name) {
            var matched = 0       // bytes of `want` matched in the current element
            var inToken = false   // past leading whitespace of the element
            var failed = false
            var trailingSpace = false
            for b in f.value.utf8 {
                if b == 44 {  // ','
                    if !failed && matched == want.count { return true }
                    matched = 0; inToken = false; failed = false; trailingSpace = false
                    continue
                }
                if b == 32 || b == 9 {
                    if inToken { trailingSpace = true }
                    continue
                }
                inToken = true
                if failed { continue }
                if trailingSpace || matched >= want.count { failed = true; continue }
                let lb = b >= 65 && b <= 90 ? b | 0x20 : b
                let w = want[want.startIndex + matched]
                let lw = w >= 65 && w <= 90 ? w | 0x20 : w
                if lb == lw { matched += 1 } else { failed = true }
            }
            if !failed && matched == want.count && inToken { return true }
        }
        return false
    }

    /// Comma-separated list elements across every field with this name, trimmed and lowercased.
    public func tokens(_ name: String) -> [String] {
        var out: [String] = []
        for v in values(name) {
            for part in v.split(separator: ",") {
                let t = part.trimmingHTTPWhitespace().lowercased()
                if !t.isEmpty { out.append(t) }
            }
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
            b.withContiguousStorageIfAvailable { pb -> Bool in
                for i in 0..<pa.count where pa[i] != pb[i] {
                    let lx = (pa[i] >= 65 && pa[i] <= 90) ? pa[i] | 0x20 : pa[i]
                    let ly = (pb[i] >= 65 && pb[i] <= 90) ? pb[i] | 0x20 : pb[i]
                    if lx != ly { return false }
                }
                return true
            }
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

extension StringProtocol {
    /// Trims spaces and tabs (HTTP's OWS) from both ends.
    public func trimmingHTTPWhitespace() -> String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" { s.removeLast() }
        return String(s)
    }
}
