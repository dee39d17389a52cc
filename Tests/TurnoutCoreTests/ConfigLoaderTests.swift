import Foundation
import Testing
@testable import TurnoutCore

@Suite struct ConfigLoaderTests {
    static let good = """
        workers: 2
        io: dispatch
        listeners:
          - address: 127.0.0.1:8080
        admin:
          socket: /tmp/t.sock
        state_file: /tmp/state.json
        pools:
          blue:  { endpoints: ["127.0.0.1:9001", "127.0.0.1:9003"] }
          green: { endpoints: ["app.internal:9002"], balance: least_outstanding }
        routing:
          weights: { blue: 87.5, green: 12.5 }
          sticky: { cookie: turnout_cohort }
          preview_header: X-Turnout-Pool
          failover: false
        health: { path: /ready, interval: 1500ms, timeout: 1s, rise: 1, fall: 5 }
        timeouts: { connect: 2s, upstream_response: 1m, client_header: 10s, idle: 60s, drain: 0s }
        """

    @Test func readsEveryField() throws {
        let c = try ConfigLoader.parse(yaml: Self.good)
        #expect(c.workers == 2)
        #expect(c.io == .dispatch)
        #expect(c.listeners.map(\.address.description) == ["127.0.0.1:8080"])
        #expect(c.admin.socket == "/tmp/t.sock")
        #expect(c.stateFile == "/tmp/state.json")
        #expect(c.pools.map(\.name) == ["blue", "green"])
        #expect(c.pools[1].balance == .leastOutstanding)
        #expect(c.pools[1].endpoints[0].host == "app.internal")
        #expect(c.routing.weights == ["blue": 8750, "green": 1250])
        #expect(c.routing.sticky == .cookie("turnout_cohort"))
        #expect(c.routing.previewHeader == "X-Turnout-Pool")
        #expect(c.routing.failover == false)
        #expect(c.health.path == "/ready" && c.health.intervalMs == 1500 && c.health.rise == 1 && c.health.fall == 5)
        #expect(c.timeouts.upstreamResponseMs == 60_000 && c.timeouts.drainMs == 0)
    }

    @Test func theShippedExampleConfigsAreValid() throws {
        let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../config").standardized
        let files = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".yaml") }
        #expect(!files.isEmpty)
        for f in files {
            _ = try ConfigLoader.load(path: dir.appendingPathComponent(f).path)
        }
    }

    @Test func defaultsApplyWhenSectionsAreOmitted() throws {
        let c = try ConfigLoader.parse(yaml: """
            listeners: [{ address: "127.0.0.1:0" }]
            pools: { green: { endpoints: ["127.0.0.1:1"] }, blue: { endpoints: ["127.0.0.1:2"] } }
            """)
        #expect(c.workers == nil)
        #expect(c.io == .epoll)
        #expect(c.routing.weights == ["blue": 10_000, "green": 0])
        #expect(c.health == HealthConfig())
        #expect(c.timeouts == TimeoutConfig())
        #expect(c.admin.socket == AdminConfig.defaultSocket)
        #expect(RoutingState.initial(from: c).live == "blue")
    }

    /// Defaults that a load could outgrow are not fixed numbers: no cap on idle upstream
    /// connections, and the client-connection limit follows the open-files limit.
    @Test func loadSensitiveLimitsDefaultToNoFixedCap() throws {
        let c = try ConfigLoader.parse(yaml: """
            listeners: [{ address: "127.0.0.1:0" }]
            pools: { blue: { endpoints: ["127.0.0.1:2"] } }
            """)
        #expect(c.pools[0].maxIdleConnections == nil)
        #expect(c.limits.maxClientConnections == nil)
        let set = try ConfigLoader.parse(yaml: """
            listeners: [{ address: "127.0.0.1:0" }]
            pools: { blue: { endpoints: ["127.0.0.1:2"], max_idle_connections: 8 } }
            limits: { max_client_connections: 500 }
            """)
        #expect(set.pools[0].maxIdleConnections == 8 && set.limits.maxClientConnections == 500)
        let auto = try ConfigLoader.parse(yaml: """
            listeners: [{ address: "127.0.0.1:0" }]
            pools: { blue: { endpoints: ["127.0.0.1:2"] } }
            limits: { max_client_connections: auto }
            """)
        #expect(auto.limits.maxClientConnections == nil)
        #expect(throws: ConfigErrors.self) {
            try ConfigLoader.parse(yaml: """
                listeners: [{ address: "127.0.0.1:0" }]
                pools: { blue: { endpoints: ["127.0.0.1:2"], max_idle_connections: -1 } }
                limits: { max_client_connections: lots }
                """)
        }
    }

    @Test func reportsEveryProblemWithItsKeyPath() {
        let yaml = """
            workers: zero
            io: kqueue
            listeners:
              - address: 127.0.0.1:99999
              - adress: 1.2.3.4:80
            pools:
              blue: { endpoints: ["nohost", "127.0.0.1:9001", "127.0.0.1:9001"] }
              green: { endpoints: [], balance: random }
            routing:
              weights: { blue: 90.125, purple: 10 }
            health: { interval: soon, rise: 0 }
            timeouts: { connect: -1s }
            extra: 1
            """
        var problems: [String] = []
        do {
            _ = try ConfigLoader.parse(yaml: yaml)
        } catch {
            problems = error.problems.map(\.description)
        }
        let expected = [
            "workers:", "io: expected epoll or dispatch, got \"kqueue\"", "listeners[0].address: invalid port", "listeners[1].adress: unknown key",
            "listeners[1].address: required", "pools.blue.endpoints[0]: expected host:port",
            "pools.blue.endpoints[2]: 127.0.0.1:9001 is listed twice", "pools.green.endpoints: a pool needs at least one endpoint", "pools.green.balance: expected round_robin or least_outstanding, got \"random\"",
            "routing.weights.blue: at most two decimals", "routing.weights.purple: no pool named",
            "health.interval: expected a duration", "health.rise: must be between 1 and 100",
            "timeouts.connect: expected a duration", "extra: unknown key",
        ]
        for e in expected {
            #expect(problems.contains { $0.hasPrefix(e) }, "missing \(e) in \(problems)")
        }
    }

    @Test func listenerProtocolsAreReadAndCheckedAgainstTLS() throws {
        func parse(_ listeners: String) throws(ConfigErrors) -> TurnoutConfig {
            try ConfigLoader.parse(yaml: "listeners:\n\(listeners)\npools: { blue: { endpoints: [\"127.0.0.1:9001\"] } }\n")
        }
        let c = try parse("  - { address: \"127.0.0.1:0\", protocols: [h2c] }\n  - { address: \"127.0.0.1:0\", protocols: [http1] }\n  - { address: \"127.0.0.1:0\" }")
        #expect(c.listeners.map { [$0.http1, $0.http2] } == [[false, true], [true, false], [true, true]])
        var problems: [String] = []
        do {
            _ = try parse("""
                  - { address: "127.0.0.1:0", protocols: [h2] }
                  - { address: "127.0.0.1:0", protocols: [] }
                  - { address: "127.0.0.1:0", protocols: [http1, spdy] }
                  - { address: "127.0.0.1:0", protocols: h2c }
                """)
        } catch {
            problems = error.problems.map(\.description)
        }
        for e in ["listeners[0].protocols: h2 is HTTP/2 over TLS", "listeners[1].protocols: expected a list of http1 and h2c",
                  "listeners[2].protocols: unknown protocol \"spdy\"", "listeners[3].protocols: expected a list"] {
            #expect(problems.contains { $0.hasPrefix(e) }, "missing \(e) in \(problems)")
        }
    }

    @Test func weightsMustSumToOneHundred() {
        #expect(throws: ConfigErrors.self) {
            try ConfigLoader.parse(yaml: """
                listeners: [{ address: "127.0.0.1:0" }]
                pools: { blue: { endpoints: ["127.0.0.1:1"] }, green: { endpoints: ["127.0.0.1:2"] } }
                routing: { weights: { blue: 90, green: 5 } }
                """)
        }
    }

    @Test func tcpAdminNeedsAToken() {
        do {
            _ = try ConfigLoader.parse(yaml: """
                listeners: [{ address: "127.0.0.1:0" }]
                admin: { address: "127.0.0.1:9901" }
                pools: { blue: { endpoints: ["127.0.0.1:1"] } }
                """)
            Issue.record("accepted a TCP admin address without token_file")
        } catch {
            #expect(error.problems.contains { $0.path == "admin.token_file" })
        }
    }

    @Test func tlsTakesOneCertificateOrAListForSNI() throws {
        let one = try ConfigLoader.parse(yaml: """
            listeners:
              - address: 127.0.0.1:8443
                tls: { certificate: /etc/a.pem, private_key: /etc/a.key }
            pools: { blue: { endpoints: ["127.0.0.1:9001"] } }
            """)
        #expect(one.listeners[0].tls?.certificates == [TLSCertificate(certificate: "/etc/a.pem", privateKey: "/etc/a.key")])
        let many = try ConfigLoader.parse(yaml: """
            listeners:
              - address: 127.0.0.1:8443
                tls: { certificates: [ { certificate: /a.pem, private_key: /a.key }, { certificate: /b.pem, private_key: /b.key } ] }
            limits: { h2_max_concurrent_streams: 250 }
            pools: { blue: { endpoints: ["127.0.0.1:9001"] } }
            """)
        #expect(many.listeners[0].tls?.certificates.map(\.certificate) == ["/a.pem", "/b.pem"])
        #expect(many.limits.h2MaxConcurrentStreams == 250)
    }

    @Test func tlsProblemsNameTheirKeyPath() {
        let text = """
            listeners:
              - address: 127.0.0.1:8443
                tls: { certificate: /a.pem }
              - address: 127.0.0.1:8444
                tls: { certificate: /a.pem, private_key: /a.key, certificates: [] }
              - address: 127.0.0.1:8445
                tls: { certificates: [ { certificate: /a.pem } ] }
            pools: { blue: { endpoints: ["127.0.0.1:9001"] } }
            """
        do {
            _ = try ConfigLoader.parse(yaml: text)
            Issue.record("expected errors")
        } catch {
            let paths = error.problems.map(\.path)
            #expect(paths.contains("listeners[0].tls.private_key"))
            #expect(paths.contains("listeners[1].tls"))
            #expect(paths.contains("listeners[2].tls.certificates[0].private_key"))
        }
    }

    @Test func relativeFilesAreFoundNextToTheConfig() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("turnout-cfg-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try Data("x".utf8).write(to: dir.appendingPathComponent("cert.pem"))
        try Data("""
            listeners:
              - address: 127.0.0.1:8443
                tls: { certificate: cert.pem, private_key: missing.key }
            pools: { blue: { endpoints: ["127.0.0.1:9001"] } }
            """.utf8).write(to: dir.appendingPathComponent("t.yaml"))
        let c = try ConfigLoader.load(path: dir.appendingPathComponent("t.yaml").path)
        let tls = try #require(c.listeners[0].tls)
        #expect(tls.certificates[0].certificate == dir.appendingPathComponent("cert.pem").path)
        // Not found anywhere: left as written, so the error names what the user wrote.
        #expect(tls.certificates[0].privateKey == "missing.key")
    }

    @Test func notYAMLIsAClearError() {
        #expect(throws: ConfigErrors.self) { try ConfigLoader.parse(yaml: "listeners: [\n  - {") }
        #expect(throws: ConfigErrors.self) { try ConfigLoader.parse(yaml: "") }
        #expect(throws: ConfigErrors.self) { try ConfigLoader.parse(yaml: "- just\n- a list") }
    }
}

@Suite struct ValueParsingTests {
    @Test(arguments: [("90", 9000), ("12.5", 1250), ("0.01", 1), ("100", 10_000), ("0", 0), ("33.30", 3330)])
    func percentagesParse(_ text: String, _ bp: Int) throws {
        #expect(try Percent.parseBasisPoints(text).get() == bp)
    }

    @Test(arguments: ["100.01", "-1", "1.234", "abc", "", "1e2", "1000", "5."])
    func badPercentagesAreRefused(_ text: String) {
        #expect(throws: ConfigProblem.self) { try Percent.parseBasisPoints(text).get() }
    }

    @Test func percentFormatting() {
        #expect(Percent.format(basisPoints: 9000) == "90")
        #expect(Percent.format(basisPoints: 1250) == "12.5")
        #expect(Percent.format(basisPoints: 1) == "0.01")
    }

    @Test(arguments: [("2s", 2000), ("500ms", 500), ("1m", 60_000), ("1m30s", 90_000), ("1.5s", 1500), ("1h", 3_600_000)])
    func durationsParse(_ text: String, _ ms: Int64) {
        #expect(DurationParser.milliseconds(text) == ms)
    }

    @Test(arguments: ["", "2", "s", "2x", "-1s", "1.2.3s"])
    func badDurationsAreRefused(_ text: String) {
        #expect(DurationParser.milliseconds(text) == nil)
    }

    @Test func hostPorts() throws {
        #expect(try HostPort.parse("[::1]:8080").get() == HostPort(host: "::1", port: 8080))
        #expect(try HostPort.parse("example.com:80").get().host == "example.com")
        #expect(throws: ConfigProblem.self) { try HostPort.parse("::1:80").get() }
        #expect(throws: ConfigProblem.self) { try HostPort.parse("host:0").get() }
        #expect(try HostPort.parse("host:0", allowPortZero: true).get().port == 0)
    }
}

@Suite struct TimestampTests {
    @Test func formatsUTCWithMilliseconds() {
        #expect(Timestamp.iso8601(Date(timeIntervalSince1970: 0)) == "1970-01-01T00:00:00.000Z")
        #expect(Timestamp.iso8601(Date(timeIntervalSince1970: 1_795_305_600.25)) == "2026-11-22T00:00:00.250Z")
    }
}
