import FuzzSupport
import TurnoutCore

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

/// The entry point SwiftPM gives this executable (see FuzzSupport).
@_cdecl("FuzzRequestHead_main")
func FuzzRequestHeadMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt { runFuzzer(argc, argv, fuzzRequestHead) }
