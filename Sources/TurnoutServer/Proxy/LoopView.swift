import TurnoutCore

/// One event loop's copy of what it reads of the proxy's shared state on every request: the
/// settings in force and the routing table. Loading a shared reference atomically costs two
/// 16-byte compare-and-swaps and a retain; a request read it about ten times. Here each read is
/// one plain load of a version counter, and the reference is loaded again only when a reload or a
/// routing change has published a new one. Loop-confined, owned by the loop's `UpstreamPool`.
final class LoopView: @unchecked Sendable {
    let context: ProxyContext
    private var settingsSeen: UInt64
    private var cachedSettings: ProxyContext.Settings
    private var cachedTimeouts: TimeoutConfig
    private var cachedLimits: LimitsConfig
    private var tableSeen: UInt64
    private var cachedTable: RoutingTable

    init(context: ProxyContext) {
        self.context = context
        // Versions first: what is loaded after is at least that new.
        settingsSeen = context.settingsVersion
        let settings = context.settings
        cachedSettings = settings
        cachedTimeouts = settings.config.timeouts
        cachedLimits = settings.config.limits
        tableSeen = context.store.version
        cachedTable = context.store.table
    }

    @inline(__always)
    private func checkSettings() {
        let v = context.settingsVersion
        if v != settingsSeen {
            settingsSeen = v
            let settings = context.settings
            cachedSettings = settings
            cachedTimeouts = settings.config.timeouts
            cachedLimits = settings.config.limits
        }
    }

    /// The settings in force (a reload replaces them).
    var settings: ProxyContext.Settings {
        checkSettings()
        return cachedSettings
    }

    /// The timeouts and limits in force, kept as values: reading one costs no reference count.
    var timeouts: TimeoutConfig {
        checkSettings()
        return cachedTimeouts
    }

    var limits: LimitsConfig {
        checkSettings()
        return cachedLimits
    }

    /// The routing snapshot in force. Read once per request, like `RoutingStore.table`.
    @inline(__always)
    var table: RoutingTable {
        let v = context.store.version
        if v != tableSeen {
            tableSeen = v
            cachedTable = context.store.table
        }
        return cachedTable
    }
}
