import FuzzSupport
import TurnoutCore

/// Upstream response heads and their framing.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzResponseHead(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let end = try? HTTPHeadParser.findHeadEnd(bytes, start: 0, end: bytes.count, limit: 64 * 1024) else { return 0 }
    if let head = try? HTTPHeadParser.parseResponse(bytes, start: 0, end: end) {
        for method in ["GET", "HEAD", "POST"] { _ = try? head.framing(requestMethod: method) }
    }
    return 0
}

/// The entry point SwiftPM gives this executable (see FuzzSupport).
@_cdecl("FuzzResponseHead_main")
func FuzzResponseHeadMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt { runFuzzer(argc, argv, fuzzResponseHead) }
