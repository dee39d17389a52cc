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
private func check(_ reads: [[UInt8]]) -> (read: Int, offset: Int, stream: UInt32, violation: HTTP2FrameRules.Violation)? {
    var rules = HTTP2FrameRules(prefaceLength: preface.count)
    for (k, read) in reads.enumerated() {
        if let v = read.withUnsafeBytes({ rules.scan($0) }) { return (k, v.offset, v.stream, v.violation) }
    }
    return nil
}

/// The same, for the stream-order rule (HEADERS on a stream skipped).
private func scan(_ reads: [[UInt8]]) -> (read: Int, offset: Int, stream: UInt32)? {
    guard let v = check(reads) else { return nil }
    #expect(v.violation == .skippedStream)
    return (v.read, v.offset, v.stream)
}

private func post(_ stream: UInt32) -> [UInt8] { frame(1, 0x4, stream, headersBlock) }  // END_HEADERS, body follows
private func data(_ stream: UInt32, end: Bool = false) -> [UInt8] { frame(0, end ? 1 : 0, stream, [1, 2, 3]) }
private func reset(_ stream: UInt32) -> [UInt8] { frame(3, 0, stream, [0, 0, 0, 8]) }
private func priority(_ stream: UInt32, on dependency: UInt32) -> [UInt8] {
    frame(2, 0, stream, [UInt8(dependency >> 24), UInt8(dependency >> 16 & 0xff), UInt8(dependency >> 8 & 0xff), UInt8(dependency & 0xff), 15])
}
private let windowUpdate1 = frame(8, 0, 1, [0, 0, 0x10, 0])

@Suite struct HTTP2FrameRulesTests {
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
        #expect(scan([preface + settings + post(1) + headers(3) + frame(0, 0, 1, [1, 2]) + headers(1) + headers(7)]) == nil)
    }

    @Test func belowTheRememberedWindowNothingIsDecided() {
        var bytes = preface
        for k in 0...HTTP2FrameRules.remembered + 1 { bytes += headers(UInt32(4 * k + 1)) }  // 1, 5, 9, …: 3 skipped, and 1 and 5 forgotten
        #expect(scan([bytes + headers(3)]) == nil)
        #expect(scan([bytes + headers(UInt32(4 * HTTP2FrameRules.remembered - 1))])?.stream == UInt32(4 * HTTP2FrameRules.remembered - 1))
    }

    /// The remembered identifiers are a ring: after many times its size, the newest and the
    /// oldest still remembered are known, an identifier skipped within them is refused, and one
    /// below them is left to libnghttp2.
    @Test func theWindowSlidesOverManyStreams() {
        var bytes = preface
        let n = 3 * HTTP2FrameRules.remembered + 7
        for k in 0..<n { bytes += post(UInt32(4 * k + 1)) }  // 1, 5, 9, …: every 4k+3 skipped; all open
        let newest = UInt32(4 * (n - 1) + 1)
        let oldestRemembered = UInt32(4 * (n - HTTP2FrameRules.remembered) + 1)
        let forgotten = oldestRemembered - 4
        #expect(scan([bytes + headers(newest) + headers(oldestRemembered)]) == nil)
        #expect(scan([bytes + headers(newest - 2)])?.stream == newest - 2)
        #expect(scan([bytes + headers(oldestRemembered - 2)])?.stream == oldestRemembered - 2)
        #expect(scan([bytes + headers(forgotten)]) == nil)
        #expect(scan([bytes + headers(forgotten - 2)]) == nil)
    }
}

@Suite struct HTTP2FrameRulesAfterEndTests {
    /// h2spec http2/5.1/5, 6, 11 and 12: DATA or HEADERS after the client's END_STREAM.
    @Test func dataOrHeadersAfterTheClientEndedTheStreamIsStreamClosed() {
        for (opening, late) in [(headers(1), data(1)), (headers(1), headers(1)), (post(1) + data(1, end: true), data(1)),
                                (post(1) + data(1, end: true), headers(1))] {
            let before = preface + settings + opening
            let v = check([before + late])
            #expect(v?.violation == .afterEnd(frameType: late[3]) && v?.stream == 1 && v?.offset == before.count)
            #expect(v?.violation.errorCode == 0x5)
        }
    }

    /// h2spec http2/5.1/8 and 9: DATA or HEADERS after the client's RST_STREAM.
    @Test func dataOrHeadersAfterTheClientResetTheStreamIsStreamClosed() {
        #expect(check([preface + post(1) + data(1) + reset(1) + data(1)])?.violation == .afterEnd(frameType: 0))
        #expect(check([preface + post(1), reset(1), headers(1)])?.violation == .afterEnd(frameType: 1))
    }

    /// What a client may still send: trailers that end the stream, WINDOW_UPDATE, RST_STREAM and
    /// PRIORITY after its end, and frames on other streams.
    @Test func whatStaysAllowed() {
        #expect(check([preface + post(1) + data(1) + headers(1) + windowUpdate1 + reset(1) + priority(1, on: 0)
                       + headers(3) + post(5) + data(5, end: true) + headers(7)]) == nil)
    }

    @Test func byteByByteTheRuleHoldsAndTheOffsetIsTheFramesStart() {
        let bytes = preface + settings + post(1) + data(1, end: true) + data(1)
        let v = check(bytes.map { [$0] })
        #expect(v?.violation == .afterEnd(frameType: 0) && v?.read == bytes.count - data(1).count + 8 && v?.offset == 0)
    }

    /// Beyond the remembered window, an ended stream is forgotten and left to libnghttp2.
    @Test func aForgottenStreamIsNotJudged() {
        var bytes = preface
        for k in 0...HTTP2FrameRules.remembered { bytes += headers(UInt32(2 * k + 1)) }  // 1, 3, 5, …, each ended
        #expect(check([bytes + data(1)]) == nil)
        #expect(check([bytes + data(3)])?.violation == .afterEnd(frameType: 0))
    }
}

@Suite struct HTTP2FrameRulesPriorityTests {
    /// h2spec http2/6.3/1.
    @Test func priorityOnStreamZeroIsAProtocolError() {
        let v = check([preface + settings + priority(0, on: 1)])
        #expect(v?.violation == .priorityOnConnection && v?.offset == preface.count + settings.count)
        #expect(v?.violation.errorCode == 0x1)
    }

    /// h2spec http2/5.3.1/2, whole and cut anywhere, and with the exclusive bit set.
    @Test func priorityOnItselfIsAProtocolError() {
        let before = preface + settings + headers(1)
        let bad = priority(3, on: 3)
        #expect(check([before + bad])?.offset == before.count)
        for cut in 1..<bad.count {
            let v = check([before + Array(bad[..<cut]), Array(bad[cut...])])
            #expect(v?.violation == .dependsOnItself && v?.stream == 3)
            // Decided once the dependency's four bytes are in: in the first read when they are all
            // there (where the frame starts), else in the second (the frame started before it).
            let whole = cut >= 9 + 4
            #expect(v?.read == (whole ? 0 : 1) && v?.offset == (whole ? before.count : 0), "cut \(cut): \(String(describing: v))")
        }
        #expect(check([before + priority(3, on: 0x8000_0003)])?.violation == .dependsOnItself)
    }

    @Test func priorityOnAnotherStreamPasses() {
        #expect(check([preface + priority(3, on: 1) + priority(1, on: 0) + headers(1) + frame(2, 0, 5, [0, 0, 0, 5])]) == nil)
    }
}
