import Testing
@testable import TurnoutCore

/// Frames as a client sends them: the preface, then `frames`.
private let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)

private func frame(_ type: UInt8, _ flags: UInt8, _ stream: UInt32, _ payload: [UInt8] = []) -> [UInt8] {
    let n = payload.count
    return [UInt8(n >> 16 & 0xff), UInt8(n >> 8 & 0xff), UInt8(n & 0xff), type, flags,
            UInt8(stream >> 24 & 0x7f), UInt8(stream >> 16 & 0xff), UInt8(stream >> 8 & 0xff), UInt8(stream & 0xff)] + payload
}

private let headersBlock: [UInt8] = [0x82, 0x84, 0x86, 0x41, 0x01, 0x78]  // GET / http, :authority x
private func headers(_ stream: UInt32) -> [UInt8] { frame(1, 0x5, stream, headersBlock) }
private let settings = frame(4, 0, 0, [0, 3, 0, 0, 0, 100])
private let settingsAck = frame(4, 1, 0)

/// Feeds `reads` one by one; the first violation reported, with the index of the read.
private func scan(_ reads: [[UInt8]]) -> (read: Int, offset: Int, stream: UInt32)? {
    var order = HTTP2StreamOrder(prefaceLength: preface.count)
    for (k, read) in reads.enumerated() {
        if let v = read.withUnsafeBytes({ order.scan($0) }) { return (k, v.offset, v.stream) }
    }
    return nil
}

@Suite struct HTTP2StreamOrderTests {
    @Test func aLowerStreamNeverOpenedIsReportedWhereItsFrameStarts() {
        let bytes = preface + settings + settingsAck + headers(5) + headers(3)
        let v = scan([bytes])
        #expect(v?.stream == 3)
        #expect(v?.offset == preface.count + settings.count + settingsAck.count + headers(5).count)
    }

    /// h2spec http2/5.1.1/2 sends each frame in its own write.
    @Test func theSameFramesInSeparateReads() {
        let v = scan([preface, settings, settingsAck, headers(5), headers(3)])
        #expect(v?.read == 4 && v?.offset == 0 && v?.stream == 3)
    }

    @Test func byteByByte() {
        let bytes = preface + settings + headers(5) + headers(3)
        let v = scan(bytes.map { [$0] })
        #expect(v?.stream == 3 && v?.read == bytes.count - headers(3).count + 8)
    }

    @Test func ascendingStreamsAndTrailersOnAnOpenStreamPass() {
        #expect(scan([preface + settings + headers(1) + headers(3) + frame(0, 0, 1, [1, 2]) + headers(1) + headers(7)]) == nil)
    }

    @Test func belowTheRememberedWindowNothingIsDecided() {
        var bytes = preface
        for k in 0...HTTP2StreamOrder.remembered + 1 { bytes += headers(UInt32(4 * k + 1)) }  // 1, 5, 9, …: 3 skipped, and 1 and 5 forgotten
        #expect(scan([bytes + headers(3)]) == nil)
        #expect(scan([bytes + headers(UInt32(4 * HTTP2StreamOrder.remembered - 1))])?.stream == UInt32(4 * HTTP2StreamOrder.remembered - 1))
    }

    /// The remembered identifiers are a ring: after many times its size, the newest and the
    /// oldest still remembered are known, an identifier skipped within them is refused, and one
    /// below them is left to libnghttp2.
    @Test func theWindowSlidesOverManyStreams() {
        var bytes = preface
        let n = 3 * HTTP2StreamOrder.remembered + 7
        for k in 0..<n { bytes += headers(UInt32(4 * k + 1)) }  // 1, 5, 9, …: every 4k+3 skipped
        let newest = UInt32(4 * (n - 1) + 1)
        let oldestRemembered = UInt32(4 * (n - HTTP2StreamOrder.remembered) + 1)
        let forgotten = oldestRemembered - 4
        #expect(scan([bytes + headers(newest) + headers(oldestRemembered)]) == nil)
        #expect(scan([bytes + headers(newest - 2)])?.stream == newest - 2)
        #expect(scan([bytes + headers(oldestRemembered - 2)])?.stream == oldestRemembered - 2)
        #expect(scan([bytes + headers(forgotten)]) == nil)
        #expect(scan([bytes + headers(forgotten - 2)]) == nil)
    }
}
