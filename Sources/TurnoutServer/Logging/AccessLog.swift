import Logging
import TurnoutCore

/// The access log: one line per request and per closed tunnel, written by the log writer off the
/// serving loops. `text` keeps the line README always showed (through the logger, at `info`);
/// `json` writes `AccessRecord.json`, one object per line.
final class AccessLog: Sendable {
    let format: LogFormat
    let logger: Logger

    init(format: LogFormat, logger: Logger) {
        self.format = format
        self.logger = logger
    }

    func write(_ record: AccessRecord) {
        switch format {
        case .text:
            logger.info("\(record.text)")
        case .json:
            guard logger.logLevel <= .info else { return }
            AsyncLogHandler.writeLine(bytes: record.jsonLine(timeNanos: Timestamp.nowNanos()))
        }
    }
}
