/// Character classes of RFC 9110/9112, on bytes.
public enum HTTPSyntax {
    /// tchar: `!#$%&'*+-.^_`|~`, digits and letters. A bit set per half of ASCII (bytes 0-63 and
    /// 64-127): no table look-up through a lazily initialised global on the hot path.
    @inline(__always)
    public static func isTokenByte(_ b: UInt8) -> Bool {
        if b < 64 { return (tokenBits0to63 >> UInt64(b)) & 1 != 0 }
        if b < 128 { return (tokenBits64to127 >> UInt64(b &- 64)) & 1 != 0 }
        return false
    }

    @usableFromInline static let tokenBits0to63: UInt64 = 0x03FF_6CFA_0000_0000
    @usableFromInline static let tokenBits64to127: UInt64 = 0x57FF_FFFF_C7FF_FFFE

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
