import Dispatch
import Foundation
import TurnoutCore

/// Something owned by an event loop that has deadlines; the loop's tick asks it to check them.
protocol LoopTimed: AnyObject {
    func checkTimeouts(now: UInt64)
}

/// Something owned by an event loop that gathers output during a turn of the loop and writes it
/// once at the turn's end (an HTTP/2 session: the frames of every stream an event touched).
protocol LoopFlushable: AnyObject, Sendable {
    /// The turn is over: write what was gathered.
    func flushAtTurnEnd()
}

/// One event loop: a serial Dispatch queue that owns a set of connections. Every connection, its
/// sources and its buffers are touched only on this queue. A 100 ms tick drives all timeouts.
public final class EventLoop: @unchecked Sendable {
    public let queue: DispatchQueue
    public let index: Int
    /// Scratch buffer for reads; whatever a read handler needs beyond the call is copied out.
    let readBuffer: UnsafeMutableRawBufferPointer
    /// Scratch buffer for decrypted TLS data (filled while `readBuffer` may still be in use).
    let plaintextBuffer: UnsafeMutableRawBufferPointer
    /// A reusable byte array for gathering output within one call (see `takeScratch`).
    private var scratch: [UInt8] = []
    private var timed: [ObjectIdentifier: LoopTimed] = [:]
    private var tickTimer: DispatchSourceTimer?
    static let tickMs = 100
    /// The poller of the `epoll` I/O mode; nil in the `dispatch` mode (a source per socket).
    private(set) var poller: EpollPoller?
    /// Work to run on each tick (upstream pool expiry and the like).
    var tickHooks: [(UInt64) -> Void] = []

    /// A loop in the `dispatch` I/O mode; `usePoller()` right after switches it to `epoll`.
    public init(index: Int, label: String = "turnout.loop", qos: DispatchQoS = .unspecified) {
        self.index = index
        self.queue = DispatchQueue(label: "\(label).\(index)", qos: qos)
        self.readBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)
        self.plaintextBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)
        let timer = DispatchSource.makeTimerSource(queue: queue)
        timer.schedule(deadline: .now() + .milliseconds(Self.tickMs), repeating: .milliseconds(Self.tickMs), leeway: .milliseconds(20))
        // The handler holds the loop strongly, not weakly: a weak reference would give the loop a
        // side table, and every retain and release of it (each use of an unowned reference to
        // it) would take the slow path. `stop()` cancels the timer and so lets the loop go.
        timer.setEventHandler { [self] in tick() }
        timer.activate()
        tickTimer = timer
    }

    /// Switches the loop to the `epoll` I/O mode. Call before any socket is started on it.
    func usePoller() throws(SystemError) {
        precondition(poller == nil)
        poller = try EpollPoller(loop: self)
    }

    deinit {
        stop()
        readBuffer.deallocate()
        plaintextBuffer.deallocate()
    }

    @inline(__always)
    func assertOnLoop() {
        dispatchPrecondition(condition: .onQueue(queue))
    }

    public func execute(_ work: @escaping @Sendable () -> Void) { queue.async(execute: work) }

    /// Monotonic time in nanoseconds.
    @inline(__always)
    static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

    /// When the poller's current round of ready events began; 0 outside such a round.
    var roundStart: UInt64 = 0

    /// Monotonic time for deadlines: while the poller hands out a round of ready events, the time
    /// that round began (one clock read per round instead of one per deadline set, as HAProxy's
    /// `now_ms`; a deadline comes out early by at most the round's length, well under the tick);
    /// otherwise the clock. Durations that are reported (latency) read the clock itself.
    @inline(__always)
    var coarseNow: UInt64 {
        let t = roundStart
        return t != 0 ? t : (testClock ?? Self.now())
    }

    /// Who asked to write at the end of the poller's current round (`flushAfterTurn`).
    private var turnFlushes: [LoopFlushable] = []
    private var spareTurnFlushes: [LoopFlushable] = []

    /// Has `target.flushAtTurnEnd()` run once the current turn of the loop is done: at the end of
    /// the poller's current round of events, or, outside a round (the `dispatch` I/O mode, a
    /// timer, work handed to the loop), as the next work item on the queue. The round's end costs
    /// no Dispatch work item and sends what a round produced before the poller looks for more.
    /// The caller asks once per turn (it keeps its own "scheduled" flag).
    func flushAfterTurn(_ target: LoopFlushable) {
        if roundStart != 0 {
            turnFlushes.append(target)
        } else {
            queue.async { target.flushAtTurnEnd() }
        }
    }

    /// Runs the flushes the round asked for, and those they ask for in turn. Called by the poller
    /// at the end of each round. Flushes that keep asking for more (each pass is bounded, so that
    /// a session feeding another feeding it back cannot hold the loop) go to the queue after
    /// eight passes, behind the rest of its work.
    func runTurnFlushes() {
        var passes = 0
        while !turnFlushes.isEmpty {
            passes += 1
            if passes > 8 {
                for target in turnFlushes { queue.async { target.flushAtTurnEnd() } }
                turnFlushes.removeAll(keepingCapacity: true)
                return
            }
            swap(&turnFlushes, &spareTurnFlushes)
            for target in spareTurnFlushes { target.flushAtTurnEnd() }
            spareTurnFlushes.removeAll(keepingCapacity: true)
        }
    }

    /// A clock a test moves (`advanceTestClock`): while set, deadlines are set and checked by it,
    /// so a test drives every timeout without waiting for one. Loop-confined; for a loop in the
    /// `dispatch` mode (a poller's rounds read the real clock).
    var testClock: UInt64?

    /// Moves the test clock to `now` and runs the tick at that time. On the loop.
    func advanceTestClock(to now: UInt64) {
        testClock = now
        tick()
    }

    /// Lends the loop's scratch array, empty and with its capacity kept; a nested borrower gets a
    /// fresh one. Give it back with `returnScratch`.
    func takeScratch() -> [UInt8] {
        var s: [UInt8] = []
        swap(&s, &scratch)
        s.removeAll(keepingCapacity: true)
        return s
    }

    /// Keeps `s` as the scratch array unless it is too big to keep or smaller than the one there.
    func returnScratch(_ s: [UInt8]) {
        if s.capacity <= 256 * 1024 && s.capacity >= scratch.capacity { scratch = s }
    }

    func register(_ object: LoopTimed) { timed[ObjectIdentifier(object)] = object }
    func unregister(_ object: LoopTimed) { timed.removeValue(forKey: ObjectIdentifier(object)) }
    var registeredCount: Int { timed.count }
    func forEachRegistered(_ body: (LoopTimed) -> Void) { for o in Array(timed.values) { body(o) } }

    private func tick() {
        let now = testClock ?? Self.now()
        for object in Array(timed.values) { object.checkTimeouts(now: now) }
        for hook in tickHooks { hook(now) }
    }

    /// Stops the loop's timer and poller, on its queue, and waits until that is done; after it no
    /// handler of theirs runs. A loop that is let go of must be shut down first: what runs on its
    /// queue reads the loop (its buffers) without holding it, and until then the timer's handler
    /// keeps it alive. Not to be called on the loop.
    public func shutdown() {
        queue.sync { stop() }
    }

    /// Stops the tick timer and the poller; used when a loop is shut down for good.
    func stop() {
        tickTimer?.cancel()
        tickTimer = nil
        poller?.stop()
    }
}

/// A fixed set of event loops; connections are spread over them round-robin.
public final class EventLoopGroup: @unchecked Sendable {
    public let loops: [EventLoop]
    private var next = 0
    private let lock = NSLock()

    public init(count: Int, label: String = "turnout.loop", io: IOMode) throws(SystemError) {
        var loops: [EventLoop] = []
        for i in 0..<max(1, count) {
            let loop = EventLoop(index: i, label: label)
            if io == .epoll { try loop.usePoller() }
            loops.append(loop)
        }
        self.loops = loops
    }

    public func nextLoop() -> EventLoop {
        lock.lock()
        defer { lock.unlock() }
        let loop = loops[next % loops.count]
        next &+= 1
        return loop
    }
}
