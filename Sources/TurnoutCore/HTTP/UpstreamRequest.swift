/// What goes upstream for one request, before it is written in the upstream's protocol: the
/// client's head and what Turnout adds to it. `http1Head()` writes it as HTTP/1.1 bytes, and
/// `HTTP2RequestFields.set` as HTTP/2 fields, both through `HeaderRewriter.writeUpstreamRequest`:
/// one rewriter decides what goes upstream whatever the upstream speaks, and neither form is
/// made from the other. A class: it is handed from the plan to the exchange, its link and any
/// mirror copy, and kept for retries; each copy of a struct would retain every part of the head.
public final class UpstreamRequest: Sendable {
    public let head: HTTPRequestHead
    /// The client's address, appended to `X-Forwarded-For`.
    public let clientIP: String
    /// The client's scheme (`X-Forwarded-Proto`).
    public let scheme: String
    /// `Host` when the client sent none (the endpoint's address).
    public let fallbackHost: String
    /// The protocol the request switches to (`Upgrade`, with `Connection: Upgrade`), or nil.
    public let upgrade: String?
    /// The request id (`X-Request-Id`) as it goes upstream, for the access log; nil when not known
    /// (the client's field, if any, goes as it came). Made into a String on each call.
    public var requestID: String? { givenID ?? madeID.map(RequestID.text) }
    /// The id as given (the client's, or one written out by the caller).
    private let givenID: String?
    /// The number of the id Turnout made (`RequestID.next`), kept as a number until written.
    private let madeID: UInt64?
    /// Turnout made `requestID` (the client sent none it could use): it is sent instead of any
    /// `X-Request-Id` the client sent.
    public let madeRequestID: Bool
    /// A mirror's copy: `X-Turnout-Mirror: 1` is its last field.
    public let mirrorCopy: Bool

    public convenience init(head: HTTPRequestHead, clientIP: String, scheme: String, fallbackHost: String, upgrade: String? = nil,
                requestID: String? = nil, madeRequestID: Bool = false, mirrorCopy: Bool = false) {
        self.init(head: head, clientIP: clientIP, scheme: scheme, fallbackHost: fallbackHost, upgrade: upgrade,
                  givenID: requestID, madeID: nil, madeRequestID: madeRequestID && requestID != nil, mirrorCopy: mirrorCopy)
    }

    /// The request with the client's usable id (`clientID`), or else a new one Turnout made.
    public convenience init(head: HTTPRequestHead, clientIP: String, scheme: String, fallbackHost: String,
                            upgrade: String? = nil, clientID: String?) {
        self.init(head: head, clientIP: clientIP, scheme: scheme, fallbackHost: fallbackHost, upgrade: upgrade,
                  givenID: clientID, madeID: clientID == nil ? RequestID.next() : nil, madeRequestID: clientID == nil,
                  mirrorCopy: false)
    }

    private init(head: HTTPRequestHead, clientIP: String, scheme: String, fallbackHost: String, upgrade: String?,
                 givenID: String?, madeID: UInt64?, madeRequestID: Bool, mirrorCopy: Bool) {
        self.head = head
        self.clientIP = clientIP
        self.scheme = scheme
        self.fallbackHost = fallbackHost
        self.upgrade = upgrade
        self.givenID = givenID
        self.madeID = madeID
        self.madeRequestID = madeRequestID
        self.mirrorCopy = mirrorCopy
    }

    /// Writes the id Turnout made as `X-Request-Id` (nothing when the client's goes as it came).
    func writeMadeID<S: UpstreamHeadSink>(into sink: inout S) {
        guard madeRequestID else { return }
        sink.beginField("X-Request-Id", kind: .other)
        if let givenID { sink.value(givenID) } else if let madeID { RequestID.withText(madeID) { sink.value($0) } }
        sink.endField()
    }

    /// The same request as a mirror's copy.
    public func mirrored() -> UpstreamRequest {
        UpstreamRequest(head: head, clientIP: clientIP, scheme: scheme, fallbackHost: fallbackHost, upgrade: upgrade,
                        givenID: givenID, madeID: madeID, madeRequestID: madeRequestID, mirrorCopy: true)
    }

    /// The head as HTTP/1.1 bytes, ending with the empty line.
    public func http1Head() -> [UInt8] {
        var sink = HTTP1HeadSink()
        sink.out.reserveCapacity(256 + head.headers.byteCount + head.target.utf8.count + (head.host?.utf8.count ?? 0))
        HeaderRewriter.writeUpstreamRequest(self, into: &sink)
        return sink.out
    }
}

/// Where `HeaderRewriter.writeUpstreamRequest` writes: the request line, then fields, each with
/// its `HeaderRewriter.FieldKind` (a writer for HTTP/2 turns `Host` into `:authority` and leaves
/// the connection-specific ones out).
public protocol UpstreamHeadSink {
    mutating func requestLine(method: String, target: String)
    /// A field as the client sent it (its name in the client's case).
    mutating func field(_ name: UnsafeBufferPointer<UInt8>, _ value: UnsafeBufferPointer<UInt8>, kind: HeaderRewriter.FieldKind)
    /// A field Turnout writes, named in HTTP/1.1's case; its value follows in pieces, then `endField`.
    mutating func beginField(_ name: StaticString, kind: HeaderRewriter.FieldKind)
    mutating func value(_ bytes: UnsafeBufferPointer<UInt8>)
    mutating func value(_ text: String)
    mutating func value(_ literal: StaticString)
    mutating func decimal(_ n: Int64)
    mutating func endField()
    /// The head is complete.
    mutating func end()
}

extension UpstreamHeadSink {
    /// The values of every `name` field of `headers`, each followed by ", " (a list Turnout then
    /// ends with its own entry: `X-Forwarded-For`).
    mutating func values(of name: String, in headers: HTTPHeaders) {
        headers.forEachValue(name) { v in
            value(v)
            value(", ")
            return true
        }
    }

    /// A field Turnout writes, whole.
    mutating func field(_ name: StaticString, _ value: String, kind: HeaderRewriter.FieldKind) {
        beginField(name, kind: kind)
        self.value(value)
        endField()
    }
}

/// Writes an upstream request head as HTTP/1.1.
struct HTTP1HeadSink: UpstreamHeadSink {
    var out: [UInt8] = []

    mutating func requestLine(method: String, target: String) {
        out.appendUTF8(method)
        out.append(32)
        out.appendUTF8(target)
        out.append(literal: " HTTP/1.1\r\n")
    }

    mutating func field(_ name: UnsafeBufferPointer<UInt8>, _ value: UnsafeBufferPointer<UInt8>, kind: HeaderRewriter.FieldKind) {
        HeaderRewriter.appendField(&out, name, value)
    }

    mutating func beginField(_ name: StaticString, kind: HeaderRewriter.FieldKind) {
        out.append(literal: name)
        out.append(literal: ": ")
    }

    mutating func value(_ bytes: UnsafeBufferPointer<UInt8>) { out.append(contentsOf: bytes) }
    mutating func value(_ text: String) { out.appendUTF8(text) }
    mutating func value(_ literal: StaticString) { out.append(literal: literal) }
    mutating func decimal(_ n: Int64) { HeaderRewriter.appendDecimal(&out, n) }
    mutating func endField() { out.append(literal: "\r\n") }
    mutating func end() { out.append(literal: "\r\n") }
}
