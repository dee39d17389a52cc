#if canImport(Glibc)
import Glibc
#endif
import Foundation
import TurnoutCore

/// Asks DNS servers directly (not getaddrinfo: discovery needs TTLs, SRV records and the servers
/// named in `resolvers:`). Blocking, with a timeout per server: run it on a discovery queue, never
/// on an event loop. UDP first; over TCP when the answer is truncated.
struct DNSResolver: Sendable {
    let servers: [HostPort]
    var timeoutMs: Int32 = 2000

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// What a lookup found: the records of the asked type (after any CNAME chain the server
    /// followed) and the additional section. `nameError` is NXDOMAIN (no such name: an empty answer).
    struct Answer {
        var records: [DNSMessage.Record]
        var additional: [DNSMessage.Record]
        var nameError: Bool
    }

    /// The servers of /etc/resolv.conf (`nameserver` lines, port 53).
    static func systemServers(path: String = "/etc/resolv.conf") -> [HostPort] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [] }
        var out: [HostPort] = []
        for line in text.split(separator: "\n") {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if fields.count >= 2, fields[0] == "nameserver" {
                let host = String(fields[1].split(separator: "%").first ?? fields[1])
                out.append(HostPort(host: host, port: 53))
            }
        }
        return out
    }

    /// Asks each server in turn until one answers (NOERROR or NXDOMAIN); throws the last failure.
    func lookup(_ name: String, type: UInt16) throws(Failure) -> Answer {
        guard !servers.isEmpty else { throw Failure(description: "no DNS server to ask (set resolvers:, or nameserver in /etc/resolv.conf)") }
        var last = "no answer"
        for server in servers {
            do throws(Failure) {
                return try ask(server, name: name, type: type)
            } catch {
                last = "\(server): \(error.description)"
            }
        }
        throw Failure(description: last)
    }

    private func ask(_ server: HostPort, name: String, type: UInt16) throws(Failure) -> Answer {
        guard let address = SocketAddress.literal(server.host, port: server.port) else {
            throw Failure(description: "not an IP address")
        }
        let id = UInt16.random(in: 0...UInt16.max)
        let query = DNSMessage.query(id: id, name: name, type: type)
        var response = try exchange(address, query, id: id, tcp: false)
        if response.truncated { response = try exchange(address, query, id: id, tcp: true) }
        switch response.rcode {
        case 0, 3:
            let wanted = response.answers.filter { $0.type == type }
            return Answer(records: wanted, additional: response.additional, nameError: response.rcode == 3)
        case 2: throw Failure(description: "server failure (SERVFAIL)")
        case 5: throw Failure(description: "refused (REFUSED)")
        default: throw Failure(description: "error code \(response.rcode)")
        }
    }

    private func exchange(_ address: SocketAddress, _ query: [UInt8], id: UInt16, tcp: Bool) throws(Failure) -> DNSMessage.Response {
        let family: Int32
        switch address.storage {
        case .v4: family = AF_INET
        case .v6: family = AF_INET6
        }
        let fd = Glibc.socket(family, Int32(tcp ? SOCK_STREAM.rawValue : SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(timeoutMs) * 1_000_000
        func wait(_ events: Int16) throws(Failure) {
            while true {
                let now = DispatchTime.now().uptimeNanoseconds
                guard now < deadline else { throw Failure(description: "timed out after \(timeoutMs) ms") }
                var p = pollfd(fd: fd, events: events, revents: 0)
                let n = poll(&p, 1, Int32(max(1, (deadline - now) / 1_000_000)))
                if n > 0 { return }
                if n < 0 && errno != EINTR { throw Failure(description: "poll: \(String(cString: strerror(errno)))") }
            }
        }
        let rc = address.withSockAddr { Glibc.connect(fd, $0, $1) }
        guard rc == 0 else { throw Failure(description: "connect: \(String(cString: strerror(errno)))") }
        var framed = query
        if tcp { framed = [UInt8(query.count >> 8), UInt8(query.count & 0xff)] + query }
        var sent = 0
        while sent < framed.count {
            let n = framed.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + sent, framed.count - sent, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw Failure(description: "send: \(String(cString: strerror(errno)))")
            }
            sent += n
        }
        var buffer = [UInt8](repeating: 0, count: 65_535)
        if !tcp {
            while true {
                try wait(Int16(POLLIN))
                let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
                if n < 0 {
                    if errno == EINTR { continue }
                    throw Failure(description: "receive: \(String(cString: strerror(errno)))")
                }
                do throws(DNSMessage.ParseError) {
                    let r = try DNSMessage.parse(Array(buffer[0..<n]))
                    // A reply to some other query (a late one) is skipped.
                    if r.id == id { return r }
                } catch {
                    throw Failure(description: "malformed answer: \(error)")
                }
            }
        }
        var got: [UInt8] = []
        while true {
            if got.count >= 2 {
                let len = Int(got[0]) << 8 | Int(got[1])
                if got.count >= 2 + len {
                    do throws(DNSMessage.ParseError) {
                        return try DNSMessage.parse(Array(got[2..<(2 + len)]))
                    } catch {
                        throw Failure(description: "malformed answer: \(error)")
                    }
                }
            }
            try wait(Int16(POLLIN))
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                throw Failure(description: "receive: \(String(cString: strerror(errno)))")
            }
            if n == 0 { throw Failure(description: "the server closed the TCP connection mid-answer") }
            got += buffer[0..<n]
        }
    }

    /// The addresses of a discovery name: for A/AAAA every address with the configured port; for
    /// SRV every target of the lowest priority with its port and weight (a target's addresses come
    /// from the additional section or an A lookup, then AAAA). Sorted; the smallest TTL seen.
    func discover(_ d: DiscoveryConfig) throws(Failure) -> (addresses: [DiscoveredAddress], ttl: UInt32) {
        let answer = try lookup(d.name, type: DNSMessage.type(of: d.type))
        var ttl = answer.records.map(\.ttl).min() ?? UInt32(d.minTTLMs / 1000)
        var out: [DiscoveredAddress] = []
        switch d.type {
        case .a, .aaaa:
            for r in answer.records {
                switch r.data {
                case .a(let ip), .aaaa(let ip): out.append(DiscoveredAddress(address: HostPort(host: ip, port: d.port ?? 0)))
                default: break
                }
            }
        case .srv:
            var targets: [(priority: UInt16, weight: UInt16, port: UInt16, target: String)] = []
            for r in answer.records {
                if case .srv(let p, let w, let port, let target) = r.data, target != "" && target != "." { targets.append((p, w, port, target)) }
            }
            let best = targets.map(\.priority).min()
            for t in targets where t.priority == best {
                var ips: [(String, UInt32)] = answer.additional.compactMap { r in
                    guard r.name.lowercased() == t.target.lowercased() else { return nil }
                    switch r.data {
                    case .a(let ip), .aaaa(let ip): return (ip, r.ttl)
                    default: return nil
                    }
                }
                if ips.isEmpty {
                    for type in [DNSMessage.typeA, DNSMessage.typeAAAA] {
                        let a = try lookup(t.target, type: type)
                        for r in a.records {
                            switch r.data {
                            case .a(let ip), .aaaa(let ip): ips.append((ip, r.ttl))
                            default: break
                            }
                        }
                        if !ips.isEmpty { break }
                    }
                }
                for (ip, recordTTL) in ips {
                    ttl = min(ttl, recordTTL)
                    out.append(DiscoveredAddress(address: HostPort(host: ip, port: t.port), weight: max(1, min(EndpointOverride.maxWeight, Int(t.weight)))))
                }
            }
        }
        var seen = Set<String>()
        out = out.filter { seen.insert($0.address.description).inserted }
        out.sort { $0.address.description < $1.address.description }
        return (out, ttl)
    }
}
