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
