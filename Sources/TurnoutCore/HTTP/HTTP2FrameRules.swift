/// Watches the frames a client sends on an HTTP/2 connection for the rules libnghttp2 leaves
/// unenforced, because it forgets a stream once it is closed (Turnout announces no RFC 7540
/// priorities, so closed streams are not kept for a priority tree) or skips PRIORITY frames:
///
/// - a HEADERS frame may open a stream only with an identifier above every stream the client opened
///   before (RFC 9113 5.1.1): a lower identifier the client never used names a stream that is
///   closed by implication; a connection error of type PROTOCOL_ERROR;
/// - after the client ended a stream (END_STREAM on HEADERS or DATA) or reset it (RST_STREAM), it
///   sends no more DATA or HEADERS on it (RFC 9113 5.1, "half-closed (remote)" and "closed"); a
///   stream error of type STREAM_CLOSED, which an endpoint may treat as a connection error (5.4.1),
///   as Turnout does: libnghttp2 answers it only while the stream is open, and a stream answered at
///   once (a 503) is closed by the time the frame arrives;
/// - a PRIORITY frame names a stream (stream 0 is a connection error of type PROTOCOL_ERROR,
///   RFC 9113 6.3) other than the one it depends on (a stream error of type PROTOCOL_ERROR, RFC
///   9113 5.3.1, treated as a connection error).
///
/// Only frame headers are read, across reads of any size, and the first four payload bytes of a
/// PRIORITY frame; payloads are otherwise skipped. The last `remembered` streams the client opened
/// are kept, with whether it ended them: below the oldest of them nothing is decided (the frame is
/// left to libnghttp2), so memory stays bounded on a long connection. Frames the client sends
/// after the server reset a stream are not judged (the client may have sent them before it saw
/// the reset, RFC 9113 5.1).
public struct HTTP2FrameRules: Sendable {
    public static let remembered = 256

    /// A rule broken, and the HTTP/2 error code of the connection error it ends the connection with.
    public enum Violation: Equatable, Sendable {
        /// HEADERS on a stream below the newest, never opened (PROTOCOL_ERROR).
        case skippedStream
        /// DATA or HEADERS on a stream the client ended or reset (STREAM_CLOSED).
        case afterEnd(frameType: UInt8)
        /// PRIORITY on stream 0 (PROTOCOL_ERROR).
        case priorityOnConnection
        /// PRIORITY making a stream depend on itself (PROTOCOL_ERROR).
        case dependsOnItself

        /// The error code of the GOAWAY (RFC 9113 7).
        public var errorCode: UInt32 {
            if case .afterEnd = self { return 0x5 }  // STREAM_CLOSED
            return 0x1  // PROTOCOL_ERROR
        }
    }

    /// Bytes of the connection preface still to skip.
    private var prefaceLeft: Int
    /// The frame header being read (9 bytes).
    private var header: [UInt8] = []
    /// Payload bytes of the current frame still to skip.
    private var payloadLeft = 0
    /// A PRIORITY frame's stream, while its dependency (the first four payload bytes) is read.
    private var priorityStream: UInt32 = 0
    private var dependency: UInt32 = 0
    private var dependencyBytes = 0
    /// Stream identifiers opened by the client, ascending, the last `remembered` of them: a ring
    /// (`ringStart`, `ringCount`), so that forgetting the oldest moves nothing; `ended` beside it.
    private var opened = [UInt32](repeating: 0, count: HTTP2FrameRules.remembered)
    private var ended = [Bool](repeating: false, count: HTTP2FrameRules.remembered)
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
    private func slot(_ k: Int) -> Int { (ringStart + k) % Self.remembered }

    /// The highest stream identifier the client opened.
    public var highestOpened: UInt32 { ringCount > 0 ? opened[slot(ringCount - 1)] : floor }

    /// Reads `bytes`. Returns nil when every frame in them keeps the rules, or the offset where the
    /// first frame that breaks one starts (what comes before it is fine), its stream identifier
    /// and the rule.
    public mutating func scan(_ bytes: UnsafeRawBufferPointer) -> (offset: Int, stream: UInt32, violation: Violation)? {
        var i = 0
        let n = bytes.count
        // Where the PRIORITY frame being read starts in this read (0: in an earlier one).
        var priorityStart = 0
        while i < n {
            if prefaceLeft > 0 {
                let k = min(prefaceLeft, n - i)
                prefaceLeft -= k
                i += k
                continue
            }
            if payloadLeft > 0 {
                if priorityStream != 0 {
                    // The dependency, then the verdict once its four bytes are in.
                    while dependencyBytes < 4 && i < n {
                        dependency = dependency << 8 | UInt32(bytes[i])
                        dependencyBytes += 1
                        payloadLeft -= 1
                        i += 1
                    }
                    guard dependencyBytes == 4 else { break }
                    let stream = priorityStream
                    priorityStream = 0
                    if dependency & 0x7fff_ffff == stream { return (priorityStart, stream, .dependsOnItself) }
                    continue
                }
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
            let endStream = h.4 & 0x1 != 0
            let stream = (UInt32(h.5) << 24 | UInt32(h.6) << 16 | UInt32(h.7) << 8 | UInt32(h.8)) & 0x7fff_ffff
            payloadLeft = length
            switch type {
            case 0, 1:  // DATA, HEADERS
                guard stream != 0 && stream & 1 == 1 else { break }
                if type == 1 && stream > highestOpened {
                    remember(stream, ended: endStream)
                } else if stream > floor {
                    guard let k = index(of: stream) else {
                        // DATA on a stream never opened is libnghttp2's to refuse (idle, 5.1).
                        if type == 1 { return (max(frameStart, 0), stream, .skippedStream) }
                        break
                    }
                    if ended[slot(k)] { return (max(frameStart, 0), stream, .afterEnd(frameType: type)) }
                    if endStream { ended[slot(k)] = true }
                }
            case 2:  // PRIORITY
                if stream == 0 { return (max(frameStart, 0), stream, .priorityOnConnection) }
                // A PRIORITY of another length is libnghttp2's to refuse (FRAME_SIZE_ERROR).
                if length == 5 {
                    priorityStart = max(frameStart, 0)
                    priorityStream = stream
                    dependency = 0
                    dependencyBytes = 0
                }
            case 3:  // RST_STREAM
                if stream > floor, let k = index(of: stream) { ended[slot(k)] = true }
            default:
                break
            }
        }
        return nil
    }

    private mutating func remember(_ stream: UInt32, ended isEnded: Bool) {
        if ringCount == Self.remembered {
            floor = opened[ringStart]
            ringStart = (ringStart + 1) % Self.remembered
            ringCount -= 1
        }
        opened[slot(ringCount)] = stream
        ended[slot(ringCount)] = isEnded
        ringCount += 1
    }

    /// Where `stream` is in the ring, if the client opened it and it is remembered.
    private func index(of stream: UInt32) -> Int? {
        var lo = 0, hi = ringCount
        while lo < hi {
            let mid = (lo + hi) / 2
            if opened[slot(mid)] < stream { lo = mid + 1 } else { hi = mid }
        }
        return lo < ringCount && opened[slot(lo)] == stream ? lo : nil
    }
}
