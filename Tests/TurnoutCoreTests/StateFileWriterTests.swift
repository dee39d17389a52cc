import Foundation
import Testing
@testable import TurnoutCore

@Suite struct StateFileWriterTests {
    static func config(pools: Int) throws -> TurnoutConfig {
        let lines = (0..<pools).map { "  pool\($0): { endpoints: [\"127.0.0.1:\(9000 + $0)\"] }" }
        return try ConfigLoader.parse(yaml: """
            listeners: [ { address: "127.0.0.1:8080" } ]
            pools:
            \(lines.joined(separator: "\n"))
            routing: { weights: { pool0: 100 } }
            """)
    }

    static func state(_ config: TurnoutConfig, generation: UInt64, canary: Int) -> RoutingState {
        var weights = Dictionary(uniqueKeysWithValues: config.pools.map { ($0.name, 0) })
        weights["pool0"] = Percent.whole - canary
        weights["pool1"] = canary
        return RoutingState(generation: generation, live: "pool0", weights: weights,
                            previousWeights: weights, previousLive: "pool0")
    }

    static func directory() throws -> String {
        let dir = NSTemporaryDirectory() + "turnout-state-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    static func files(in dir: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted()
    }

    static func size(_ path: String) -> Int {
        ((try? FileManager.default.attributesOfItem(atPath: path)[.size]) as? NSNumber)?.intValue ?? -1
    }

    @Test func everyWriteIsReadBackAndGoesThroughAPreparedFile() throws {
        let config = try Self.config(pools: 2)
        let dir = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/state.json"
        let writer = StateFileWriter(path: path)
        writer.settle()
        #expect(Self.files(in: dir).count == StateFileWriter.spares)
        #expect(Self.files(in: dir).allSatisfy { $0.hasPrefix("state.json.next.\(getpid()).") })
        for g in 2...40 as ClosedRange<UInt64> {
            let s = Self.state(config, generation: g, canary: Int(g) * 100)
            try writer.write(s)
            #expect(try StateFile.load(path: path, config: config) == s)
            // The fast path leaves the file at the prepared size: JSON, then spaces, then a newline.
            #expect(Self.size(path) == 4096)
            writer.settle()
            #expect(Self.files(in: dir).filter { $0.contains(".next.") }.count == StateFileWriter.spares)
        }
        let text = try String(contentsOfFile: path, encoding: .utf8)
        #expect(text.hasSuffix(" \n") && text.trimmingCharacters(in: .whitespacesAndNewlines).hasSuffix("}"))
        writer.close()
        #expect(Self.files(in: dir) == ["state.json"])
    }

    @Test func aStateLargerThanThePreparedFileTakesTheSlowPathThenTheNextFileGrows() throws {
        let config = try Self.config(pools: 300)
        let dir = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/state.json"
        let writer = StateFileWriter(path: path)
        defer { writer.close() }
        writer.settle()
        let first = Self.state(config, generation: 2, canary: 500)
        try writer.write(first)
        #expect(try StateFile.load(path: path, config: config) == first)
        let slowSize = Self.size(path)
        #expect(slowSize > 4096 && slowSize % 4096 != 0)  // written whole, not into the 4 KiB file
        writer.settle()
        let second = Self.state(config, generation: 3, canary: 700)
        try writer.write(second)
        #expect(try StateFile.load(path: path, config: config) == second)
        #expect(Self.size(path) % 4096 == 0 && Self.size(path) >= 2 * slowSize - 4096)  // the grown prepared file
    }

    @Test func aWriteIntoAMissingDirectoryFailsNamingTheFile() throws {
        let config = try Self.config(pools: 2)
        let path = NSTemporaryDirectory() + "turnout-missing-\(UUID().uuidString)/state.json"
        let writer = StateFileWriter(path: path)
        defer { writer.close() }
        writer.settle()
        #expect {
            try writer.write(Self.state(config, generation: 2, canary: 0))
        } throws: { error in
            (error as? StateFile.WriteError)?.description.contains(path) == true
        }
    }

    @Test func temporariesOfDeadProcessesAreRemovedAndOthersKept() throws {
        let dir = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let child = Process()
        child.executableURL = URL(fileURLWithPath: "/bin/true")
        try child.run()
        child.waitUntilExit()
        let dead = child.processIdentifier
        let names = ["state.json.next.\(dead).3", "state.json.tmp.\(dead)",  // a dead process's
                     "state.json.next.1.1", "state.json.tmp.1",                // pid 1 is alive
                     "other.json.tmp.\(dead)", "state.json"]
        for n in names { _ = FileManager.default.createFile(atPath: "\(dir)/\(n)", contents: Data("{}".utf8)) }
        StateFileWriter.removeStaleTemporaries(of: dir + "/state.json")
        #expect(Self.files(in: dir) == ["other.json.tmp.\(dead)", "state.json", "state.json.next.1.1", "state.json.tmp.1"])
    }
}
