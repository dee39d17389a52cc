#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CTurnoutSys

/// An error from a system call, carrying the call's name and errno.
public struct SystemError: Error, CustomStringConvertible, Sendable {
    public let call: String
    public let errno: Int32
    public init(_ call: String, errno: Int32) {
        self.call = call
        self.errno = errno
    }
    public var description: String { "\(call): \(String(cString: strerror(errno))) (errno \(errno))" }
}

/// What a non-blocking I/O call did.
enum IOResult: Equatable {
    case processed(Int)
    case wouldBlock
}

/// The one place that calls into libc for I/O: retries EINTR, turns EAGAIN into `.wouldBlock`,
/// traps on EBADF/EFAULT (programmer errors), throws `SystemError` for everything else.
enum Syscall {
    @inline(__always)
    private static func check(_ name: StaticString, _ body: () -> Int) throws(SystemError) -> IOResult {
        while true {
            let r = body()
            if r >= 0 { return .processed(r) }
            let e = errno
            switch e {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK, EINPROGRESS: return .wouldBlock
            case EBADF, EFAULT: preconditionFailure("\(name) failed with errno \(e): a programmer error")
            default: throw SystemError("\(name)", errno: e)
            }
        }
    }

    /// Reads from a socket: `recv`, not `read`, which passes through the file layer on its way
    /// to the same socket code (about 3,000 more CPU cycles per call in a profile).
    static func receive(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int) throws(SystemError) -> IOResult {
        try check("recv") { Glibc.recv(fd, buffer, count, 0) }
    }

    static func send(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) throws(SystemError) -> IOResult {
        try check("send") { Glibc.send(fd, buffer, count, Int32(MSG_NOSIGNAL)) }
    }

    /// Sends two buffers in one call (sendmsg with two iovecs); returns how much of them went out.
    static func send(_ fd: Int32, _ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) throws(SystemError) -> IOResult {
        try check("sendmsg") {
            var iov = (iovec(iov_base: UnsafeMutableRawPointer(mutating: a.baseAddress), iov_len: a.count),
                       iovec(iov_base: UnsafeMutableRawPointer(mutating: b.baseAddress), iov_len: b.count))
            return withUnsafeMutableBytes(of: &iov) { raw in
                var msg = msghdr()
                msg.msg_iov = raw.baseAddress!.assumingMemoryBound(to: iovec.self)
                msg.msg_iovlen = 2
                return Glibc.sendmsg(fd, &msg, Int32(MSG_NOSIGNAL))
            }
        }
    }

    static func accept(_ fd: Int32, _ addr: UnsafeMutablePointer<sockaddr>, _ len: UnsafeMutablePointer<socklen_t>) throws(SystemError) -> IOResult {
        // accept4 makes the socket non-blocking and close-on-exec in the same call.
        try check("accept") { Int(turnout_accept4(fd, addr, len, Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue))) }
    }

    static func socket(_ family: Int32, _ type: Int32) throws(SystemError) -> Int32 {
        let fd = Glibc.socket(family, type | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { throw SystemError("socket", errno: errno) }
        return fd
    }

    static func setOption(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: Int32) {
        var v = value
        _ = setsockopt(fd, level, name, &v, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Reads and clears SO_ERROR: 0 when a non-blocking connect succeeded.
    static func socketError(_ fd: Int32) -> Int32 {
        var value: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        if getsockopt(fd, SOL_SOCKET, SO_ERROR, &value, &len) != 0 { return errno }
        return value
    }
}
