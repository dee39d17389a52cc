import Dispatch
import Foundation
import Testing
@testable import TurnoutCore

@Suite struct RoutingStoreTests {
    static func config(_ pools: [(String, [String])], weights: [String: Int]) throws -> TurnoutConfig {
        let poolLines = pools.map { name, eps in "  \(name): { endpoints: [\(eps.map { "\"\($0)\"" }.joined(separator: ", "))] }" }
        let weightText = weights.map { "\($0.key): \($0.value)" }.joined(separator: ", ")
        return try ConfigLoader.parse(yaml: """
            listeners: [ { address: "127.0.0.1:8080" } ]
            pools:
            \(poolLines.joined(separator: "\n"))
            routing: { weights: { \(weightText) } }
            """)
    }

    struct Refused: Error { let reason: String }

    @Test func reconfigureKeepsEndpointsWeightsAndHealthAndAddsPoolsAtZero() throws {
        let first = try Self.config([("blue", ["127.0.0.1:9001"]), ("green", ["127.0.0.1:9002"])], weights: ["blue": 90, "green": 10])
        let store = RoutingStore(config: first, state: .initial(from: first))
        let blue = store.endpoints[0].endpoints[0]
        store.setHealth(endpointID: blue.id, .healthy)
        let second = try Self.config([("blue", ["127.0.0.1:9001", "127.0.0.1:9003"]), ("green", ["127.0.0.1:9002"]),
                                      ("canary", ["127.0.0.1:9004"])], weights: ["blue": 100])
        var persisted: [RoutingState] = []
        let r = try store.reconfigure(second, persist: { (s: RoutingState) throws(Refused) in persisted.append(s) }, refuse: { Refused(reason: $0) })
        #expect(r.addedPools == ["canary"] && r.removedPools.isEmpty)
        #expect(r.added.map(\.address.description) == ["127.0.0.1:9003", "127.0.0.1:9004"])
        #expect(store.endpoints[0].endpoints[0] === blue)          // the same object: counters and health stay
        #expect(store.health(of: blue.id) == .healthy)
        #expect(store.state.weights == ["blue": 9000, "green": 1000, "canary": 0])  // runtime weights, not the file's
        #expect(persisted.count == 1 && persisted[0].generation == 2)
        #expect(store.table.pools.map(\.name) == ["blue", "green", "canary"])
        #expect(Set(store.allEndpoints.map(\.id)).count == 4)      // fresh ids never collide
    }

    @Test func removingAPoolThatCarriesTrafficIsRefusedAndChangesNothing() throws {
        let first = try Self.config([("blue", ["127.0.0.1:9001"]), ("green", ["127.0.0.1:9002"])], weights: ["blue": 90, "green": 10])
        let store = RoutingStore(config: first, state: .initial(from: first))
        let before = store.table
        let second = try Self.config([("blue", ["127.0.0.1:9001"])], weights: ["blue": 100])
        #expect(throws: Refused.self) {
            try store.reconfigure(second, persist: { (_: RoutingState) throws(Refused) in }, refuse: { Refused(reason: $0) })
        }
        #expect(store.table === before && store.endpoints.count == 2)
        _ = try store.mutate({ (s: RoutingState, _) throws(Refused) in
            var n = s; n.weights = ["blue": 10000, "green": 0]; n.generation += 1; return n
        }, persist: { (_: RoutingState) throws(Refused) in })
        let r = try store.reconfigure(second, persist: { (_: RoutingState) throws(Refused) in }, refuse: { Refused(reason: $0) })
        #expect(r.removedPools == ["green"] && store.state.weights == ["blue": 10000])
    }

    @Test func healthOfARemovedEndpointIsIgnored() throws {
        let first = try Self.config([("blue", ["127.0.0.1:9001", "127.0.0.1:9003"])], weights: ["blue": 100])
        let store = RoutingStore(config: first, state: .initial(from: first))
        let gone = store.endpoints[0].endpoints[1]
        let second = try Self.config([("blue", ["127.0.0.1:9001"])], weights: ["blue": 100])
        _ = try store.reconfigure(second, persist: { (_: RoutingState) throws(Refused) in }, refuse: { Refused(reason: $0) })
        store.setHealth(endpointID: gone.id, .healthy)   // a probe that was already running
        #expect(store.table.pools[0].healthy.isEmpty)
    }

    @Test func everyPublishedTableMovesTheVersionAndNothingElseDoes() throws {
        let first = try Self.config([("blue", ["127.0.0.1:9001", "127.0.0.1:9003"]), ("green", ["127.0.0.1:9002"])],
                                    weights: ["blue": 100])
        let store = RoutingStore(config: first, state: .initial(from: first))
        let a = store.endpoints[0].endpoints[0], b = store.endpoints[0].endpoints[1]
        let v0 = store.version
        store.setHealth(endpointID: a.id, .healthy)
        #expect(store.version == v0 + 1)
        #expect(store.table.isHealthy(endpointID: a.id) && !store.table.isHealthy(endpointID: b.id))
        store.setHealth(endpointID: a.id, .healthy)  // no change, nothing published
        #expect(store.version == v0 + 1)
        _ = try store.mutate({ (s: RoutingState, _) throws(Refused) in s }, persist: { (_: RoutingState) throws(Refused) in })
        #expect(store.version == v0 + 1)  // the same state: nothing published
        // An endpoint a reload removes is no longer in the table, healthy or not.
        let second = try Self.config([("blue", ["127.0.0.1:9003"]), ("green", ["127.0.0.1:9002"])], weights: ["blue": 100])
        _ = try store.reconfigure(second, persist: { (_: RoutingState) throws(Refused) in }, refuse: { Refused(reason: $0) })
        #expect(store.version == v0 + 2)
        #expect(!store.table.isHealthy(endpointID: a.id))
        #expect(!store.table.isHealthy(endpointID: -1) && !store.table.isHealthy(endpointID: 1_000))
    }
}

/// Group commit: changes made while the disk is busy share the next write; the store's lock is
/// free meanwhile; a state is published only once durable; a failed write fails its own caller.
@Suite struct GroupCommitTests {
    typealias Refused = RoutingStoreTests.Refused

    /// A state file whose first write blocks until the test lets it go (and may fail).
    final class Disk: @unchecked Sendable {
        private let lock = NSLock()
        private var states: [RoutingState] = []
        private var blockFirst = true
        let failFirst: Bool
        let entered = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)

        init(failFirst: Bool = false) { self.failFirst = failFirst }

        var writes: [RoutingState] { lock.withLock { states } }

        func write(_ s: RoutingState) throws(Refused) {
            let first = lock.withLock { () -> Bool in
                states.append(s)
                defer { blockFirst = false }
                return blockFirst
            }
            if first {
                entered.signal()
                release.wait()
                if failFirst { throw Refused(reason: "disk full") }
            }
        }
    }

    /// Values that threads hand back.
    final class Collected<T: Sendable>: @unchecked Sendable {
        private let lock = NSLock()
        private var items: [T] = []
        func append(_ x: T) { lock.withLock { items.append(x) } }
        var all: [T] { lock.withLock { items } }
    }

    /// Runs `body` on a thread of its own (these block: a shared pool would be starved).
    static func thread(_ group: DispatchGroup, _ body: @escaping @Sendable () -> Void) {
        group.enter()
        Thread { body(); group.leave() }.start()
    }

    static func store() throws -> RoutingStore {
        let config = try RoutingStoreTests.config([("blue", ["127.0.0.1:9001"]), ("green", ["127.0.0.1:9002"])],
                                                  weights: ["blue": 100])
        return RoutingStore(config: config, state: .initial(from: config))
    }

    /// Switches all traffic to green, written to `disk`.
    @discardableResult
    static func switchToGreen(_ store: RoutingStore, _ disk: Disk) throws(Refused) -> RoutingState {
        try store.mutate({ (st: RoutingState, _) throws(Refused) in
            var next = st
            next.live = "green"
            next.weights = ["blue": 0, "green": 10000]
            next.generation += 1
            return next
        }, persist: { (st: RoutingState) throws(Refused) in try disk.write(st) })
    }

    /// Starts `n` changes that each add one to the generation, on threads of their own; `queued`
    /// is signalled as each computes its change.
    static func followers(_ n: Int, store: RoutingStore, disk: Disk, queued: DispatchSemaphore,
                          results: Collected<UInt64>, group: DispatchGroup) {
        for _ in 0..<n {
            Self.thread(group) {
                let s = try? store.mutate({ (st: RoutingState, _) throws(Refused) in
                    queued.signal()
                    var next = st
                    next.generation += 1
                    return next
                }, persist: { (st: RoutingState) throws(Refused) in try disk.write(st) })
                if let s { results.append(s.generation) }
            }
        }
    }

    @Test func changesMadeDuringAWriteShareTheNextWriteAndNothingWaitsOnTheDisk() throws {
        let store = try Self.store()
        let disk = Disk()
        let start = store.state.generation
        let group = DispatchGroup()
        let results = Collected<UInt64>()
        Self.thread(group) {
            let s = try? Self.switchToGreen(store, disk)
            if let s { results.append(s.generation) }
        }
        disk.entered.wait()
        // The write is under way: the change is not published yet, and the store's lock is free.
        #expect(store.state.generation == start && store.state.live == "blue")
        let version = store.version
        store.setHealth(endpointID: store.endpoints[0].endpoints[0].id, .healthy)
        #expect(store.version == version + 1)
        let queued = DispatchSemaphore(value: 0)
        Self.followers(5, store: store, disk: disk, queued: queued, results: results, group: group)
        for _ in 0..<5 { queued.wait() }
        disk.release.signal()
        group.wait()
        // One write for the first change, one for the five queued behind it.
        #expect(disk.writes.count == 2)
        #expect(disk.writes.last?.generation == start + 6)
        #expect(store.state.generation == start + 6 && store.state.live == "green")
        #expect(results.all.sorted() == Array((start + 1)...(start + 6)))
        #expect(store.table.pools[store.table.live].name == "green")
    }

    @Test func aFailedWriteFailsItsOwnCallerAndTheChangesQueuedBehindItAreComputedAgain() throws {
        let store = try Self.store()
        let disk = Disk(failFirst: true)
        let start = store.state.generation
        let group = DispatchGroup()
        let results = Collected<UInt64>()
        let leader = Collected<Refused>()
        Self.thread(group) {
            do {
                try Self.switchToGreen(store, disk)
            } catch {
                leader.append(error as! Refused)
            }
        }
        disk.entered.wait()
        let queued = DispatchSemaphore(value: 0)
        Self.followers(3, store: store, disk: disk, queued: queued, results: results, group: group)
        for _ in 0..<3 { queued.wait() }
        disk.release.signal()
        group.wait()
        #expect(leader.all.map(\.reason) == ["disk full"])
        // The switch never happened; the three others did, on the state from before it.
        #expect(store.state.live == "blue" && store.state.generation == start + 3)
        #expect(results.all.sorted() == Array((start + 1)...(start + 3)))
        #expect(disk.writes.last?.live == "blue" && disk.writes.last?.generation == start + 3)
        #expect(store.table.pools[store.table.live].name == "blue")
    }
}
