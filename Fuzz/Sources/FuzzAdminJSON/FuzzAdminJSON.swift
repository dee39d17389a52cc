import FuzzSupport
import TurnoutCore

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

/// The entry point SwiftPM gives this executable (see FuzzSupport).
@_cdecl("FuzzAdminJSON_main")
func FuzzAdminJSONMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt { runFuzzer(argc, argv, fuzzAdminJSON) }
