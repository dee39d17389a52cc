import COpenSSL
import Synchronization
import TurnoutCore

/// A TLS server configuration for one listener: OpenSSL contexts with each certificate chain and
/// key loaded and checked, TLS 1.2 and 1.3 only, OpenSSL's modern default ciphers (no RSA key
/// exchange, no CBC-only legacy suites), ALPN offering h2 then http/1.1, and SNI selection when
/// several certificates are given. Immutable once built; a reload builds a new one.
final class TLSContext: @unchecked Sendable {
    /// The contexts in config order, NULL-terminated (the SNI callback walks this table).
    private let table: UnsafeMutablePointer<OpaquePointer?>
    private let count: Int

    /// TLS 1.2 suites offered (TLS 1.3 uses OpenSSL's defaults, all AEAD with forward secrecy).
    static let tls12Ciphers = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

    /// Loads every certificate and key; the error names the file and OpenSSL's reason.
    init(_ config: TLSConfig) throws(TLSError) {
        // Everything is loaded before any stored property is set: a throw after that would run
        // deinit on a half-built table.
        var contexts: [OpaquePointer] = []
        do {
            for cert in config.certificates { contexts.append(try Self.makeContext(cert, http1: config.http1, http2: config.http2)) }
        } catch {
            for c in contexts { SSL_CTX_free(c) }
            throw error
        }
        count = contexts.count
        table = .allocate(capacity: count + 1)
        table.initialize(repeating: nil, count: count + 1)
        for (i, c) in contexts.enumerated() { table[i] = c }
        if count > 1 {
            for i in 0..<count { turnout_ctx_enable_sni(table[i], table) }
        }
    }

    deinit {
        for i in 0..<count { SSL_CTX_free(table[i]) }
        table.deallocate()
    }

    /// The default context (SNI may switch a connection to another one).
    var defaultContext: OpaquePointer { table[0]! }

    private static func makeContext(_ cert: TLSCertificate, http1: Bool, http2: Bool) throws(TLSError) -> OpaquePointer {
        ERR_clear_error()
        guard let ctx = SSL_CTX_new(TLS_server_method()) else { throw TLSError("cannot create a TLS context: \(opensslError())") }
        var ok = false
        defer { if !ok { SSL_CTX_free(ctx) } }
        _ = turnout_ctx_set_min_tls12(ctx)
        _ = turnout_ctx_set_release_buffers(ctx)
        turnout_ctx_set_server_options(ctx)
        guard SSL_CTX_set_cipher_list(ctx, tls12Ciphers) == 1 else { throw TLSError("cannot set TLS 1.2 ciphers: \(opensslError())") }
        guard SSL_CTX_use_certificate_chain_file(ctx, cert.certificate) == 1 else {
            throw TLSError("cannot load certificate \(cert.certificate): \(opensslError())")
        }
        guard SSL_CTX_use_PrivateKey_file(ctx, cert.privateKey, SSL_FILETYPE_PEM) == 1 else {
            let reason = opensslError()
            if reason.contains("mismatch") {
                throw TLSError("private key \(cert.privateKey) does not match certificate \(cert.certificate)")
            }
            throw TLSError("cannot load private key \(cert.privateKey): \(reason)")
        }
        guard SSL_CTX_check_private_key(ctx) == 1 else {
            throw TLSError("private key \(cert.privateKey) does not match certificate \(cert.certificate): \(opensslError())")
        }
        turnout_ctx_enable_alpn(ctx, http2 ? (http1 ? 0 : 1) : 2)
        ok = true
        return ctx
    }

    /// The reason of the most recent OpenSSL error on this thread, and clears the queue.
    static func opensslError() -> String {
        let code = ERR_get_error()
        ERR_clear_error()
        guard code != 0 else { return "unknown error" }
        var buf = [CChar](repeating: 0, count: 256)
        ERR_error_string_n(code, &buf, buf.count)
        let text = String(decoding: buf.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        // "error:0A000086:SSL routines::certificate verify failed" -> keep the reason part.
        if let r = text.split(separator: ":", omittingEmptySubsequences: false).last, !r.isEmpty { return String(r) }
        return text
    }
}

/// A TLS set-up problem: names the file and the reason.
struct TLSError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// The TLS context a listener hands to new connections. A certificate reload swaps it; connections
/// already open keep the context they started with.
final class TLSCertificates: Sendable {
    private let state: Mutex<(context: TLSContext, config: TLSConfig)>

    init(_ context: TLSContext, config: TLSConfig) { state = Mutex((context, config)) }

    var current: TLSContext { state.withLock { $0.context } }

    /// Loads the certificates named by `config` (a reload: possibly new files, possibly the same
    /// files with new contents); on any error the old ones stay in use.
    func replace(config: TLSConfig) throws(TLSError) {
        let fresh = try TLSContext(config)
        state.withLock { $0 = (fresh, config) }
    }
}
