import COpenSSL

/// An OpenSSL client context, for TLS to etcd and to HTTP/2 upstreams (`protocol: h2`): TLS 1.2
/// and 1.3, the server's certificate verified against `ca` (or the system's CAs) unless `verify`
/// is off, a client certificate when one is given, ALPN offering `alpn`. Immutable once built.
final class TLSClientContext: @unchecked Sendable {
    let context: OpaquePointer
    let verify: Bool

    /// `keyPath` names the config block in errors (e.g. `pools.blue.tls`).
    init(ca: String?, certificate: String?, privateKey: String?, verify: Bool = true, alpn: [String] = [], keyPath: String) throws(TLSError) {
        ERR_clear_error()
        guard let ctx = SSL_CTX_new(TLS_client_method()) else { throw TLSError("cannot create a TLS context: \(TLSContext.opensslError())") }
        var ok = false
        defer { if !ok { SSL_CTX_free(ctx) } }
        _ = turnout_ctx_set_min_tls12(ctx)
        _ = turnout_ctx_set_release_buffers(ctx)
        SSL_CTX_set_verify(ctx, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, nil)
        if let ca {
            guard SSL_CTX_load_verify_locations(ctx, ca, nil) == 1 else {
                throw TLSError("\(keyPath).ca: cannot load \(ca): \(TLSContext.opensslError())")
            }
        } else {
            SSL_CTX_set_default_verify_paths(ctx)
        }
        if let certificate, let privateKey {
            guard SSL_CTX_use_certificate_chain_file(ctx, certificate) == 1 else {
                throw TLSError("\(keyPath).certificate: cannot load \(certificate): \(TLSContext.opensslError())")
            }
            guard SSL_CTX_use_PrivateKey_file(ctx, privateKey, SSL_FILETYPE_PEM) == 1, SSL_CTX_check_private_key(ctx) == 1 else {
                throw TLSError("\(keyPath).private_key: cannot load \(privateKey) or it does not match the certificate: \(TLSContext.opensslError())")
            }
        }
        if !alpn.isEmpty {
            var wire: [UInt8] = []
            for p in alpn {
                wire.append(UInt8(p.utf8.count))
                wire.append(contentsOf: p.utf8)
            }
            // 0 means success here.
            guard SSL_CTX_set_alpn_protos(ctx, wire, UInt32(wire.count)) == 0 else {
                throw TLSError("cannot set ALPN: \(TLSContext.opensslError())")
            }
        }
        ok = true
        context = ctx
        self.verify = verify
    }

    deinit { SSL_CTX_free(context) }

    /// Readies a session for `host`: SNI (`serverName`, else the host when it is a name) and the
    /// name or IP address the certificate must carry.
    func prepare(_ ssl: OpaquePointer, host: String, serverName: String?) {
        let isIP = SocketAddress.literal(host, port: 1) != nil
        if let name = serverName ?? (isIP ? nil : host) { _ = turnout_set_sni(ssl, name) }
        guard verify else { return }
        if let serverName {
            SSL_set1_host(ssl, serverName)
        } else if isIP {
            X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host)
        } else {
            SSL_set1_host(ssl, host)
        }
    }

    /// Why a finished handshake's certificate was refused, when that is why it failed.
    static func verifyFailure(_ ssl: OpaquePointer) -> String? {
        let r = SSL_get_verify_result(ssl)
        return r == X509_V_OK ? nil : "certificate not trusted (\(String(cString: X509_verify_cert_error_string(r))))"
    }
}
