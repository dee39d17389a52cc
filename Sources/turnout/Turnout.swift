import ArgumentParser
import Foundation
import Logging
import TurnoutCore
import TurnoutServer

@main
struct Turnout: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "turnout",
        abstract: "A reverse proxy that switches traffic between blue and green application pools.",
        discussion: """
            Run the proxy with `turnout serve --config FILE`, or try it with `turnout demo`.
            The reference (config file, admin API, routing, metrics and logs) is in docs/ of the source tree, starting at docs/README.md.
            """,
        version: TurnoutVersion.text,
        subcommands: [Serve.self, Demo.self, CheckConfig.self, Status.self, Switch.self, Weights.self, Rollback.self, Mirror.self, Reload.self, Ramp.self, Events.self, Endpoints.self, WaitDrained.self]
    )

    /// Exit status: 0 success, 1 refused or failed, 2 bad usage (ArgumentParser's 64 becomes 2).
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            let code = exitCode(for: error)
            if code == .validationFailure {
                FileHandle.standardError.write(Data((fullMessage(for: error) + "\n").utf8))
                Foundation.exit(2)
            }
            exit(withError: error)
        }
    }
}


/// Options shared by the commands that run a proxy.
struct LogOptions: ParsableArguments {
    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    func bootstrap() throws -> Logger {
        guard let level = Logger.Level(rawValue: logLevel) else {
            throw ValidationError("unknown log level \"\(logLevel)\"")
        }
        LoggingSystem.bootstrap { label in
            var h = AsyncLogHandler(label: label)
            h.logLevel = level
            return h
        }
        var logger = Logger(label: "turnout")
        logger.logLevel = level
        return logger
    }
}

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the proxy.",
        discussion: """
            Loads and validates FILE, probes every endpoint once, then starts accepting on every
            listener. SIGTERM or SIGINT drains: listeners close, in-flight requests finish (up to
            timeouts.drain), then turnout exits 0.
            """
    )

    @Option(name: .shortAndLong, help: "The YAML config file.")
    var config: String

    @Flag(help: "Discard an unreadable state file and start from the config's weights.")
    var resetState = false

    @OptionGroup var log: LogOptions

    func run() throws {
        let logger = try log.bootstrap()
        let cfg: TurnoutConfig
        do {
            cfg = try ConfigLoader.load(path: config)
        } catch {
            FileHandle.standardError.write(Data("turnout: invalid config \(config):\n\(error.description)\n".utf8))
            throw ExitCode(1)
        }
        do {
            let state = try ProxyServer.initialState(config: cfg, resetState: resetState, logger: logger)
            let server = try ProxyServer(config: cfg, state: state, logger: logger, configPath: config)
            try server.start()
            server.runUntilSignalled()
        } catch {
            AsyncLogHandler.flush()
            FileHandle.standardError.write(Data("turnout: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the proxy with two built-in demo apps (blue and green).",
        discussion: """
            Starts a blue and a green app on free loopback ports (they answer / with their colour and
            /healthz with 200) and the proxy on 127.0.0.1:8080 with all traffic on blue.
            """
    )

    @Option(help: "Port for the proxy.")
    var port: Int = 8080

    @Option(help: "Initial weights, e.g. blue=90,green=10.")
    var weights: String = "blue=100,green=0"

    @Option(help: "Admin API socket, for `turnout status`, `switch`, `weights` and `rollback`.")
    var adminSocket: String = AdminConfig.defaultSocket

    @Option(help: "Persist routing state in this file (default: none, every demo starts fresh).")
    var stateFile: String?

    @OptionGroup var log: LogOptions

    func run() throws {
        let logger = try log.bootstrap()
        guard (1...65535).contains(port) else { throw ValidationError("--port must be 1-65535") }
        let blue = try DemoApp(colour: "blue")
        let green = try DemoApp(colour: "green")
        blue.start()
        green.start()
        var ws = ""
        for part in weights.split(separator: ",") {
            let kv = part.split(separator: "=")
            guard kv.count == 2 else { throw ValidationError("--weights takes pool=percent pairs, e.g. blue=90,green=10") }
            ws += "    \(kv[0]): \(kv[1])\n"
        }
        let yaml = """
            workers: auto
            listeners:
              - address: 127.0.0.1:\(port)
            pools:
              blue: { endpoints: ["\(blue.address)"] }
              green: { endpoints: ["\(green.address)"] }
            routing:
              weights:
            \(ws)
              preview_header: X-Turnout-Pool
            health: { interval: 1s, timeout: 500ms, rise: 2, fall: 2 }
            admin: { socket: \(adminSocket) }
            \(stateFile.map { "state_file: \($0)" } ?? "")
            """
        let cfg: TurnoutConfig
        do {
            cfg = try ConfigLoader.parse(yaml: yaml)
        } catch {
            throw ValidationError("invalid demo settings:\n\(error.description)")
        }
        let server: ProxyServer
        do {
            let state = try ProxyServer.initialState(config: cfg, resetState: false, logger: logger)
            server = try ProxyServer(config: cfg, state: state, logger: logger)
            try server.start()
        } catch {
            AsyncLogHandler.flush()
            FileHandle.standardError.write(Data("turnout: \(error)\n".utf8))
            throw ExitCode(1)
        }
        let banner = """
            Turnout demo
              proxy:     http://127.0.0.1:\(port)/
              blue app:  http://\(blue.address)/
              green app: http://\(green.address)/
              admin:     unix:\(adminSocket)
            Try: curl http://127.0.0.1:\(port)/   then   turnout switch green   (Ctrl-C to stop)

            """
        FileHandle.standardOutput.write(Data(banner.utf8))
        server.runUntilSignalled()
    }
}

struct CheckConfig: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config",
        abstract: "Validate a config file.",
        discussion: "Exits 0 when FILE is valid; otherwise prints every problem with its key path and exits 1."
    )

    @Argument(help: "The YAML config file.")
    var file: String

    func run() throws {
        let cfg: TurnoutConfig
        do {
            cfg = try ConfigLoader.load(path: file)
        } catch {
            report(error.problems.map(\.description))
            throw ExitCode(1)
        }
        // Certificates and keys are loaded as start-up would load them.
        let tlsProblems = ProxyServer.tlsProblems(cfg)
        if !tlsProblems.isEmpty {
            report(tlsProblems)
            throw ExitCode(1)
        }
        print("\(file): OK (\(cfg.listeners.count) listener(s), pools: \(cfg.pools.map(\.name).joined(separator: ", ")))")
    }

    private func report(_ problems: [String]) {
        FileHandle.standardError.write(Data("\(file): \(problems.count) problem(s)\n".utf8))
        for p in problems { FileHandle.standardError.write(Data("  \(p)\n".utf8)) }
    }
}
