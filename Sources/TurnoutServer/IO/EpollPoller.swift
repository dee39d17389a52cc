#if canImport(Glibc)
import Glibc
#endif
import CTurnoutSys
import Dispatch

/// Something a loop's poller watches: a socket channel, or a listener's socket.
protocol PollTarget: AnyObject {
    var fd: Int32 { get }
    /// Called on the loop with the epoll event bits.
    func handleEvents(_ events: UInt32)
}

/// The `epoll` I/O mode of an event loop: one Dispatch read source, on an epoll descriptor that
/// holds every socket of the loop, edge-triggered and registered once.
///
/// With per-socket Dispatch sources (the `dispatch` mode) every readiness event of every socket
/// goes through libdispatch's own epoll loop: a re-arm with `epoll_ctl` before and after the
/// handler, a wake-up of its manager thread over an eventfd and a hand-over to a worker thread.
/// Here that happens once per batch of events, and a socket costs no system call between reads
/// beyond the read or write itself. The loop is still a serial Dispatch queue: the handler below,
/// timers and cross-loop work all run on it, and nothing else touches a socket.
final class EpollPoller: @unchecked Sendable {
    private let epfd: Int32
    /// The loop that owns the poller (`unowned(unsafe)`: no reference count per event).
    unowned(unsafe) let loop: EventLoop
    private var source: DispatchSourceRead?
    /// Targets by descriptor; an event's token carries the descriptor and the generation of the
    /// registration, so an event fetched for a descriptor that was closed and reused in the same
    /// batch is dropped instead of reaching the new target.
    private var slots: [Slot] = []
    private var generation: UInt32 = 0
    private static let batch = 256
    /// At most this many rounds, and about `busyNanos` of them, per call from Dispatch.
    private static let rounds = 64
    static let busyNanos: UInt64 = 2_000_000
    /// How long a loop that had events waits for more before giving its thread back to Dispatch.
    static let lingerMillis: Int32 = 1
    private let tokens = UnsafeMutablePointer<UInt64>.allocate(capacity: batch)
    private let events = UnsafeMutablePointer<UInt32>.allocate(capacity: batch)

    private struct Slot {
        var generation: UInt32 = 0
        var target: PollTarget?
    }

    /// The peer's FIN, a hang-up or an error: each also means "read now" (to see EOF or the error).
    static let hangUpEvents = turnout_epoll_rdhup | turnout_epoll_hup | turnout_epoll_err
    static let readEvents = turnout_epoll_in | hangUpEvents
    static let writeEvents = turnout_epoll_out | turnout_epoll_hup | turnout_epoll_err

    init(loop: EventLoop) throws(SystemError) {
        let fd = turnout_epoll_create()
        if fd < 0 { throw SystemError("epoll_create1", errno: errno) }
        epfd = fd
        self.loop = loop
        let s = DispatchSource.makeReadSource(fileDescriptor: fd, queue: loop.queue)
        s.setEventHandler { [weak self] in self?.handleEvents() }
        s.setCancelHandler { Glibc.close(fd) }
        source = s
        s.activate()
    }

    deinit {
        source?.cancel()  // its handler holds the poller unowned
        tokens.deallocate()
        events.deallocate()
    }

    /// Watches `target`'s socket from now until `remove`: edge-triggered, for input, output and
    /// hang-up; a listening socket (`listening`) for input only. Fails only when the kernel
    /// refuses (out of memory, or the `max_user_watches` limit).
    func add(_ target: PollTarget, listening: Bool = false) throws(SystemError) {
        loop.assertOnLoop()
        let fd = Int(target.fd)
        if fd >= slots.count { slots.append(contentsOf: repeatElement(Slot(), count: max(fd + 1 - slots.count, slots.count))) }
        generation &+= 1
        let token = UInt64(generation) << 32 | UInt64(UInt32(target.fd))
        let rc = listening ? turnout_epoll_add_listener(epfd, target.fd, token) : turnout_epoll_add(epfd, target.fd, token)
        if rc != 0 { throw SystemError("epoll_ctl", errno: errno) }
        slots[fd] = Slot(generation: generation, target: target)
    }

    /// Forgets `target`. A channel's descriptor leaves the epoll set when it is closed, right
    /// after; `deregister` takes it out now (a listener, whose descriptor is closed only after).
    func remove(_ target: PollTarget, deregister: Bool = false) {
        loop.assertOnLoop()
        let fd = Int(target.fd)
        guard fd < slots.count, slots[fd].target === target else { return }
        slots[fd] = Slot()
        if deregister { _ = turnout_epoll_remove(epfd, target.fd) }
    }

    /// Takes the ready events and hands them to their channels. Dispatch calls this when the epoll
    /// descriptor is readable; tests call it to take pending events at a known moment.
    func handleEvents() {
        loop.assertOnLoop()
        // Polls again while events keep coming, for up to `busyNanos` (and `rounds` rounds): under
        // load that saves the Dispatch wake-up (its manager thread re-arms the source and hands
        // the queue to a worker thread) for each small batch; the bound lets timers and other
        // queued work run. Events left over keep the descriptor readable, so Dispatch calls again
        // after that work.
        //
        // A loop that had events waits a little for the next ones (`lingerMillis`) before it
        // gives the thread back: under load the next batch comes within that time, and this
        // thread takes it from epoll itself instead of Dispatch waking its manager thread (an
        // eventfd write), re-arming the source (epoll_ctl) and handing the queue to a worker
        // thread (a futex wake and a context switch): about 5% of the CPU per proxied h2c
        // request. Waiting costs no CPU; work queued meanwhile from other threads (the tick,
        // control-plane changes) waits at most `busyNanos` plus one linger.
        defer { loop.roundStart = 0 }
        let started = EventLoop.now()
        var roundStart = started
        for round in 0..<Self.rounds {
            // Time for the queue's other work: events not taken yet wait in epoll (the
            // descriptor stays readable, so Dispatch calls again). Checked before polling: an
            // event taken is handled, or edge-triggered epoll would not report it again.
            if round > 0 && roundStart &- started > Self.busyNanos { return }
            var n = Int(turnout_epoll_poll(epfd, tokens, events, Int32(Self.batch), 0))
            if n == 0 && round > 0 { n = Int(turnout_epoll_poll(epfd, tokens, events, Int32(Self.batch), Self.lingerMillis)) }
            if n <= 0 { return }
            roundStart = EventLoop.now()
            loop.roundStart = roundStart
            for i in 0..<n {
                let token = tokens[i]
                let fd = Int(UInt32(truncatingIfNeeded: token))
                guard fd < slots.count, slots[fd].generation == UInt32(token >> 32),
                      let target = slots[fd].target else { continue }
                target.handleEvents(events[i])
            }
            // What the round produced leaves now, before the poller looks for more.
            loop.runTurnFlushes()
        }
    }

    /// Stops watching; called when the loop shuts down for good.
    func stop() {
        source?.cancel()
        source = nil
    }
}
