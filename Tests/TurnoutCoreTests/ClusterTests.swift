import Foundation
import Testing
@testable import TurnoutCore

@Suite struct ClusterConfigTests {
    static let base = """
        listeners: [{ address: 127.0.0.1:8080 }]
        pools:
          blue:  { endpoints: ["127.0.0.1:9001"] }
          green: { endpoints: ["127.0.0.1:9002"] }

        """

    func problems(_ yaml: String) -> [String] {
        do {
            _ = try ConfigLoader.parse(yaml: Self.base + yaml)
            return []
        } catch {
            return error.problems.map(\.description)
        }
    }

    @Test func withoutClusterNothingChanges() throws {
        #expect(try ConfigLoader.parse(yaml: Self.base).cluster == nil)
    }

    @Test func readsTheClusterSectionWithItsDefaults() throws {
        let c = try ConfigLoader.parse(yaml: Self.base + """
            cluster:
              name: prod
              etcd: { endpoints: ["http://127.0.0.1:2379", "127.0.0.1:22379", "https://etcd.internal:2379/"] }
            """).cluster
        let cluster = try #require(c)
        #expect(cluster.name == "prod")
        #expect(cluster.replicaID == nil)
        #expect(cluster.etcd.endpoints.map(\.description) == ["http://127.0.0.1:2379", "http://127.0.0.1:22379", "https://etcd.internal:2379"])
        #expect(cluster.staleAfterMs == 10_000 && cluster.heartbeatMs == 1_000 && cluster.leaseTTLSeconds == 10)
        #expect(cluster.routingKey == "/turnout/v1/prod/routing")
        #expect(cluster.effectiveReplicaID(firstListenerPort: 8080).hasSuffix(":8080"))
    }

    @Test func reportsEveryMistakeWithItsKeyPath() {
        let found = problems("""
            cluster:
              name: "a/b"
              replica_id: "x y"
              etcd: { endpoints: ["ftp://h:1", "http://h:1/v3", "http://h:99999"], password_file: /nonexistent }
              stale_after: 500ms
              lease_ttl: 1500ms
              colour: blue
            """)
        for expected in ["cluster.name:", "cluster.replica_id:", "cluster.etcd.endpoints[0]:", "cluster.etcd.endpoints[1]:",
                         "cluster.etcd.endpoints[2]:", "cluster.etcd.password_file: cannot read /nonexistent",
                         "cluster.etcd: username and password_file go together", "cluster.stale_after: must be at least 1s",
                         "cluster.lease_ttl:", "cluster.colour: unknown key"] {
            #expect(found.contains { $0.hasPrefix(expected) }, "missing \(expected) in \(found)")
        }
        #expect(problems("cluster: { etcd: { endpoints: [\"http://h:1\"] } }").contains { $0.hasPrefix("cluster.name: required") })
        #expect(problems("cluster: { name: x }").contains { $0.hasPrefix("cluster.etcd: required") })
        #expect(problems("cluster: { name: x, heartbeat: 20s, etcd: { endpoints: [\"http://h:1\"] } }")
            .contains { $0.hasPrefix("cluster.heartbeat: must be shorter than stale_after") })
        #expect(problems("cluster: { name: x, etcd: { endpoints: [\"http://h:1\"], tls: {} } }")
            .contains { $0.hasPrefix("cluster.etcd.tls: set, but every endpoint is http://") })
    }
}

@Suite struct ClusterDocumentTests {
    let config = try! ConfigLoader.parse(yaml: ClusterConfigTests.base)

    @Test func theGenerationIsTheRevisionTheDocumentWasReadAt() throws {
        let state = RoutingState(generation: 3, live: "green", weights: ["blue": 0, "green": 10_000],
                                 previousWeights: ["blue": 10_000, "green": 0], previousLive: "blue")
        let change = RoutingChange(kind: "switch", reason: "switch to green", by: "edge-1")
        let bytes = ClusterDocument.encode(state, change: change)
        #expect(!String(decoding: bytes, as: UTF8.self).contains("generation"))
        let (read, readChange) = try ClusterDocument.decode(bytes, revision: 41, config: config)
        var expected = state
        expected.generation = 41
        #expect(read == expected)
        #expect(readChange == change)
    }

    @Test func aDocumentThisReplicaCannotUseIsRefusedWhole() {
        let foreign = Array(#"{"format":1,"live":"red","weights_bp":{"red":10000}}"#.utf8)
        #expect(throws: ClusterDocument.Invalid.self) { try ClusterDocument.decode(foreign, revision: 5, config: config) }
        let badSum = Array(#"{"format":1,"live":"blue","weights_bp":{"blue":5000}}"#.utf8)
        #expect(throws: ClusterDocument.Invalid.self) { try ClusterDocument.decode(badSum, revision: 5, config: config) }
        let future = Array(#"{"format":2,"live":"blue","weights_bp":{"blue":10000}}"#.utf8)
        #expect(throws: ClusterDocument.Invalid.self) { try ClusterDocument.decode(future, revision: 5, config: config) }
        #expect(throws: ClusterDocument.Invalid.self) { try ClusterDocument.decode(Array("not json".utf8), revision: 5, config: config) }
    }

    @Test func aRampWhoseStepDoesNotMatchItsRecordsIsRefused() throws {
        let plan = RampPlan(pool: "green", steps: [1000, 5000], intervalMs: 1000, gates: RampGates())
        var ramp = RampState(plan: plan, status: .running, step: 1, stepStartedAt: Date(), preRampWeights: ["blue": 10_000, "green": 0],
                             preRampLive: "blue", records: [RampStepRecord(weight: 1000)], reason: nil)
        let state = RoutingState(generation: 1, live: "blue", weights: ["blue": 5000, "green": 5000], ramp: ramp)
        #expect(throws: ClusterDocument.Invalid.self) {
            try ClusterDocument.decode(ClusterDocument.encode(state, change: nil), revision: 2, config: config)
        }
        ramp.records.append(RampStepRecord(weight: 5000))
        var fixed = state
        fixed.ramp = ramp
        let (read, _) = try ClusterDocument.decode(ClusterDocument.encode(fixed, change: nil), revision: 2, config: config)
        #expect(read.ramp == ramp)
    }
}

@Suite struct RampWindowRecordTests {
    @Test func windowsFromSeveralReplicasAddUpToOneHistogram() throws {
        var fast = LatencyHistogram()
        for _ in 0..<98 { fast.record(micros: 1_000) }
        var slow = LatencyHistogram()
        for _ in 0..<2 { slow.record(micros: 900_000) }
        let a = RampWindow(requests: 98, errors: 0, latency: fast, totalRequests: 500)
        let b = RampWindow(requests: 2, errors: 2, latency: slow, totalRequests: 20)
        let step = Date(timeIntervalSince1970: 1_800_000_000.25)
        let record = RampWindowRecord(replica: "b", pool: "green", step: 2, stepStartedAt: step.timeIntervalSince1970, window: b)
        let decoded = try #require(ClusterJSON.decode(RampWindowRecord.self, ClusterJSON.encode(record)))
        #expect(decoded == record)
        #expect(decoded.window.latency == slow)
        let sum = a.adding(decoded.window)
        #expect(sum.requests == 100 && sum.errors == 2 && sum.totalRequests == 520)
        // 2 of 100 above 900 ms: p99 is the slow replica's bucket, which neither p99 alone shows.
        #expect((sum.p99Micros ?? 0) >= 900_000)
        #expect((a.p99Micros ?? 0) < 2_000)
        let plan = RampPlan(pool: "green", steps: [100, 200, 300], intervalMs: 1000, gates: RampGates())
        let ramp = RampState(plan: plan, status: .running, step: 2, stepStartedAt: step, preRampWeights: [:], preRampLive: "blue",
                             records: [], reason: nil)
        #expect(decoded.matches(ramp))
        var other = ramp
        other.stepStartedAt = step.addingTimeInterval(1)
        #expect(!decoded.matches(other))
    }

    @Test func anEndpointURLIsParsedOrRefusedWithAReason() {
        #expect((try? EtcdEndpoint.parse("http://[::1]:2379").get())?.description == "http://[::1]:2379")
        #expect((try? EtcdEndpoint.parse("https://etcd:2379").get())?.secure == true)
        #expect((try? EtcdEndpoint.parse("unix:///x").get()) == nil)
        #expect((try? EtcdEndpoint.parse("http://etcd").get()) == nil)
    }
}
