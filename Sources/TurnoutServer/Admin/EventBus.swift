import Foundation
import Synchronization
import TurnoutCore

/// One change Turnout reports on `GET /v1/events`: a switch, a weight change, a rollback, a ramp
/// step or gate verdict, a health transition.
public struct TurnoutEvent: Sendable {
    public var kind: String
    public var generation: UInt64
    public var reason: String
    /// Extra fields, already JSON-encoded values.
    public var fields: [(String, String)]
    public var time = Date()

    public init(kind: String, generation: UInt64, reason: String, fields: [(String, String)] = []) {
        self.kind = kind
        self.generation = generation
        self.reason = reason
        self.fields = fields
    }

    /// The event as a log line (`log_format: json`): the time first, then as on the stream.
    public var logJSON: String {
        "{\"time\":\(JSONWriter.quote(Timestamp.iso8601(time))),\"log\":\"event\",\"level\":\"info\""
            + ",\"kind\":\(JSONWriter.quote(kind)),\"generation\":\(generation),\"reason\":\(JSONWriter.quote(reason))" + fieldsJSON
    }

    public var json: String {
        "{\"kind\":\(JSONWriter.quote(kind)),\"generation\":\(generation),\"time\":\(JSONWriter.quote(Timestamp.iso8601(time)))"
            + ",\"reason\":\(JSONWriter.quote(reason))" + fieldsJSON
    }

    /// The kind's own fields and the closing brace.
    private var fieldsJSON: String {
        var out = ""
        for (k, v) in fields { out += ",\(JSONWriter.quote(k)):\(v)" }
        return out + "}"
    }
}

/// Fans events out to subscribers (event-stream connections). Publishing never blocks: each
/// subscriber has a bounded queue, and one that falls behind is told and dropped.
public final class EventBus: Sendable {
    final class Subscriber: Sendable {
        let deliver: @Sendable (String) -> Bool
        init(deliver: @escaping @Sendable (String) -> Bool) { self.deliver = deliver }
    }

    private let subscribers = Mutex<[ObjectIdentifier: Subscriber]>([:])
    /// Writes each event to the log as well (`log_format: json`); set once at start.
    private let logger = Mutex<(@Sendable (TurnoutEvent) -> Void)?>(nil)

    func logEvents(_ write: @escaping @Sendable (TurnoutEvent) -> Void) { logger.withLock { $0 = write } }

    public init() {}

    /// `deliver` returns false when the subscriber cannot keep up; it is then removed.
    func subscribe(_ deliver: @escaping @Sendable (String) -> Bool) -> ObjectIdentifier {
        let s = Subscriber(deliver: deliver)
        let id = ObjectIdentifier(s)
        subscribers.withLock { $0[id] = s }
        return id
    }

    func unsubscribe(_ id: ObjectIdentifier) {
        _ = subscribers.withLock { $0.removeValue(forKey: id) }
    }

    public func publish(_ event: TurnoutEvent) {
        logger.withLock { $0 }?(event)
        let line = event.json
        let current = subscribers.withLock { Array($0) }
        for (id, s) in current where !s.deliver(line) {
            unsubscribe(id)
        }
    }

    var subscriberCount: Int { subscribers.withLock { $0.count } }
}
