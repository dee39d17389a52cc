import TurnoutCore

@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt
) -> CInt

/// Request heads: finding the end, the plausibility check and the strict parse must never crash,
/// hang or accept a head whose framing is ambiguous.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRequestHead(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    _ = HTTPHeadParser.requestPrefixIsPlausible(bytes, start: 0, end: bytes.count)
    guard let end = try? HTTPHeadParser.findHeadEnd(bytes, start: 0, end: bytes.count, limit: 64 * 1024) else { return 0 }
    if let head = try? HTTPHeadParser.parseRequest(bytes, start: 0, end: end, maxHeaderCount: 100) {
        // What Turnout accepts has exactly one framing.
        let te = head.headers.values("transfer-encoding")
        let cl = head.headers.values("content-length")
        precondition(te.isEmpty || cl.isEmpty, "accepted both Transfer-Encoding and Content-Length")
        precondition(head.headers.values("host").count <= 1, "accepted two Host fields")
    }
    return 0
}

/// SwiftPM links executables with `main` renamed to `FuzzRequestHead_main`; this hands control to libFuzzer.
@_cdecl("FuzzRequestHead_main")
func FuzzRequestHeadMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var count = argc
    var values = argv
    return LLVMFuzzerRunDriver(&count, &values, fuzzRequestHead)
}
