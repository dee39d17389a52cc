#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Synchronization
import Testing
import TurnoutCore
@testable import TurnoutServer

/// Records a channel's events; used on the channel's loop only, read after `done` fires.
private final class Recorder: ChannelDelegate, @unchecked Sendable {
    var received: [UInt8] = []
    var eof = false
    var drained = 0
    var errors: [SystemError] = []
    /// Errors, EOFs and closes in the order they came.
    var ends: [String] = []
    let onEvent: @Sendable () -> Void

    init(onEvent: @escaping @Sendable () -> Void) { self.onEvent = onEvent }

    func channelRead(_ channel: SocketChannel, _ bytes: UnsafeRawBufferPointer) {
        received.append(contentsOf: bytes)
        onEvent()
    }
    func channelEOF(_ channel: SocketChannel) { eof = true; ends.append("eof"); onEvent() }
    func channelError(_ channel: SocketChannel, _ error: SystemError) { errors.append(error); ends.append("error"); onEvent() }
    func channelClosed(_ channel: SocketChannel) { ends.append("closed"); onEvent() }
    func channelDrained(_ channel: SocketChannel) { drained += 1; onEvent() }
}

/// Records, at each read, the loop's round start and the deadline clock it gives.
private final class ClockRecorder: ChannelDelegate, @unchecked Sendable {
    let loop: EventLoop
    var seen: [(roundStart: UInt64, coarse: UInt64)] = []
    init(loop: EventLoop) { self.loop = loop }
    func channelRead(_ channel: SocketChannel, _ bytes: UnsafeRawBufferPointer) {
        seen.append((loop.roundStart, loop.coarseNow))
    }
    func channelEOF(_ channel: SocketChannel) {}
    func channelError(_ channel: SocketChannel, _ error: SystemError) {}
    func channelClosed(_ channel: SocketChannel) {}
    func channelDrained(_ channel: SocketChannel) {}
}

private func socketPair() -> (Int32, Int32) {
    var fds: [Int32] = [0, 0]
    precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
    for fd in fds { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
    return (fds[0], fds[1])
}

/// Waits (bounded) until `condition`, evaluated on the loop, holds.
private func waitOnLoop(_ loop: EventLoop, timeoutSeconds: Double = 10, _ condition: @escaping () -> Bool) -> Bool {
    let deadline = DispatchTime.now() + timeoutSeconds
    while DispatchTime.now() < deadline {
        if loop.queue.sync(execute: condition) { return true }
        let s = DispatchSemaphore(value: 0)
        loop.queue.asyncAfter(deadline: .now() + .milliseconds(5)) { s.signal() }
        s.wait()
    }
    return false
}

/// A loop in the given I/O mode; every channel test runs in both.
private func makeLoop(_ io: IOMode, _ label: String) throws -> EventLoop {
    let loop = EventLoop(index: 0, label: label)
    if io == .epoll { try loop.usePoller() }
    return loop
}

@Suite struct SocketChannelTests {
    @Test(arguments: IOMode.allCases) func bytesWrittenOnOneEndArriveWholeAtTheOther(io: IOMode) throws {
        let loop = try makeLoop(io, "test.channel")
        defer { loop.shutdown() }
        let (a, b) = socketPair()
        let rec = Recorder {}
        let ca = SocketChannel(fd: a, loop: loop)
        let cb = SocketChannel(fd: b, loop: loop)
        let payload = (0..<3_000_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        loop.queue.sync {
            cb.delegate = rec
            cb.start()
            ca.start()
            ca.write(payload)
        }
        #expect(waitOnLoop(loop) { rec.received.count == payload.count })
        loop.queue.sync {
            #expect(rec.received == payload)
            ca.close()
        }
        #expect(waitOnLoop(loop) { rec.eof })
        loop.queue.sync { cb.close() }
    }

    @Test(arguments: IOMode.allCases) func aReaderThatStopsMakesWritesQueueAndDrainLater(io: IOMode) throws {
        let loop = try makeLoop(io, "test.backpressure")
        defer { loop.shutdown() }
        let (a, b) = socketPair()
        let writer = Recorder {}
        let reader = Recorder {}
        let ca = SocketChannel(fd: a, loop: loop)
        let cb = SocketChannel(fd: b, loop: loop)
        loop.queue.sync {
            ca.delegate = writer
            cb.delegate = reader
            ca.start()
            cb.start()
            cb.pauseReading()
            ca.write([UInt8](repeating: 7, count: 4_000_000))
            // The kernel takes a few hundred KiB; the rest waits in user space.
            #expect(ca.pendingBytes > 1_000_000)
        }
        loop.queue.sync { cb.resumeReading() }
        #expect(waitOnLoop(loop) { reader.received.count == 4_000_000 })
        #expect(waitOnLoop(loop) { writer.drained >= 1 && ca.pendingBytes == 0 })
        loop.queue.sync {
            ca.close()
            cb.close()
        }
    }

    @Test(arguments: IOMode.allCases) func aHeadAndBodyWrittenTogetherArriveInOrderWhateverTheKernelTakes(io: IOMode) throws {
        let loop = try makeLoop(io, "test.writev")
        defer { loop.shutdown() }
        let (a, b) = socketPair()
        let reader = Recorder {}
        let ca = SocketChannel(fd: a, loop: loop)
        let cb = SocketChannel(fd: b, loop: loop)
        let head1 = Array("HTTP/1.1 200 OK\r\nContent-Length: 3000000\r\n\r\n".utf8)
        let body1 = (0..<3_000_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let head2 = Array("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n".utf8)
        let body2 = Array("green".utf8)
        loop.queue.sync {
            cb.delegate = reader
            ca.start()
            cb.start()
            cb.pauseReading()
            // One sendmsg takes the head and part of the body; the rest is queued behind it.
            body1.withUnsafeBytes { ca.write(head1, then: $0) }
            #expect(ca.pendingBytes > 0 && ca.pendingBytes < body1.count)
            // With bytes already queued, the pair is queued behind them, in order.
            body2.withUnsafeBytes { ca.write(head2, then: $0) }
            #expect(ca.pendingBytes > head2.count + body2.count)
            cb.resumeReading()
        }
        let expected = head1 + body1 + head2 + body2
        #expect(waitOnLoop(loop) { reader.received.count == expected.count })
        loop.queue.sync {
            #expect(reader.received == expected)
            ca.close()
            cb.close()
        }
    }

    @Test(arguments: IOMode.allCases) func writingToAClosedPeerReportsAnErrorOnce(io: IOMode) throws {
        let loop = try makeLoop(io, "test.epipe")
        defer { loop.shutdown() }
        let (a, b) = socketPair()
        close(b)
        let rec = Recorder {}
        let ca = SocketChannel(fd: a, loop: loop)
        loop.queue.sync {
            ca.delegate = rec
            ca.start()
            ca.write([1, 2, 3])
        }
        // The write is tried at once, before the loop sees any readiness event, so it meets the
        // closed peer: EPIPE, reported as exactly one error, and the channel closes.
        #expect(waitOnLoop(loop) { !rec.errors.isEmpty || rec.eof })
        loop.queue.sync {
            #expect(rec.errors.count == 1 && ca.isClosed && !rec.eof, "errors \(rec.errors), eof \(rec.eof)")
            #expect(rec.errors.first?.errno == EPIPE, "\(rec.errors)")
        }
        loop.queue.sync { ca.close() }
        // A failure reports the error before the close (a TLS transport lets go of the connection
        // above it on the close, and that connection must hear of the error first); and a close
        // is told once.
        #expect(waitOnLoop(loop) { rec.ends.last == "closed" })
        loop.queue.sync { #expect(rec.ends == ["error", "closed"], "\(rec.ends)") }
    }

    @Test(arguments: IOMode.allCases) func aFinThatArrivesWhileReadingIsPausedIsSeenOnResume(io: IOMode) throws {
        let loop = try makeLoop(io, "test.pausedfin")
        defer { loop.shutdown() }
        let (a, b) = socketPair()
        let rec = Recorder {}
        let cb = SocketChannel(fd: b, loop: loop)
        loop.queue.sync {
            cb.delegate = rec
            cb.start()
            cb.pauseReading()
        }
        #expect(Glibc.write(a, "last", 4) == 4)
        close(a)
        loop.queue.sync {
            // The loop takes the (edge-triggered) events while paused: nothing may be read.
            loop.poller?.handleEvents()
            #expect(rec.received.isEmpty && !rec.eof)
            cb.resumeReading()
        }
        #expect(waitOnLoop(loop) { rec.eof })
        loop.queue.sync {
            #expect(rec.received == Array("last".utf8))
            cb.close()
        }
    }

    @Test(arguments: IOMode.allCases) func bytesAndAFinThatArriveTogetherAreBothSeen(io: IOMode) throws {
        // One edge-triggered event says both; the read of the bytes stops short of the FIN.
        let loop = try makeLoop(io, "test.datafin")
        defer { loop.shutdown() }
        let (a, b) = socketPair()
        #expect(Glibc.write(a, "bye", 3) == 3)
        close(a)
        let rec = Recorder {}
        let cb = SocketChannel(fd: b, loop: loop)
        loop.queue.sync {
            cb.delegate = rec
            cb.start()
        }
        #expect(waitOnLoop(loop) { rec.eof })
        loop.queue.sync {
            #expect(rec.received == Array("bye".utf8))
            cb.close()
        }
    }

    @Test(arguments: IOMode.allCases) func hundredsOfSocketsReadyAtOnceAreAllServed(io: IOMode) throws {
        // More ready sockets than one epoll batch holds (256), all raised before the loop runs.
        let loop = try makeLoop(io, "test.many")
        defer { loop.shutdown() }
        let count = 300
        let rec = Recorder {}
        var writers: [Int32] = []
        var channels: [SocketChannel] = []
        loop.queue.sync {
            for _ in 0..<count {
                let (a, b) = socketPair()
                let ch = SocketChannel(fd: b, loop: loop)
                ch.delegate = rec
                ch.start()
                writers.append(a)
                channels.append(ch)
            }
            for a in writers { #expect(Glibc.write(a, "x", 1) == 1) }
        }
        #expect(waitOnLoop(loop) { rec.received.count == count })
        loop.queue.sync {
            for ch in channels { ch.close() }
        }
        for a in writers { close(a) }
    }

    @Test(arguments: IOMode.allCases) func deadlinesReadTheRoundsClockOnlyWhileARoundRuns(io: IOMode) throws {
        let loop = try makeLoop(io, "test.clock")
        defer { loop.shutdown() }
        let (a, b) = socketPair()
        let rec = ClockRecorder(loop: loop)
        let ch = SocketChannel(fd: b, loop: loop)
        let before = EventLoop.now()
        loop.queue.sync {
            ch.delegate = rec
            ch.start()
        }
        #expect(Glibc.write(a, "x", 1) == 1)
        #expect(waitOnLoop(loop) { rec.seen.count == 1 })
        loop.queue.sync {
            let (roundStart, coarse) = rec.seen[0]
            if io == .epoll {
                // Inside a round: the time it began, read once for all of its events.
                #expect(roundStart >= before && coarse == roundStart)
            } else {
                // No poller, no rounds: the clock itself.
                #expect(roundStart == 0 && coarse >= before)
            }
            // Outside a round (work queued on the loop): never a stale round's time.
            #expect(loop.roundStart == 0)
            let t = EventLoop.now()
            #expect(loop.coarseNow >= t)
            ch.close()
        }
        close(a)
    }
}
