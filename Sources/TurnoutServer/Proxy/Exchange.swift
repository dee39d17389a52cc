import TurnoutCore

/// One request/response exchange on a client connection: the request as parsed, where it was
/// routed, and how far each direction has got. Owned by its `ClientConnection`, loop-confined.
final class Exchange {
    enum RequestBody {
        case none
        case length(remaining: Int64)
        case chunked(ChunkedDecoder)
    }

    enum ResponseBody {
        case none
        case length(remaining: Int64)
        case chunked(ChunkedDecoder)
        case untilClose
    }

    let head: HTTPRequestHead
    /// The request head exactly as sent upstream (kept to replay on a retry).
    let upstreamHead: [UInt8]
    let startTime: UInt64
    var requestBody: RequestBody
    var requestComplete: Bool
    var bodyBytesSent: Int64 = 0

    var poolName: String
    var endpoint: UpstreamEndpoint
    var upstream: UpstreamConnection?
    var upstreamReady = false
    var connecting = false
    var reusedConnection = false
    var attempts = 1
    /// Connect deadline while connecting, then response/inactivity deadline.
    var upstreamDeadline: UInt64 = 0

    var responseBuffer: [UInt8] = []
    var responseStart = 0
    var responseHead: HTTPResponseHead?
    var responseBody: ResponseBody = .none
    /// The client gets the body chunked (HTTP/1.1 client, length unknown upfront).
    var chunkToClient = false
    var anyUpstreamByte = false
    var responseHeadSent = false
    var responseComplete = false
    /// Extra bytes after the response, or a framing problem: never reuse this upstream connection.
    var upstreamUnreusable = false
    var closeClientAfter = false
    /// The answer is Turnout's own error (502, 504, ...), not the upstream's.
    var proxyGenerated = false
    /// The upstream failed after the response head was sent.
    var upstreamCut = false
    var setCookie: String?
    var status = 0
    var bytesToClient: Int64 = 0
    var routeReason: RouteDecision.Reason

    init(head: HTTPRequestHead, upstreamHead: [UInt8], requestBody: RequestBody, poolName: String,
         endpoint: UpstreamEndpoint, reason: RouteDecision.Reason) {
        self.head = head
        self.upstreamHead = upstreamHead
        self.requestBody = requestBody
        if case .none = requestBody { requestComplete = true } else { requestComplete = false }
        self.poolName = poolName
        self.endpoint = endpoint
        self.routeReason = reason
        self.startTime = EventLoop.now()
    }
}
