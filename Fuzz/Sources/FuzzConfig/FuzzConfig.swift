import TurnoutCore

@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt
) -> CInt

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

/// SwiftPM links executables with `main` renamed to `FuzzConfig_main`; this hands control to libFuzzer.
@_cdecl("FuzzConfig_main")
func FuzzConfigMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var count = argc
    var values = argv
    return LLVMFuzzerRunDriver(&count, &values, fuzzConfig)
}
