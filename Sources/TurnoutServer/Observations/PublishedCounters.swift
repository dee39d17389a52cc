import Atomics
import Synchronization

/// A block of counters that one event loop writes and any thread reads, without the reader
/// entering the loop or the writer taking a lock: each slot is a 64-bit word accessed with relaxed
/// atomics. Only the owning loop writes, so an increment is a plain load and store (no locked
/// instruction on the data path). A reader sees every slot's latest value, not one instant across
/// slots: counters read a few nanoseconds apart, which is what a scrape or a ramp judge needs.
final class CounterBlock: @unchecked Sendable {
    let slots: Int
    private let base: UnsafeMutablePointer<UnsafeAtomic<UInt64>.Storage>

    init(slots: Int) {
        self.slots = slots
        base = .allocate(capacity: slots)
        for i in 0..<slots { (base + i).initialize(to: .init(0)) }
    }

    deinit {
        base.deinitialize(count: slots)
        base.deallocate()
    }

    /// Adds `n` to a slot. Only the owning loop calls this.
    @inline(__always)
    func add(_ slot: Int, _ n: UInt64 = 1) {
        let a = UnsafeAtomic<UInt64>(at: base + slot)
        a.store(a.load(ordering: .relaxed) &+ n, ordering: .relaxed)
    }

    /// Sets a slot. Only the owning loop calls this.
    @inline(__always)
    func set(_ slot: Int, _ value: UInt64) {
        UnsafeAtomic<UInt64>(at: base + slot).store(value, ordering: .relaxed)
    }

    /// Reads a slot, from any thread.
    @inline(__always)
    func load(_ slot: Int) -> UInt64 {
        UnsafeAtomic<UInt64>(at: base + slot).load(ordering: .relaxed)
    }
}

/// Counter blocks by key, created by the owning loop as keys appear. The loop finds its blocks in
/// its own table; readers get the list from a lock the loop takes only when it adds a block.
final class CounterTable<Key: Hashable & Sendable>: @unchecked Sendable {
    let slots: Int
    private var local: [Key: CounterBlock] = [:]
    private let published = Mutex<[Key: CounterBlock]>([:])

    init(slots: Int) { self.slots = slots }

    /// The block for `key`; on the owning loop.
    @inline(__always)
    func block(_ key: Key) -> CounterBlock {
        if let b = local[key] { return b }
        let b = CounterBlock(slots: slots)
        local[key] = b
        published.withLock { $0[key] = b }
        return b
    }

    /// Every block so far; from any thread.
    func blocks() -> [Key: CounterBlock] { published.withLock { $0 } }
}

/// Counter blocks by endpoint id (small and dense: an array, so that counting a request indexes
/// rather than hashes); otherwise as `CounterTable`. A block is never removed: `published` keeps
/// every one for as long as the table lives, so the loop's own list holds them unretained and
/// `withBlock` counts without a reference count.
final class EndpointCounterTable: @unchecked Sendable {
    let slots: Int
    private var local: [Unmanaged<CounterBlock>?] = []
    private let published = Mutex<[Int: CounterBlock]>([:])

    init(slots: Int) { self.slots = slots }

    /// Calls `body` with the block for `id` (made when there is none yet), without counting it;
    /// on the owning loop.
    @inline(__always)
    func withBlock<R>(_ id: Int, _ body: (CounterBlock) -> R) -> R {
        let b = id < local.count ? local[id] : nil
        return (b ?? make(id))._withUnsafeGuaranteedRef(body)
    }

    private func make(_ id: Int) -> Unmanaged<CounterBlock> {
        local.grow(toInclude: id, with: nil)
        let b = CounterBlock(slots: slots)
        published.withLock { $0[id] = b }
        let u = Unmanaged.passUnretained(b)
        local[id] = u
        return u
    }

    func blocks() -> [Int: CounterBlock] { published.withLock { $0 } }
}
