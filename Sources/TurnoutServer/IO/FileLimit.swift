#if canImport(Glibc)
import Glibc
#endif

/// The process's open-files limit, and what `limits.max_client_connections: auto` makes of it.
enum FileLimit {
    /// Descriptors kept back for listeners, health probes, the admin API, logs and the state file.
    static let reserve = 256

    /// The soft limit after raising it to the hard limit (once, at first use).
    static let raised: Int = {
        var rl = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &rl) == 0 else { return 1024 }
        if rl.rlim_cur < rl.rlim_max {
            var up = rl
            up.rlim_cur = rl.rlim_max
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &up) == 0 { rl = up }
        }
        return rl.rlim_cur > rlim_t(Int32.max) ? Int(Int32.max) : Int(rl.rlim_cur)
    }()

    /// `auto`: half of what is left after the reserve (a client connection and its upstream
    /// connection each take a descriptor), as HAProxy derives its default `maxconn`; at least 64.
    static var automaticMaxClientConnections: Int { max(64, (raised - reserve) / 2) }
}
