import TurnoutCore

@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt
) -> CInt

/// Admin request bodies: JSON decoding and the weight checks.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzAdminJSON(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let obj = try? AdminJSON.object(bytes, allowed: ["weights", "pool", "force"]) else { return 0 }
    _ = try? AdminJSON.string(obj, "pool", required: false)
    _ = try? AdminJSON.bool(obj, "force")
    if let w = try? AdminJSON.weights(obj, "weights") {
        precondition(w.values.allSatisfy { $0 >= 0 && $0 <= 10_000 }, "a weight outside 0-100% was accepted")
    }
    return 0
}

/// SwiftPM links executables with `main` renamed to `FuzzAdminJSON_main`; this hands control to libFuzzer.
@_cdecl("FuzzAdminJSON_main")
func FuzzAdminJSONMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var count = argc
    var values = argv
    return LLVMFuzzerRunDriver(&count, &values, fuzzAdminJSON)
}
