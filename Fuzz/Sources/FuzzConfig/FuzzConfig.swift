import FuzzSupport
import TurnoutCore

/// The config loader: any text gives a config or a list of problems, never a crash.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzConfig(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    do {
        let c = try ConfigLoader.parse(yaml: text)
        precondition(!c.pools.isEmpty && !c.listeners.isEmpty, "a config without pools or listeners was accepted")
        precondition(c.routing.weights.values.reduce(0, +) == 10_000, "weights that do not sum to 100% were accepted")
    } catch {
        precondition(!error.problems.isEmpty, "an error without problems")
    }
    return 0
}

/// The entry point SwiftPM gives this executable (see FuzzSupport).
@_cdecl("FuzzConfig_main")
func FuzzConfigMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt { runFuzzer(argc, argv, fuzzConfig) }
