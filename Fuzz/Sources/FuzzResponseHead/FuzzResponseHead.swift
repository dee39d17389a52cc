import TurnoutCore

@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt
) -> CInt

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

/// SwiftPM links executables with `main` renamed to `FuzzResponseHead_main`; this hands control to libFuzzer.
@_cdecl("FuzzResponseHead_main")
func FuzzResponseHeadMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var count = argc
    var values = argv
    return LLVMFuzzerRunDriver(&count, &values, fuzzResponseHead)
}
