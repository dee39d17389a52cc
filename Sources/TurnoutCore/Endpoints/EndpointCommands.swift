/// The run-time endpoint changes of the admin API (`/v1/pools/{pool}/endpoints`) as pure
/// functions: each takes the current state and a view of the pools' endpoints and returns the next
/// state (with a new generation) or an `AdminError`. The routing store applies the overrides the
/// state carries to its endpoint set.
public enum EndpointCommands {
    /// One endpoint as the commands see it.
    public struct Entry: Sendable, Equatable {
        public var address: String
        public var source: EndpointSource
        public var state: EndpointAdminState
        public var leaving: Bool
        public var takesTraffic: Bool
        public init(address: String, source: EndpointSource, state: EndpointAdminState, leaving: Bool, takesTraffic: Bool) {
            self.address = address
            self.source = source
            self.state = state
            self.leaving = leaving
            self.takesTraffic = takesTraffic
        }
    }

    /// Every pool's endpoints, pools in config order.
    public struct View: Sendable {
        public var order: [String]
        public var pools: [String: [Entry]]
        public init(order: [String], pools: [String: [Entry]]) {
            self.order = order
            self.pools = pools
        }
    }

    /// What an endpoint change asks for.
    public struct Change: Sendable, Equatable {
        public var state: EndpointAdminState?
        public var weight: Int?
        public init(state: EndpointAdminState? = nil, weight: Int? = nil) {
            self.state = state
            self.weight = weight
        }
    }

    /// Parses and normalises an endpoint address (`10.0.0.5:8080`, `[::1]:80`, `app:80`).
    public static func address(_ text: String) throws(AdminError) -> String {
        switch HostPort.parse(text) {
        case .success(let hp): return hp.description
        case .failure(let p): throw .badRequest("address \"\(text)\": \(p.message)", code: "invalid_address")
        }
    }

    static func checkWeight(_ w: Int?) throws(AdminError) {
        if let w, !(0...EndpointOverride.maxWeight).contains(w) {
            throw .badRequest("weight must be a whole number from 0 to \(EndpointOverride.maxWeight), got \(w)", code: "invalid_weight")
        }
    }

    static func entries(_ pool: String, _ view: View) throws(AdminError) -> [Entry] {
        guard let e = view.pools[pool] else {
            throw AdminError(404, "unknown_pool", "no pool named \"\(pool)\" (pools: \(view.order.joined(separator: ", ")))")
        }
        return e
    }

    static func entry(_ pool: String, _ address: String, _ view: View) throws(AdminError) -> Entry {
        guard let e = try entries(pool, view).first(where: { $0.address == address && !$0.leaving }) else {
            throw AdminError(404, "unknown_endpoint", "pool \(pool) has no endpoint \(address)")
        }
        return e
    }

    /// Refuses to take the last endpoint that admits requests out of a pool that carries traffic.
    static func checkNotLast(_ pool: String, _ address: String, state: RoutingState, view: View, force: Bool, what: String) throws(AdminError) {
        guard !force else { return }
        let share = state.weights[pool] ?? 0
        guard share > 0 || state.live == pool else { return }
        let others = try entries(pool, view).filter { $0.address != address && !$0.leaving && $0.state == .serving }
        if others.isEmpty {
            throw AdminError(409, "last_endpoint",
                             "\(address) is the last serving endpoint of pool \(pool), which carries \(Percent.format(basisPoints: share))% of traffic; switch traffic away first or pass force to \(what) anyway")
        }
    }

    /// Adds an endpoint to a pool (or brings back one removed earlier). It takes traffic once its
    /// health probes pass.
    public static func add(pool: String, address text: String, weight: Int?, state: RoutingState, view: View) throws(AdminError) -> RoutingState {
        let address = try address(text)
        try checkWeight(weight)
        if try entries(pool, view).contains(where: { $0.address == address && !$0.leaving }) {
            throw AdminError(409, "endpoint_exists", "pool \(pool) already has endpoint \(address) (change it with PUT)")
        }
        var next = state
        next.setOverride(EndpointOverride(added: true, removed: false, state: .serving, weight: weight), pool: pool, address: address)
        next.generation += 1
        return next
    }

    /// Removes an endpoint: it takes no new requests, drains, then leaves the pool.
    public static func remove(pool: String, address text: String, force: Bool, state: RoutingState, view: View) throws(AdminError) -> RoutingState {
        let address = try address(text)
        let e = try entry(pool, address, view)
        try checkNotLast(pool, address, state: state, view: view, force: force, what: "remove it")
        var next = state
        // An endpoint added at run time is simply no longer wanted; one from the config or DNS is
        // kept out until it is added again.
        let o = e.source == .api ? EndpointOverride() : EndpointOverride(removed: true)
        next.setOverride(o, pool: pool, address: address)
        next.generation += 1
        return next
    }

    /// Changes an endpoint's state (serving, draining, maintenance) and/or weight.
    public static func update(pool: String, address text: String, _ change: Change, force: Bool,
                              state: RoutingState, view: View) throws(AdminError) -> RoutingState {
        let address = try address(text)
        try checkWeight(change.weight)
        _ = try entry(pool, address, view)
        if change.state == nil && change.weight == nil {
            throw .badRequest("nothing to change: send state (serving, draining, maintenance) and/or weight", code: "missing_field")
        }
        var o = state.override(pool: pool, address: address)
        if let s = change.state { o.state = s }
        if let w = change.weight { o.weight = w }
        if o.state != .serving || o.weight == 0 {
            try checkNotLast(pool, address, state: state, view: view, force: force,
                             what: o.state != .serving ? "set it to \(o.state.rawValue)" : "give it weight 0")
        }
        var next = state
        next.setOverride(o, pool: pool, address: address)
        if next.endpoints != state.endpoints { next.generation += 1 }
        return next
    }
}
