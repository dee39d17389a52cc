#if canImport(Glibc)
import Glibc
#endif
import CTurnoutSys
import Dispatch

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
    unowned let loop: EventLoop
    private var source: DispatchSourceRead?
    /// Channels by descriptor; an event's token carries the descriptor and the generation of the
    /// registration, so an event fetched for a descriptor that was closed and reused in the same
    /// batch is dropped instead of reaching the new channel.
    private var slots: [Slot] = []
    private var generation: UInt32 = 0
    private static let batch = 256
    private let tokens = UnsafeMutablePointer<UInt64>.allocate(capacity: batch)
    private let events = UnsafeMutablePointer<UInt32>.allocate(capacity: batch)

    private struct Slot {
        var generation: UInt32 = 0
        var channel: SocketChannel?
    }

    static let readEvents = turnout_epoll_in | turnout_epoll_rdhup | turnout_epoll_hup | turnout_epoll_err
    static let hangUpEvents = turnout_epoll_rdhup | turnout_epoll_hup | turnout_epoll_err
    static let writeEvents = turnout_epoll_out | turnout_epoll_hup | turnout_epoll_err

    init(loop: EventLoop) throws(SystemError) {
        let fd = turnout_epoll_create()
        if fd < 0 { throw SystemError("epoll_create1", errno: errno) }
        epfd = fd
        self.loop = loop
        let s = DispatchSource.makeReadSource(fileDescriptor: fd, queue: loop.queue)
        s.setEventHandler { [unowned self] in self.handleEvents() }
        s.setCancelHandler { Glibc.close(fd) }
        source = s
        s.activate()
    }

    deinit {
        tokens.deallocate()
        events.deallocate()
    }

    /// Watches `channel`'s socket from now until `remove`. Fails only when the kernel refuses
    /// (out of memory, or the `max_user_watches` limit).
    func add(_ channel: SocketChannel) throws(SystemError) {
        loop.assertOnLoop()
        let fd = Int(channel.fd)
        if fd >= slots.count { slots.append(contentsOf: repeatElement(Slot(), count: max(fd + 1 - slots.count, slots.count))) }
        generation &+= 1
        let token = UInt64(generation) << 32 | UInt64(UInt32(channel.fd))
        if turnout_epoll_add(epfd, channel.fd, token) != 0 { throw SystemError("epoll_ctl", errno: errno) }
        slots[fd] = Slot(generation: generation, channel: channel)
    }

    /// Forgets `channel`. Its descriptor leaves the epoll set when it is closed, right after.
    func remove(_ channel: SocketChannel) {
        let fd = Int(channel.fd)
        guard fd < slots.count, slots[fd].channel === channel else { return }
        slots[fd] = Slot()
    }

    /// Takes the ready events and hands them to their channels. Dispatch calls this when the epoll
    /// descriptor is readable; tests call it to take pending events at a known moment.
    func handleEvents() {
        loop.assertOnLoop()
        // Up to four full batches per turn; events left over keep the descriptor readable, so
        // Dispatch calls again after whatever else is queued on the loop.
        for _ in 0..<4 {
            let n = Int(turnout_epoll_poll(epfd, tokens, events, Int32(Self.batch)))
            if n <= 0 { return }
            for i in 0..<n {
                let token = tokens[i]
                let fd = Int(UInt32(truncatingIfNeeded: token))
                guard fd < slots.count, slots[fd].generation == UInt32(token >> 32),
                      let channel = slots[fd].channel else { continue }
                channel.handleEvents(events[i])
            }
            if n < Self.batch { return }
        }
    }

    /// Stops watching; called when the loop shuts down for good.
    func stop() {
        source?.cancel()
        source = nil
    }
}
