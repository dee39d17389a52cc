// swift-tools-version:6.1
// Micro-benchmarks of Turnout's per-request work (ordo-one/benchmark). Run with `make bench-micro`:
//   swift package --package-path Benchmarks benchmark
import PackageDescription

let package = Package(
    name: "TurnoutBenchmarks",
    platforms: [.macOS(.v13)],
    dependencies: [
        .package(name: "Turnout", path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "TurnoutMicro",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "TurnoutCore", package: "Turnout"),
                .product(name: "TurnoutServer", package: "Turnout"),
            ],
            path: "Benchmarks/TurnoutMicro",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ],
    swiftLanguageModes: [.v5]
)
