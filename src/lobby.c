/* lobby: a login-first session's IMAP policy before its login (see
 * include/imapfront/lobby.h). */
#include <stdio.h>
#include <string.h>

#include <openssl/base64.h>
#include <openssl/mem.h>

#include "imapfront/lobby.h"

/* What the client's next line is. */
enum {
    EXPECT_COMMAND,   /* a new command */
    EXPECT_LOGIN_LIT, /* the rest of a LOGIN after one of its literals */
    EXPECT_SASL,      /* the answer to our "+" of AUTHENTICATE PLAIN */
    EXPECT_BUSY,      /* nothing: a login is being decided */
};

#define AUTH_FAILED "NO [AUTHENTICATIONFAILED] Authentication failed"

/* ASTRING-CHAR: ATOM-CHAR or "]". */
static bool astring_char(uint8_t c)
{
    return c == '+' || imf_imap_tag_char(c);
}

static bool word_is(const uint8_t *p, size_t n, const char *word)
{
    return n == strlen(word) && strncasecmp((const char *)p, word, n) == 0;
}

void imf_lobby_init(struct imf_lobby *lb, const struct imf_lobby_params *p, bool tls)
{
    memset(lb, 0, sizeof(*lb));
    lb->p = p;
    lb->tls = tls;
}

static void wipe(struct imf_lobby *lb)
{
    OPENSSL_cleanse(lb->cred, sizeof(lb->cred));
    lb->user_len = lb->pass_len = 0;
}

void imf_lobby_cleanup(struct imf_lobby *lb)
{
    wipe(lb);
}

size_t imf_lobby_capabilities(const struct imf_lobby *lb, char *out, size_t cap)
{
    bool plain_ok = lb->tls || !lb->p->require_tls;
    int n = snprintf(out, cap, "IMAP4rev1 LITERAL+ SASL-IR ID%s%s",
                     lb->p->starttls_listener && !lb->tls ? " STARTTLS" : "",
                     plain_ok ? " AUTH=PLAIN" : " LOGINDISABLED");
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

size_t imf_lobby_greeting(const struct imf_lobby *lb, char *out, size_t cap)
{
    char caps[128];
    imf_lobby_capabilities(lb, caps, sizeof(caps));
    int n = snprintf(out, cap, "* OK [CAPABILITY %s] IMAP proxy ready\r\n", caps);
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

static void answer(struct imf_lobby_decision *out, const char *tag, const char *text)
{
    int n = snprintf(out->answer + out->answer_len, sizeof(out->answer) - out->answer_len,
                     "%s %s\r\n", tag, text);
    if (n > 0 && (size_t)n < sizeof(out->answer) - out->answer_len)
        out->answer_len += (size_t)n;
    out->actions |= IMF_LOBBY_ANSWER;
}

/* Refuses the command whose line ev reported: at once, or, when the line
 * announced a non-synchronising literal, once the rest of the command has
 * been swallowed (else its octets would be read as commands). */
static void refuse(struct imf_lobby *lb, const struct imf_framer_ev *ev, const char *tag,
                   const char *text, struct imf_lobby_decision *out)
{
    out->log = text;
    lb->expect = EXPECT_COMMAND;
    if ((ev->literal_flags & IMF_LIT_PRESENT) &&
        (ev->literal_flags & (IMF_LIT_NONSYNC | IMF_LIT_MINUS))) {
        if (ev->literal_flags & IMF_LIT_TOO_BIG) {
            /* Megabytes of octets to skip before a refusal: hang up. */
            out->actions |= IMF_LOBBY_BYE;
            answer(out, "*", "BYE [TOOBIG] Literal too big");
            return;
        }
        lb->discarding = true;
        lb->discard_answer = text;
        if (tag != lb->tag)
            snprintf(lb->tag, sizeof(lb->tag), "%s", tag);
        return;
    }
    if (ev->literal_flags & IMF_LIT_PRESENT)
        out->actions |= IMF_LOBBY_SKIP_LITERAL;
    answer(out, tag, text);
}

/* Reads an atom or a quoted string at line[*i..end) into dst (cap octets).
 * Returns its length, or -1 when neither is there or it does not fit. */
static long astring(const uint8_t *line, size_t end, size_t *i, uint8_t *dst, size_t cap)
{
    size_t n = 0, k = *i;
    if (k < end && line[k] == '"') {
        for (k++; k < end && line[k] != '"'; k++) {
            if (line[k] == '\\') {
                if (++k >= end || (line[k] != '"' && line[k] != '\\'))
                    return -1;
            }
            if (n >= cap)
                return -1;
            dst[n++] = line[k];
        }
        if (k >= end)
            return -1;
        *i = k + 1;
        return (long)n;
    }
    for (; k < end && astring_char(line[k]); k++) {
        if (n >= cap)
            return -1;
        dst[n++] = line[k];
    }
    if (n == 0)
        return -1;
    *i = k;
    return (long)n;
}

static void login_ready(struct imf_lobby *lb, struct imf_lobby_decision *out)
{
    lb->expect = EXPECT_BUSY;
    out->actions |= IMF_LOBBY_LOGIN;
}

/* LOGIN's arguments from line[i..len): the values that are there, up to a
 * literal announced at the end. */
static void login_args(struct imf_lobby *lb, const uint8_t *line, size_t len, size_t i,
                       const struct imf_framer_ev *ev, struct imf_lobby_decision *out)
{
    bool lit = (ev->literal_flags & IMF_LIT_PRESENT) != 0;
    size_t end = lit ? len - ev->announce_len : imf_imap_text_len(line, len);
    while (lb->arg < 2) {
        if (i >= end || line[i] != ' ')
            goto bad;
        i++;
        if (i == end && lit) {
            if (ev->literal_flags & IMF_LIT_BINARY)
                goto bad;
            if (ev->literal_size > IMF_BC_CRED_MAX) {
                refuse(lb, ev, lb->tag, "BAD [TOOBIG] User name or password too long", out);
                return;
            }
            lb->lit_arg = lb->arg;
            lb->lit_left = (size_t)ev->literal_size;
            lb->expect = EXPECT_LOGIN_LIT;
            if (!(ev->literal_flags & (IMF_LIT_NONSYNC | IMF_LIT_MINUS))) {
                out->actions |= IMF_LOBBY_ANSWER;
                out->answer_len = (size_t)snprintf(out->answer, sizeof(out->answer),
                                                   "+ Ready for literal data\r\n");
            }
            return;
        }
        uint8_t *dst = lb->cred + (lb->arg == 0 ? 0 : IMF_BC_CRED_MAX);
        long n = astring(line, end, &i, dst, IMF_BC_CRED_MAX);
        if (n < 0)
            goto bad;
        if (lb->arg == 0)
            lb->user_len = (size_t)n;
        else
            lb->pass_len = (size_t)n;
        lb->arg++;
    }
    if (lit || i != end)
        goto bad;
    login_ready(lb, out);
    return;
bad:
    wipe(lb);
    refuse(lb, ev, lb->tag, "BAD Invalid LOGIN arguments", out);
}

/* PLAIN's message (RFC 4616: authzid NUL authcid NUL passwd), base64 in
 * b64[0..n). An authorization identity other than the user is refused: the
 * backend is logged in to as the user. */
static void plain(struct imf_lobby *lb, const uint8_t *b64, size_t n,
                  struct imf_lobby_decision *out)
{
    uint8_t buf[2 * IMF_BC_CRED_MAX + IMF_BC_CRED_MAX + 8];
    size_t m = 0;
    const char *why = NULL;
    if (n > (sizeof(buf) - 8) / 3 * 4)
        why = "BAD [TOOBIG] Authentication data too long";
    else if (!EVP_DecodeBase64(buf, &m, sizeof(buf), b64, n))
        why = "BAD Invalid base64 data";
    const uint8_t *a = why == NULL ? memchr(buf, 0, m) : NULL;
    const uint8_t *b = a != NULL ? memchr(a + 1, 0, m - (size_t)(a + 1 - buf)) : NULL;
    if (why == NULL && b == NULL)
        why = "BAD Invalid PLAIN message";
    if (why == NULL) {
        size_t zlen = (size_t)(a - buf), ulen = (size_t)(b - a - 1);
        size_t plen = m - (size_t)(b + 1 - buf);
        if (ulen == 0 || ulen > IMF_BC_CRED_MAX || plen > IMF_BC_CRED_MAX ||
            (zlen != 0 && (zlen != ulen || memcmp(buf, a + 1, ulen) != 0))) {
            why = AUTH_FAILED;
        } else {
            memcpy(lb->cred, a + 1, ulen);
            memcpy(lb->cred + IMF_BC_CRED_MAX, b + 1, plen);
            lb->user_len = ulen;
            lb->pass_len = plen;
        }
    }
    OPENSSL_cleanse(buf, sizeof(buf));
    if (why != NULL) {
        lb->expect = EXPECT_COMMAND;
        out->log = why;
        answer(out, lb->tag, why);
        return;
    }
    login_ready(lb, out);
}

static void sasl_line(struct imf_lobby *lb, const uint8_t *line, size_t len,
                      const struct imf_framer_ev *ev, struct imf_lobby_decision *out)
{
    size_t n = imf_imap_text_len(line, len);
    if (ev->literal_flags & IMF_LIT_PRESENT) {
        refuse(lb, ev, lb->tag, "BAD Invalid SASL response", out);
        return;
    }
    if (n == 1 && line[0] == '*') {
        lb->expect = EXPECT_COMMAND;
        out->log = "BAD Authentication cancelled";
        answer(out, lb->tag, "BAD Authentication cancelled");
        return;
    }
    plain(lb, line, n, out);
}

static void authenticate(struct imf_lobby *lb, const uint8_t *line, size_t len, size_t i,
                         const struct imf_framer_ev *ev, struct imf_lobby_decision *out)
{
    size_t end = imf_imap_text_len(line, len);
    if (ev->literal_flags & IMF_LIT_PRESENT) {
        refuse(lb, ev, lb->tag, "BAD AUTHENTICATE takes no literal", out);
        return;
    }
    if (i >= end || line[i] != ' ') {
        refuse(lb, ev, lb->tag, "BAD Invalid AUTHENTICATE arguments", out);
        return;
    }
    size_t m = ++i;
    while (i < end && line[i] != ' ')
        i++;
    if (!word_is(line + m, i - m, "PLAIN")) {
        refuse(lb, ev, lb->tag, "NO [CANNOT] Unsupported authentication mechanism", out);
        return;
    }
    snprintf(lb->mech, sizeof(lb->mech), "PLAIN");
    if (i == end) {
        lb->expect = EXPECT_SASL;
        out->actions |= IMF_LOBBY_ANSWER;
        out->answer_len = (size_t)snprintf(out->answer, sizeof(out->answer), "+ \r\n");
        return;
    }
    i++;
    if (end - i == 1 && line[i] == '=') {
        plain(lb, line + i, 0, out); /* an empty initial response */
        return;
    }
    plain(lb, line + i, end - i, out);
}

static void command(struct imf_lobby *lb, const uint8_t *line, size_t len,
                    const struct imf_framer_ev *ev, struct imf_lobby_decision *out)
{
    size_t end = imf_imap_text_len(line, len);
    if (ev->literal_flags & IMF_LIT_PRESENT)
        end = len - ev->announce_len;
    size_t i = 0;
    while (i < end && imf_imap_tag_char(line[i]))
        i++;
    if (i == 0 || i > IMF_TAG_MAX || i >= end || line[i] != ' ') {
        refuse(lb, ev, "*", "BAD Invalid tag or command line", out);
        return;
    }
    memcpy(lb->tag, line, i);
    lb->tag[i] = '\0';
    size_t m = ++i;
    while (i < end && astring_char(line[i]))
        i++;
    const uint8_t *name = line + m;
    size_t nlen = i - m;
    bool args = i < end || (ev->literal_flags & IMF_LIT_PRESENT);
    if (nlen == 0 || (i < end && line[i] != ' ')) {
        refuse(lb, ev, lb->tag, "BAD Invalid command name", out);
        return;
    }
    bool auth_ok = lb->tls || !lb->p->require_tls;
    if (word_is(name, nlen, "LOGIN")) {
        if (!auth_ok) {
            refuse(lb, ev, lb->tag, "NO [PRIVACYREQUIRED] Use STARTTLS first", out);
            return;
        }
        wipe(lb);
        lb->arg = 0;
        snprintf(lb->mech, sizeof(lb->mech), "LOGIN");
        login_args(lb, line, len, i, ev, out);
        return;
    }
    if (word_is(name, nlen, "AUTHENTICATE")) {
        if (!auth_ok) {
            refuse(lb, ev, lb->tag, "NO [PRIVACYREQUIRED] Use STARTTLS first", out);
            return;
        }
        wipe(lb);
        authenticate(lb, line, len, i, ev, out);
        return;
    }
    if (ev->literal_flags & IMF_LIT_PRESENT) {
        refuse(lb, ev, lb->tag,
               word_is(name, nlen, "ID") ? "BAD ID parameters must be quoted strings"
                                         : "BAD Log in first",
               out);
        return;
    }
    if (word_is(name, nlen, "CAPABILITY") && !args) {
        char caps[128];
        imf_lobby_capabilities(lb, caps, sizeof(caps));
        int n = snprintf(out->answer, sizeof(out->answer), "* CAPABILITY %s\r\n", caps);
        out->answer_len = n > 0 ? (size_t)n : 0;
        answer(out, lb->tag, "OK CAPABILITY completed");
    } else if (word_is(name, nlen, "NOOP") && !args) {
        answer(out, lb->tag, "OK NOOP completed");
    } else if (word_is(name, nlen, "ID") && args) {
        answer(out, "*", "ID NIL");
        answer(out, lb->tag, "OK ID completed");
    } else if (word_is(name, nlen, "LOGOUT") && !args) {
        answer(out, "*", "BYE Logging out");
        answer(out, lb->tag, "OK LOGOUT completed");
        out->actions |= IMF_LOBBY_CLOSE;
    } else if (word_is(name, nlen, "STARTTLS")) {
        if (lb->tls)
            refuse(lb, ev, lb->tag, "BAD STARTTLS is not available: TLS is already active", out);
        else if (!lb->p->starttls_listener)
            refuse(lb, ev, lb->tag, "BAD STARTTLS is not available here", out);
        else if (args)
            refuse(lb, ev, lb->tag, "BAD STARTTLS takes no arguments", out);
        else {
            answer(out, lb->tag, "OK Begin TLS negotiation now");
            out->actions |= IMF_LOBBY_STARTTLS;
        }
    } else if (word_is(name, nlen, "CAPABILITY") || word_is(name, nlen, "NOOP") ||
               word_is(name, nlen, "LOGOUT") || word_is(name, nlen, "ID")) {
        refuse(lb, ev, lb->tag, "BAD Invalid arguments", out);
    } else {
        refuse(lb, ev, lb->tag, "BAD Log in first", out);
    }
}

void imf_lobby_line(struct imf_lobby *lb, const uint8_t *line, size_t len,
                    const struct imf_framer_ev *ev, struct imf_lobby_decision *out)
{
    out->actions = 0;
    out->log = NULL;
    out->answer_len = 0;
    if (lb->discarding) {
        if (ev->message_end || (ev->literal_flags & IMF_LIT_PRESENT) == 0 ||
            !(ev->literal_flags & (IMF_LIT_NONSYNC | IMF_LIT_MINUS))) {
            /* The command ended, or announces a literal whose "+" the
             * client awaits: the refusal now, and no "+". */
            lb->discarding = false;
            if (!ev->message_end)
                out->actions |= IMF_LOBBY_SKIP_LITERAL;
            out->log = lb->discard_answer;
            answer(out, lb->tag, lb->discard_answer);
        }
        return;
    }
    if (!imf_imap_line_clean(line, len)) {
        /* A NUL or a bare CR: whatever follows cannot be trusted. */
        wipe(lb);
        lb->expect = EXPECT_COMMAND;
        out->actions |= IMF_LOBBY_BYE;
        out->log = "BYE Invalid characters in a command line";
        answer(out, "*", "BYE Invalid characters in a command line");
        return;
    }
    switch (lb->expect) {
    case EXPECT_LOGIN_LIT:
        lb->arg = (uint8_t)(lb->lit_arg + 1);
        if (lb->arg == 2 && !(ev->literal_flags & IMF_LIT_PRESENT) &&
            imf_imap_text_len(line, len) == 0) {
            login_ready(lb, out);
            return;
        }
        login_args(lb, line, len, 0, ev, out);
        return;
    case EXPECT_SASL:
        sasl_line(lb, line, len, ev, out);
        return;
    case EXPECT_BUSY:
        /* The session frames nothing while busy; fail closed if it did. */
        out->actions |= IMF_LOBBY_BYE;
        answer(out, "*", "BYE Internal error");
        return;
    default:
        command(lb, line, len, ev, out);
        return;
    }
}

void imf_lobby_literal(struct imf_lobby *lb, const uint8_t *p, size_t n)
{
    if (lb->discarding || lb->expect != EXPECT_LOGIN_LIT)
        return;
    size_t *have = lb->lit_arg == 0 ? &lb->user_len : &lb->pass_len;
    uint8_t *dst = lb->cred + (lb->lit_arg == 0 ? 0 : IMF_BC_CRED_MAX);
    if (n > lb->lit_left)
        n = lb->lit_left;
    if (n > IMF_BC_CRED_MAX - *have)
        n = IMF_BC_CRED_MAX - *have;
    memcpy(dst + *have, p, n);
    *have += n;
    lb->lit_left -= n;
}

bool imf_lobby_discarding(const struct imf_lobby *lb)
{
    return lb->discarding;
}

bool imf_lobby_busy(const struct imf_lobby *lb)
{
    return lb->expect == EXPECT_BUSY;
}

void imf_lobby_tls_started(struct imf_lobby *lb)
{
    lb->tls = true;
}

void imf_lobby_creds(const struct imf_lobby *lb, struct imf_lobby_creds *out)
{
    out->tag = lb->tag;
    out->mech = lb->mech;
    out->user = lb->cred;
    out->user_len = lb->user_len;
    out->pass = lb->cred + IMF_BC_CRED_MAX;
    out->pass_len = lb->pass_len;
}

void imf_lobby_login_done(struct imf_lobby *lb)
{
    wipe(lb);
    lb->arg = 0;
    lb->expect = EXPECT_COMMAND;
}
