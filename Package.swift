// swift-tools-version:6.1
import PackageDescription

// Release builds of the data path leave out the run-time exclusivity checks (every access to a
// class's stored property or a global, checked against a per-thread access set): they cost about
// 1% of the CPU per proxied request. The compile-time checks stay, and debug builds (the unit
// tests) keep the run-time ones.
let releaseSettings: [SwiftSetting] = [.unsafeFlags(["-enforce-exclusivity=unchecked", "-cross-module-optimization"], .when(configuration: .release))]

let package = Package(
    name: "turnout",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "turnout", targets: ["turnout"]),
        .library(name: "TurnoutCore", targets: ["TurnoutCore"]),
        .library(name: "TurnoutServer", targets: ["TurnoutServer"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-atomics", from: "1.3.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        .systemLibrary(
            name: "CNghttp2",
            pkgConfig: "libnghttp2",
            providers: [.apt(["libnghttp2-dev"])]
        ),
        .systemLibrary(
            name: "COpenSSL",
            pkgConfig: "openssl",
            providers: [.apt(["libssl-dev"])]
        ),
        // Linux calls the Glibc module does not expose (accept4).
        .target(name: "CTurnoutSys"),
        .target(
            name: "TurnoutCore",
            dependencies: [
                .product(name: "Yams", package: "Yams"),
                .product(name: "Atomics", package: "swift-atomics"),
            ],
            swiftSettings: releaseSettings
        ),
        .target(
            name: "TurnoutServer",
            dependencies: [
                "TurnoutCore",
                "CNghttp2",
                "COpenSSL",
                "CTurnoutSys",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Atomics", package: "swift-atomics"),
            ],
            swiftSettings: releaseSettings
        ),
        .executableTarget(
            name: "turnout",
            dependencies: [
                "TurnoutCore",
                "TurnoutServer",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            // jemalloc (Debian libjemalloc-dev) serves every allocation of the process, the Swift
            // runtime's and nghttp2's included, as nghttpx does: HTTP/2 allocates in bursts (a
            // read brings a hundred requests), which overflow glibc's per-thread caches of seven
            // chunks per size; about 3% of the CPU per h2c request, 2% per HTTP/1.1 request.
            linkerSettings: [.linkedLibrary("jemalloc")]
        ),
        .testTarget(
            name: "TurnoutCoreTests",
            dependencies: ["TurnoutCore"]
        ),
        .testTarget(
            name: "TurnoutServerTests",
            dependencies: ["TurnoutServer", "TurnoutCore", "COpenSSL", .product(name: "Logging", package: "swift-log")],
            exclude: ["Fixtures"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
