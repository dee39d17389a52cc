#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Foundation
import Logging
import Synchronization
import TurnoutCore

/// A swift-log handler that formats on the caller's thread and writes on a dedicated queue, so an
/// event loop never blocks on a slow stderr. The backlog is bounded: when the writer falls more
/// than `maxBacklog` lines behind, lines are dropped and the drop count is reported once it
/// catches up.
public struct AsyncLogHandler: LogHandler {
    final class Sink: Sendable {
        let queue = DispatchQueue(label: "turnout.log")
        let backlog = Mutex<(pending: Int, dropped: Int)>((0, 0))
        let maxBacklog = 10_000
        let fd: Int32

        init(fd: Int32) { self.fd = fd }

        func write(_ line: String) {
            enqueue { fd in
                var text = line
                text.withUTF8 { Sink.writeAll(fd, UnsafeRawBufferPointer($0)) }
            }
        }

        func write(bytes: [UInt8]) {
            enqueue { fd in bytes.withUnsafeBytes { Sink.writeAll(fd, $0) } }
        }

        private func enqueue(_ emit: @escaping @Sendable (Int32) -> Void) {
            let accepted = backlog.withLock { b -> Bool in
                if b.pending >= maxBacklog {
                    b.dropped += 1
                    return false
                }
                b.pending += 1
                return true
            }
            guard accepted else { return }
            queue.async { [self] in
                let dropped = backlog.withLock { b -> Int in
                    b.pending -= 1
                    let d = b.dropped
                    b.dropped = 0
                    return d
                }
                if dropped > 0 {
                    var note = AsyncLogHandler.json.load(ordering: .relaxed)
                        ? "{\"time\":\"\(Timestamp.iso8601())\",\"log\":\"turnout\",\"level\":\"warning\",\"logger\":\"turnout\",\"message\":\"log backlog full, dropped \(dropped) line(s)\"}\n"
                        : "turnout: log backlog full, dropped \(dropped) line(s)\n"
                    note.withUTF8 { Sink.writeAll(fd, UnsafeRawBufferPointer($0)) }
                }
                emit(fd)
            }
        }

        static func writeAll(_ fd: Int32, _ p: UnsafeRawBufferPointer) {
            var off = 0
            while off < p.count {
                let n = Glibc.write(fd, p.baseAddress! + off, p.count - off)
                if n <= 0 { if errno == EINTR { continue }; return }
                off += n
            }
        }

        /// Waits until every accepted line is written.
        func flush() { queue.sync {} }
    }

    static let standardError = Sink(fd: 2)
    /// `log_format: json` in force: every line is a JSON object (set once the config is read;
    /// lines before that, such as config errors, are text).
    static let json = Atomic<Bool>(false)

    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    private let label: String
    private let sink: Sink

    public init(label: String) {
        self.label = label
        self.sink = Self.standardError
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let m = event.metadata { merged.merge(m) { $1 } }
        if Self.json.load(ordering: .relaxed) {
            // {"time","log","level","logger","message", then metadata}: "log" names the stream
            // (access lines and events say "access" and "event"; everything else "turnout").
            var line = "{\"time\":\"\(Timestamp.iso8601())\",\"log\":"
            line += JSONWriter.quote(merged.removeValue(forKey: "log").map { "\($0)" } ?? "turnout")
            line += ",\"level\":\"\(event.level.rawValue)\",\"logger\":\(JSONWriter.quote(label))"
            line += ",\"message\":\(JSONWriter.quote(event.message.description))"
            for (k, v) in merged.sorted(by: { $0.key < $1.key }) { line += ",\(JSONWriter.quote(k)):\(JSONWriter.quote("\(v)"))" }
            sink.write(line + "}\n")
            return
        }
        var line = Timestamp.iso8601()
        line += " "
        line += event.level.rawValue
        line += " "
        line += label
        line += ": "
        if !merged.isEmpty {
            line += merged.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            line += " "
        }
        line += event.message.description
        line += "\n"
        sink.write(line)
    }

    /// Writes one line as it is (a JSON access line), in order with the others.
    static func writeLine(_ line: String) { standardError.write(line) }
    static func writeLine(bytes: [UInt8]) { standardError.write(bytes: bytes) }

    /// Writes out everything logged so far; call before exiting.
    public static func flush() { standardError.flush() }
}
