/// A client's byte pipe as the protocol code sees it: a plain `SocketChannel`, or a `TLSTransport`
/// that decrypts on the way in and encrypts on the way out over one. Events arrive through the
/// `ChannelDelegate` callbacks (their channel argument is the socket underneath). Loop-confined.
protocol ClientTransport: AnyObject {
    var delegate: ChannelDelegate? { get set }
    /// Bytes queued and not yet accepted by the kernel (after encryption, for TLS).
    var pendingBytes: Int { get }
    var isClosed: Bool { get }
    var isLingering: Bool { get }
    var lingerDeadline: UInt64 { get }
    func start()
    func write(_ bytes: UnsafeRawBufferPointer)
    func write(_ bytes: [UInt8])
    func write(_ bytes: ArraySlice<UInt8>)
    /// `head` then `body`, in one system call where the transport can.
    func write(_ head: [UInt8], then body: UnsafeRawBufferPointer)
    func pauseReading()
    func resumeReading()
    /// Closes after everything queued is written (TLS sends close_notify first). With `linger`
    /// (the safe default) input is then discarded until the peer closes; without it the socket is
    /// closed once written, for a peer known to send nothing more.
    func finish(linger: Bool)
    /// Closes now; queued bytes are dropped.
    func close()
}

extension ClientTransport {
    func finish() { finish(linger: true) }

    func write(_ head: [UInt8], then body: UnsafeRawBufferPointer) {
        write(head)
        write(body)
    }
}

extension SocketChannel: ClientTransport {
    func close() { close(reset: false) }
}

/// A client connection of either protocol, as the drain on shutdown sees it.
protocol ClientSession: LoopTimed {
    /// Stop taking new requests; finish those in flight, then close.
    func beginDrain()
}
