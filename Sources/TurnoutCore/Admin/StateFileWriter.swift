import Dispatch
import Foundation
import Synchronization

/// Writes the state file of a running proxy: the one owner of `state_file` after start-up
/// (admin mutations, ramp transitions and reloads all write through it, already serialised by the
/// routing store's lock).
///
/// Every write is write, fsync, rename, as on start-up, but into a temporary file prepared ahead of
/// time: created, filled to a fixed size with spaces and fsynced off the caller's path. The write
/// itself then overwrites blocks that already exist without changing the file's size, so
/// `fdatasync` only has to flush those blocks; creating a file and fsyncing it costs a journal
/// commit (1–3 ms here, more when the CPUs are busy), which is what a switch used to wait for.
/// The JSON is followed by spaces up to the prepared size; JSON allows trailing whitespace.
///
/// After each write the directory is fsynced (so the rename survives a power loss) and the
/// prepared files topped up (two are kept ready), on a background queue; a write that finds no
/// prepared file big enough takes the slow path of `StateFile.write`. A crash at any moment
/// leaves the old or the new file.
public final class StateFileWriter: Sendable {
    public let path: String

    private struct Prepared {
        let fd: Int32
        let path: String
        let size: Int
    }

    private struct Shared {
        /// Files ready to take a state, up to `spares`.
        var prepared: [Prepared] = []
        var preparing = false
        var nextSize = 4096
        var closed = false
        var serial = 0
        /// The file at `path`, held open so that replacing it does not free it on the writer's path.
        var current: Int32 = -1
    }

    private let shared = Mutex(Shared())
    /// Prepared files kept ready: two, so that a second change close behind the first still finds
    /// one while the next is being prepared.
    static let spares = 2
    /// The next change waits on this work, so it runs above the default priority.
    private let background = DispatchQueue(label: "turnout.state-file", qos: .userInitiated)

    /// Removes temporary files left by earlier processes that died (their pid is gone), then
    /// prepares the first files in the background.
    public init(path: String) {
        self.path = path
        shared.withLock { $0.current = open(path, O_RDONLY | O_CLOEXEC) }
        Self.removeStaleTemporaries(of: path)
        schedule(syncDirectory: false)
    }

    /// Writes `state` durably; when this returns, `path` holds it.
    public func write(_ state: RoutingState) throws(StateFile.WriteError) {
        let data = try StateFile.encode(state, path: path)
        let (prepared, tooSmall): (Prepared?, [Prepared]) = shared.withLock { s in
            if data.count * 2 > s.nextSize { s.nextSize = Self.roundUp(data.count * 2) }
            let tooSmall = s.prepared.filter { $0.size < data.count }
            s.prepared.removeAll { $0.size < data.count }
            return (s.prepared.popLast(), tooSmall)
        }
        defer { schedule(syncDirectory: true) }
        for p in tooSmall {
            Foundation.close(p.fd)
            unlink(p.path)
        }
        if let prepared, overwrite(prepared, with: data) {
            hold(prepared.fd)
            return
        }
        try StateFile.write(data, to: path, syncDirectory: false)
        hold(open(path, O_RDONLY | O_CLOEXEC))
    }

    /// Removes the prepared files; later writes take the slow path. Called when the proxy stops.
    public func close() {
        let (prepared, current): ([Prepared], Int32) = shared.withLock { s in
            s.closed = true
            defer { s.prepared = []; s.current = -1 }
            return (s.prepared, s.current)
        }
        background.sync {}  // a preparation under way finishes (and sees `closed`)
        for p in prepared {
            Foundation.close(p.fd)
            unlink(p.path)
        }
        if current >= 0 { Foundation.close(current) }
    }

    /// Waits until the background work queued so far is done (for tests).
    func settle() { background.sync {} }

    /// pwrite + fdatasync + rename. False (and the file closed and removed) when any step fails.
    private func overwrite(_ prepared: Prepared, with data: Data) -> Bool {
        // The JSON, spaces up to the prepared size, and the JSON's final newline.
        var bytes = [UInt8](data.dropLast())
        bytes.reserveCapacity(prepared.size)
        bytes.append(contentsOf: repeatElement(UInt8(ascii: " "), count: prepared.size - data.count))
        bytes.append(UInt8(ascii: "\n"))
        if Self.pwriteAll(prepared.fd, bytes), fdatasync(prepared.fd) == 0, rename(prepared.path, path) == 0 {
            return true
        }
        Foundation.close(prepared.fd)
        unlink(prepared.path)
        return false
    }

    /// Keeps the file now at `path` open, and closes the one it replaced in the background.
    /// Freeing a replaced file's blocks costs about a millisecond on ext4 (more with online
    /// discard); while a descriptor is open that happens at its close, off the caller's path.
    private func hold(_ fd: Int32) {
        let old: Int32? = shared.withLock { s in
            guard !s.closed else { return nil }
            defer { s.current = fd }
            return s.current
        }
        guard let old else {
            if fd >= 0 { Foundation.close(fd) }  // stopped meanwhile: nothing to hold it for
            return
        }
        if old >= 0 { background.async { Foundation.close(old) } }
    }

    /// Background work, coalesced: prepare files until `spares` are ready, then fsync the
    /// directory (making the last rename durable).
    private func schedule(syncDirectory: Bool) {
        let start: Bool = shared.withLock { s in
            guard !s.preparing, !s.closed else { return false }
            s.preparing = true
            return true
        }
        guard start else {
            if syncDirectory { background.async { [path] in StateFile.syncDirectory(of: path) } }
            return
        }
        background.async { [self] in
            var failed = false
            while true {
                while !failed, let size = shared.withLock({ s in !s.closed && s.prepared.count < Self.spares ? s.nextSize : nil }) {
                    guard let made = prepare(size: size) else {
                        failed = true  // the next write takes the slow path, which reports the error
                        break
                    }
                    let discard: Prepared? = shared.withLock { s in
                        if s.closed { return made }
                        s.prepared.append(made)
                        return nil
                    }
                    if let discard {
                        Foundation.close(discard.fd)
                        unlink(discard.path)
                    }
                }
                StateFile.syncDirectory(of: path)
                // A write may have taken a file meanwhile: go round again rather than leave a gap.
                let again = shared.withLock { s in
                    if !failed && !s.closed && s.prepared.count < Self.spares { return true }
                    s.preparing = false
                    return false
                }
                if !again { return }
            }
        }
    }

    /// Creates a new temporary file filled with `size` spaces and fsyncs it. Nil on any failure
    /// (the next write then takes the slow path, which reports the error).
    private func prepare(size: Int) -> Prepared? {
        let name = shared.withLock { s in
            s.serial += 1
            return "\(path).next.\(getpid()).\(s.serial)"
        }
        let fd = open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return nil }
        let blank = [UInt8](repeating: UInt8(ascii: " "), count: size)
        guard Self.pwriteAll(fd, blank), fsync(fd) == 0 else {
            Foundation.close(fd)
            unlink(name)
            return nil
        }
        return Prepared(fd: fd, path: name, size: size)
    }

    private static func pwriteAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { p -> Bool in
            var off = 0
            while off < p.count {
                let n = pwrite(fd, p.baseAddress! + off, p.count - off, off_t(off))
                if n < 0 { if errno == EINTR { continue }; return false }
                off += n
            }
            return true
        }
    }

    private static func roundUp(_ n: Int) -> Int { (n + 4095) / 4096 * 4096 }

    /// `state.json.next.PID.N` and `state.json.tmp.PID` whose process no longer exists.
    static func removeStaleTemporaries(of path: String) {
        let dir = (path as NSString).deletingLastPathComponent
        let base = (path as NSString).lastPathComponent
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir.isEmpty ? "." : dir) else { return }
        for name in names {
            for infix in [".next.", ".tmp."] where name.hasPrefix(base + infix) {
                let rest = name.dropFirst(base.count + infix.count)
                guard let pid = pid_t(rest.prefix { $0 != "." }), pid != getpid() else { continue }
                if kill(pid, 0) != 0 && errno == ESRCH {
                    unlink(dir.isEmpty ? name : "\(dir)/\(name)")
                }
            }
        }
    }
}
