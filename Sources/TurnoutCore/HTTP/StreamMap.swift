/// Objects by HTTP/2 stream id, for the stream look-up each nghttp2 callback makes: an open
/// addressing table (linear probing, Fibonacci hashing, deletion by backward shift) over two
/// arrays, without the per-process seeded hashing a `Dictionary` does for every look-up. Ids are
/// positive (31 bits); 0 marks a free slot. The table doubles at three quarters full and never
/// shrinks (a connection's streams in flight are bounded by its concurrency limit).
public struct StreamMap<Value: AnyObject> {
    private var keys: [Int32]
    private var slots: [Value?]
    public private(set) var count = 0
    private var shift: Int

    public init() {
        keys = Array(repeating: 0, count: 16)
        slots = Array(repeating: nil, count: 16)
        shift = 64 - 4
    }

    public var isEmpty: Bool { count == 0 }

    @inline(__always)
    private func home(_ key: Int32) -> Int {
        Int(truncatingIfNeeded: (UInt64(UInt32(bitPattern: key)) &* 0x9E37_79B9_7F4A_7C15) >> UInt64(shift))
    }

    @inline(__always)
    private func find(_ key: Int32) -> Int? {
        let mask = keys.count - 1
        var i = home(key)
        while true {
            let k = keys[i]
            if k == key { return i }
            if k == 0 { return nil }
            i = (i + 1) & mask
        }
    }

    public subscript(key: Int32) -> Value? {
        get {
            guard key > 0, let i = find(key) else { return nil }
            return slots[i]
        }
        set {
            precondition(key > 0, "stream ids are positive")
            if let newValue { insert(key, newValue) } else { removeValue(forKey: key) }
        }
    }

    private mutating func insert(_ key: Int32, _ value: Value) {
        if let i = find(key) {
            slots[i] = value
            return
        }
        if (count + 1) * 4 > keys.count * 3 { grow() }
        let mask = keys.count - 1
        var i = home(key)
        while keys[i] != 0 { i = (i + 1) & mask }
        keys[i] = key
        slots[i] = value
        count += 1
    }

    @discardableResult
    public mutating func removeValue(forKey key: Int32) -> Value? {
        guard key > 0, var i = find(key) else { return nil }
        let removed = slots[i]
        keys[i] = 0
        slots[i] = nil
        count -= 1
        // Entries after the gap that would no longer be found move back into it.
        let mask = keys.count - 1
        var j = i
        while true {
            j = (j + 1) & mask
            let k = keys[j]
            if k == 0 { break }
            let h = home(k)
            // The entry stays when its home lies cyclically in (i, j].
            let stays = i <= j ? (i < h && h <= j) : (i < h || h <= j)
            if stays { continue }
            keys[i] = k
            slots[i] = slots[j]
            keys[j] = 0
            slots[j] = nil
            i = j
        }
        return removed
    }

    private mutating func grow() {
        let oldKeys = keys, oldSlots = slots
        keys = Array(repeating: 0, count: oldKeys.count * 2)
        slots = Array(repeating: nil, count: oldKeys.count * 2)
        shift -= 1
        count = 0
        for (k, v) in zip(oldKeys, oldSlots) where k != 0 { insert(k, v!) }
    }

    public mutating func removeAll() {
        for i in keys.indices where keys[i] != 0 {
            keys[i] = 0
            slots[i] = nil
        }
        count = 0
    }

    /// The objects, in no particular order.
    public var values: [Value] { slots.compactMap { $0 } }
}
