import Foundation

/// Who changed the routing state, how and why: carried inside the routing document, so every
/// replica that applies a change can report it (event stream, log) as the one that made it.
public struct RoutingChange: Codable, Sendable, Equatable {
    /// The event kind: switch, weights, rollback, ramp_started, ramp_step, ...
    public var kind: String
    /// In words, e.g. "switch to green".
    public var reason: String
    /// The replica that wrote it.
    public var by: String
    /// When, ISO 8601.
    public var at: String
    public init(kind: String, reason: String, by: String, at: String = Timestamp.iso8601()) {
        self.kind = kind
        self.reason = reason
        self.by = by
        self.at = at
    }
}

/// The routing truth of a cluster: one JSON document under one etcd key, holding everything that
/// must change together (live pool, weights, previous weights, ramp spec and progress, the last
/// change), so no replica ever applies half of a change. Its generation is not inside: it is the
/// key's etcd `mod_revision`, which a compare-and-swap write checks.
public enum ClusterDocument {
    public struct Invalid: Error, CustomStringConvertible, Sendable {
        public let reason: String
        public var description: String { reason }
    }

    /// The document's bytes for `state` (compact JSON, sorted keys).
    public static func encode(_ state: RoutingState, change: RoutingChange?) -> [UInt8] {
        let doc = StateFile.Document(format: StateFile.format, generation: nil, live: state.live, weights_bp: state.weights,
                                     previous_weights_bp: state.previousWeights, previous_live: state.previousLive,
                                     updated_at: change?.at ?? Timestamp.iso8601(), ramp: state.ramp, change: change,
                                     endpoints: state.endpoints.isEmpty ? nil : state.endpoints,
                                     mirror: MirrorSetting(state.mirror))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        // Encoding these plain values cannot fail.
        return Array((try? encoder.encode(doc)) ?? Data())
    }

    /// The state a document holds at `revision`, checked against this replica's pools. A document
    /// this replica cannot use (unknown pools, another format) is refused whole.
    public static func decode(_ bytes: [UInt8], revision: UInt64, config: TurnoutConfig) throws(Invalid) -> (RoutingState, RoutingChange?) {
        do throws(StateFile.Invalid) {
            let doc = try StateFile.decodeDocument(Data(bytes))
            return (try StateFile.state(from: doc, generation: revision, config: config), doc.change)
        } catch {
            throw Invalid(reason: "the routing document " + error.reason)
        }
    }
}
