/// Character classes of RFC 9110/9112, on bytes.
public enum HTTPSyntax {
    /// tchar: `!#$%&'*+-.^_`|~`, digits and letters.
    @inline(__always)
    public static func isTokenByte(_ b: UInt8) -> Bool { tokenTable[Int(b)] }

    private static let tokenTable: [Bool] = (0..<256).map { i in
        let c = UInt8(i)
        switch c {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        default:
            return "!#$%&'*+-.^_`|~".utf8.contains(c)
        }
    }

    public static func isToken(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.allSatisfy(isTokenByte)
    }

    /// field-value bytes: VCHAR, SP, HTAB, obs-text. Never NUL, CR, LF or other controls.
    @inline(__always)
    public static func isFieldValueByte(_ b: UInt8) -> Bool {
        b == 0x09 || (b >= 0x20 && b != 0x7F)
    }

    /// Bytes allowed in a request target (origin-form, absolute-form): visible ASCII only.
    @inline(__always)
    public static func isTargetByte(_ b: UInt8) -> Bool {
        b > 0x20 && b < 0x7F
    }

    public static func isValidOriginTarget(_ s: String) -> Bool {
        s.hasPrefix("/") && s.utf8.allSatisfy(isTargetByte)
    }
}
