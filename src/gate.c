/* gate: see include/imapfront/gate.h. */
#include "imapfront/gate.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/base64.h>
#include <openssl/mem.h>
#include <openssl/siphash.h>

#include "imapfront/util.h"

const char *const imf_gate_profile_names[IMF_PROFILE_COUNT] = {"unknown", "generic", "exchange55"};
static_assert(IMF_ARRAY_LEN(imf_gate_profile_names) == IMF_PROFILE_COUNT, "profile names");

const char *const imf_login_result_names[IMF_LOGIN_RESULT_COUNT] = {"ok", "failed", "refused",
                                                                    "throttled"};
static_assert(IMF_ARRAY_LEN(imf_login_result_names) == IMF_LOGIN_RESULT_COUNT, "result names");

#define AUTH_FAILED "NO [AUTHENTICATIONFAILED] Authentication failed"

/* What the client's next line is. */
enum expect {
    EXPECT_COMMAND, /* a command (or a line after one of its literals) */
    EXPECT_SASL,    /* one SASL response line: base64 or "*" */
    EXPECT_DONE,    /* IDLE: only "DONE" */
    EXPECT_NOTHING, /* AUTHENTICATE/IDLE went: nothing until the "+" or the completion */
};

/* What the backend's next "+" is for. */
enum plus_for {
    PLUS_NONE,           /* nothing: a "+" is relayed and changes nothing */
    PLUS_CLIENT_LITERAL, /* the client's synchronising literal: relay it, then the octets go */
    PLUS_OUR_LITERAL,    /* a {N+} the proxy made synchronising: the "+" is ours */
    PLUS_CONTINUATION,   /* AUTHENTICATE or IDLE asks the client for a line */
    PLUS_REISSUE,        /* the IDLE the proxy re-sent (idle_refresh): the "+" is ours */
};

/* Servers whose defects the project knows, recognised by their greeting.
 * Every entry says why it is here. */
static const struct {
    const char *a, *b; /* both must appear in the greeting (case-insensitive) */
    enum imf_gate_profile profile;
} known_servers[] = {
    /* Exchange 5.5 (greets "Microsoft Exchange Server IMAP4rev1 server
     * version 5.5.2653.23 ... ready"): Q239082, an APPEND whose literal's
     * end and CRLF arrive in one read hangs, and its receive chain
     * mis-counts pipelined commands and drops the connection; it has no
     * LITERAL+. */
    {"Microsoft Exchange", "version 5.5", IMF_PROFILE_EXCHANGE55},
};

static void login_free(struct imf_gate *g);

#define INFLIGHT_MAX 1024 /* commands one session may have in flight */

/* ---- small parsers ------------------------------------------------------ */

/* ATOM-CHAR: an ASTRING-CHAR other than "]". */
static bool atom_char(uint8_t c)
{
    return c == '+' || (imf_imap_tag_char(c) && c != ']');
}

static bool bare_lf(const uint8_t *line, size_t len)
{
    return len >= 1 && line[len - 1] == '\n' && (len < 2 || line[len - 2] != '\r');
}

/* Replaces the line (len octets, LF included) in place with head and tail
 * and the line's own ending: CRLF, or a bare LF that the session turns
 * into CRLF (IMF_GATE_FIX_EOL). A rewrite never grows the line: the ending
 * is as long as the one it replaces, and callers pass text no longer than
 * what it stands for. Returns false (and leaves the line) when it would not
 * fit. */
static bool rewrite_line(uint8_t *line, size_t len, const char *head, const char *tail,
                         struct imf_gate_decision *out)
{
    bool lf = bare_lf(line, len);
    size_t hl = strlen(head), tl = strlen(tail), el = lf ? 1 : 2;
    if (hl + tl + el > len)
        return false;
    memcpy(line, head, hl);
    memcpy(line + hl, tail, tl);
    memcpy(line + hl + tl, lf ? "\n" : "\r\n", el);
    out->len = hl + tl + el;
    if (lf)
        out->actions |= IMF_GATE_FIX_EOL;
    return true;
}

/* The line becomes "*", cancelling a SASL exchange; the caller knows the
 * line holds at least one octet before its ending. */
static void cancel_line(uint8_t *line, size_t len, struct imf_gate_decision *out)
{
    bool ok = rewrite_line(line, len, "*", "", out);
    assert(ok);
    (void)ok;
}

/* Parses "tag SP name [SP ...]" strictly. Returns 0, -1 when no tag could
 * be read, -2 when the tag was read but the command name is invalid. */
static int parse_command(const uint8_t *line, size_t len, struct imf_imap_command *out)
{
    memset(out, 0, sizeof(*out));
    out->cmd = IMF_CMD_OTHER;
    size_t end = imf_imap_text_len(line, len);
    size_t i = 0;
    while (i < end && imf_imap_tag_char(line[i]))
        i++;
    if (i == 0 || i > IMF_TAG_MAX || i >= end || line[i] != ' ')
        return -1;
    memcpy(out->tag, line, i);
    out->tag[i] = '\0';
    i++;
    size_t n = 0;
    for (int word = 0; word < 2; word++) {
        size_t start = i;
        while (i < end && atom_char(line[i]))
            i++;
        size_t wlen = i - start;
        if (wlen == 0 || n + wlen + 1 >= sizeof(out->name))
            return -2;
        if (i < end && line[i] != ' ')
            return -2;
        for (size_t k = 0; k < wlen; k++) {
            uint8_t c = line[start + k];
            out->name[n++] = (char)(c >= 'a' && c <= 'z' ? c - 32 : c);
        }
        out->name[n] = '\0';
        if (word == 0 && strcmp(out->name, "UID") == 0) {
            if (i >= end)
                return -2;
            out->name[n++] = ' ';
            i++;
            continue;
        }
        break;
    }
    if (strncmp(out->name, "UID ", 4) != 0) {
        for (int c = 1; c < IMF_CMD_COUNT; c++) {
            if (strcmp(out->name, imf_cmd_names[c]) == 0) {
                out->cmd = (enum imf_cmd)c;
                break;
            }
        }
    }
    return 0;
}

/* What follows the command name, without the line ending. */
static const uint8_t *args_of(const uint8_t *line, size_t len, size_t *out_len)
{
    size_t end = imf_imap_text_len(line, len);
    const uint8_t *sp = memchr(line, ' ', end); /* after the tag */
    if (sp == NULL) {
        *out_len = 0;
        return line + end;
    }
    const uint8_t *p = sp + 1;
    while (p < line + end && *p != ' ')
        p++;
    if (p < line + end)
        p++;
    *out_len = (size_t)(line + end - p);
    return p;
}

/* True when needle occurs in [p, p + n), ignoring case. */
static bool contains_ci(const uint8_t *p, size_t n, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = 0; k <= n && i <= n - k; i++)
        if (strncasecmp((const char *)p + i, needle, k) == 0)
            return true;
    return false;
}

static bool is_word(const uint8_t *p, size_t n, const char *word)
{
    return n == strlen(word) && strncasecmp((const char *)p, word, n) == 0;
}

/* A SASL response line (RFC 4959): base64, possibly empty, or "*". */
static bool sasl_line(const uint8_t *line, size_t len)
{
    size_t n = imf_imap_text_len(line, len);
    if (n == 1 && line[0] == '*')
        return true;
    /* RFC 3501 base64: groups of 4, "=" only as the padding of the last. */
    if (n % 4 != 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = line[i];
        bool b64 = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                   c == '+' || c == '/';
        bool pad = c == '=' && (i == n - 1 || (i == n - 2 && line[n - 1] == '='));
        if (!b64 && !pad)
            return false;
    }
    return true;
}

/* ID field names a client may not set: the proxy's word about the client's
 * address is the only one the backend may read. */
static bool id_key_forbidden(const uint8_t *p, size_t n)
{
    static const char *const prefixes[] = {"x-originating-", "x-connected-"};
    for (size_t i = 0; i < IMF_ARRAY_LEN(prefixes); i++) {
        size_t k = strlen(prefixes[i]);
        if (n >= k && strncasecmp((const char *)p, prefixes[i], k) == 0)
            return true;
    }
    return false;
}

/* Reads a quoted string or NIL at *p; sets [*out_s, *out_s + *out_n) to its
 * raw text (quotes included) and its content for comparison. */
static bool id_nstring(const uint8_t **p, const uint8_t *end, const uint8_t **out_raw,
                       size_t *out_raw_len, uint8_t *content, size_t content_cap,
                       size_t *out_content_len)
{
    const uint8_t *q = *p;
    *out_raw = q;
    *out_content_len = 0;
    if (end - q >= 3 && strncasecmp((const char *)q, "NIL", 3) == 0) {
        *p = q + 3;
        *out_raw_len = 3;
        return true;
    }
    if (q >= end || *q != '"')
        return false;
    q++;
    size_t n = 0;
    while (q < end && *q != '"') {
        if (*q == '\\') {
            q++;
            if (q >= end || (*q != '"' && *q != '\\'))
                return false;
        }
        if (n < content_cap)
            content[n++] = *q;
        q++;
    }
    if (q >= end)
        return false;
    q++;
    *out_raw_len = (size_t)(q - *out_raw);
    *out_content_len = n;
    *p = q;
    return true;
}

/* Rewrites "tag ID (k v k v ...)" in place without the forbidden keys.
 * Returns the new length, or 0 when the list is not of a form the proxy
 * can read (the caller refuses the command). */
static size_t strip_id(uint8_t *line, size_t len)
{
    size_t alen;
    uint8_t *args = (uint8_t *)args_of(line, len, &alen);
    const uint8_t *end = args + alen;
    if (is_word(args, alen, "NIL"))
        return len;
    /* "()" is not an ID list (RFC 2971: NIL, or at least one pair). */
    if (alen < 3 || args[0] != '(' || end[-1] != ')')
        return 0;
    const uint8_t *p = args + 1;
    uint8_t *w = args + 1;
    bool first = true;
    while (p < end - 1) {
        const uint8_t *kraw, *vraw;
        size_t kraw_len, vraw_len, klen, vlen;
        uint8_t key[64], val[8];
        if (!id_nstring(&p, end - 1, &kraw, &kraw_len, key, sizeof(key), &klen) || *p != ' ')
            return 0;
        p++;
        if (!id_nstring(&p, end - 1, &vraw, &vraw_len, val, sizeof(val), &vlen))
            return 0;
        if (p < end - 1) {
            if (*p != ' ')
                return 0;
            p++;
        }
        if (kraw_len > 3 && id_key_forbidden(key, klen < sizeof(key) ? klen : sizeof(key)))
            continue;
        if (!first)
            *w++ = ' ';
        memmove(w, kraw, kraw_len);
        w += kraw_len;
        *w++ = ' ';
        memmove(w, vraw, vraw_len);
        w += vraw_len;
        first = false;
    }
    if (first) {
        /* Nothing left: NIL says so (it fits: a pair was at least 8 octets). */
        w = args;
        memcpy(w, "NIL", 3);
        w += 3;
    } else {
        *w++ = ')';
    }
    size_t tail = len - (size_t)(end - line);
    memmove(w, end, tail);
    return (size_t)(w - line) + tail;
}

/* "{N+}" / "{N-}" at the end of the line becomes "{N}", in place. */
static size_t make_sync(uint8_t *line, size_t len)
{
    size_t close = len;
    while (close > 0 && line[close - 1] != '}')
        close--;
    if (close < 2 || (line[close - 2] != '+' && line[close - 2] != '-'))
        return len;
    memmove(line + close - 2, line + close - 1, len - (close - 1));
    return len - 1;
}

/* ---- state ---------------------------------------------------------------- */

static void set_shields(struct imf_gate *g)
{
    const struct imf_gate_params *p = g->p;
    g->shields.pipelining = p->pipelining;
    g->shields.literal_sync = p->literal_sync;
    g->shields.crlf_split = p->crlf_split;
    if (p->quirks == IMF_QUIRKS_AUTO && g->profile == IMF_PROFILE_EXCHANGE55) {
        if (!p->pipelining_set)
            g->shields.pipelining = false;
        if (!p->literal_sync_set)
            g->shields.literal_sync = true;
        if (!p->crlf_split_set)
            g->shields.crlf_split = true;
    }
}

void imf_gate_init(struct imf_gate *g, const struct imf_gate_params *p)
{
    memset(g, 0, sizeof(*g));
    g->p = p;
    g->tls = p->implicit_tls;
    set_shields(g);
}

void imf_gate_cleanup(struct imf_gate *g)
{
    login_free(g);
    free(g->inflight);
    g->inflight = NULL;
    g->inflight_len = g->inflight_cap = 0;
}

static struct imf_gate_cmd *find_inflight(const struct imf_gate *g, const char *tag)
{
    for (uint32_t i = 0; i < g->inflight_len; i++)
        if (strcmp(g->inflight[i].tag, tag) == 0)
            return &g->inflight[i];
    return NULL;
}

static bool own_inflight(const struct imf_gate *g, const char *tag)
{
    struct imf_gate_cmd *c = find_inflight(g, tag);
    return c != NULL && c->own;
}

/* Returns false when there is no room (or no memory). */
static bool add_inflight(struct imf_gate *g, const char *tag, enum imf_cmd cmd, bool own)
{
    if (g->inflight_len == g->inflight_cap) {
        if (g->inflight_cap >= INFLIGHT_MAX)
            return false;
        uint32_t ncap = g->inflight_cap != 0 ? g->inflight_cap * 2 : 4;
        struct imf_gate_cmd *n = realloc(g->inflight, ncap * sizeof(*n));
        if (n == NULL)
            return false;
        g->inflight = n;
        g->inflight_cap = ncap;
    }
    struct imf_gate_cmd *c = &g->inflight[g->inflight_len++];
    snprintf(c->tag, sizeof(c->tag), "%s", tag);
    c->cmd = (uint8_t)cmd;
    c->own = own;
    if (!own)
        g->client_inflight++;
    return true;
}

static void remove_inflight(struct imf_gate *g, struct imf_gate_cmd *c)
{
    if (!c->own)
        g->client_inflight--;
    *c = g->inflight[--g->inflight_len];
    if (g->inflight_len == 0) {
        /* A session between commands holds no table. */
        free(g->inflight);
        g->inflight = NULL;
        g->inflight_cap = 0;
    }
}

enum imf_gate_wait imf_gate_client_wait(const struct imf_gate *g, bool at_message_start)
{
    if (g->profile == IMF_PROFILE_UNKNOWN)
        return IMF_GATE_WAIT_GREETING;
    if (g->discarding)
        return IMF_GATE_GO;
    if (g->plus_for == PLUS_CLIENT_LITERAL || g->plus_for == PLUS_OUR_LITERAL ||
        g->expect == EXPECT_NOTHING)
        return IMF_GATE_WAIT_PLUS;
    if (g->idle == IMF_GATE_IDLE_REFRESH || g->idle == IMF_GATE_IDLE_REISSUE)
        return IMF_GATE_WAIT_OWN;
    if (g->expect != EXPECT_COMMAND || !at_message_start)
        return IMF_GATE_GO;
    if (g->inflight_len > g->client_inflight)
        return IMF_GATE_WAIT_OWN; /* the proxy's ID or poll first */
    if (!g->shields.pipelining && g->inflight_len > 0)
        return IMF_GATE_HOLD;
    return IMF_GATE_GO;
}

bool imf_gate_discarding(const struct imf_gate *g)
{
    return g->discarding;
}

/* ---- login attempts --------------------------------------------------------- */

static void login_free(struct imf_gate *g)
{
    if (g->login != NULL) {
        OPENSSL_cleanse(g->login, sizeof(*g->login));
        free(g->login);
        g->login = NULL;
    }
}

/* Starts a login attempt; false when there is no memory (the attempt then
 * goes unrecorded, never refused for that). */
static bool login_start(struct imf_gate *g, const char *tag, const uint8_t *mech, size_t mech_len)
{
    login_free(g);
    g->login = calloc(1, sizeof(*g->login));
    if (g->login == NULL)
        return false;
    snprintf(g->login->tag, sizeof(g->login->tag), "%s", tag);
    size_t n = mech_len < sizeof(g->login->mech) - 1 ? mech_len : sizeof(g->login->mech) - 1;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = mech[i];
        g->login->mech[i] =
            (char)(c >= 'a' && c <= 'z' ? c - 32 : (c > 0x20 && c < 0x7f ? c : '?'));
    }
    return true;
}

static void login_name(char *dst, const uint8_t *p, size_t n)
{
    if (n > IMF_GATE_USER_MAX)
        n = IMF_GATE_USER_MAX;
    for (size_t i = 0; i < n; i++)
        dst[i] = p[i] != '\0' ? (char)p[i] : '?';
    dst[n] = '\0';
}

/* The hash of the secret p[0..n); whole is false when p is only its first
 * octets (the capture buffer was full): the hash is then 0, "unknown", so
 * that two long passwords sharing those octets are never taken for the
 * same wrong password repeated (which would count once). */
static void login_secret(struct imf_gate *g, const uint8_t *p, size_t n, bool whole)
{
    /* Never 0 when known: 0 means "no secret seen". */
    g->login->secret_hash = whole ? SIPHASH_24(g->p->secret_key, p, n) | 1u : 0;
}

/* One value of LOGIN: the user name, then the password (whole: not cut). */
static void login_value(struct imf_gate *g, const uint8_t *v, size_t n, bool whole)
{
    struct imf_gate_login *l = g->login;
    if (l->arg == 0)
        login_name(l->user, v, n);
    else if (l->arg == 1)
        login_secret(g, v, n, whole);
    l->arg++;
}

/* Reads an atom or a quoted string at p[*i..end) into out (cut at cap;
 * *out_cut says so). Returns false when neither is there. */
static bool astring(const uint8_t *p, size_t end, size_t *i, uint8_t *out, size_t cap,
                    size_t *out_len, bool *out_cut)
{
    size_t k = *i, n = 0;
    *out_cut = false;
    if (k < end && p[k] == '"') {
        for (k++; k < end && p[k] != '"'; k++) {
            if (p[k] == '\\' && k + 1 < end)
                k++;
            if (n < cap)
                out[n++] = p[k];
            else
                *out_cut = true;
        }
        if (k >= end)
            return false;
        k++;
    } else {
        while (k < end && (atom_char(p[k]) || p[k] == ']')) {
            if (n < cap)
                out[n++] = p[k];
            else
                *out_cut = true;
            k++;
        }
        if (k == *i)
            return false;
    }
    *i = k;
    *out_len = n;
    return true;
}

/* The arguments of LOGIN in p[0..n) (after the command name on its first
 * line; a whole line after one of its literals). A literal ends the line:
 * its octets are captured as they go. */
static void login_args(struct imf_gate *g, const uint8_t *p, size_t n)
{
    struct imf_gate_login *l = g->login;
    size_t i = 0;
    while (l->arg < 2 && i < n) {
        if (l->arg == 1 && p[i] == ' ')
            i++;
        if (i < n && p[i] == '{') {
            l->capture = (uint8_t)(l->arg + 1);
            l->cap_len = 0;
            l->cut = false;
            return;
        }
        uint8_t v[IMF_GATE_CAPTURE_MAX];
        size_t vlen = 0;
        bool cut;
        bool ok = astring(p, n, &i, v, sizeof(v), &vlen, &cut);
        if (ok)
            login_value(g, v, vlen, !cut);
        OPENSSL_cleanse(v, sizeof(v));
        if (!ok) {
            l->arg = 2; /* not LOGIN's syntax: the backend says so */
            return;
        }
    }
}

/* The captured literal is complete (the line after it has come). */
static void login_captured(struct imf_gate *g)
{
    struct imf_gate_login *l = g->login;
    if (l == NULL || l->capture == 0)
        return;
    l->arg = (uint8_t)(l->capture - 1);
    l->capture = 0;
    login_value(g, l->cap, l->cap_len, !l->cut);
    OPENSSL_cleanse(l->cap, sizeof(l->cap));
    l->cap_len = 0;
}

bool imf_gate_capturing(const struct imf_gate *g)
{
    return g->login != NULL && g->login->capture != 0;
}

void imf_gate_capture(struct imf_gate *g, const uint8_t *p, size_t n)
{
    struct imf_gate_login *l = g->login;
    if (l == NULL || l->capture == 0)
        return;
    size_t room = sizeof(l->cap) - l->cap_len;
    if (n > room) {
        l->cut = true;
        n = room;
    }
    memcpy(l->cap + l->cap_len, p, n);
    l->cap_len += n;
}

/* Finds "field" in p[0..n) at the start or after one of the octets in
 * seps, and sets its value: up to the next of those octets. */
static bool sasl_field(const uint8_t *p, size_t n, const char *field, const char *seps,
                       const uint8_t **out, size_t *out_len)
{
    size_t k = strlen(field);
    for (size_t i = 0; i + k <= n; i++) {
        if ((i == 0 || memchr(seps, p[i - 1], strlen(seps)) != NULL) &&
            memcmp(p + i, field, k) == 0) {
            size_t e = i + k;
            while (e < n && memchr(seps, p[e], strlen(seps)) == NULL)
                e++;
            *out = p + i + k;
            *out_len = e - i - k;
            return true;
        }
    }
    return false;
}

/* One SASL message of the login (initial response or a line answering a
 * "+"), base64 in b64[0..n): the names it carries in clear, a hash of the
 * secret it carries. Never keeps the decoded octets. */
static void sasl_data(struct imf_gate *g, const uint8_t *b64, size_t n)
{
    struct imf_gate_login *l = g->login;
    uint8_t step = l->sasl_step++;
    if (n == 1 && b64[0] == '=')
        n = 0; /* an empty initial response */
    uint8_t buf[3072];
    bool whole = true; /* the secret's octets all decoded (see login_secret) */
    if (n > sizeof(buf) / 3 * 4) {
        n = sizeof(buf) / 3 * 4; /* a prefix is enough for the names */
        whole = false;
    }
    n -= n % 4;
    size_t m = 0;
    if (n > 0 && !EVP_DecodeBase64(buf, &m, sizeof(buf), b64, n))
        return;
    const uint8_t *v;
    size_t vlen;
    if (strcmp(l->mech, "PLAIN") == 0 && step == 0) {
        /* authzid NUL authcid NUL passwd (RFC 4616) */
        const uint8_t *a = memchr(buf, 0, m);
        const uint8_t *b = a != NULL ? memchr(a + 1, 0, m - (size_t)(a + 1 - buf)) : NULL;
        if (b != NULL) {
            login_name(l->authz, buf, (size_t)(a - buf));
            login_name(l->user, a + 1, (size_t)(b - a - 1));
            login_secret(g, b + 1, m - (size_t)(b + 1 - buf), whole);
        }
    } else if (strcmp(l->mech, "LOGIN") == 0) {
        if (step == 0)
            login_name(l->user, buf, m);
        else if (step == 1)
            login_secret(g, buf, m, whole);
    } else if (strcmp(l->mech, "XOAUTH2") == 0 && step == 0) {
        if (sasl_field(buf, m, "user=", "\x01", &v, &vlen))
            login_name(l->user, v, vlen);
        if (sasl_field(buf, m, "auth=", "\x01", &v, &vlen))
            login_secret(g, v, vlen, whole);
    } else if (strcmp(l->mech, "OAUTHBEARER") == 0 && step == 0) {
        if (sasl_field(buf, m, "a=", ",\x01", &v, &vlen))
            login_name(l->user, v, vlen);
        if (sasl_field(buf, m, "auth=", "\x01", &v, &vlen))
            login_secret(g, v, vlen, whole);
    }
    OPENSSL_cleanse(buf, sizeof(buf));
}

/* Asks the session once whether this attempt is refused. */
static bool login_check(struct imf_gate *g)
{
    struct imf_gate_login *l = g->login;
    if (l == NULL || l->checked)
        return false;
    l->checked = true;
    if (g->p->login_refused == NULL)
        return false;
    l->refused = g->p->login_refused(g->p->login_ctx, l);
    return l->refused;
}

static void login_end(struct imf_gate *g, enum imf_login_result r)
{
    if (g->login != NULL && !g->login->done) {
        g->login->result = (uint8_t)r;
        g->login->done = true;
        g->login->capture = 0;
    }
}

const struct imf_gate_login *imf_gate_login(const struct imf_gate *g)
{
    return g->login;
}

void imf_gate_login_clear(struct imf_gate *g)
{
    login_free(g);
}

/* ---- decisions on client lines -------------------------------------------- */

static void answer(struct imf_gate_decision *out, const char *tag, const char *text)
{
    out->actions |= IMF_GATE_ANSWER;
    int n = snprintf(out->answer, sizeof(out->answer), "%s %s\r\n", tag, text);
    out->answer_len = n < 0                              ? 0
                      : (size_t)n >= sizeof(out->answer) ? sizeof(out->answer) - 1
                                                         : (size_t)n;
}

/* Refuses the command whose first line this is: nothing goes to the
 * backend. A literal it announces is refused too: a synchronising one is
 * never sent by a client that waits for "+"; a non-synchronising one
 * follows at once and is swallowed with the rest of the command before the
 * answer goes out (so text must be static). */
static void refuse(struct imf_gate *g, const struct imf_framer_ev *ev, const char *tag,
                   const char *text, struct imf_gate_decision *out)
{
    out->log = text;
    if ((ev->literal_flags & IMF_LIT_PRESENT) &&
        (ev->literal_flags & (IMF_LIT_NONSYNC | IMF_LIT_MINUS))) {
        g->discarding = true;
        g->discard_answer = text;
        snprintf(g->discard_tag, sizeof(g->discard_tag), "%s", tag);
        out->actions |= IMF_GATE_DISCARD;
        return;
    }
    if (ev->literal_flags & IMF_LIT_PRESENT)
        out->actions |= IMF_GATE_SKIP_LITERAL;
    answer(out, tag, text);
}

/* The literal a forwarded line announces: held until the backend's "+"
 * when synchronising (the backend may refuse it; its octets must then
 * never reach it as commands), made synchronising when the backend cannot
 * take it as it is. */
static void forward_literal(struct imf_gate *g, uint8_t *line, const struct imf_framer_ev *ev,
                            struct imf_gate_decision *out)
{
    unsigned f = ev->literal_flags;
    if (!(f & IMF_LIT_PRESENT))
        return;
    if (!(f & (IMF_LIT_NONSYNC | IMF_LIT_MINUS))) {
        g->plus_for = PLUS_CLIENT_LITERAL;
        return;
    }
    bool backend_takes =
        !g->shields.literal_sync &&
        ((f & IMF_LIT_NONSYNC) ? g->backend_lplus : (g->backend_lplus || g->backend_lminus));
    if (backend_takes)
        return;
    out->len = make_sync(line, out->len);
    out->actions |= IMF_GATE_CONVERTED;
    g->plus_for = PLUS_OUR_LITERAL;
}

static void forward(struct imf_gate *g, uint8_t *line, size_t len, const struct imf_framer_ev *ev,
                    struct imf_gate_decision *out)
{
    out->actions |= IMF_GATE_FORWARD;
    if (bare_lf(line, len))
        out->actions |= IMF_GATE_FIX_EOL;
    forward_literal(g, line, ev, out);
    g->cur_bytes += ev->line_len + ((ev->literal_flags & IMF_LIT_PRESENT) ? ev->literal_size : 0);
    if (ev->message_end && (g->cur_cmd == IMF_CMD_AUTHENTICATE || g->cur_cmd == IMF_CMD_IDLE)) {
        /* The client's next line answers the backend's "+", if one comes. */
        g->expect = EXPECT_NOTHING;
        g->plus_for = PLUS_CONTINUATION;
        if (g->cur_cmd == IMF_CMD_IDLE) {
            g->idle = IMF_GATE_IDLE_ASKED;
            snprintf(g->idle_tag, sizeof(g->idle_tag), "%s", g->cur_tag);
        }
    }
}

/* Over the literal or command limit? */
static bool too_big(const struct imf_gate *g, const struct imf_framer_ev *ev, uint64_t so_far)
{
    if (ev->literal_flags & IMF_LIT_TOO_BIG)
        return true;
    uint64_t lit = (ev->literal_flags & IMF_LIT_PRESENT) ? ev->literal_size : 0;
    uint64_t max = g->p->max_command;
    if (max == 0)
        return false;
    if (so_far > max || ev->line_len > max - so_far)
        return true;
    return lit > max - so_far - ev->line_len;
}

/* A line after one of the current command's literals. */
static void continuation_line(struct imf_gate *g, uint8_t *line, size_t len,
                              const struct imf_framer_ev *ev, struct imf_gate_decision *out)
{
    if (too_big(g, ev, g->cur_bytes)) {
        /* Part of the command went to the backend already: it cannot be
         * taken back, and the stream cannot be trusted to resync. */
        out->actions |= IMF_GATE_CLOSE;
        out->why = IMF_GATE_CLOSE_TOOBIG;
        answer(out, "*", "BYE [TOOBIG] Command too big");
        return;
    }
    if (!g->cur_forwarded) {
        refuse(g, ev, "*", "BAD Unexpected input", out); /* never reached: see refuse() */
        return;
    }
    if (!imf_imap_line_clean(line, len)) {
        out->actions |= IMF_GATE_CLOSE;
        answer(out, "*", "BYE Invalid characters in a command line");
        out->log = "NUL or bare CR in a command line";
        return;
    }
    if (g->cur_cmd == IMF_CMD_LOGIN && g->login != NULL && !g->login->done) {
        login_captured(g);
        login_args(g, line, imf_imap_text_len(line, len));
        if (g->login->arg >= 1 && login_check(g)) {
            /* The name went as a literal; the password has not: the
             * command is left unfinished and the session ends. */
            login_end(g, IMF_LOGIN_THROTTLED);
            out->actions |= IMF_GATE_CLOSE | IMF_GATE_LOGIN_DONE;
            out->why = IMF_GATE_CLOSE_LOGIN;
            out->log = AUTH_FAILED;
            answer(out, g->cur_tag, AUTH_FAILED);
            return;
        }
    }
    forward(g, line, len, ev, out);
}

static bool quiet_for_switch(const struct imf_gate *g, bool backend_quiet)
{
    return g->inflight_len == 0 && backend_quiet;
}

/* The first line of a command. */
static void command_line(struct imf_gate *g, uint8_t *line, size_t len,
                         const struct imf_framer_ev *ev, bool backend_quiet,
                         struct imf_gate_decision *out)
{
    struct imf_imap_command c;
    int rc = parse_command(line, len, &c);
    g->cur_bytes = 0;
    g->cur_forwarded = false;
    g->cur_cmd = IMF_CMD_OTHER;
    g->cur_name[0] = '\0';
    if (rc == -1) {
        snprintf(g->cur_tag, sizeof(g->cur_tag), "*");
        refuse(g, ev, "*", "BAD Invalid tag or command line", out);
        return;
    }
    snprintf(g->cur_tag, sizeof(g->cur_tag), "%s", c.tag);
    if (rc == -2) {
        refuse(g, ev, c.tag, "BAD Invalid command name", out);
        return;
    }
    snprintf(g->cur_name, sizeof(g->cur_name), "%s", c.name);
    g->cur_cmd = (uint8_t)c.cmd;
    bool lit = (ev->literal_flags & IMF_LIT_PRESENT) != 0;
    size_t alen;
    const uint8_t *args = args_of(line, len, &alen);

    if (!imf_imap_line_clean(line, len)) {
        refuse(g, ev, c.tag, "BAD Invalid characters in the command line", out);
        return;
    }
    if (strcmp(c.tag, IMF_GATE_ID_TAG) == 0 || strcmp(c.tag, IMF_GATE_POLL_TAG) == 0) {
        refuse(g, ev, c.tag, "BAD This tag is reserved by the proxy", out);
        return;
    }
    if (find_inflight(g, c.tag) != NULL) {
        refuse(g, ev, c.tag, "BAD Tag already in use by a command in progress", out);
        return;
    }
    if (too_big(g, ev, 0)) {
        if (lit && (ev->literal_flags & (IMF_LIT_NONSYNC | IMF_LIT_MINUS)))
            refuse(g, ev, c.tag, "BAD [TOOBIG] Literal too big", out);
        else
            refuse(g, ev, c.tag, "NO [TOOBIG] Literal too big", out);
        return;
    }
    switch (c.cmd) {
    case IMF_CMD_STARTTLS:
        if (g->tls)
            refuse(g, ev, c.tag, "BAD STARTTLS is not available: TLS is already active", out);
        else if (!g->p->starttls_listener)
            refuse(g, ev, c.tag, "BAD STARTTLS is not available here", out);
        else if (lit || alen != 0)
            refuse(g, ev, c.tag, "BAD STARTTLS takes no arguments", out);
        else if (g->authenticated)
            refuse(g, ev, c.tag, "BAD STARTTLS is valid only before login", out);
        else if (!quiet_for_switch(g, backend_quiet))
            refuse(g, ev, c.tag, "BAD STARTTLS is valid only with no command in progress", out);
        else {
            answer(out, c.tag, "OK Begin TLS negotiation now");
            out->actions |= IMF_GATE_STARTTLS;
        }
        return;
    case IMF_CMD_COMPRESS:
        /* The backend's COMPRESS is never used: the proxy must see every
         * command. With [imap] compress the proxy offers its own. */
        if (!g->p->compress || !g->tls)
            refuse(g, ev, c.tag, "NO [CANNOT] COMPRESS is not available through this proxy", out);
        else if (g->compress_on)
            refuse(g, ev, c.tag, "NO [COMPRESSIONACTIVE] DEFLATE is active already", out);
        else if (!g->authenticated)
            refuse(g, ev, c.tag, "BAD COMPRESS is valid only after login", out);
        else if (lit)
            refuse(g, ev, c.tag, "BAD COMPRESS takes no literal", out);
        else if (!is_word(args, alen, "DEFLATE"))
            refuse(g, ev, c.tag, "BAD Unknown compression algorithm", out);
        else if (!quiet_for_switch(g, backend_quiet))
            refuse(g, ev, c.tag, "BAD COMPRESS is valid only with no command in progress", out);
        else {
            answer(out, c.tag, "OK DEFLATE active");
            out->actions |= IMF_GATE_COMPRESS;
            g->compress_on = true;
        }
        return;
    case IMF_CMD_LOGIN:
    case IMF_CMD_AUTHENTICATE: {
        const uint8_t *ir = NULL; /* AUTHENTICATE's initial response */
        size_t mlen = 0, irlen = 0;
        if (g->login != NULL && !g->login->done) {
            /* One attempt at a time: its record (user, throttle entry)
             * is the session's until its answer. */
            refuse(g, ev, c.tag, "BAD A login is already in progress", out);
            return;
        }
        if (c.cmd == IMF_CMD_LOGIN) {
            if (login_start(g, c.tag, (const uint8_t *)"LOGIN", 5))
                login_args(g, args, alen);
        } else {
            while (mlen < alen && args[mlen] != ' ')
                mlen++;
            if (mlen < alen) {
                ir = args + mlen + 1;
                irlen = alen - mlen - 1;
            }
            if (login_start(g, c.tag, args, mlen) && ir != NULL && !lit && sasl_line(ir, irlen))
                sasl_data(g, ir, irlen);
        }
        if (!g->tls && g->p->require_tls) {
            login_end(g, IMF_LOGIN_REFUSED);
            out->actions |= IMF_GATE_LOGIN_DONE;
            refuse(g, ev, c.tag, "NO [PRIVACYREQUIRED] Use STARTTLS first", out);
            return;
        }
        if (c.cmd == IMF_CMD_AUTHENTICATE && lit) {
            login_end(g, IMF_LOGIN_REFUSED);
            out->actions |= IMF_GATE_LOGIN_DONE;
            refuse(g, ev, c.tag, "BAD AUTHENTICATE takes no literal", out);
            return;
        }
        bool known = c.cmd == IMF_CMD_LOGIN ? g->login != NULL && g->login->arg >= 1 : ir != NULL;
        if (known && login_check(g)) {
            login_end(g, IMF_LOGIN_THROTTLED);
            out->actions |= IMF_GATE_LOGIN_DONE;
            refuse(g, ev, c.tag, AUTH_FAILED, out);
            return;
        }
        break;
    }
    case IMF_CMD_IDLE:
        if (lit || alen != 0) {
            refuse(g, ev, c.tag, "BAD IDLE takes no arguments", out);
            return;
        }
        if (g->p->idle_poll) {
            if (!g->authenticated) {
                refuse(g, ev, c.tag, "BAD IDLE is valid only after login", out);
                return;
            }
            /* The backend cannot IDLE: the proxy does, and polls it. */
            snprintf(g->idle_tag, sizeof(g->idle_tag), "%s", c.tag);
            g->idle = IMF_GATE_IDLE_POLL;
            g->expect = EXPECT_DONE;
            out->actions |= IMF_GATE_ANSWER | IMF_GATE_IDLE_BEGIN;
            out->answer_len = (size_t)snprintf(out->answer, sizeof(out->answer), "+ idling\r\n");
            return;
        }
        break;
    case IMF_CMD_ID:
        if (g->p->strip_client_id && lit) {
            /* Fields in literals cannot be read before they go: the
             * backend gets "ID NIL" and the rest is swallowed. */
            if (!(ev->literal_flags & (IMF_LIT_NONSYNC | IMF_LIT_MINUS))) {
                refuse(g, ev, c.tag, "BAD ID parameters must be quoted strings", out);
                return;
            }
            if (!add_inflight(g, c.tag, c.cmd, false)) {
                refuse(g, ev, c.tag, "NO [LIMIT] Too many commands in progress", out);
                return;
            }
            /* "tag ID {N-}" is longer than "tag ID NIL"; the ending is the
             * line's own (a bare LF once wrote "tag ID NIL\r" and a NUL). */
            if (!rewrite_line(line, len, c.tag, " ID NIL", out)) {
                refuse(g, ev, c.tag, "BAD Invalid ID parameters", out);
                return;
            }
            g->cur_forwarded = true;
            g->discarding = true;
            g->discard_answer = NULL;
            out->actions |= IMF_GATE_FORWARD | IMF_GATE_DISCARD | IMF_GATE_NEW_COMMAND;
            return;
        }
        if (g->p->strip_client_id) {
            size_t n = strip_id(line, len);
            if (n == 0) {
                refuse(g, ev, c.tag, "BAD Invalid ID parameters", out);
                return;
            }
            len = n;
            out->len = n;
        }
        break;
    case IMF_CMD_LOGOUT:
        g->logged_out = true;
        break;
    default:
        break;
    }
    if (!add_inflight(g, c.tag, c.cmd, false)) {
        if (c.cmd == IMF_CMD_LOGOUT)
            g->logged_out = false;
        refuse(g, ev, c.tag, "NO [LIMIT] Too many commands in progress", out);
        return;
    }
    g->cur_forwarded = true;
    out->actions |= IMF_GATE_NEW_COMMAND;
    forward(g, line, len, ev, out);
}

/* The line answering the backend's "+" for AUTHENTICATE. */
static void sasl_response(struct imf_gate *g, uint8_t *line, size_t len,
                          const struct imf_framer_ev *ev, struct imf_gate_decision *out)
{
    g->expect = EXPECT_NOTHING;
    g->plus_for = PLUS_CONTINUATION;
    out->actions |= IMF_GATE_FORWARD;
    if (!(ev->literal_flags & IMF_LIT_PRESENT) && sasl_line(line, len)) {
        size_t n = imf_imap_text_len(line, len);
        if (g->login != NULL && !g->login->done && !(n == 1 && line[0] == '*')) {
            sasl_data(g, line, n);
            /* Refused: the backend gets a cancel, never the secret. An
             * empty response has no room for the "*" and holds no secret:
             * it goes as it is. */
            if (login_check(g) && n > 0) {
                cancel_line(line, len, out);
                return;
            }
        }
        if (bare_lf(line, len))
            out->actions |= IMF_GATE_FIX_EOL;
        return;
    }
    /* Not a SASL response: the exchange is cancelled ("*"); the backend
     * answers the AUTHENTICATE. A literal it announces never goes. */
    out->log = "invalid SASL response; exchange cancelled";
    cancel_line(line, len, out); /* not base64: at least one octet */
    if (ev->literal_flags & IMF_LIT_PRESENT) {
        if (ev->literal_flags & (IMF_LIT_NONSYNC | IMF_LIT_MINUS)) {
            g->discarding = true;
            g->discard_answer = NULL;
            out->actions |= IMF_GATE_DISCARD;
        } else {
            out->actions |= IMF_GATE_SKIP_LITERAL;
        }
    }
}

static bool is_done(const uint8_t *line, size_t len)
{
    return is_word(line, imf_imap_text_len(line, len), "DONE");
}

/* A line while the client idles: only DONE ends it. */
static void idle_line(struct imf_gate *g, uint8_t *line, size_t len, const struct imf_framer_ev *ev,
                      struct imf_gate_decision *out)
{
    bool done = !(ev->literal_flags & IMF_LIT_PRESENT) && is_done(line, len);
    if (!done) {
        refuse(g, ev, "*", "BAD Expected DONE to end IDLE", out);
        return;
    }
    if (g->idle == IMF_GATE_IDLE_POLL) {
        /* The proxy's own IDLE: it answers. */
        g->idle = IMF_GATE_IDLE_OFF;
        g->expect = EXPECT_COMMAND;
        out->actions |= IMF_GATE_IDLE_END;
        answer(out, g->idle_tag, "OK IDLE terminated");
        return;
    }
    out->actions |= IMF_GATE_FORWARD;
    if (bare_lf(line, len))
        out->actions |= IMF_GATE_FIX_EOL;
    g->idle = IMF_GATE_IDLE_ENDING;
    g->expect = EXPECT_NOTHING;
    g->plus_for = PLUS_NONE;
}

void imf_gate_client_line(struct imf_gate *g, uint8_t *line, size_t len,
                          const struct imf_framer_ev *ev, bool backend_quiet,
                          struct imf_gate_decision *out)
{
    memset(out, 0, sizeof(*out));
    out->len = len;
    if (g->discarding) {
        /* The rest of a refused command: a synchronising literal in it ends
         * it (the client waits for a "+" that will not come). */
        if ((ev->literal_flags & IMF_LIT_PRESENT) &&
            !(ev->literal_flags & (IMF_LIT_NONSYNC | IMF_LIT_MINUS)))
            out->actions |= IMF_GATE_SKIP_LITERAL;
        else if (!ev->message_end)
            return;
        g->discarding = false;
        if (g->discard_answer != NULL)
            answer(out, g->discard_tag, g->discard_answer);
        return;
    }
    switch (g->expect) {
    case EXPECT_SASL:
        sasl_response(g, line, len, ev, out);
        return;
    case EXPECT_DONE:
        idle_line(g, line, len, ev, out);
        return;
    case EXPECT_NOTHING:
        /* imf_gate_client_wait() said to wait: a caller bug, but never a
         * reason to forward. */
        refuse(g, ev, "*", "BAD Unexpected input", out);
        return;
    default:
        break;
    }
    if (!ev->first_line)
        continuation_line(g, line, len, ev, out);
    else
        command_line(g, line, len, ev, backend_quiet, out);
}

/* ---- responses ------------------------------------------------------------ */

static void greeting(struct imf_gate *g, const uint8_t *line, size_t len,
                     struct imf_gate_response *out)
{
    g->profile = IMF_PROFILE_GENERIC;
    for (size_t i = 0; i < IMF_ARRAY_LEN(known_servers); i++) {
        if (contains_ci(line, len, known_servers[i].a) &&
            contains_ci(line, len, known_servers[i].b))
            g->profile = (uint8_t)known_servers[i].profile;
    }
    set_shields(g);
    out->effects |= IMF_GATE_R_PROFILE | IMF_GATE_R_KICK;
    if (out->r.status == IMF_STATUS_PREAUTH) {
        g->authenticated = true;
        out->effects |= IMF_GATE_R_AUTH;
    }
}

static void continuation(struct imf_gate *g, struct imf_gate_response *out)
{
    switch (g->plus_for) {
    case PLUS_OUR_LITERAL:
        out->effects |= IMF_GATE_R_SWALLOW;
        /* fall through */
    case PLUS_CLIENT_LITERAL:
        g->plus_for = PLUS_NONE;
        out->effects |= IMF_GATE_R_KICK;
        return;
    case PLUS_REISSUE:
        /* The backend idles again; the client never stopped. */
        g->plus_for = PLUS_NONE;
        g->idle = IMF_GATE_IDLE_ON;
        out->effects |= IMF_GATE_R_SWALLOW | IMF_GATE_R_KICK;
        return;
    case PLUS_CONTINUATION:
        g->plus_for = PLUS_NONE;
        out->effects |= IMF_GATE_R_KICK;
        if (g->idle == IMF_GATE_IDLE_ASKED) {
            g->idle = IMF_GATE_IDLE_ON;
            g->expect = EXPECT_DONE;
            out->effects |= IMF_GATE_R_IDLE_BEGIN;
        } else {
            g->expect = EXPECT_SASL;
        }
        return;
    default:
        /* A "+" nothing asked for: relayed, and nothing the client sends
         * next skips the command checks. */
        return;
    }
}

static void tagged(struct imf_gate *g, struct imf_gate_response *out)
{
    struct imf_gate_cmd *c = find_inflight(g, out->r.tag);
    if (c == NULL) {
        out->effects |= IMF_GATE_R_STRAY;
        return;
    }
    if (c->own) {
        out->effects |= IMF_GATE_R_SWALLOW | IMF_GATE_R_KICK;
        if (c->cmd == IMF_CMD_ID && out->r.status != IMF_STATUS_OK)
            out->effects |= IMF_GATE_R_ID_REFUSED;
        remove_inflight(g, c);
        return;
    }
    if (g->idle == IMF_GATE_IDLE_REFRESH && strcmp(c->tag, g->idle_tag) == 0) {
        /* The completion of the DONE the proxy sent: IDLE again. */
        out->effects |= IMF_GATE_R_SWALLOW | IMF_GATE_R_BACKEND;
        int n = snprintf(out->backend, sizeof(out->backend), "%s IDLE\r\n", g->idle_tag);
        out->backend_len = n > 0 ? (size_t)n : 0;
        g->idle = IMF_GATE_IDLE_REISSUE;
        g->plus_for = PLUS_REISSUE;
        return;
    }
    enum imf_cmd cmd = (enum imf_cmd)c->cmd;
    if ((cmd == IMF_CMD_LOGIN || cmd == IMF_CMD_AUTHENTICATE) && g->login != NULL &&
        !g->login->done && strcmp(g->login->tag, c->tag) == 0) {
        login_end(g, g->login->refused                ? IMF_LOGIN_THROTTLED
                     : out->r.status == IMF_STATUS_OK ? IMF_LOGIN_OK
                                                      : IMF_LOGIN_FAILED);
        out->effects |= IMF_GATE_R_LOGIN;
    }
    bool current = g->cur_forwarded && strcmp(c->tag, g->cur_tag) == 0;
    remove_inflight(g, c);
    out->effects |= IMF_GATE_R_KICK;
    if (current) {
        if (g->plus_for == PLUS_OUR_LITERAL) {
            /* Refused instead of "+": the client sent its octets already
             * (it used {N+}); they and the rest of the command go nowhere. */
            g->discarding = true;
            g->discard_answer = NULL;
        } else if (g->plus_for == PLUS_CLIENT_LITERAL) {
            /* The client waits for a "+" that will not come. */
            out->effects |= IMF_GATE_R_SKIP_LITERAL;
        }
        g->plus_for = PLUS_NONE;
        g->cur_forwarded = false;
    }
    if ((cmd == IMF_CMD_LOGIN || cmd == IMF_CMD_AUTHENTICATE) && out->r.status == IMF_STATUS_OK &&
        !g->authenticated) {
        g->authenticated = true;
        out->effects |= IMF_GATE_R_AUTH;
    }
    if (cmd == IMF_CMD_AUTHENTICATE || cmd == IMF_CMD_IDLE) {
        g->expect = EXPECT_COMMAND;
        if (g->plus_for == PLUS_CONTINUATION)
            g->plus_for = PLUS_NONE;
    }
    if (cmd == IMF_CMD_IDLE && g->idle != IMF_GATE_IDLE_OFF) {
        g->idle = IMF_GATE_IDLE_OFF;
        out->effects |= IMF_GATE_R_IDLE_END;
    }
    if (cmd == IMF_CMD_LOGOUT)
        out->effects |= IMF_GATE_R_LOGOUT;
}

void imf_gate_response_line(struct imf_gate *g, const uint8_t *line, size_t len,
                            struct imf_gate_response *out)
{
    memset(out, 0, sizeof(*out));
    imf_imap_parse_response(line, len, &out->r);
    bool has;
    if (imf_capability_list_has(line, len, "LITERAL+", &has)) {
        g->backend_lplus = has;
        imf_capability_list_has(line, len, "LITERAL-", &g->backend_lminus);
    }
    if (g->profile == IMF_PROFILE_UNKNOWN) {
        greeting(g, line, len, out);
        return;
    }
    switch (out->r.kind) {
    case IMF_RESP_CONTINUATION:
        continuation(g, out);
        return;
    case IMF_RESP_TAGGED:
        tagged(g, out);
        return;
    case IMF_RESP_UNTAGGED:
        /* The untagged data of the proxy's own ID is not the client's. */
        if (len >= 5 && strncasecmp((const char *)line, "* ID ", 5) == 0 &&
            own_inflight(g, IMF_GATE_ID_TAG))
            out->effects |= IMF_GATE_R_SWALLOW;
        return;
    default:
        return;
    }
}

void imf_gate_tls_started(struct imf_gate *g)
{
    g->tls = true;
}

void imf_gate_cap_policy(const struct imf_gate *g, struct imf_cap_policy *out)
{
    memset(out, 0, sizeof(*out));
    out->tls_active = g->tls;
    out->offer_starttls = g->p->starttls_listener;
    out->login_disabled = g->p->require_tls;
    out->hide = g->p->hide;
    /* The proxy makes {N+} synchronising where the backend cannot take it,
     * so clients always have LITERAL+. */
    out->add_literal_plus = g->shields.literal_sync || !g->backend_lplus;
    out->add_idle = g->p->idle_poll;
    out->add_compress = g->p->compress && g->authenticated && g->tls && !g->compress_on;
}

/* ---- the proxy's own commands --------------------------------------------- */

size_t imf_gate_own_id(struct imf_gate *g, const char *ip, int port, char *out, size_t cap)
{
    if (!add_inflight(g, IMF_GATE_ID_TAG, IMF_CMD_ID, true))
        return 0;
    int n = snprintf(out, cap,
                     IMF_GATE_ID_TAG
                     " ID (\"x-originating-ip\" \"%s\" \"x-originating-port\" \"%d\")\r\n",
                     ip, port);
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

size_t imf_gate_idle_refresh(struct imf_gate *g, bool client_mid_line, char *out, size_t cap)
{
    /* Not once the client's DONE has gone (a second DONE would be read
     * as a command), nor while its line is half received. */
    if (g->idle != IMF_GATE_IDLE_ON || client_mid_line || cap < 7)
        return 0;
    g->idle = IMF_GATE_IDLE_REFRESH;
    memcpy(out, "DONE\r\n", 6);
    return 6;
}

size_t imf_gate_idle_poll(struct imf_gate *g, char *out, size_t cap)
{
    if (g->idle != IMF_GATE_IDLE_POLL || own_inflight(g, IMF_GATE_POLL_TAG) ||
        (!g->shields.pipelining && g->inflight_len > 0))
        return 0;
    int n = snprintf(out, cap, IMF_GATE_POLL_TAG " NOOP\r\n");
    if (n <= 0 || (size_t)n >= cap || !add_inflight(g, IMF_GATE_POLL_TAG, IMF_CMD_NOOP, true))
        return 0;
    return (size_t)n;
}

/* ---- login-first sessions -------------------------------------------------- */

bool imf_gate_lf_greeting(struct imf_gate *g, const uint8_t *line, size_t len)
{
    struct imf_gate_response r;
    memset(&r, 0, sizeof(r));
    imf_imap_parse_response(line, len, &r.r);
    bool has;
    if (imf_capability_list_has(line, len, "LITERAL+", &has)) {
        g->backend_lplus = has;
        imf_capability_list_has(line, len, "LITERAL-", &g->backend_lminus);
    }
    greeting(g, line, len, &r);
    return (r.effects & IMF_GATE_R_AUTH) != 0;
}

bool imf_gate_lf_login_begin(struct imf_gate *g, const char *tag, const char *mech,
                             const uint8_t *user, size_t user_len, const uint8_t *pass,
                             size_t pass_len)
{
    if (!login_start(g, tag, (const uint8_t *)mech, strlen(mech)))
        return false;
    login_name(g->login->user, user, user_len);
    login_secret(g, pass, pass_len, true);
    return login_check(g);
}

void imf_gate_lf_login_end(struct imf_gate *g, enum imf_login_result r, bool lplus, bool lminus)
{
    login_end(g, r);
    if (r != IMF_LOGIN_OK)
        return;
    g->authenticated = true;
    g->backend_lplus = lplus;
    g->backend_lminus = lminus;
}

/* ---- state for the session ------------------------------------------------ */

bool imf_gate_authenticated(const struct imf_gate *g)
{
    return g->authenticated;
}

bool imf_gate_idling(const struct imf_gate *g)
{
    return g->idle != IMF_GATE_IDLE_OFF && g->idle != IMF_GATE_IDLE_ASKED &&
           g->idle != IMF_GATE_IDLE_ENDING;
}

uint32_t imf_gate_commands(const struct imf_gate *g)
{
    return g->client_inflight;
}

bool imf_gate_quiet(const struct imf_gate *g)
{
    bool idling = g->idle == IMF_GATE_IDLE_ON || g->idle == IMF_GATE_IDLE_POLL;
    return (g->client_inflight == 0 || idling) && !g->discarding &&
           g->plus_for != PLUS_CLIENT_LITERAL && g->plus_for != PLUS_OUR_LITERAL;
}

bool imf_gate_logout_sent(const struct imf_gate *g)
{
    return g->logged_out;
}

enum imf_gate_profile imf_gate_profile(const struct imf_gate *g)
{
    return (enum imf_gate_profile)g->profile;
}

const struct imf_gate_shields *imf_gate_shields(const struct imf_gate *g)
{
    return &g->shields;
}

const char *imf_gate_current_tag(const struct imf_gate *g)
{
    return g->cur_tag[0] != '\0' ? g->cur_tag : "*";
}

const char *imf_gate_current_name(const struct imf_gate *g)
{
    return g->cur_name[0] != '\0' ? g->cur_name : "-";
}
