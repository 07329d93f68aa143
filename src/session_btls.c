/* session_btls: TLS between a session and its backend server (a pool with
 * tls = on or starttls; see include/imapfront/session_int.h).
 *
 * The same engine as the client side (session_tls.c), the other way round:
 * a client SSL over two chains of ciphertext. The socket reads into `in`
 * and writes from `out` (conn.wire); the SSL decrypts `in` into backend.rx
 * and encrypts backend.tx into `out`, so everything that frames and
 * decides (relay.c, the gate) sees plaintext in backend.rx/tx as before.
 *
 * The negotiation runs while the session is SESS_CONNECTING, under the
 * connect timer: with starttls, the greeting (plaintext), STARTTLS and its
 * OK; then the handshake, the verification and the pin; with starttls, a
 * CAPABILITY under TLS, whose list replaces the one of the greeting (what
 * came before TLS may have been forged on the path), handed to the gate as
 * the greeting "* OK [CAPABILITY ...] TEXT". Any failure is a failed
 * connect of that server: counted for passive health, and the session goes
 * on to the next server. */
#include <stdarg.h>
#include <stdio.h>
#include <strings.h>
#include <stdlib.h>
#include <string.h>

#include "imapfront/bclient.h"
#include "imapfront/log.h"
#include "imapfront/session_int.h"

enum btls_step {
    BT_GREETING,   /* starttls: waiting for the greeting */
    BT_STARTTLS,   /* starttls: waiting for STARTTLS's answer */
    BT_HANDSHAKE,  /* the TLS handshake */
    BT_CAPABILITY, /* starttls: CAPABILITY under TLS */
    BT_UP,         /* relaying */
    BT_STEP_COUNT
};

static const char *const step_names[BT_STEP_COUNT] = {"greeting", "STARTTLS", "TLS handshake",
                                                      "CAPABILITY", "up"};

struct imf_btls {
    enum btls_step step;
    SSL *ssl;
    struct imf_tls_io io;
    struct imf_chain in, out; /* ciphertext (plaintext before STARTTLS) */
    struct imf_bc *bc;        /* starttls: the conversation until BT_UP */
    uint8_t *rest;            /* starttls: what followed the CAPABILITY answer */
    size_t rest_len;
};

static void fail(struct imf_session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The negotiation failed: a failed connect of this server. */
static void fail(struct imf_session *s, const char *fmt, ...)
{
    char why[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    imf_sess_backend_failed(s, why);
}

void imf_btls_free(struct imf_session *s)
{
    struct imf_btls *b = s->btls;
    if (b == NULL)
        return;
    if (b->ssl != NULL)
        SSL_free(b->ssl);
    if (b->bc != NULL) {
        imf_bc_cleanup(b->bc);
        free(b->bc);
    }
    imf_chain_clear(&b->in);
    imf_chain_clear(&b->out);
    free(b->rest);
    free(b);
    s->btls = NULL;
    s->backend.wire = NULL;
}

static int new_ssl(struct imf_session *s, struct imf_btls *b)
{
    b->io.in = &b->in;
    b->io.out = &b->out;
    b->io.peer = s->peer;
    b->ssl = imf_btls_ssl_new(s->pool, &s->pool->servers[s->plan[s->plan_pos]], &b->io);
    return b->ssl != NULL ? 0 : UV_ENOMEM;
}

int imf_btls_start(struct imf_session *s)
{
    struct imf_btls *b = calloc(1, sizeof(*b));
    if (b == NULL)
        return UV_ENOMEM;
    imf_chain_init(&b->in, &s->worker->stats.chain);
    imf_chain_init(&b->out, &s->worker->stats.chain);
    s->btls = b;
    s->backend.wire = &b->out;
    if (s->pool->tls == IMF_BACKEND_TLS_STARTTLS) {
        b->bc = calloc(1, sizeof(*b->bc));
        if (b->bc == NULL)
            return UV_ENOMEM;
        imf_bc_init(b->bc, "imfbtls");
        b->step = BT_GREETING;
        return 0;
    }
    b->step = BT_HANDSHAKE;
    return new_ssl(s, b);
}

bool imf_btls_negotiating(const struct imf_session *s)
{
    return s->btls != NULL && s->btls->step != BT_UP;
}

struct imf_chain *imf_btls_wire_in(struct imf_session *s)
{
    return s->btls != NULL ? &s->btls->in : &s->backend.rx;
}

size_t imf_btls_buffered(const struct imf_session *s, bool up)
{
    if (s->btls == NULL)
        return 0;
    return up ? s->btls->out.bytes : s->btls->in.bytes;
}

/* Hands the conversation's output to the server: as is before TLS,
 * encrypted after. */
static int send_bc_output(struct imf_btls *b)
{
    const uint8_t *p;
    size_t n = imf_bc_output(b->bc, &p);
    if (n == 0)
        return 0;
    int rc = b->ssl == NULL ? imf_chain_append(&b->out, p, n)
                            : (SSL_write(b->ssl, p, (int)n) == (int)n ? 0 : -1);
    imf_bc_consumed(b->bc, n);
    return rc;
}

/* Plaintext of the server under TLS, fed to the conversation until it
 * answers; bytes past the answer go to backend.rx. Returns the result. */
static enum imf_bc_result feed_tls(struct imf_session *s, struct imf_btls *b)
{
    uint8_t buf[4096];
    /* Bounded: each pass reads at least one byte or stops. */
    for (;;) {
        int n = SSL_read(b->ssl, buf, sizeof(buf));
        if (n <= 0) {
            int err = SSL_get_error(b->ssl, n);
            if (err == SSL_ERROR_WANT_READ && !b->io.in_eof)
                return IMF_BC_NONE;
            return IMF_BC_ERROR;
        }
        size_t off = 0;
        while (off < (size_t)n) {
            size_t used = 0;
            enum imf_bc_result r = imf_bc_feed(b->bc, buf + off, (size_t)n - off, &used);
            off += used;
            if (r != IMF_BC_NONE) {
                if (off < (size_t)n) {
                    /* Kept for after the greeting made of the answer. */
                    b->rest = malloc((size_t)n - off);
                    if (b->rest == NULL)
                        return IMF_BC_ERROR;
                    memcpy(b->rest, buf + off, (size_t)n - off);
                    b->rest_len = (size_t)n - off;
                }
                return r;
            }
        }
    }
}

/* "* OK [CAPABILITY list] TEXT": the greeting the gate sees after
 * STARTTLS, TEXT being the original greeting's, less its response code. */
static int fake_greeting(struct imf_session *s, struct imf_btls *b)
{
    const char *g = imf_bc_greeting(b->bc);
    const char *text = g;
    if (strncasecmp(text, "* OK", 4) == 0)
        text += 4;
    while (*text == ' ')
        text++;
    if (*text == '[') {
        const char *close = strchr(text, ']');
        text = close != NULL ? close + 1 : text + strlen(text);
        while (*text == ' ')
            text++;
    }
    char line[IMF_BC_CAPS + IMF_BC_TEXT + 32];
    int n = snprintf(line, sizeof(line), "* OK [CAPABILITY %s] %s\r\n", imf_bc_cap_list(b->bc),
                     *text != '\0' ? text : "ready");
    if (n < 0 || (size_t)n >= sizeof(line))
        return -1;
    int rc = imf_chain_append(&s->backend.rx, line, (size_t)n);
    if (rc == 0 && b->rest_len > 0)
        rc = imf_chain_append(&s->backend.rx, b->rest, b->rest_len);
    free(b->rest);
    b->rest = NULL;
    b->rest_len = 0;
    return rc;
}

/* Reads the plaintext conversation before TLS from `in`. */
static enum imf_bc_result feed_plain(struct imf_btls *b)
{
    /* Bounded by what has arrived. */
    while (b->in.bytes > 0) {
        size_t avail, used = 0;
        const uint8_t *p = imf_chain_peek(&b->in, &avail);
        enum imf_bc_result r = imf_bc_feed(b->bc, p, avail, &used);
        imf_chain_consume(&b->in, used);
        if (r != IMF_BC_NONE)
            return r;
    }
    return b->io.in_eof ? imf_bc_eof(b->bc) : IMF_BC_NONE;
}

static const char *bc_reason(struct imf_btls *b, enum imf_bc_result r)
{
    if (r == IMF_BC_ERROR)
        return imf_bc_error(b->bc) != NULL ? imf_bc_error(b->bc) : "protocol error";
    return imf_bc_text(b->bc);
}

void imf_btls_step(struct imf_session *s)
{
    struct imf_btls *b = s->btls;
    if (b == NULL || b->step == BT_UP || s->backend.closing || s->connect_abandoned)
        return;
    b->io.in_eof = s->backend.eof;
    if (b->step == BT_GREETING) {
        enum imf_bc_result r = feed_plain(b);
        if (r == IMF_BC_NONE)
            return;
        if (r != IMF_BC_READY || imf_bc_preauth(b->bc)) {
            const char *g = imf_bc_greeting(b->bc);
            fail(s, "STARTTLS impossible: %s%s",
                 g[0] != '\0' ? "greeting " : "no greeting: ", g[0] != '\0' ? g : bc_reason(b, r));
            return;
        }
        if (imf_bc_command(b->bc, "STARTTLS", NULL) != 0 || send_bc_output(b) != 0) {
            fail(s, "cannot send STARTTLS");
            return;
        }
        b->step = BT_STARTTLS;
    }
    if (b->step == BT_STARTTLS) {
        enum imf_bc_result r = feed_plain(b);
        if (r == IMF_BC_NONE)
            return;
        if (r != IMF_BC_OK) {
            fail(s, "STARTTLS refused: %s %s", imf_bc_result_names[r], bc_reason(b, r));
            return;
        }
        if (b->in.bytes > 0) {
            /* Sent before our handshake began, so not protected by it: an
             * injection on the path (the client-side CVE-2011-0411's twin). */
            fail(s, "the server sent plaintext after its STARTTLS answer");
            return;
        }
        if (new_ssl(s, b) != 0) {
            fail(s, "cannot create a TLS connection: out of memory");
            return;
        }
        b->step = BT_HANDSHAKE;
    }
    if (b->step == BT_HANDSHAKE) {
        int rc = SSL_do_handshake(b->ssl);
        if (rc != 1) {
            int err = SSL_get_error(b->ssl, rc);
            if (err == SSL_ERROR_WANT_READ && !b->io.in_eof)
                return;
            char reason[256];
            imf_btls_handshake_reason(b->ssl, &b->io, reason, sizeof(reason));
            fail(s, "TLS handshake failed: %s", reason);
            return;
        }
        char why[256];
        if (!imf_btls_pin_matches(s->pool, b->ssl, why, sizeof(why))) {
            fail(s, "%s", why);
            return;
        }
        const SSL_CIPHER *c = SSL_get_current_cipher(b->ssl);
        imf_debug("backend", "client=%s backend=%s TLS up %s %s", s->peer, s->backend_name,
                  SSL_get_version(b->ssl), c != NULL ? SSL_CIPHER_standard_name(c) : "-");
        if (b->bc == NULL) {
            b->step = BT_UP;
            imf_sess_backend_up(s);
            return;
        }
        /* What the server said before TLS is not trusted: ask again. */
        if (imf_bc_command(b->bc, "CAPABILITY", NULL) != 0 || send_bc_output(b) != 0) {
            fail(s, "cannot send CAPABILITY");
            return;
        }
        b->step = BT_CAPABILITY;
    }
    if (b->step == BT_CAPABILITY) {
        enum imf_bc_result r = feed_tls(s, b);
        if (r == IMF_BC_NONE)
            return;
        if (r != IMF_BC_OK) {
            fail(s, "CAPABILITY under TLS failed: %s %s", imf_bc_result_names[r],
                 r == IMF_BC_ERROR && imf_bc_error(b->bc) == NULL ? "closed or TLS error"
                                                                  : bc_reason(b, r));
            return;
        }
        if (fake_greeting(s, b) != 0) {
            fail(s, "out of memory");
            return;
        }
        imf_bc_cleanup(b->bc);
        free(b->bc);
        b->bc = NULL;
        b->step = BT_UP;
        imf_sess_backend_up(s);
    }
}

const char *imf_btls_step_name(const struct imf_session *s)
{
    return s->btls != NULL ? step_names[s->btls->step] : "connect";
}

void imf_btls_decrypt(struct imf_session *s)
{
    struct imf_btls *b = s->btls;
    if (b == NULL || b->step != BT_UP)
        return;
    b->io.in_eof = s->backend.eof;
    /* Bounded: each pass consumes ciphertext or stops. */
    while (b->in.bytes > 0 || SSL_pending(b->ssl) > 0 || b->io.in_eof) {
        uint8_t *dst;
        size_t room;
        if (imf_chain_reserve(&s->backend.rx, TLS_RECORD_MAX, &dst, &room) != 0) {
            imf_sess_close(s, IMF_CLOSE_NO_MEMORY, false);
            return;
        }
        int n = SSL_read(b->ssl, dst, room > INT32_MAX ? INT32_MAX : (int)room);
        if (n > 0) {
            imf_chain_commit(&s->backend.rx, (size_t)n);
            continue;
        }
        imf_chain_commit(&s->backend.rx, 0);
        int err = SSL_get_error(b->ssl, n);
        if (err == SSL_ERROR_WANT_READ && !b->io.in_eof)
            return;
        if (err == SSL_ERROR_ZERO_RETURN || err == SSL_ERROR_WANT_READ ||
            (err == SSL_ERROR_SYSCALL && b->io.in_eof)) {
            /* close_notify or EOF: the server is done (the pump ends the
             * session once backend.rx is relayed). */
            s->backend.eof = true;
            return;
        }
        imf_log_kv(IMF_LOG_WARN, "backend", "TLS read failed", "client", s->peer, "backend",
                   imf_sess_backend_label(s), "reason", imf_tls_failure_reason(b->ssl, &b->io),
                   NULL);
        imf_sess_close(s, IMF_CLOSE_BACKEND_ERROR, true);
        return;
    }
}

void imf_btls_encrypt(struct imf_session *s)
{
    struct imf_btls *b = s->btls;
    if (b == NULL || b->step != BT_UP)
        return;
    while (s->backend.tx.bytes > 0 && b->out.bytes < s->high) {
        size_t avail;
        const uint8_t *p = imf_chain_peek(&s->backend.tx, &avail);
        if (avail > TLS_RECORD_MAX)
            avail = TLS_RECORD_MAX;
        int n = SSL_write(b->ssl, p, (int)avail);
        if (n <= 0) {
            imf_log_kv(IMF_LOG_WARN, "backend", "TLS write failed", "client", s->peer, "backend",
                       imf_sess_backend_label(s), "reason", imf_tls_failure_reason(b->ssl, &b->io),
                       NULL);
            imf_sess_close(s, IMF_CLOSE_BACKEND_ERROR, true);
            return;
        }
        imf_chain_consume(&s->backend.tx, (size_t)n);
    }
}
