import FuzzSupport
import TurnoutCore

/// The chunked decoder, fed the input in pieces of varying size: it must never crash, never read
/// out of bounds, always make progress, and decode the same data whatever the split.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzChunked(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard !bytes.isEmpty else { return 0 }
    let step = Int(bytes[0] % 17) + 1
    let input = Array(bytes.dropFirst())
    func decode(pieceSize: Int) -> (data: [UInt8], ok: Bool) {
        var decoder = ChunkedDecoder()
        var buffer: [UInt8] = []
        var index = 0
        var out: [UInt8] = []
        var fed = 0
        while true {
            let event: ChunkedDecoder.Event
            do { event = try decoder.next(buffer, index: &index, end: buffer.count) } catch { return (out, false) }
            switch event {
            case .data(let r):
                precondition(!r.isEmpty && r.upperBound <= buffer.count, "bad data range")
                out += buffer[r]
            case .end:
                return (out, true)
            case .needMore:
                guard fed < input.count else { return (out, false) }
                let n = min(pieceSize, input.count - fed)
                buffer += input[fed..<(fed + n)]
                fed += n
            }
        }
    }
    let whole = decode(pieceSize: input.count)
    let pieces = decode(pieceSize: step)
    if whole.ok && pieces.ok { precondition(whole.data == pieces.data, "decoding depends on how the input is split") }
    return 0
}

/// The entry point SwiftPM gives this executable (see FuzzSupport).
@_cdecl("FuzzChunked_main")
func FuzzChunkedMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt { runFuzzer(argc, argv, fuzzChunked) }
