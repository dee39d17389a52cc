/// A reference to an object that outlives its holder by construction (a stream's connection, an
/// exchange's loop), used without reference counting.
///
/// `unowned(unsafe)` saves the retain when the reference is stored, but not when it is used: each
/// use copies it (a retain, and a release after), because the compiler cannot see that the object
/// stays alive across a call. `with` hands the body a borrowed reference instead
/// (`Unmanaged._withUnsafeGuaranteedRef`): no count at all. On the loop and the client connection
/// alone that is about 24 atomic increments and decrements fewer per proxied HTTP/2 request
/// (`Benchmarks/h2up_counts.py --by-type`).
///
/// Nothing keeps the object alive for the holder: whoever makes the object must keep it until
/// every holder is gone. `ProxyServer` keeps its loops, pools, counters and context for as long
/// as it serves; a test that makes its own must end every connection on them first
/// (`ExchangeDriverTests.Rig`), or a late event reaches freed memory.
struct Unretained<Object: AnyObject> {
    private let ref: Unmanaged<Object>

    init(_ object: Object) { ref = .passUnretained(object) }

    /// Calls `body` with the object, which must still be alive (the holder's invariant).
    @inline(__always)
    func with<R>(_ body: (Object) -> R) -> R { ref._withUnsafeGuaranteedRef(body) }

    /// `with` for a body that throws, keeping its error type.
    @inline(__always)
    func tryWith<R, E: Error>(_ body: (Object) throws(E) -> R) throws(E) -> R {
        try ref._withUnsafeGuaranteedRef { o in Result { () throws(E) -> R in try body(o) } }.get()
    }

    /// The object as an ordinary (counted) reference, for uses off the hot path.
    var object: Object { ref.takeUnretainedValue() }
}
