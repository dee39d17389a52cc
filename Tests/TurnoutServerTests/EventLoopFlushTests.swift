import Dispatch
import Glibc
import Testing
@testable import TurnoutServer

private final class Log: @unchecked Sendable {
    var items: [String] = []
}

/// A socket that, on each event, drains what came and asks to flush at the end of the turn.
private final class Probe: PollTarget, LoopFlushable, @unchecked Sendable {
    let fd: Int32
    let name: String
    let log: Log
    unowned let loop: EventLoop

    init(fd: Int32, name: String, log: Log, loop: EventLoop) {
        self.fd = fd
        self.name = name
        self.log = log
        self.loop = loop
    }

    func handleEvents(_ events: UInt32) {
        var b = [UInt8](repeating: 0, count: 64)
        _ = read(fd, &b, b.count)
        log.items.append("event \(name)")
        loop.flushAfterTurn(self)
    }

    func flushAtTurnEnd() { log.items.append("flush \(name)") }
}

/// A socket whose event asks for a flush, and whose flush asks for another, `limit` times in all.
private final class Echo: PollTarget, LoopFlushable, @unchecked Sendable {
    let fd: Int32
    unowned let loop: EventLoop
    let limit: Int
    var flushes = 0

    init(fd: Int32, loop: EventLoop, limit: Int) {
        self.fd = fd
        self.loop = loop
        self.limit = limit
    }

    func handleEvents(_ events: UInt32) {
        var b = [UInt8](repeating: 0, count: 64)
        _ = read(fd, &b, b.count)
        loop.flushAfterTurn(self)
    }

    func flushAtTurnEnd() {
        flushes += 1
        if flushes < limit { loop.flushAfterTurn(self) }
    }
}

private func pair() -> (Int32, Int32) {
    var fds: [Int32] = [0, 0]
    precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
    for fd in fds { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
    return (fds[0], fds[1])
}

@Suite struct EventLoopFlushTests {
    @Test func flushesAskedForDuringAPollRoundRunAfterAllOfItsEventsAndBeforeTheRoundEnds() throws {
        let loop = EventLoop(index: 0, label: "test.turnflush")
        try loop.usePoller()
        defer { loop.shutdown() }
        let log = Log()
        let (a1, b1) = pair()
        let (a2, b2) = pair()
        defer { for fd in [a1, b1, a2, b2] { close(fd) } }
        let one = Probe(fd: b1, name: "one", log: log, loop: loop)
        let two = Probe(fd: b2, name: "two", log: log, loop: loop)
        // Both sockets are readable before they are watched, so one round reports both.
        #expect(write(a1, "x", 1) == 1 && write(a2, "y", 1) == 1)
        loop.queue.sync {
            try! loop.poller!.add(one)
            try! loop.poller!.add(two)
            loop.poller!.handleEvents()
            #expect(log.items.count == 4, "\(log.items)")
            #expect(log.items.prefix(2).allSatisfy { $0.hasPrefix("event") }, "\(log.items)")
            #expect(Set(log.items.suffix(2)) == ["flush one", "flush two"], "\(log.items)")
            #expect(loop.roundStart == 0)
        }
        // Outside a round (a timer, work handed to the loop, the dispatch I/O mode) the flush is
        // the queue's next work item, not run in the caller.
        loop.queue.sync {
            log.items = []
            loop.flushAfterTurn(one)
            #expect(log.items.isEmpty)
        }
        loop.queue.sync { #expect(log.items == ["flush one"]) }
        loop.queue.sync {
            loop.poller!.remove(one, deregister: true)
            loop.poller!.remove(two, deregister: true)
        }
    }

    @Test func flushesThatKeepAskingForMoreDoNotHoldTheRound() throws {
        let loop = EventLoop(index: 0, label: "test.turnflush.bound")
        try loop.usePoller()
        defer { loop.shutdown() }
        let (a, b) = pair()
        defer { close(a); close(b) }
        let echo = Echo(fd: b, loop: loop, limit: 100)
        #expect(write(a, "x", 1) == 1)
        loop.queue.sync {
            try! loop.poller!.add(echo)
            loop.poller!.handleEvents()
            // The round ended after eight passes; the echo goes on as queued work.
            #expect(echo.flushes == 8)
        }
        var turns = 0
        while loop.queue.sync(execute: { echo.flushes }) < 100 && turns < 10_000 { turns += 1 }
        loop.queue.sync {
            #expect(echo.flushes == 100)
            loop.poller!.remove(echo, deregister: true)
        }
    }
}
