import Foundation

/// The routing state on disk. Written as JSON with write, fsync, rename (and an fsync of the
/// directory), so a crash at any moment leaves either the old or the new file, never a torn one.
/// A running proxy writes through `StateFileWriter`, which does the same into a file prepared
/// ahead of time; this type reads the file and writes it at start-up.
public enum StateFile {
    public static let format = 1

    struct Document: Codable {
        var format: Int
        /// Absent in the cluster document, whose generation is the key's etcd mod_revision.
        var generation: UInt64?
        var live: String
        var weights_bp: [String: Int]
        var previous_weights_bp: [String: Int]?
        var previous_live: String?
        var updated_at: String?
        var ramp: RampState?
        /// Who made the last change and why (written by cluster mode, kept by the state file).
        var change: RoutingChange?
        /// Run-time endpoint changes, by pool and address (absent when there are none).
        var endpoints: [String: [String: EndpointOverride]]?
        /// Traffic mirroring: "off" or the spec. Absent in documents written before mirroring
        /// existed; those take the config's `routing.mirror`.
        var mirror: MirrorSetting?
    }

    public struct LoadError: Error, CustomStringConvertible, Sendable {
        public let path: String
        public let reason: String
        public var description: String { "state file \(path): \(reason)" }
    }

    /// Reads the state file. Returns nil when it does not exist.
    public static func load(path: String, config: TurnoutConfig) throws(LoadError) -> RoutingState? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw LoadError(path: path, reason: "cannot be read (\(error.localizedDescription))")
        }
        do throws(Invalid) {
            let doc = try decodeDocument(data)
            guard let generation = doc.generation else { throw Invalid("has no generation") }
            return try state(from: doc, generation: generation, config: config)
        } catch {
            throw LoadError(path: path, reason: error.reason)
        }
    }

    /// Why a document cannot be used, as a phrase that follows its name ("state file X: ...").
    struct Invalid: Error {
        let reason: String
        init(_ reason: String) { self.reason = reason }
    }

    static func decodeDocument(_ data: Data) throws(Invalid) -> Document {
        let doc: Document
        do {
            doc = try JSONDecoder().decode(Document.self, from: data)
        } catch {
            throw Invalid("is not a valid Turnout state document (\(error))")
        }
        guard doc.format == format else {
            throw Invalid("has format \(doc.format); this turnout reads format \(format)")
        }
        return doc
    }

    /// The routing state a document holds, checked against the config's pools.
    static func state(from doc: Document, generation: UInt64, config: TurnoutConfig) throws(Invalid) -> RoutingState {
        let names = Set(config.pools.map(\.name))
        let unknown = Set(doc.weights_bp.keys).union([doc.live]).subtracting(names)
        if !unknown.isEmpty {
            throw Invalid("names pools that are not in the config: \(unknown.sorted().joined(separator: ", ")) (edit the config, or start with --reset-state)")
        }
        guard doc.weights_bp.values.allSatisfy({ (0...Percent.whole).contains($0) }),
              doc.weights_bp.values.reduce(0, +) == Percent.whole
        else {
            throw Invalid("holds weights that are not 0-100 or do not sum to 100")
        }
        var weights = doc.weights_bp
        for n in names where weights[n] == nil { weights[n] = 0 }
        var previous = doc.previous_weights_bp?.filter { names.contains($0.key) }
        if var p = previous {
            for n in names where p[n] == nil { p[n] = 0 }
            previous = p.values.reduce(0, +) == Percent.whole ? p : nil
        }
        if let ramp = doc.ramp, ramp.isActive, !names.contains(ramp.plan.pool) || !names.contains(ramp.preRampLive) {
            throw Invalid("holds a running ramp of a pool that is not in the config: \(ramp.plan.pool) (edit the config, or start with --reset-state)")
        }
        if let ramp = doc.ramp, !ramp.plan.steps.indices.contains(ramp.step) || ramp.records.count != ramp.step + 1 {
            throw Invalid("holds a ramp whose step \(ramp.step + 1) does not match its \(ramp.plan.steps.count) steps")
        }
        if let ramp = doc.ramp, ramp.mirrorRecord != nil, ramp.plan.mirror == nil || ramp.preRampMirror == nil || ramp.isMirroring && ramp.step != 0 {
            throw Invalid("holds a ramp whose mirroring step does not match its plan (edit the file, or start with --reset-state)")
        }
        var endpoints: [String: [String: EndpointOverride]] = [:]
        for (pool, overrides) in doc.endpoints ?? [:] where names.contains(pool) {
            // Overrides of a pool the config no longer has are dropped with it.
            for (address, o) in overrides {
                guard case .success(let hp) = HostPort.parse(address), hp.description == address else {
                    throw Invalid("holds an endpoint override with an invalid address \"\(address)\" in pool \(pool)")
                }
                if let w = o.weight, !(0...EndpointOverride.maxWeight).contains(w) {
                    throw Invalid("holds an endpoint weight \(w) for \(address) in pool \(pool) (expected 0-\(EndpointOverride.maxWeight))")
                }
                if !o.isNeutral { endpoints[pool, default: [:]][address] = o }
            }
        }
        // Files written before live was kept on a pool with weight could name a pool at 0%.
        let order = config.pools.map(\.name)
        let live = RoutingState.liveAfter(weights: weights, currentLive: doc.live, order: order)
        var mirror = config.routing.mirror
        if let setting = doc.mirror {
            mirror = setting.spec
            if let spec = mirror, let problem = spec.problem(pools: config.pools.map(\.name)) {
                throw Invalid("holds a mirror that cannot be used: \(problem) (edit the config, or start with --reset-state)")
            }
        }
        return RoutingState(generation: generation, live: live, weights: weights,
                            previousWeights: previous, previousLive: doc.previous_live.flatMap { names.contains($0) ? $0 : nil },
                            ramp: doc.ramp, endpoints: endpoints, mirror: mirror)
    }

    public struct WriteError: Error, CustomStringConvertible, Sendable {
        public let path: String
        public let reason: String
        public var description: String { "cannot write state file \(path): \(reason)" }
    }

    /// Writes the state: temp file, fsync, rename over the old file (SPEC: write, fsync, rename).
    /// A crash at any moment leaves the old or the new file. With `syncDirectory` the directory is
    /// fsynced too, so the rename itself survives a power loss; callers on a latency-sensitive
    /// path pass false and call `syncDirectory(of:)` afterwards, off that path.
    public static func write(_ state: RoutingState, to path: String, syncDirectory: Bool = true) throws(WriteError) {
        try write(encode(state, path: path), to: path, syncDirectory: syncDirectory)
    }

    /// The file's bytes for `state`: pretty-printed JSON with sorted keys and a final newline.
    static func encode(_ state: RoutingState, path: String) throws(WriteError) -> Data {
        let doc = Document(format: format, generation: state.generation, live: state.live, weights_bp: state.weights,
                           previous_weights_bp: state.previousWeights, previous_live: state.previousLive,
                           updated_at: Timestamp.iso8601(), ramp: state.ramp,
                           endpoints: state.endpoints.isEmpty ? nil : state.endpoints, mirror: MirrorSetting(state.mirror))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
        do { return try encoder.encode(doc) + [UInt8(ascii: "\n")] } catch { throw WriteError(path: path, reason: "\(error)") }
    }

    /// Writes `data` to a new temporary file, fsyncs it and renames it over `path`.
    static func write(_ data: Data, to path: String, syncDirectory: Bool) throws(WriteError) {
        let tmp = "\(path).tmp.\(getpid())"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw WriteError(path: path, reason: String(cString: strerror(errno))) }
        var ok = data.withUnsafeBytes { p -> Bool in
            var off = 0
            while off < p.count {
                let n = Foundation.write(fd, p.baseAddress! + off, p.count - off)
                if n < 0 { if errno == EINTR { continue }; return false }
                off += n
            }
            return true
        }
        let err = errno
        if ok { ok = fsync(fd) == 0 }
        close(fd)
        guard ok else {
            unlink(tmp)
            throw WriteError(path: path, reason: String(cString: strerror(err != 0 ? err : errno)))
        }
        guard rename(tmp, path) == 0 else {
            let e = errno
            unlink(tmp)
            throw WriteError(path: path, reason: String(cString: strerror(e)))
        }
        if syncDirectory { Self.syncDirectory(of: path) }
    }

    /// fsyncs the directory holding `path`, making a completed rename durable.
    public static func syncDirectory(of path: String) {
        let dir = (path as NSString).deletingLastPathComponent
        let dfd = open(dir.isEmpty ? "." : dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 {
            _ = fsync(dfd)
            close(dfd)
        }
    }
}
