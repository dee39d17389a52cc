/// Bytes waiting to become DATA frames of one HTTP/2 stream: appended by whoever produces them
/// (a response for a client, a request body for an upstream), taken by nghttp2's data source.
/// Loop-confined, owned by its stream.
struct HTTP2DataQueue {
    private var bytes: [UInt8] = []
    private var start = 0

    /// Bytes not taken yet.
    var count: Int { bytes.count - start }
    var isEmpty: Bool { start == bytes.count }

    mutating func append(_ more: UnsafeRawBufferPointer) {
        if start > 0 && start == bytes.count {
            bytes.removeAll(keepingCapacity: true)
            start = 0
        }
        bytes.append(contentsOf: more)
    }

    /// Whether it has memory of its own (a queue starts without).
    var hasMemory: Bool { bytes.capacity > 0 }

    /// Takes the memory of `buffer` (empty, from `releaseMemory`) for its bytes; only while it
    /// has none of its own.
    mutating func adopt(_ buffer: [UInt8]) {
        guard bytes.capacity == 0, buffer.isEmpty else { return }
        bytes = buffer
        start = 0
    }

    /// Gives its memory away for another queue, emptied; nil when it has none worth keeping
    /// (none, or more than `maxKept`).
    mutating func releaseMemory(maxKept: Int) -> [UInt8]? {
        guard bytes.capacity > 0 && bytes.capacity <= maxKept else { return nil }
        var out: [UInt8] = []
        swap(&out, &bytes)
        start = 0
        out.removeAll(keepingCapacity: true)
        return out
    }

    /// Replaces whatever waits with `body` (an answer of Turnout's own).
    mutating func replace(with body: [UInt8]) {
        bytes = body
        start = 0
    }

    /// Copies up to `length` bytes into nghttp2's frame buffer; returns how many. Once everything
    /// was taken the array is emptied, and let go when it served more than 64 KiB or grew past
    /// 1 MiB (a stream that streamed a lot does not keep its peak).
    mutating func take(into buf: UnsafeMutablePointer<UInt8>, length: Int) -> Int {
        let n = min(length, count)
        if n > 0 {
            bytes.withUnsafeBytes { src in
                UnsafeMutableRawPointer(buf).copyMemory(from: src.baseAddress! + start, byteCount: n)
            }
            start += n
        }
        if start == bytes.count {
            if start > 64 * 1024 || bytes.capacity > 1 << 20 {
                bytes = []
            } else {
                bytes.removeAll(keepingCapacity: true)
            }
            start = 0
        }
        return n
    }
}
