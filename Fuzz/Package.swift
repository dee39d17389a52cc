// swift-tools-version:6.1
// libFuzzer targets for Turnout's parsers. Build and run with `make fuzz` (see README "Fuzzing"):
//   swift build -c debug -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library
import PackageDescription

let targets = ["FuzzRequestHead", "FuzzResponseHead", "FuzzChunked", "FuzzConfig", "FuzzAdminJSON"]

let package = Package(
    name: "TurnoutFuzz",
    dependencies: [.package(name: "Turnout", path: "..")],
    targets: [.target(name: "FuzzSupport", path: "Sources/FuzzSupport")] + targets.map { name in
        .executableTarget(name: name, dependencies: ["FuzzSupport", .product(name: "TurnoutCore", package: "Turnout")],
                          path: "Sources/\(name)")
    },
    swiftLanguageModes: [.v6]
)
