#if canImport(Glibc)
import Glibc
#endif
import TurnoutCore

/// An IPv4 or IPv6 socket address.
public struct SocketAddress: Sendable, CustomStringConvertible {
    enum Storage: Sendable {
        case v4(sockaddr_in)
        case v6(sockaddr_in6)
    }
    let storage: Storage

    init(_ storage: Storage) { self.storage = storage }

    /// Parses an IP literal without touching DNS; nil for names.
    public static func literal(_ host: String, port: UInt16) -> SocketAddress? {
        var a4 = in_addr()
        if inet_pton(AF_INET, host, &a4) == 1 {
            var sa = sockaddr_in()
            sa.sin_family = sa_family_t(AF_INET)
            sa.sin_port = port.bigEndian
            sa.sin_addr = a4
            return SocketAddress(.v4(sa))
        }
        var a6 = in6_addr()
        if inet_pton(AF_INET6, host, &a6) == 1 {
            var sa = sockaddr_in6()
            sa.sin6_family = sa_family_t(AF_INET6)
            sa.sin6_port = port.bigEndian
            sa.sin6_addr = a6
            return SocketAddress(.v6(sa))
        }
        return nil
    }

    /// Resolves a name with getaddrinfo. Blocking: never call it on an event loop.
    public static func resolve(_ host: String, port: UInt16) throws -> [SocketAddress] {
        if let literal = literal(host, port: port) { return [literal] }
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_family = AF_UNSPEC
        var result: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &result)
        guard rc == 0, let first = result else {
            throw ResolveError(host: host, message: String(cString: gai_strerror(rc)))
        }
        defer { freeaddrinfo(first) }
        var out: [SocketAddress] = []
        var p: UnsafeMutablePointer<addrinfo>? = first
        while let ai = p {
            if let sa = ai.pointee.ai_addr {
                if ai.pointee.ai_family == AF_INET {
                    out.append(SocketAddress(.v4(UnsafeRawPointer(sa).load(as: sockaddr_in.self))))
                } else if ai.pointee.ai_family == AF_INET6 {
                    out.append(SocketAddress(.v6(UnsafeRawPointer(sa).load(as: sockaddr_in6.self))))
                }
            }
            p = ai.pointee.ai_next
        }
        if out.isEmpty { throw ResolveError(host: host, message: "no addresses") }
        return out
    }

    public struct ResolveError: Error, CustomStringConvertible {
        public let host: String
        public let message: String
        public var description: String { "cannot resolve \(host): \(message)" }
    }

    var family: Int32 {
        switch storage {
        case .v4: return AF_INET
        case .v6: return AF_INET6
        }
    }

    func withSockAddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws -> R) rethrows -> R {
        switch storage {
        case .v4(var sa):
            return try withUnsafePointer(to: &sa) {
                try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        case .v6(var sa):
            return try withUnsafePointer(to: &sa) {
                try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body($0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
            }
        }
    }

    /// Reads a sockaddr_storage filled by accept/getsockname.
    static func from(storage ss: sockaddr_storage) -> SocketAddress? {
        var copy = ss
        return withUnsafePointer(to: &copy) { p -> SocketAddress? in
            let raw = UnsafeRawPointer(p)
            switch Int32(ss.ss_family) {
            case AF_INET: return SocketAddress(.v4(raw.load(as: sockaddr_in.self)))
            case AF_INET6: return SocketAddress(.v6(raw.load(as: sockaddr_in6.self)))
            default: return nil
            }
        }
    }

    /// The IP address as text, without the port.
    public var ipString: String {
        var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        switch storage {
        case .v4(var sa):
            inet_ntop(AF_INET, &sa.sin_addr, &buf, socklen_t(buf.count))
        case .v6(var sa):
            inet_ntop(AF_INET6, &sa.sin6_addr, &buf, socklen_t(buf.count))
        }
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public var port: UInt16 {
        switch storage {
        case .v4(let sa): return UInt16(bigEndian: sa.sin_port)
        case .v6(let sa): return UInt16(bigEndian: sa.sin6_port)
        }
    }

    public var description: String {
        family == AF_INET6 ? "[\(ipString)]:\(port)" : "\(ipString):\(port)"
    }
}

/// Socket set-up helpers. Everything they create is non-blocking and close-on-exec.
enum Sockets {
    /// The default backlog asks for as much as the kernel allows: Linux clamps it to
    /// `net.core.somaxconn` (4096 since Linux 5.4), so a burst of new connections waits in the
    /// kernel instead of being refused, whatever the sysctl is raised to.
    static func listen(on address: SocketAddress, backlog: Int32 = 65535) throws -> Int32 {
        let fd = try Syscall.socket(address.family, Int32(SOCK_STREAM.rawValue))
        Syscall.setOption(fd, SOL_SOCKET, SO_REUSEADDR, 1)
        if address.family == AF_INET6 { Syscall.setOption(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, 1) }
        let rc = address.withSockAddr { Glibc.bind(fd, $0, $1) }
        if rc != 0 {
            let e = errno
            Glibc.close(fd)
            throw SystemError("bind \(address)", errno: e)
        }
        if Glibc.listen(fd, backlog) != 0 {
            let e = errno
            Glibc.close(fd)
            throw SystemError("listen \(address)", errno: e)
        }
        return fd
    }

    static func localAddress(_ fd: Int32) -> SocketAddress? {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &ss) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        return rc == 0 ? SocketAddress.from(storage: ss) : nil
    }

    /// Accepts one connection from a listening socket: nil when none is waiting. The new socket is
    /// non-blocking and close-on-exec; `peer` is its remote address when it has one (not for Unix).
    static func accept(_ listener: Int32) throws(SystemError) -> (fd: Int32, peer: SocketAddress?)? {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = try withUnsafeMutablePointer(to: &ss) { p throws(SystemError) in
            try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sp throws(SystemError) in
                try Syscall.accept(listener, sp, &len)
            }
        }
        guard case .processed(let fd) = result else { return nil }
        return (Int32(fd), SocketAddress.from(storage: ss))
    }

    /// Starts a non-blocking connect. Returns the fd and whether the connect is still in progress.
    static func connect(to address: SocketAddress) throws(SystemError) -> (fd: Int32, inProgress: Bool) {
        let fd = try Syscall.socket(address.family, Int32(SOCK_STREAM.rawValue))
        Syscall.setOption(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1)
        let rc = address.withSockAddr { Glibc.connect(fd, $0, $1) }
        if rc == 0 { return (fd, false) }
        let e = errno
        if e == EINPROGRESS || e == EINTR { return (fd, true) }
        Glibc.close(fd)
        throw SystemError("connect", errno: e)
    }
}

/// A Unix-domain socket address.
enum UnixSocketAddress {
    /// Runs `body` with a filled `sockaddr_un`; nil when the path does not fit.
    static func with<R>(path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R? {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { return nil }
        withUnsafeMutableBytes(of: &addr.sun_path) { p in
            for (i, b) in bytes.enumerated() { p[i] = b }
            p[bytes.count] = 0
        }
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }
}
