/// Objects by HTTP/2 stream id, for the stream look-up each nghttp2 callback makes: an open
/// addressing table (linear probing, Fibonacci hashing, deletion by backward shift) over two
/// arrays, without the per-process seeded hashing a `Dictionary` does for every look-up. Ids are
/// positive (31 bits); 0 marks a free slot. The table doubles at three quarters full and never
/// shrinks (a connection's streams in flight are bounded by its concurrency limit).
///
/// It remembers the entry last inserted or looked up (`lookup`, `withEntry`): callbacks come in
/// runs for one stream (a HEADERS frame's fields, its end, its DATA), and the run's later ones
/// find it without hashing. Remembered unretained (the table holds every entry) and forgotten
/// when the entry leaves the table.
public struct StreamMap<Value: AnyObject> {
    private var keys: [Int32]
    private var slots: [Value?]
    public private(set) var count = 0
    private var shift: Int
    private var recentKey: Int32 = 0
    private var recent: Unmanaged<Value>?

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

    /// `self[key]`, remembered as the recent entry.
    @inline(__always)
    public mutating func lookup(_ key: Int32) -> Value? {
        withEntry(key) { $0 }
    }

    /// Calls `body` with the entry for `key` without retaining it (the table's reference keeps it
    /// alive), and remembers it as the recent entry; nil when there is none. `body` must not
    /// remove the entry from the table.
    @inline(__always)
    public mutating func withEntry<R>(_ key: Int32, _ body: (Value) -> R) -> R? {
        unretained(key)?._withUnsafeGuaranteedRef(body)
    }

    /// The entry for `key` without a reference count, remembered as the recent entry; nil when
    /// there is none. For a caller whose use of the entry reaches the table again (which
    /// `withEntry`'s body cannot: it runs inside the table's access), and which knows the entry
    /// stays in the table meanwhile.
    @inline(__always)
    public mutating func unretained(_ key: Int32) -> Unmanaged<Value>? {
        if key != recentKey || recent == nil {
            guard key > 0, let i = find(key), let v = slots[i] else { return nil }
            remember(key, v)
        }
        return recent
    }

    @inline(__always)
    private mutating func remember(_ key: Int32, _ value: Value) {
        recentKey = key
        recent = Unmanaged.passUnretained(value)
    }

    @inline(__always)
    private mutating func forget(_ key: Int32) {
        if key == recentKey {
            recentKey = 0
            recent = nil
        }
    }

    /// Takes `value` (moved into its slot, not copied: no retain and release on the way in).
    private mutating func insert(_ key: Int32, _ value: consuming Value) {
        remember(key, value)
        if let i = find(key) {
            slots[i] = consume value
            return
        }
        if (count + 1) * 4 > keys.count * 3 { grow() }
        let mask = keys.count - 1
        var i = home(key)
        while keys[i] != 0 { i = (i + 1) & mask }
        keys[i] = key
        slots[i] = consume value
        count += 1
    }

    @discardableResult
    public mutating func removeValue(forKey key: Int32) -> Value? {
        guard key > 0, var i = find(key) else { return nil }
        forget(key)
        // Moved out, not copied (no retain and release).
        let removed = slots[i].take()
        keys[i] = 0
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
            slots.swapAt(i, j)  // slot i is empty: the entry moves without a count
            keys[j] = 0
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
        forget(recentKey)
        for i in keys.indices where keys[i] != 0 {
            keys[i] = 0
            slots[i] = nil
        }
        count = 0
    }

    /// The objects, in no particular order.
    public var values: [Value] { slots.compactMap { $0 } }
}
