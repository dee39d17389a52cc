import Benchmark
import TurnoutCore
import TurnoutServer

/// The per-request work of the data path, one operation at a time: parsing a request head,
/// routing (plain and sticky), and building the heads Turnout sends. Each reports time and
/// allocations per operation (`make bench-micro`).
let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .cpuTotal, .mallocCountTotal, .throughput],
        maxDuration: .seconds(2), maxIterations: 1_000_000)

    let request = Array("""
        GET /api/v1/items?page=2 HTTP/1.1\r
        Host: shop.example.com\r
        User-Agent: Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/120.0\r
        Accept: text/html,application/xhtml+xml\r
        Accept-Language: en-GB,en;q=0.5\r
        Accept-Encoding: gzip, deflate, br\r
        Cookie: turnout_cohort=9f3a61c2e4b5d708; session=abc123\r
        Connection: keep-alive\r
        \r

        """.utf8)

    Benchmark("HTTP/1 request head: find end and parse") { benchmark in
        for _ in benchmark.scaledIterations {
            let end = try HTTPHeadParser.findHeadEnd(request, start: 0, end: request.count, limit: 65536)!
            blackHole(try HTTPHeadParser.parseRequest(request, start: 0, end: end))
        }
    }

    let config = try! ConfigLoader.parse(yaml: """
        listeners: [ { address: "127.0.0.1:8080" } ]
        pools:
          blue: { endpoints: ["127.0.0.1:9001", "127.0.0.1:9003"] }
          green: { endpoints: ["127.0.0.1:9002"] }
        routing: { weights: { blue: 90, green: 10 } }
        """)
    let store = RoutingStore(config: config, state: .initial(from: config))
    for e in store.allEndpoints { store.setHealth(endpointID: e.id, .healthy) }
    let stickyConfig = try! ConfigLoader.parse(yaml: """
        listeners: [ { address: "127.0.0.1:8080" } ]
        pools:
          blue: { endpoints: ["127.0.0.1:9001", "127.0.0.1:9003"] }
          green: { endpoints: ["127.0.0.1:9002"] }
        routing: { weights: { blue: 90, green: 10 }, sticky: { cookie: turnout_cohort } }
        """)
    let stickyStore = RoutingStore(config: stickyConfig, state: .initial(from: stickyConfig))
    for e in stickyStore.allEndpoints { stickyStore.setHealth(endpointID: e.id, .healthy) }

    Benchmark("routing decision, weighted") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(store.table.route(stickyKey: nil, previewPool: nil))
        }
    }

    Benchmark("routing decision, sticky cohort") { benchmark in
        for i in benchmark.scaledIterations {
            blackHole(stickyStore.table.route(stickyKey: i & 1 == 0 ? "9f3a61c2e4b5d708" : "0123456789abcdef", previewPool: nil))
        }
    }

    let end = try! HTTPHeadParser.findHeadEnd(request, start: 0, end: request.count, limit: 65536)!
    let head = try! HTTPHeadParser.parseRequest(request, start: 0, end: end)
    let responseBytes = Array("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 1234\r\nCache-Control: max-age=60\r\nDate: Sun, 22 Nov 2026 00:00:00 GMT\r\n\r\n".utf8)
    let response = try! HTTPHeadParser.parseResponse(responseBytes, start: 0, end: responseBytes.count)

    Benchmark("upstream request head serialisation") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(HeaderRewriter.upstreamRequest(head, clientIP: "203.0.113.7", scheme: "http", fallbackHost: "127.0.0.1:9001"))
        }
    }

    Benchmark("client response head serialisation") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(HeaderRewriter.clientResponse(response, clientFraming: .length(1234), keepAlive: true,
                                                    clientVersion: .http11, setCookie: nil))
        }
    }

    Benchmark("HTTP/1 response head: find end and parse") { benchmark in
        for _ in benchmark.scaledIterations {
            let e = try HTTPHeadParser.findHeadEnd(responseBytes, start: 0, end: responseBytes.count, limit: 65536)!
            blackHole(try HTTPHeadParser.parseResponse(responseBytes, start: 0, end: e))
        }
    }
}
