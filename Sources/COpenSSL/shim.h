#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/bio.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <openssl/pem.h>
#include <openssl/hmac.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <string.h>
#include <stdint.h>

/* Macros and callbacks Swift cannot import or write directly. */

static inline int turnout_ctx_set_min_tls12(SSL_CTX *ctx) {
    return (int)SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
}

static inline long turnout_ctx_set_release_buffers(SSL_CTX *ctx) {
    return SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
}

static inline void turnout_ctx_set_server_options(SSL_CTX *ctx) {
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
}

static inline size_t turnout_bio_pending(BIO *b) { return (size_t)BIO_ctrl_pending(b); }

/* ALPN: the server's preference, h2 first when offered. `arg` says what the listener serves:
   0 both, 1 HTTP/2 only, 2 HTTP/1.1 only. */
static const unsigned char turnout_alpn_h2_h1[] = { 2, 'h', '2', 8, 'h', 't', 't', 'p', '/', '1', '.', '1' };
static const unsigned char turnout_alpn_h2[] = { 2, 'h', '2' };
static const unsigned char turnout_alpn_h1[] = { 8, 'h', 't', 't', 'p', '/', '1', '.', '1' };

static inline int turnout_alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                                      const unsigned char *in, unsigned int inlen, void *arg) {
    (void)ssl;
    long mode = (long)(intptr_t)arg;
    const unsigned char *ours = mode == 1 ? turnout_alpn_h2 : mode == 2 ? turnout_alpn_h1 : turnout_alpn_h2_h1;
    unsigned int ourlen = mode == 1 ? sizeof(turnout_alpn_h2) : mode == 2 ? sizeof(turnout_alpn_h1) : sizeof(turnout_alpn_h2_h1);
    unsigned char *selected = NULL;
    if (SSL_select_next_proto(&selected, outlen, ours, ourlen, in, inlen) != OPENSSL_NPN_NEGOTIATED) {
        /* No common protocol: an HTTP/2-only listener refuses the handshake; otherwise carry on
           without ALPN (HTTP/1.1). */
        return mode == 1 ? SSL_TLSEXT_ERR_ALERT_FATAL : SSL_TLSEXT_ERR_NOACK;
    }
    *out = selected;
    return SSL_TLSEXT_ERR_OK;
}

static inline void turnout_ctx_enable_alpn(SSL_CTX *ctx, int mode) {
    SSL_CTX_set_alpn_select_cb(ctx, turnout_alpn_select, (void *)(intptr_t)mode);
}

/* SNI: arg points to a NULL-terminated array of contexts; the first is the default. The first other
   context whose certificate covers the requested name is switched in. */
static inline int turnout_sni_select(SSL *ssl, int *ad, void *arg) {
    (void)ad;
    SSL_CTX **ctxs = (SSL_CTX **)arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (name == NULL || ctxs == NULL) return SSL_TLSEXT_ERR_OK;
    for (int i = 1; ctxs[i] != NULL; i++) {
        X509 *cert = SSL_CTX_get0_certificate(ctxs[i]);
        if (cert != NULL && X509_check_host(cert, name, strlen(name), 0, NULL) == 1) {
            SSL_set_SSL_CTX(ssl, ctxs[i]);
            return SSL_TLSEXT_ERR_OK;
        }
    }
    return SSL_TLSEXT_ERR_OK;
}

static inline void turnout_ctx_enable_sni(SSL_CTX *ctx, SSL_CTX **table) {
    SSL_CTX_set_tlsext_servername_callback(ctx, turnout_sni_select);
    SSL_CTX_set_tlsext_servername_arg(ctx, table);
}

/* Client side (the etcd client): SNI is a macro. */
static inline long turnout_set_sni(SSL *ssl, const char *name) {
    return SSL_set_tlsext_host_name(ssl, name);
}
