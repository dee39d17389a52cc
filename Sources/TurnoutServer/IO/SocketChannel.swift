#if canImport(Glibc)
import Glibc
#endif
import Dispatch

/// Receives a channel's events, always on the channel's loop.
protocol ChannelDelegate: AnyObject, Sendable {
    /// Bytes arrived. `bytes` points into the loop's scratch buffer: copy what must outlive the call.
    func channelRead(_ channel: SocketChannel, _ bytes: UnsafeRawBufferPointer)
    /// The peer closed its side.
    func channelEOF(_ channel: SocketChannel)
    /// The connection failed (reset, refused, broken pipe...). The channel is already closed.
    func channelError(_ channel: SocketChannel, _ error: SystemError)
    /// Everything queued was written.
    func channelDrained(_ channel: SocketChannel)
    /// A non-blocking connect finished successfully.
    func channelConnected(_ channel: SocketChannel)
    /// The channel was closed, by anyone, for any reason (it lets go of its delegate right after).
    func channelClosed(_ channel: SocketChannel)
}

extension ChannelDelegate {
    func channelConnected(_ channel: SocketChannel) {}
    func channelClosed(_ channel: SocketChannel) {}
}

/// A non-blocking socket on one event loop, driven either by its own Dispatch read and write
/// sources (the loop's `dispatch` I/O mode) or by the loop's `EpollPoller` (the `epoll` mode).
///
/// Source hygiene in the `dispatch` mode: handlers are set before activation; the write source
/// exists only while there is something to write and is suspended, never recreated, when the queue
/// drains; before cancelling, suspended sources are resumed; the fd is closed only after both
/// sources' cancel handlers ran.
final class SocketChannel: PollTarget, @unchecked Sendable {
    let fd: Int32
    /// Loops live as long as the process serves: `unowned(unsafe)`, reached without a reference count.
    unowned(unsafe) let loop: EventLoop
    var delegate: ChannelDelegate?
    /// The loop's read buffer and I/O mode, kept here: the read path does not touch the loop
    /// (each use of an unowned reference is a retain and a release).
    private let readBuffer: UnsafeMutableRawBufferPointer
    private let polled: Bool

    private var readSource: DispatchSourceRead?
    private var writeSource: DispatchSourceWrite?
    private var readSuspended = false
    private var writeSuspended = false
    private var pending: [[UInt8]] = []
    private var pendingHead = 0
    private var pendingOffset = 0
    /// Bytes queued in user space, not yet accepted by the kernel.
    private(set) var pendingBytes = 0
    private(set) var isClosed = false
    private(set) var isConnecting = false
    private(set) var sawEOF = false
    private var readPausedByUser = false
    private var finishAfterFlush = false
    private var lingering = false
    private var closer: FDCloser?

    /// Above this many queued bytes a producer should stop feeding the channel.
    static let highWatermark = 256 * 1024

    init(fd: Int32, loop: EventLoop, connecting: Bool = false) {
        self.fd = fd
        self.loop = loop
        self.readBuffer = loop.readBuffer
        self.polled = loop.poller != nil
        self.isConnecting = connecting
    }

    /// Installs the sources, or registers with the loop's poller. Call once, on the loop, after
    /// setting the delegate.
    func start() {
        loop.assertOnLoop()
        let closer = FDCloser(fd: fd)
        self.closer = closer
        if let poller = loop.poller {
            do throws(SystemError) {
                try poller.add(self)
            } catch {
                failLater(error)
            }
            return
        }
        let rs = DispatchSource.makeReadSource(fileDescriptor: fd, queue: loop.queue)
        rs.setEventHandler { [unowned self] in self.handleReadable() }
        closer.retain()
        rs.setCancelHandler { closer.release() }
        readSource = rs
        rs.activate()
        if isConnecting {
            // Writability tells the connect's outcome; a refused connect may only wake the read
            // source (EPOLLERR/EPOLLHUP), which is why reading is on from the start.
            armWrite()
        }
    }

    var hasPendingWrites: Bool { pendingBytes > 0 }

    // MARK: reading

    func pauseReading() {
        readPausedByUser = true
        updateReadSource()
    }

    func resumeReading() {
        readPausedByUser = false
        updateReadSource()
    }

    private func updateReadSource() {
        guard !isClosed, readSource != nil || polled else { return }
        let shouldRun = (!readPausedByUser || lingering) && !sawEOF
        if shouldRun && readSuspended {
            readSuspended = false
            readSource?.resume()
            // Bytes that arrived while suspended may not raise a new event: look now.
            scheduleRead()
        } else if !shouldRun && !readSuspended {
            readSuspended = true
            readSource?.suspend()
        }
    }

    /// Events from the loop's poller (the `epoll` mode). They are edge-triggered: an edge that
    /// arrives while reading is paused is not repeated, which is why resuming reads at once.
    func handleEvents(_ events: UInt32) {
        if events & EpollPoller.hangUpEvents != 0 { peerHungUp = true }
        if events & EpollPoller.readEvents != 0 { handleReadable() }
        if events & EpollPoller.writeEvents != 0, !isClosed, pendingBytes > 0 || isConnecting { handleWritable() }
    }

    /// Learns how a non-blocking connect ended. Returns false when it failed (the channel is closed).
    private func completeConnect() -> Bool {
        isConnecting = false
        let err = Syscall.socketError(fd)
        if err != 0 {
            fail(SystemError("connect", errno: err))
            return false
        }
        if pendingBytes == 0 { disarmWrite() }
        delegate?.channelConnected(self)
        return !isClosed
    }

    /// Reads what the socket holds, within a budget so one busy connection cannot starve its loop;
    /// past the budget the rest is read in a later turn of the loop.
    ///
    /// In the `epoll` mode reading stops at a read shorter than the buffer, which saves the read
    /// that would only say EAGAIN: the socket was empty at that moment, and every later arrival is
    /// a new edge. A read stops short of a FIN or an error too, though, so once the poller reported
    /// a hang-up (`peerHungUp`) reading goes on until EOF or EAGAIN.
    ///
    /// In the `dispatch` mode reading goes on until EAGAIN: libdispatch does not re-arm a source
    /// after it saw EPOLLHUP, so bytes and a hang-up that arrive together (a reset after data, a
    /// Unix socket closed after its last write) would leave the hang-up unseen after a short read.
    private func handleReadable() {
        guard !isClosed, !readSuspended else { return }
        if isConnecting {
            guard completeConnect() else { return }
            if readSuspended { return }
        }
        var budget = 16
        while budget > 0 {
            budget -= 1
            guard !isClosed, !readSuspended else { return }
            let result: IOResult
            do {
                result = try Syscall.receive(fd, readBuffer.baseAddress!, readBuffer.count)
            } catch {
                fail(error)
                return
            }
            switch result {
            case .wouldBlock:
                return
            case .processed(0):
                sawEOF = true
                updateReadSource()
                if lingering {
                    close()
                } else {
                    delegate?.channelEOF(self)
                }
                return
            case .processed(let n):
                if lingering { continue }  // discarding input while closing gracefully
                delegate?.channelRead(self, UnsafeRawBufferPointer(rebasing: readBuffer[0..<n]))
                if n < readBuffer.count && polled && !peerHungUp { return }
            }
        }
        scheduleRead()
    }

    private var readScheduled = false
    /// The poller reported the peer's FIN, a hang-up or an error (the `epoll` mode).
    private var peerHungUp = false

    /// Runs the read handler again in a later turn of the loop.
    private func scheduleRead() {
        guard !readScheduled else { return }
        readScheduled = true
        loop.queue.async { [self] in
            readScheduled = false
            handleReadable()
        }
    }

    // MARK: writing

    /// Queues bytes for writing, sending as much as the kernel takes right away.
    func write(_ bytes: UnsafeRawBufferPointer) {
        guard !isClosed, !bytes.isEmpty, !finishAfterFlush else { return }
        var offset = 0
        if pendingBytes == 0 && !isConnecting {
            sending: while offset < bytes.count {
                do {
                    switch try Syscall.send(fd, bytes.baseAddress! + offset, bytes.count - offset) {
                    case .processed(let n): offset += n
                    case .wouldBlock: break sending
                    }
                } catch {
                    failLater(error)
                    return
                }
            }
        }
        queue(UnsafeRawBufferPointer(rebasing: bytes[offset...]))
    }

    func write(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { write($0) }
    }

    /// Writes `head` then `body` with one system call when the socket takes them (no copy of the
    /// body into the head); whatever the kernel does not take is queued in order.
    func write(_ head: [UInt8], then body: UnsafeRawBufferPointer) {
        guard !isClosed, !finishAfterFlush else { return }
        guard pendingBytes == 0, !isConnecting, !head.isEmpty, !body.isEmpty else {
            write(head)
            write(body)
            return
        }
        let result = head.withUnsafeBytes { h in Result { () throws(SystemError) in try Syscall.send(fd, h, body) } }
        var sent = 0
        switch result {
        case .success(.processed(let n)): sent = n
        case .success(.wouldBlock): break
        case .failure(let error):
            failLater(error)
            return
        }
        if sent < head.count {
            head.withUnsafeBytes { h in queue(UnsafeRawBufferPointer(rebasing: h[sent...])) }
            queue(body)
        } else {
            queue(UnsafeRawBufferPointer(rebasing: body[(sent - head.count)...]))
        }
    }

    /// Appends bytes the kernel did not take to the send queue.
    private func queue(_ bytes: UnsafeRawBufferPointer) {
        guard !bytes.isEmpty else { return }
        pending.append(Array(bytes))
        pendingBytes += bytes.count
        armWrite()
    }

    func write(_ bytes: ArraySlice<UInt8>) {
        bytes.withUnsafeBytes { write($0) }
    }

    private func armWrite() {
        guard !isClosed else { return }
        // The poller watches for writability all along: a send that fell short leaves the socket
        // marked full, and the kernel raises an edge when room frees up.
        if polled { return }
        if let ws = writeSource {
            if writeSuspended {
                writeSuspended = false
                ws.resume()
            }
            return
        }
        let ws = DispatchSource.makeWriteSource(fileDescriptor: fd, queue: loop.queue)
        ws.setEventHandler { [unowned self] in self.handleWritable() }
        closer?.retain()
        let closer = self.closer
        ws.setCancelHandler { closer?.release() }
        writeSource = ws
        ws.activate()
    }

    private func disarmWrite() {
        if let ws = writeSource, !writeSuspended {
            writeSuspended = true
            ws.suspend()
        }
    }

    private func handleWritable() {
        guard !isClosed else { return }
        if isConnecting {
            guard completeConnect() else { return }
        }
        while pendingBytes > 0 {
            let chunk = pending[pendingHead]
            let result: IOResult
            do {
                let offset = pendingOffset
                result = try chunk.withUnsafeBytes { p in
                    try Syscall.send(fd, p.baseAddress! + offset, p.count - offset)
                }
            } catch let error as SystemError {
                fail(error)
                return
            } catch {
                fail(SystemError("send", errno: EIO))
                return
            }
            guard case .processed(let n) = result else { return }
            pendingOffset += n
            pendingBytes -= n
            if pendingOffset == chunk.count {
                pending[pendingHead] = []
                pendingHead += 1
                pendingOffset = 0
                if pendingHead > 32 || pendingHead == pending.count {
                    pending.removeFirst(pendingHead)
                    pendingHead = 0
                }
            }
        }
        disarmWrite()
        if finishAfterFlush {
            completeFinish()
            return
        }
        delegate?.channelDrained(self)
    }

    // MARK: closing

    /// Closes after everything queued is written: half-closes the write side, then discards input
    /// until the peer closes (or the linger time passes), so a response is never cut by a reset.
    /// Without `linger` (a peer that will send nothing more: it asked to close and all it sent was
    /// read) the socket is closed as soon as the kernel has everything, saving the wait for its FIN.
    func finish(linger: Bool = true) {
        guard !isClosed, !finishAfterFlush else { return }
        finishAfterFlush = true
        lingerOnFinish = linger
        if pendingBytes == 0 && !isConnecting { completeFinish() }
    }

    private var lingerOnFinish = true

    private func completeFinish() {
        if lingerOnFinish { beginLingeringClose() } else { close() }
    }

    private(set) var lingerDeadline: UInt64 = 0

    private func beginLingeringClose() {
        guard !isClosed, !lingering else { return }
        lingering = true
        _ = Glibc.shutdown(fd, Int32(SHUT_WR))
        if sawEOF {
            close()
            return
        }
        lingerDeadline = EventLoop.now() + 2_000_000_000
        updateReadSource()
    }

    var isLingering: Bool { lingering }

    /// Closes now. Queued bytes are dropped. With `reset`, the peer gets a TCP reset.
    func close(reset: Bool = false) {
        let d = delegate
        closeSilently(reset: reset)
        d?.channelClosed(self)
    }

    /// Closes without telling the delegate `channelClosed`: for a failure, which reports the error
    /// first and then the close.
    private func closeSilently(reset: Bool = false) {
        guard !isClosed else { return }
        isClosed = true
        if reset {
            var l = linger(l_onoff: 1, l_linger: 0)
            _ = setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
        }
        pending = []
        pendingBytes = 0
        loop.poller?.remove(self)
        if let rs = readSource {
            if readSuspended { rs.resume() }
            rs.cancel()
        }
        if let ws = writeSource {
            if writeSuspended { ws.resume() }
            ws.cancel()
        }
        readSource = nil
        writeSource = nil
        closer?.release()
        closer = nil
        delegate = nil
    }

    private func fail(_ error: SystemError) {
        guard !isClosed else { return }
        let d = delegate
        closeSilently()
        d?.channelError(self, error)
        d?.channelClosed(self)
    }

    /// A write failed inside a call from the delegate: report it once that call has returned.
    private func failLater(_ error: SystemError) {
        guard !isClosed else { return }
        let d = delegate
        closeSilently()
        loop.queue.async {
            d?.channelError(self, error)
            d?.channelClosed(self)
        }
    }
}

/// Closes a file descriptor once every holder (the channel and each source's cancel handler) let go.
final class FDCloser: @unchecked Sendable {
    private let fd: Int32
    private var holders = 1

    init(fd: Int32) { self.fd = fd }

    func retain() { holders += 1 }

    func release() {
        holders -= 1
        if holders == 0 { Glibc.close(fd) }
    }
}
