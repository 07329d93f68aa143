/* session_tls: the client's TLS: handshake, decryption, encryption (see
 * include/imapfront/session_int.h). */

#include "imapfront/log.h"
#include "imapfront/session_int.h"

/* Decrypts records from c_rx into c_plain (c_z under COMPRESS) until the
 * library wants more ciphertext or the tail block is full: the framer then
 * sees what one socket read brought at once, and literal payloads leave as
 * whole blocks in one backend write. Returns 1 on progress, 0 when nothing
 * could be decrypted, -1 when the session ended. A failure after progress
 * is reported on the next call (the library repeats it), so that what was
 * decrypted before it is framed first, as it was received. */
int imf_sess_decrypt_records(struct imf_session *s)
{
    struct imf_chain *into = imf_zchain_active(&s->z) ? &s->c_z : &s->c_plain;
    bool progress = false;
    /* Bounded: each pass fills at least a quarter of the block. */
    for (unsigned pass = 0; pass < IMF_BLOCK_DATA / (TLS_RECORD_MAX / 4); pass++) {
        uint8_t *dst;
        size_t room;
        if (imf_chain_reserve(into, TLS_RECORD_MAX, &dst, &room) != 0) {
            imf_sess_close(s, IMF_CLOSE_NO_MEMORY, false);
            return -1;
        }
        int n = SSL_read(s->ssl, dst, room > INT32_MAX ? INT32_MAX : (int)room);
        if (n > 0) {
            imf_chain_commit(into, (size_t)n);
            s->bytes_in += (uint64_t)n;
            imf_stat_add(&s->worker->stats.bytes_from_clients, n);
            progress = true;
            if (room - (size_t)n < TLS_RECORD_MAX)
                return 1; /* the block is full: frame it */
            if (s->client.rx.bytes == 0 && SSL_pending(s->ssl) == 0)
                return 1; /* nothing more has arrived */
            continue;
        }
        imf_chain_commit(into, 0);
        if (progress)
            return 1;
        int err = SSL_get_error(s->ssl, n);
        if (err == SSL_ERROR_WANT_READ)
            return 0;
        if (err == SSL_ERROR_ZERO_RETURN || (err == SSL_ERROR_SYSCALL && s->tio.in_eof)) {
            /* close_notify or EOF: the client is gone; a half-sent command
             * must not reach the backend's parser complete. */
            s->client.eof = true;
            imf_sess_close(s, IMF_CLOSE_CLIENT_EOF, false);
            return -1;
        }
        imf_log_kv(IMF_LOG_INFO, "tls", "read failed", "client", s->peer, "reason",
                   imf_tls_failure_reason(s->ssl, &s->tio), NULL);
        /* The library queued a fatal alert: it must reach the client
         * (RFC 8446, 6.2) before the close; nothing else can go out. */
        s->tls_failed = true;
        imf_sess_close(s, IMF_CLOSE_TLS_ERROR, true);
        return -1;
    }
    return 1;
}

/* Moves queued plaintext towards the client: as is before STARTTLS,
 * encrypted one record at a time once TLS is up, not at all during the
 * handshake. */
void imf_sess_encrypt_downstream(struct imf_session *s)
{
    if (s->ssl == NULL) {
        while (s->p_tx.bytes > 0) {
            size_t avail;
            const uint8_t *p = imf_chain_peek(&s->p_tx, &avail);
            if (imf_chain_append(&s->client.tx, p, avail) != 0) {
                imf_sess_close(s, IMF_CLOSE_NO_MEMORY, false);
                return;
            }
            imf_chain_consume(&s->p_tx, avail);
            s->bytes_out += avail;
            imf_stat_add(&s->worker->stats.bytes_to_clients, (int64_t)avail);
        }
        return;
    }
    if (!SSL_is_init_finished(s->ssl) || s->tls_failed)
        return;
    if (imf_zchain_active(&s->z))
        imf_sess_deflate_downstream(s);
    struct imf_chain *src = imf_zchain_active(&s->z) ? &s->p_z : &s->p_tx;
    while (src->bytes > 0 && s->client.tx.bytes < s->high) {
        size_t avail;
        const uint8_t *p = imf_chain_peek(src, &avail);
        if (avail > TLS_RECORD_MAX)
            avail = TLS_RECORD_MAX;
        int n = SSL_write(s->ssl, p, (int)avail);
        if (n <= 0) {
            imf_log_kv(IMF_LOG_INFO, "tls", "write failed", "client", s->peer, "reason",
                       imf_tls_failure_reason(s->ssl, &s->tio), NULL);
            imf_sess_close(s, IMF_CLOSE_TLS_ERROR, false);
            return;
        }
        imf_chain_consume(src, (size_t)n);
        s->bytes_out += (uint64_t)n;
        imf_stat_add(&s->worker->stats.bytes_to_clients, n);
    }
}

/* Encrypts everything queued, whatever the watermark: used once, for the
 * last uncompressed bytes before COMPRESS takes effect. */
void imf_sess_encrypt_all(struct imf_session *s)
{
    size_t high = s->high;
    s->high = SIZE_MAX;
    imf_sess_encrypt_downstream(s);
    s->high = high;
}

static void handshake_failed(struct imf_session *s, const char *reason)
{
    imf_stat_add(&s->worker->stats.handshakes_failed, 1);
    imf_stat_add(&s->worker->stats.handshake_failures[imf_tls_classify_failure(reason)], 1);
    imf_log_kv(IMF_LOG_WARN, "tls", "handshake failed", "client", s->peer, "reason", reason, NULL);
}

/* Counts an established session under its TLS version and cipher. */
static void count_tls_kind(struct imf_worker_stats *st, const char *version, const char *cipher)
{
    unsigned n = atomic_load_explicit(&st->tls_kinds_len, memory_order_relaxed);
    for (unsigned i = 0; i < n; i++) {
        if (st->tls_kinds[i].version == version && st->tls_kinds[i].cipher == cipher) {
            imf_stat_add(&st->tls_kinds[i].sessions, 1);
            return;
        }
    }
    if (n == IMF_STATS_TLS_KINDS_MAX)
        return;
    st->tls_kinds[n].version = version;
    st->tls_kinds[n].cipher = cipher;
    atomic_store_explicit(&st->tls_kinds[n].sessions, 1, memory_order_relaxed);
    atomic_store_explicit(&st->tls_kinds_len, n + 1, memory_order_release);
}

void imf_sess_on_handshake_timeout(uv_timer_t *t)
{
    struct imf_session *s = t->data;
    if (s->state == SESS_PROXY_HEADER) {
        imf_log_kv(IMF_LOG_WARN, "session", "PROXY header refused", "client", s->peer, "reason",
                   "timeout", NULL);
        imf_sess_close(s, IMF_CLOSE_PROXY_PROTOCOL, false);
        return;
    }
    if (s->state != SESS_HANDSHAKE)
        return;
    handshake_failed(s, "handshake timeout");
    imf_sess_close(s, IMF_CLOSE_HANDSHAKE_TIMEOUT, false);
}

void imf_sess_do_handshake(struct imf_session *s)
{
    int rc = SSL_do_handshake(s->ssl);
    if (rc == 1) {
        imf_stat_add(&s->worker->stats.handshakes_ok, 1);
        const char *version = SSL_get_version(s->ssl);
        const SSL_CIPHER *c = SSL_get_current_cipher(s->ssl);
        const char *cipher = c != NULL ? SSL_CIPHER_standard_name(c) : "-";
        count_tls_kind(&s->worker->stats, version, cipher);
        s->tls_version = version; /* static strings, see count_tls_kind */
        s->tls_cipher = cipher;
        imf_debug("tls", "client=%s handshake done %s %s", s->peer, s->tls_version, s->tls_cipher);
        uv_timer_stop(&s->timer);
        if (s->refusal != NULL) {
            imf_sess_bye(s, IMF_CLOSE_REFUSED, s->refusal);
            return;
        }
        if (imf_sess_lf_tls_up(s))
            return; /* login-first: the proxy answers until the login */
        if (s->backend.up) {
            /* After STARTTLS: the session goes on as an implicit-TLS one. */
            imf_sess_set_state(s, SESS_RELAY);
            imf_sess_arm_inactivity_timer(s);
            return;
        }
        /* Implicit TLS connects only now: a failed or abandoned handshake
         * never costs the fragile backend a connection. */
        imf_sess_connect_backend(s);
        return;
    }
    int err = SSL_get_error(s->ssl, rc);
    if (err == SSL_ERROR_WANT_READ && !s->tio.in_eof)
        return;
    handshake_failed(s, imf_tls_failure_reason(s->ssl, &s->tio));
    /* Whatever alert the library queued goes out before the close. */
    imf_sess_close(s, IMF_CLOSE_HANDSHAKE_FAILED, !s->tio.in_eof);
}

/* Creates the TLS engine and starts the handshake timer. */
int imf_sess_begin_tls(struct imf_session *s)
{
    s->tio.in = &s->client.rx;
    s->tio.out = &s->client.tx;
    s->tio.peer = s->peer;
    s->ssl = imf_tls_conn_new(s->worker->ssl_ctx, &s->tio);
    if (s->ssl == NULL)
        return UV_ENOMEM;
    imf_sess_set_state(s, SESS_HANDSHAKE);
    uv_timer_stop(&s->timer);
    uv_timer_start(&s->timer, imf_sess_on_handshake_timeout, s->cfg->handshake_timeout_ms, 0);
    return 0;
}

/* STARTTLS was accepted: our OK goes out in plaintext, then TLS begins.
 * Whatever the client sent after the STARTTLS line before seeing that OK
 * was sent in plaintext and may have been injected by an attacker on the
 * path (CVE-2011-0411): it is discarded, never executed. */
void imf_sess_start_tls(struct imf_session *s)
{
    imf_sess_encrypt_downstream(s); /* the OK, still in plaintext */
    size_t junk = s->client.rx.bytes;
    if (junk > 0) {
        imf_chain_consume(&s->client.rx, junk);
        s->discarded_after_starttls += junk;
        char n[24];
        snprintf(n, sizeof(n), "%zu", junk);
        imf_log_kv(IMF_LOG_WARN, "session", "discarded plaintext sent after STARTTLS", "client",
                   s->peer, "bytes", n, NULL);
    }
    /* The next command starts afresh, under TLS. */
    imf_framer_init(&s->cfr, IMF_FRAMER_COMMANDS, s->cfg->max_line_length,
                    s->cfg->max_literal_size);
    imf_gate_tls_started(&s->gate);
    if (imf_sess_begin_tls(s) != 0)
        imf_sess_close(s, IMF_CLOSE_NO_MEMORY, false);
}
