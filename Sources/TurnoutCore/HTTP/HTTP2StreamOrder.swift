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
    /// Stream identifiers opened by the client, ascending, the last `remembered` of them.
    private var opened: [UInt32] = []
    /// Identifiers at or below this are no longer remembered.
    private var floor: UInt32 = 0

    /// `prefaceLength`: bytes of client preface that come before the first frame (24).
    public init(prefaceLength: Int = 24) {
        prefaceLeft = prefaceLength
        header.reserveCapacity(9)
    }

    /// The highest stream identifier the client opened.
    public var highestOpened: UInt32 { opened.last ?? floor }

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
            while header.count < 9 && i < n {
                header.append(bytes[i])
                i += 1
            }
            guard header.count == 9 else { break }
            let length = Int(header[0]) << 16 | Int(header[1]) << 8 | Int(header[2])
            let type = header[3]
            let stream = (UInt32(header[5]) << 24 | UInt32(header[6]) << 16 | UInt32(header[7]) << 8 | UInt32(header[8])) & 0x7fff_ffff
            header.removeAll(keepingCapacity: true)
            payloadLeft = length
            if type == 1 && stream != 0 && stream & 1 == 1 {  // HEADERS on a client stream
                if stream > highestOpened {
                    opened.append(stream)
                    if opened.count > Self.remembered { floor = opened.removeFirst() }
                } else if stream > floor && !isOpened(stream) {
                    return (max(frameStart, 0), stream)
                }
            }
        }
        return nil
    }

    private func isOpened(_ stream: UInt32) -> Bool {
        var lo = 0, hi = opened.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if opened[mid] < stream { lo = mid + 1 } else { hi = mid }
        }
        return lo < opened.count && opened[lo] == stream
    }
}
