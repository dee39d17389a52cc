import FuzzSupport
import TurnoutCore

/// What the decoder made of an input: a complete body, a rejection, or a body still waiting for
/// more bytes when the input ran out; with the data decoded so far.
enum Outcome: Equatable {
    case complete([UInt8])
    case rejected
    case incomplete([UInt8])
}

/// The chunked decoder, fed the input in pieces of varying size: it must never crash, never read
/// out of bounds, always make progress, and come to the same outcome with the same data whatever
/// the split: an input accepted whole and rejected in pieces (or the reverse) is a finding.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzChunked(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard !bytes.isEmpty else { return 0 }
    let step = Int(bytes[0] % 17) + 1
    let input = Array(bytes.dropFirst())
    func decode(pieceSize: Int) -> Outcome {
        var decoder = ChunkedDecoder()
        var buffer: [UInt8] = []
        var index = 0
        var out: [UInt8] = []
        var fed = 0
        while true {
            let event: ChunkedDecoder.Event
            do { event = try decoder.next(buffer, index: &index, end: buffer.count) } catch { return .rejected }
            switch event {
            case .data(let r):
                precondition(!r.isEmpty && r.upperBound <= buffer.count, "bad data range")
                out += buffer[r]
            case .chunkStart, .chunkEnd:
                continue
            case .end:
                return .complete(out)
            case .needMore:
                guard fed < input.count else { return .incomplete(out) }
                let n = min(pieceSize, input.count - fed)
                buffer += input[fed..<(fed + n)]
                fed += n
            }
        }
    }
    let whole = decode(pieceSize: max(1, input.count))
    let pieces = decode(pieceSize: step)
    precondition(whole == pieces, "decoding depends on how the input is split: whole \(whole), in pieces of \(step) \(pieces)")
    return 0
}

/// The entry point SwiftPM gives this executable (see FuzzSupport).
@_cdecl("FuzzChunked_main")
func FuzzChunkedMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt { runFuzzer(argc, argv, fuzzChunked) }
