/// Watches the frames a client sends on an HTTP/2 connection for one rule libnghttp2 leaves
/// unenforced: a HEADERS frame may open a stream only with an identifier above every stream the
/// client opened before (RFC 9113 5.1.1); a lower identifier the client never used names a stream
/// that is closed by implication, and is a connection error of type PROTOCOL_ERROR. (libnghttp2
/// ignores such HEADERS, because it cannot tell a stream it never saw from one it forgot.)
///
/// Only frame headers are read, across reads of any size; payloads are skipped. The identifiers
/// of the last `remembered` opened streams are kept: below the oldest of them nothing is decided
/// (the frame is left to libnghttp2), so memory stays bounded on a long connection.
public struct HTTP2StreamOrder: Sendable {
    public static let remembered = 256

    /// Bytes of the connection preface still to skip.
    private var prefaceLeft: Int
    /// The frame header being read (9 bytes).
    private var header: [UInt8] = []
    /// Payload bytes of the current frame still to skip.
    private var payloadLeft = 0
    /// Stream identifiers opened by the client, ascending, the last `remembered` of them: a ring
    /// (`ringStart`, `ringCount`), so that forgetting the oldest moves nothing.
    private var opened = [UInt32](repeating: 0, count: HTTP2StreamOrder.remembered)
    private var ringStart = 0
    private var ringCount = 0
    /// Identifiers at or below this are no longer remembered.
    private var floor: UInt32 = 0

    /// `prefaceLength`: bytes of client preface that come before the first frame (24).
    public init(prefaceLength: Int = 24) {
        prefaceLeft = prefaceLength
        header.reserveCapacity(9)
    }

    @inline(__always)
    private func openedAt(_ k: Int) -> UInt32 { opened[(ringStart + k) % Self.remembered] }

    /// The highest stream identifier the client opened.
    public var highestOpened: UInt32 { ringCount > 0 ? openedAt(ringCount - 1) : floor }

    /// Reads `bytes`. Returns nil when every frame in them keeps the rule, or the offset where the
    /// first frame that breaks it starts (what comes before it is fine) and its stream identifier.
    public mutating func scan(_ bytes: UnsafeRawBufferPointer) -> (offset: Int, stream: UInt32)? {
        var i = 0
        let n = bytes.count
        while i < n {
            if prefaceLeft > 0 {
                let k = min(prefaceLeft, n - i)
                prefaceLeft -= k
                i += k
                continue
            }
            if payloadLeft > 0 {
                let k = min(payloadLeft, n - i)
                payloadLeft -= k
                i += k
                continue
            }
            let frameStart = i - header.count
            let h: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8)
            if header.isEmpty && n - i >= 9 {
                // The whole frame header is in this read (the usual case): read in place.
                h = (bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3], bytes[i + 4], bytes[i + 5], bytes[i + 6],
                     bytes[i + 7], bytes[i + 8])
                i += 9
            } else {
                while header.count < 9 && i < n {
                    header.append(bytes[i])
                    i += 1
                }
                guard header.count == 9 else { break }
                h = (header[0], header[1], header[2], header[3], header[4], header[5], header[6], header[7], header[8])
                header.removeAll(keepingCapacity: true)
            }
            let length = Int(h.0) << 16 | Int(h.1) << 8 | Int(h.2)
            let type = h.3
            let stream = (UInt32(h.5) << 24 | UInt32(h.6) << 16 | UInt32(h.7) << 8 | UInt32(h.8)) & 0x7fff_ffff
            payloadLeft = length
            if type == 1 && stream != 0 && stream & 1 == 1 {  // HEADERS on a client stream
                if stream > highestOpened {
                    remember(stream)
                } else if stream > floor && !isOpened(stream) {
                    return (max(frameStart, 0), stream)
                }
            }
        }
        return nil
    }

    private mutating func remember(_ stream: UInt32) {
        if ringCount == Self.remembered {
            floor = opened[ringStart]
            ringStart = (ringStart + 1) % Self.remembered
            ringCount -= 1
        }
        opened[(ringStart + ringCount) % Self.remembered] = stream
        ringCount += 1
    }

    private func isOpened(_ stream: UInt32) -> Bool {
        var lo = 0, hi = ringCount
        while lo < hi {
            let mid = (lo + hi) / 2
            if openedAt(mid) < stream { lo = mid + 1 } else { hi = mid }
        }
        return lo < ringCount && openedAt(lo) == stream
    }
}
