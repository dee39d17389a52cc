/// What a client connection works with, whatever its protocol: its loop, the proxy's shared
/// context, that loop's upstream pool and counters, who the client is, and what to call once the
/// connection is gone. Handed on whole when an HTTP/1.1 connection becomes HTTP/2 (h2c) or a
/// tunnel. Loop-confined like the connections that hold it. A class: its parts are reached many
/// times per request, and each copy of a struct of them would retain every one.
final class ClientEnvironment {
    /// Loops live as long as the process serves: `unowned(unsafe)`, not counted when stored (each
    /// use still is a retain and a release; `UpstreamPool.loopRef` is read without any).
    unowned(unsafe) let loop: EventLoop
    let context: ProxyContext
    let pool: UpstreamPool
    let stats: LoopStats
    /// The loop's mirror copies.
    let mirrors: MirrorRunner
    let clientIP: String
    /// "https" on TLS listeners.
    let scheme: String
    /// Called once when the client connection is finally closed (it keeps the open-connection
    /// count and the listener's registry right).
    let onClose: () -> Void

    init(loop: EventLoop, context: ProxyContext, pool: UpstreamPool, stats: LoopStats, mirrors: MirrorRunner, clientIP: String,
         scheme: String, onClose: @escaping () -> Void) {
        self.loop = loop
        self.context = context
        self.pool = pool
        self.stats = stats
        self.mirrors = mirrors
        self.clientIP = clientIP
        self.scheme = scheme
        self.onClose = onClose
    }
}

/// A client connection that holds a `ClientEnvironment`, with its parts at hand.
protocol ClientEnvironmentHolder: AnyObject {
    var env: ClientEnvironment { get }
}

extension ClientEnvironmentHolder {
    var loop: EventLoop { env.loop }
    var context: ProxyContext { env.context }
    var pool: UpstreamPool { env.pool }
    /// The loop's cached settings and routing table.
    var view: LoopView { env.pool.view }
    var stats: LoopStats { env.stats }
    var clientIP: String { env.clientIP }
    var scheme: String { env.scheme }
}
