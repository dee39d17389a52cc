#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Synchronization
import Testing
@testable import TurnoutServer

/// Records a channel's events; used on the channel's loop only, read after `done` fires.
private final class Recorder: ChannelDelegate, @unchecked Sendable {
    var received: [UInt8] = []
    var eof = false
    var drained = 0
    var errors: [SystemError] = []
    let onEvent: @Sendable () -> Void

    init(onEvent: @escaping @Sendable () -> Void) { self.onEvent = onEvent }

    func channelRead(_ channel: SocketChannel, _ bytes: UnsafeRawBufferPointer) {
        received.append(contentsOf: bytes)
        onEvent()
    }
    func channelEOF(_ channel: SocketChannel) { eof = true; onEvent() }
    func channelError(_ channel: SocketChannel, _ error: SystemError) { errors.append(error); onEvent() }
    func channelDrained(_ channel: SocketChannel) { drained += 1; onEvent() }
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

@Suite struct SocketChannelTests {
    @Test func bytesWrittenOnOneEndArriveWholeAtTheOther() {
        let loop = EventLoop(index: 0, label: "test.channel")
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

    @Test func aReaderThatStopsMakesWritesQueueAndDrainLater() {
        let loop = EventLoop(index: 0, label: "test.backpressure")
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

    @Test func writingToAClosedPeerReportsAnErrorOnce() {
        let loop = EventLoop(index: 0, label: "test.epipe")
        let (a, b) = socketPair()
        close(b)
        let rec = Recorder {}
        let ca = SocketChannel(fd: a, loop: loop)
        loop.queue.sync {
            ca.delegate = rec
            ca.start()
            ca.write([1, 2, 3])
        }
        #expect(waitOnLoop(loop) { !rec.errors.isEmpty || rec.eof })
        loop.queue.sync { #expect((rec.errors.count == 1 && ca.isClosed) || (rec.errors.isEmpty && rec.eof)) }
        loop.queue.sync { ca.close() }
    }
}
