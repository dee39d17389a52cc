import Synchronization

/// One upstream `host:port` of a pool. The object lives as long as the config that names it, so
/// counters on it (in-flight requests) survive routing-table swaps.
public final class UpstreamEndpoint: Sendable, CustomStringConvertible {
    /// Process-wide unique id, stable for the endpoint's life.
    public let id: Int
    public let pool: String
    public let address: HostPort
    /// Requests currently being served by this endpoint, across all event loops.
    public let inFlight = Atomic<Int>(0)
    /// Protocol-switched tunnels (WebSocket...) open to this endpoint; also counted in `inFlight`.
    public let tunnels = Atomic<Int>(0)
    /// When the last request started here (monotonic nanoseconds; 0: never).
    public let lastRequestAt = Atomic<UInt64>(0)
    /// Connect failures, resets and timeouts in a row (outlier detection).
    public let failureRun = Atomic<Int>(0)
    /// 5xx answers in a row (outlier detection).
    public let serverErrorRun = Atomic<Int>(0)

    public init(id: Int, pool: String, address: HostPort) {
        self.id = id
        self.pool = pool
        self.address = address
        self.description = address.description
    }

    /// `host:port` as written (computed once: it is also the Host of requests that lack one).
    public let description: String
}

extension UpstreamEndpoint {
    /// Counts a request that starts being served by this endpoint at `now` (monotonic ns).
    @inline(__always)
    public func requestStarted(at now: UInt64) {
        inFlight.wrappingAdd(1, ordering: .relaxed)
        lastRequestAt.store(now, ordering: .relaxed)
    }

    /// Whether requests are in flight or tunnels open here.
    public var isBusy: Bool { inFlight.load(ordering: .relaxed) > 0 || tunnels.load(ordering: .relaxed) > 0 }

    /// Counts a request that stopped being served by this endpoint (finished, failed or moved).
    @inline(__always)
    public func requestEnded() { inFlight.wrappingSubtract(1, ordering: .relaxed) }

    public func tunnelOpened() { tunnels.wrappingAdd(1, ordering: .relaxed) }
    public func tunnelClosed() { tunnels.wrappingSubtract(1, ordering: .relaxed) }
}

extension Sequence where Element == UpstreamEndpoint {
    /// The length of an array indexed by endpoint id that has room for all of these: ids are small
    /// and dense (numbered from 0 as endpoints are configured), so such arrays replace dictionaries
    /// on the data path.
    public var idTableSize: Int { (lazy.map(\.id).max() ?? -1) + 1 }
}

extension Array {
    /// Appends `filler` until `index` is a valid index (for arrays indexed by endpoint id).
    @inlinable
    public mutating func grow(toInclude index: Int, with filler: Element) {
        if index >= count { append(contentsOf: repeatElement(filler, count: index + 1 - count)) }
    }
}
