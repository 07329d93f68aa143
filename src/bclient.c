/* bclient: see include/imapfront/bclient.h. */
#include "imapfront/bclient.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "imapfront/util.h"

const char *const imf_bc_state_names[IMF_BC_S_COUNT] = {
    "greeting", "ready", "capability", "login", "command", "closed", "failed",
};
static_assert(IMF_ARRAY_LEN(imf_bc_state_names) == IMF_BC_S_COUNT, "state names");

const char *const imf_bc_result_names[IMF_BC_RESULT_COUNT] = {
    "none", "ready", "ok", "no", "bad", "bye", "error",
};
static_assert(IMF_ARRAY_LEN(imf_bc_result_names) == IMF_BC_RESULT_COUNT, "result names");

const char *const imf_bc_form_names[IMF_BC_FORM_COUNT] = {
    "none", "quoted", "literal", "literal+", "plain", "plain-ir",
};
static_assert(IMF_ARRAY_LEN(imf_bc_form_names) == IMF_BC_FORM_COUNT, "form names");

/* ---- secrets -------------------------------------------------------------- */

/* A wipe the compiler may not drop as a dead store. */
static void wipe(void *p, size_t n)
{
    if (n > 0)
        explicit_bzero(p, n);
}

static void wipe_stage(struct imf_bc *bc)
{
    wipe(bc->stage, sizeof(bc->stage));
    memset(bc->seg_end, 0, sizeof(bc->seg_end));
    bc->seg_count = bc->seg_next = 0;
}

static void wipe_creds(struct imf_bc *bc)
{
    wipe(bc->user, sizeof(bc->user));
    wipe(bc->pass, sizeof(bc->pass));
    bc->user_len = bc->pass_len = 0;
    bc->login_queued = false;
}

void imf_bc_init(struct imf_bc *bc, const char *tag_prefix)
{
    memset(bc, 0, sizeof(*bc));
    imf_framer_init(&bc->fr, IMF_FRAMER_RESPONSES, IMF_BC_LINE_MAX, IMF_BC_LITERAL_MAX);
    bc->state = IMF_BC_S_GREETING;
    bc->first = true;
    bool ok = tag_prefix != NULL && tag_prefix[0] != '\0' && strlen(tag_prefix) < 9;
    for (const char *c = tag_prefix; ok && *c != '\0'; c++)
        ok = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z');
    snprintf(bc->tag_prefix, sizeof(bc->tag_prefix), "%s", ok ? tag_prefix : "imf");
}

void imf_bc_cleanup(struct imf_bc *bc)
{
    wipe_stage(bc);
    wipe_creds(bc);
    wipe(bc->out, sizeof(bc->out));
    bc->out_off = bc->out_len = 0;
}

/* ---- output --------------------------------------------------------------- */

size_t imf_bc_output(const struct imf_bc *bc, const uint8_t **out_p)
{
    *out_p = bc->out + bc->out_off;
    return bc->out_len - bc->out_off;
}

void imf_bc_consumed(struct imf_bc *bc, size_t n)
{
    size_t left = bc->out_len - bc->out_off;
    if (n > left)
        n = left;
    wipe(bc->out + bc->out_off, n);
    bc->out_off += n;
    if (bc->out_off == bc->out_len)
        bc->out_off = bc->out_len = 0;
}

/* Appends n bytes to the output, moving what is still unsent to the front
 * first (and wiping where it was). False when they do not fit. */
static bool out_add(struct imf_bc *bc, const uint8_t *p, size_t n)
{
    if (bc->out_off > 0) {
        size_t left = bc->out_len - bc->out_off;
        memmove(bc->out, bc->out + bc->out_off, left);
        wipe(bc->out + left, bc->out_len - left);
        bc->out_off = 0;
        bc->out_len = left;
    }
    if (n > sizeof(bc->out) - bc->out_len)
        return false;
    memcpy(bc->out + bc->out_len, p, n);
    bc->out_len += n;
    return true;
}

/* Moves the next segment of the staged command to the output; the stage is
 * wiped once its last segment has left. False when the output is full. */
static bool send_segment(struct imf_bc *bc)
{
    size_t start = bc->seg_next == 0 ? 0 : bc->seg_end[bc->seg_next - 1];
    size_t end = bc->seg_end[bc->seg_next];
    if (!out_add(bc, bc->stage + start, end - start))
        return false;
    bc->seg_next++;
    if (bc->seg_next == bc->seg_count)
        wipe_stage(bc);
    return true;
}

static bool awaiting_plus(const struct imf_bc *bc)
{
    return bc->seg_next < bc->seg_count;
}

/* ---- building a command in the stage -------------------------------------- */

struct stage_pos {
    size_t len;
    bool full;
};

static void st_put(struct imf_bc *bc, struct stage_pos *sp, const void *p, size_t n)
{
    if (sp->full || n > sizeof(bc->stage) - sp->len) {
        sp->full = true;
        return;
    }
    memcpy(bc->stage + sp->len, p, n);
    sp->len += n;
}

static void st_str(struct imf_bc *bc, struct stage_pos *sp, const char *s)
{
    st_put(bc, sp, s, strlen(s));
}

/* Ends a segment: what follows waits for the server's "+". */
static void st_cut(struct imf_bc *bc, struct stage_pos *sp)
{
    if (sp->full || bc->seg_count >= IMF_BC_SEGS) {
        sp->full = true;
        return;
    }
    bc->seg_end[bc->seg_count++] = sp->len;
}

/* RFC 9051 quoted: TEXT-CHAR (7-bit, no CR, LF, NUL) with '"' and '\'
 * escaped. 8-bit bytes would be UTF-8 only for IMAP4rev2 servers; a
 * literal is safe with every server. */
static bool quotable(const uint8_t *s, size_t n)
{
    if (n > IMF_BC_QUOTED_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] == 0 || s[i] == '\r' || s[i] == '\n' || s[i] >= 0x80)
            return false;
    return true;
}

/* Writes s as an astring: quoted when it can be, else a literal ("{N+}"
 * with LITERAL+, else "{N}" and a segment cut: the octets wait for "+").
 * Returns true when a literal was used. */
static bool st_string(struct imf_bc *bc, struct stage_pos *sp, const uint8_t *s, size_t n)
{
    if (quotable(s, n)) {
        st_put(bc, sp, "\"", 1);
        for (size_t i = 0; i < n; i++) {
            if (s[i] == '"' || s[i] == '\\')
                st_put(bc, sp, "\\", 1);
            st_put(bc, sp, s + i, 1);
        }
        st_put(bc, sp, "\"", 1);
        return false;
    }
    char head[32];
    bool plus = bc->caps & IMF_BC_CAP_LITERAL_PLUS;
    int hn = snprintf(head, sizeof(head), "{%zu%s}\r\n", n, plus ? "+" : "");
    st_put(bc, sp, head, (size_t)hn);
    if (!plus)
        st_cut(bc, sp);
    st_put(bc, sp, s, n);
    return true;
}

static void st_tag(struct imf_bc *bc, struct stage_pos *sp)
{
    bc->tag_no++;
    snprintf(bc->tag, sizeof(bc->tag), "%s%u", bc->tag_prefix, (unsigned)bc->tag_no);
    st_str(bc, sp, bc->tag);
    st_put(bc, sp, " ", 1);
}

/* The stage holds a whole command: send its first segment. */
static int st_finish(struct imf_bc *bc, struct stage_pos *sp, enum imf_bc_state next)
{
    st_put(bc, sp, "\r\n", 2);
    st_cut(bc, sp);
    if (sp->full) {
        wipe_stage(bc);
        return -E2BIG;
    }
    if (!send_segment(bc)) {
        wipe_stage(bc);
        return -ENOBUFS;
    }
    bc->state = (uint8_t)next;
    return 0;
}

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* RFC 4648 base64 of in[0 .. n) into the stage. */
static void st_base64(struct imf_bc *bc, struct stage_pos *sp, const uint8_t *in, size_t n)
{
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n)
            v |= in[i + 2];
        char q[4] = {b64[(v >> 18) & 63], b64[(v >> 12) & 63], i + 1 < n ? b64[(v >> 6) & 63] : '=',
                     i + 2 < n ? b64[v & 63] : '='};
        st_put(bc, sp, q, 4);
        wipe(&v, sizeof(v));
        wipe(q, sizeof(q));
    }
}

/* Builds and starts the login from bc->user and bc->pass, which it wipes. */
static int start_login(struct imf_bc *bc)
{
    struct stage_pos sp = {0, false};
    wipe_stage(bc);
    if (bc->caps & IMF_BC_CAP_AUTH_PLAIN) {
        /* RFC 4616: [authzid] NUL authcid NUL passwd, no authzid here. */
        uint8_t msg[2 + 2 * IMF_BC_CRED_MAX];
        size_t m = 0;
        msg[m++] = 0;
        memcpy(msg + m, bc->user, bc->user_len);
        m += bc->user_len;
        msg[m++] = 0;
        memcpy(msg + m, bc->pass, bc->pass_len);
        m += bc->pass_len;
        bool ir = bc->caps & IMF_BC_CAP_SASL_IR;
        st_tag(bc, &sp);
        st_str(bc, &sp, ir ? "AUTHENTICATE PLAIN " : "AUTHENTICATE PLAIN\r\n");
        if (!ir)
            st_cut(bc, &sp);
        st_base64(bc, &sp, msg, m);
        wipe(msg, sizeof(msg));
        bc->form = ir ? IMF_BC_FORM_PLAIN_IR : IMF_BC_FORM_PLAIN;
    } else {
        st_tag(bc, &sp);
        st_str(bc, &sp, "LOGIN ");
        bool lit = st_string(bc, &sp, bc->user, bc->user_len);
        st_put(bc, &sp, " ", 1);
        lit |= st_string(bc, &sp, bc->pass, bc->pass_len);
        bc->form = !lit                                   ? IMF_BC_FORM_QUOTED
                   : (bc->caps & IMF_BC_CAP_LITERAL_PLUS) ? IMF_BC_FORM_LITERAL_PLUS
                                                          : IMF_BC_FORM_LITERAL;
    }
    wipe_creds(bc);
    return st_finish(bc, &sp, IMF_BC_S_LOGIN);
}

static bool login_possible(const struct imf_bc *bc)
{
    return (bc->caps & IMF_BC_CAP_AUTH_PLAIN) || !(bc->caps & IMF_BC_CAP_LOGINDISABLED);
}

int imf_bc_login(struct imf_bc *bc, const char *user, size_t user_len, const char *password,
                 size_t password_len)
{
    if (bc->state != IMF_BC_S_READY)
        return -EBUSY;
    if (bc->authenticated)
        return -EISCONN;
    if (user_len == 0 || memchr(user, 0, user_len) != NULL ||
        (password_len > 0 && memchr(password, 0, password_len) != NULL))
        return -EINVAL;
    if (user_len > IMF_BC_CRED_MAX || password_len > IMF_BC_CRED_MAX)
        return -E2BIG;
    if ((bc->caps & IMF_BC_CAP_KNOWN) && !login_possible(bc))
        return -ENOTSUP;
    memcpy(bc->user, user, user_len);
    bc->user_len = user_len;
    if (password_len > 0)
        memcpy(bc->pass, password, password_len);
    bc->pass_len = password_len;
    if (bc->caps & IMF_BC_CAP_KNOWN)
        return start_login(bc);
    /* RFC 9051 6.1.1: ask, so as to pick the form the server digests. */
    struct stage_pos sp = {0, false};
    st_tag(bc, &sp);
    st_str(bc, &sp, "CAPABILITY");
    int rc = st_finish(bc, &sp, IMF_BC_S_CAPABILITY);
    if (rc < 0) {
        wipe_creds(bc);
        return rc;
    }
    bc->login_queued = true;
    return 0;
}

int imf_bc_command(struct imf_bc *bc, const char *name, const char *arg)
{
    if (bc->state != IMF_BC_S_READY)
        return -EBUSY;
    size_t nl = strlen(name);
    if (nl == 0 || nl > 32)
        return -EINVAL;
    for (size_t i = 0; i < nl; i++) {
        char c = name[i];
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  (c == ' ' && i > 0 && i + 1 < nl && name[i - 1] != ' ') || c == '-';
        if (!ok)
            return -EINVAL;
    }
    struct stage_pos sp = {0, false};
    wipe_stage(bc);
    st_tag(bc, &sp);
    st_str(bc, &sp, name);
    if (arg != NULL) {
        st_put(bc, &sp, " ", 1);
        st_string(bc, &sp, (const uint8_t *)arg, strlen(arg));
    }
    int rc = st_finish(bc, &sp, IMF_BC_S_COMMAND);
    if (rc == 0)
        bc->logout = strcasecmp(name, "LOGOUT") == 0;
    else
        bc->tag_no--; /* nothing went out under it */
    return rc;
}

/* ---- reading responses ---------------------------------------------------- */

static enum imf_bc_result fail(struct imf_bc *bc, const char *why)
{
    bc->state = IMF_BC_S_FAILED;
    bc->error = why;
    wipe_stage(bc);
    wipe_creds(bc);
    return IMF_BC_ERROR;
}

static bool ci_word(const uint8_t *p, size_t n, const char *word)
{
    size_t wl = strlen(word);
    return n >= wl && strncasecmp((const char *)p, word, wl) == 0 && (n == wl || p[wl] == ' ');
}

static void set_text(char *dst, size_t cap, const uint8_t *p, size_t n)
{
    if (n > cap - 1)
        n = cap - 1;
    memcpy(dst, p, n);
    dst[n] = '\0';
}

static bool cap_is(const uint8_t *p, size_t n, const char *name)
{
    return n == strlen(name) && strncasecmp((const char *)p, name, n) == 0;
}

/* A capability list: names separated by spaces, up to ']' (in a response
 * code) or the end. It replaces the list known so far. */
static void take_caps(struct imf_bc *bc, const uint8_t *p, size_t n, bool in_code)
{
    size_t out = 0;
    bc->caps = IMF_BC_CAP_KNOWN;
    for (size_t i = 0; i < n;) {
        while (i < n && p[i] == ' ')
            i++;
        size_t s = i;
        while (i < n && p[i] != ' ' && !(in_code && p[i] == ']'))
            i++;
        size_t wl = i - s;
        if (wl == 0)
            break;
        const uint8_t *w = p + s;
        if (cap_is(w, wl, "LITERAL+"))
            bc->caps |= IMF_BC_CAP_LITERAL_PLUS;
        else if (cap_is(w, wl, "SASL-IR"))
            bc->caps |= IMF_BC_CAP_SASL_IR;
        else if (cap_is(w, wl, "AUTH=PLAIN"))
            bc->caps |= IMF_BC_CAP_AUTH_PLAIN;
        else if (cap_is(w, wl, "LOGINDISABLED"))
            bc->caps |= IMF_BC_CAP_LOGINDISABLED;
        else if (cap_is(w, wl, "STARTTLS"))
            bc->caps |= IMF_BC_CAP_STARTTLS;
        /* Names that do not fit are dropped from the list, not cut. */
        if (wl + (out > 0) < sizeof(bc->cap_list) - out) {
            if (out > 0)
                bc->cap_list[out++] = ' ';
            memcpy(bc->cap_list + out, w, wl);
            out += wl;
        }
        if (in_code && i < n && p[i] == ']')
            break;
    }
    bc->cap_list[out] = '\0';
}

/* resp-text after a status word: "[CAPABILITY ...]" there is a list. */
static void resp_text(struct imf_bc *bc, const uint8_t *p, size_t n, bool set)
{
    static const char code[] = "[CAPABILITY ";
    size_t cl = sizeof(code) - 1;
    if (n > cl && strncasecmp((const char *)p, code, cl) == 0)
        take_caps(bc, p + cl, n - cl, true);
    if (set)
        set_text(bc->text, sizeof(bc->text), p, n);
}

/* The status word at p and the text after it. */
static enum imf_bc_result status_of(const uint8_t *p, size_t n, size_t *out_word)
{
    static const struct {
        const char *w;
        enum imf_bc_result r;
    } words[] = {{"OK", IMF_BC_OK},
                 {"NO", IMF_BC_NO},
                 {"BAD", IMF_BC_BAD},
                 {"BYE", IMF_BC_BYE},
                 {"PREAUTH", IMF_BC_READY}};
    for (size_t i = 0; i < IMF_ARRAY_LEN(words); i++) {
        if (ci_word(p, n, words[i].w)) {
            *out_word = strlen(words[i].w);
            return words[i].r;
        }
    }
    return IMF_BC_NONE;
}

/* Skips the status word and the space after it. */
static void after_word(const uint8_t **p, size_t *n, size_t word)
{
    *p += word;
    *n -= word;
    if (*n > 0) {
        (*p)++;
        (*n)--;
    }
}

static enum imf_bc_result on_greeting(struct imf_bc *bc, const uint8_t *p, size_t n)
{
    set_text(bc->greeting, sizeof(bc->greeting), p, n); /* for the log, whatever it is */
    if (n < 2 || p[0] != '*' || p[1] != ' ')
        return fail(bc, "not an IMAP greeting");
    const uint8_t *t = p + 2;
    size_t tn = n - 2, w = 0;
    bool preauth = ci_word(t, tn, "PREAUTH");
    enum imf_bc_result r = status_of(t, tn, &w);
    if (r != IMF_BC_OK && r != IMF_BC_BYE && !preauth)
        return fail(bc, "not an IMAP greeting");
    after_word(&t, &tn, w);
    resp_text(bc, t, tn, true);
    if (r == IMF_BC_BYE) {
        bc->bye_seen = true;
        bc->state = IMF_BC_S_CLOSED;
        return IMF_BC_BYE;
    }
    bc->preauth = bc->authenticated = preauth;
    bc->state = IMF_BC_S_READY;
    return IMF_BC_READY;
}

static enum imf_bc_result on_untagged(struct imf_bc *bc, const uint8_t *p, size_t n)
{
    size_t w = 0;
    if (ci_word(p, n, "CAPABILITY")) {
        take_caps(bc, p + 10, n - 10, false);
        return IMF_BC_NONE;
    }
    enum imf_bc_result r = status_of(p, n, &w);
    after_word(&p, &n, w);
    if (r == IMF_BC_OK) {
        resp_text(bc, p, n, false);
    } else if (r == IMF_BC_BYE) {
        bc->bye_seen = true;
        set_text(bc->text, sizeof(bc->text), p, n);
        if (!bc->logout) { /* the server is leaving in the middle of something */
            bc->state = IMF_BC_S_CLOSED;
            wipe_stage(bc);
            wipe_creds(bc);
            return IMF_BC_BYE;
        }
    }
    return IMF_BC_NONE; /* data: EXISTS, FLAGS, FETCH ... */
}

static enum imf_bc_result on_plus(struct imf_bc *bc)
{
    if (awaiting_plus(bc)) {
        if (!send_segment(bc))
            return fail(bc, "output not taken");
        return IMF_BC_NONE;
    }
    if (bc->state == IMF_BC_S_LOGIN &&
        (bc->form == IMF_BC_FORM_PLAIN || bc->form == IMF_BC_FORM_PLAIN_IR)) {
        /* A challenge after PLAIN's only message: cancel (RFC 9051 6.2.2),
         * the server then answers BAD. */
        if (!out_add(bc, (const uint8_t *)"*\r\n", 3))
            return fail(bc, "output not taken");
        return IMF_BC_NONE;
    }
    /* A "+" nothing asked for: the server and the client no longer agree
     * on where the conversation is (a quoted LOGIN answered with "+" would
     * otherwise wait forever for a completion that never comes). */
    return fail(bc, "a continuation request nothing asked for");
}

static enum imf_bc_result on_tagged(struct imf_bc *bc, const uint8_t *p, size_t n)
{
    size_t tl = strlen(bc->tag);
    bool in_flight = bc->state == IMF_BC_S_CAPABILITY || bc->state == IMF_BC_S_LOGIN ||
                     bc->state == IMF_BC_S_COMMAND;
    if (!in_flight || n <= tl || memcmp(p, bc->tag, tl) != 0 || p[tl] != ' ')
        return fail(bc, "tagged response to no command in flight");
    const uint8_t *t = p + tl + 1;
    size_t tn = n - tl - 1, w = 0;
    enum imf_bc_result r = status_of(t, tn, &w);
    if (r != IMF_BC_OK && r != IMF_BC_NO && r != IMF_BC_BAD)
        return fail(bc, "malformed tagged response");
    after_word(&t, &tn, w);
    unsigned caps_before = bc->caps;
    bc->caps &= ~IMF_BC_CAP_KNOWN;
    resp_text(bc, t, tn, true);
    bool fresh_caps = bc->caps & IMF_BC_CAP_KNOWN;
    if (!fresh_caps)
        bc->caps = caps_before;
    /* A literal the server refused leaves the rest of the command unsent. */
    wipe_stage(bc);
    enum imf_bc_state was = (enum imf_bc_state)bc->state;
    bc->state = IMF_BC_S_READY;
    switch (was) {
    case IMF_BC_S_CAPABILITY:
        /* Even a refused CAPABILITY leads to the login: with no list
         * LOGIN is the form every IMAP4rev1 server takes. */
        bc->caps |= IMF_BC_CAP_KNOWN;
        if (!login_possible(bc)) {
            wipe_creds(bc);
            return fail(bc, "the server allows no login (LOGINDISABLED and no AUTH=PLAIN)");
        }
        if (start_login(bc) < 0)
            return fail(bc, "output not taken");
        return IMF_BC_NONE;
    case IMF_BC_S_LOGIN:
        bc->authenticated = r == IMF_BC_OK;
        /* RFC 9051 7.1: a server may announce other capabilities once logged
         * in; without a list in its OK the old one is stale. */
        if (r == IMF_BC_OK && !fresh_caps) {
            bc->caps = 0;
            bc->cap_list[0] = '\0';
        }
        return r;
    default:
        if (bc->logout) {
            bc->state = IMF_BC_S_CLOSED;
            bc->logout = false;
        }
        return r;
    }
}

/* The first line of a response is complete (CRLF dropped). */
static enum imf_bc_result on_line(struct imf_bc *bc, const uint8_t *p, size_t n)
{
    if (bc->state == IMF_BC_S_GREETING)
        return on_greeting(bc, p, n);
    if (n >= 1 && p[0] == '+')
        return on_plus(bc);
    if (n >= 2 && p[0] == '*' && p[1] == ' ')
        return on_untagged(bc, p + 2, n - 2);
    size_t i = 0;
    while (i < n && p[i] > ' ' && p[i] < 0x7f)
        i++;
    if (i == 0 || i == n)
        return fail(bc, "malformed response line");
    return on_tagged(bc, p, n);
}

enum imf_bc_result imf_bc_feed(struct imf_bc *bc, const uint8_t *data, size_t len, size_t *out_used)
{
    size_t used = 0;
    *out_used = 0;
    if (bc->state == IMF_BC_S_FAILED)
        return IMF_BC_ERROR;
    if (bc->state == IMF_BC_S_CLOSED) {
        *out_used = len;
        return IMF_BC_NONE;
    }
    /* Bounded: every event consumes input, or is a zero-length one that a
     * consuming event follows. */
    for (size_t guard = 0; guard < 2 * len + 8; guard++) {
        struct imf_framer_ev ev;
        size_t n = imf_framer_next(&bc->fr, data + used, len - used, &ev);
        used += n;
        *out_used = used;
        switch (ev.kind) {
        case IMF_EV_NEED_MORE:
            return IMF_BC_NONE;
        case IMF_EV_TEXT:
            if (!bc->first)
                break;
            if (n > sizeof(bc->line) - bc->line_len) {
                memcpy(bc->line + bc->line_len, data + used - n, sizeof(bc->line) - bc->line_len);
                bc->line_len = sizeof(bc->line);
            } else {
                memcpy(bc->line + bc->line_len, data + used - n, n);
                bc->line_len += n;
            }
            break;
        case IMF_EV_LINE_END: {
            bool first = bc->first;
            size_t ln = bc->line_len;
            bc->line_len = 0;
            /* A line after a literal continues a response: only the next
             * response's first line is read again. */
            bc->first = ev.message_end;
            if (ev.literal_flags & IMF_LIT_TOO_BIG)
                return fail(bc, "literal too big");
            if (!first)
                break;
            if (ln > 0 && bc->line[ln - 1] == '\n')
                ln--;
            if (ln > 0 && bc->line[ln - 1] == '\r')
                ln--;
            enum imf_bc_result r = on_line(bc, bc->line, ln);
            if (r != IMF_BC_NONE)
                return r;
            if (bc->state == IMF_BC_S_CLOSED) {
                *out_used = len;
                return IMF_BC_NONE;
            }
            break;
        }
        case IMF_EV_LITERAL:
        case IMF_EV_LITERAL_END:
            break;
        case IMF_EV_ERROR:
        default:
            return fail(bc, ev.error == IMF_FRAMER_LINE_TOO_LONG ? "response line too long"
                                                                 : "malformed response");
        }
    }
    return IMF_BC_NONE;
}

enum imf_bc_result imf_bc_eof(struct imf_bc *bc)
{
    if (bc->state == IMF_BC_S_FAILED)
        return IMF_BC_ERROR;
    wipe_stage(bc);
    wipe_creds(bc);
    if (bc->bye_seen || bc->state == IMF_BC_S_CLOSED) {
        bc->state = IMF_BC_S_CLOSED;
        return IMF_BC_BYE;
    }
    return fail(bc, "closed by the server");
}

/* ---- accessors ------------------------------------------------------------ */

enum imf_bc_state imf_bc_state(const struct imf_bc *bc)
{
    return (enum imf_bc_state)bc->state;
}

bool imf_bc_authenticated(const struct imf_bc *bc)
{
    return bc->authenticated;
}

bool imf_bc_preauth(const struct imf_bc *bc)
{
    return bc->preauth;
}

const char *imf_bc_greeting(const struct imf_bc *bc)
{
    return bc->greeting;
}

unsigned imf_bc_caps(const struct imf_bc *bc)
{
    return bc->caps;
}

const char *imf_bc_cap_list(const struct imf_bc *bc)
{
    return bc->cap_list;
}

bool imf_bc_has_cap(const struct imf_bc *bc, const char *cap)
{
    size_t cl = strlen(cap);
    for (const char *p = bc->cap_list; *p != '\0';) {
        const char *e = strchr(p, ' ');
        size_t wl = e != NULL ? (size_t)(e - p) : strlen(p);
        if (wl == cl && strncasecmp(p, cap, cl) == 0)
            return true;
        p += wl;
        if (*p == ' ')
            p++;
    }
    return false;
}

const char *imf_bc_text(const struct imf_bc *bc)
{
    return bc->text;
}

const char *imf_bc_error(const struct imf_bc *bc)
{
    return bc->state == IMF_BC_S_FAILED ? bc->error : NULL;
}

enum imf_bc_login_form imf_bc_form(const struct imf_bc *bc)
{
    return (enum imf_bc_login_form)bc->form;
}

const char *imf_bc_tag(const struct imf_bc *bc)
{
    return bc->tag;
}
