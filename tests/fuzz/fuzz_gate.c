/* libFuzzer: the gate inside a mini session (tests/unit/gate_driver.h),
 * between a fuzzed client and a model backend.
 *
 * The input is a script: a byte of settings, a greeting from a small list,
 * then steps: client bytes (raw, or a canned command with a fuzzed tag),
 * cut at fuzzed places; the backend answering what it has received; part
 * of the backend's output delivered to the proxy; an IDLE timer tick.
 *
 * The backend model re-frames everything the proxy sent it with a fresh
 * command framer and checks, after every step, what must hold for ANY
 * input:
 *   - line and literal boundaries are exactly those of the lines and
 *     literals the driver forwarded (so the backend reads the commands the
 *     gate decided on, and no literal octets as commands);
 *   - every line ends in CRLF, with no NUL and no other CR;
 *   - a command line is "tag SP name"; after an AUTHENTICATE "+" comes a
 *     SASL line, during IDLE only DONE;
 *   - with require_tls, no LOGIN/AUTHENTICATE before TLS;
 *   - no literal over max_literal_size, no {N+}/{N-} the backend did not
 *     announce (or with literal_sync in force);
 *   - nothing after a synchronising literal's announcement until the
 *     backend's "+";
 *   - with pipelining off, never two client commands in flight;
 * and the client's stream, re-framed as responses, carries every literal
 * the backend sent intact (the proxy's answers come only between
 * responses). */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gate_driver.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The session being checked, for the report of a failure. */
static const struct gd *current;

static void dump(const char *what, const struct gd_buf *b)
{
    fprintf(stderr, "%s (%zu bytes): \"", what, b->len);
    for (size_t i = 0; i < b->len; i++) {
        uint8_t c = b->p[i];
        if (c == '\r')
            fprintf(stderr, "\\r");
        else if (c == '\n')
            fprintf(stderr, "\\n\"\n  \"");
        else if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\')
            fprintf(stderr, "\\x%02x", c);
        else
            fputc(c, stderr);
    }
    fprintf(stderr, "\"\n");
}

#define FAIL(...)                                     \
    do {                                              \
        fprintf(stderr, "fuzz_gate: " __VA_ARGS__);   \
        fprintf(stderr, "\n");                        \
        if (current != NULL) {                        \
            dump("client sent", &current->c_in);      \
            dump("backend sent", &current->b_in);     \
            dump("to backend", &current->to_backend); \
            dump("to client", &current->to_client);   \
        }                                             \
        abort();                                      \
    } while (0)

struct rd {
    const uint8_t *p;
    size_t n;
};

static uint8_t rd_byte(struct rd *r)
{
    if (r->n == 0)
        return 0;
    r->n--;
    return *r->p++;
}

static const struct {
    const char *text;
    bool lplus, lminus, exchange;
} greetings[] = {
    {"* OK [CAPABILITY IMAP4rev1] ready\r\n", false, false, false},
    {"* OK [CAPABILITY IMAP4rev1 LITERAL+ IDLE] ready\r\n", true, false, false},
    {"* OK [CAPABILITY IMAP4rev1 LITERAL-] ready\r\n", false, true, false},
    {"* OK Microsoft Exchange Server IMAP4rev1 server version 5.5.2653.23 (x) ready\r\n", false,
     false, true},
    {"* PREAUTH [CAPABILITY IMAP4rev1 LITERAL+] logged in\r\n", true, false, false},
    {"* OK ready\r\n", false, false, false},
};
#define N_GREETINGS (sizeof(greetings) / sizeof(greetings[0]))

/* Client commands worth trying; "%s" is a tag. */
static const char *const canned[] = {
    "%s LOGIN user pass\r\n",
    "%s login {4}\r\nuser {4+}\r\npass\r\n",
    "%s AUTHENTICATE PLAIN\r\n",
    "AHVzZXIAcGFzcw==\r\n",
    "abc {5+}\r\nhello\r\n",
    "%s APPEND INBOX {5+}\r\nhello\r\n",
    "%s APPEND INBOX {5}\r\n",
    "hello\r\n",
    "%s APPEND INBOX {3-}\r\nabc {0}\r\n\r\n",
    "%s IDLE\r\n",
    "DONE\r\n",
    "%s STARTTLS\r\n",
    "%s COMPRESS DEFLATE\r\n",
    "%s ID (\"name\" \"x\" \"x-originating-ip\" \"10.1.1.1\")\r\n",
    "%s NOOP\r\n",
    "%s LOGOUT\r\n",
    "%s FETCH 1 BODY[]\r\n",
    "%s UID LOGIN x y\r\n",
};
#define N_CANNED (sizeof(canned) / sizeof(canned[0]))
static const char *const tags[] = {"a", "b", "c", "imapfront-id", "A1"};

/* What a backend literal carries: text that would be read as responses if
 * the proxy put anything inside it. */
static const char payload_src[] = "a OK done\r\n* BYE x\r\n+ go\r\n{3}\r\nabc) \"q\"\n\r";

enum kind { K_OTHER, K_AUTH, K_IDLE, K_LOGOUT, K_ID };

struct bm_cmd {
    char tag[IMF_TAG_MAX + 1];
    enum kind kind;
    bool own;
    bool plussed;       /* the backend said "+" and waits for the client's line */
    bool answered_line; /* ... which came */
    unsigned rounds;
};

#define QMAX 64

enum want { W_COMMAND, W_SASL, W_DONE };

/* The backend, and the checks on both streams. */
struct bm {
    const struct gd *d;
    bool lplus, lminus;   /* what the greeting announced */
    bool sync_all;        /* literal_sync in force: no {N+}/{N-} at all */
    bool pipelining;      /* the pipelining shield expected in force */
    struct imf_framer fr; /* re-frames to_backend */
    size_t off;           /* to_backend read up to here */
    size_t mark;          /* next of the driver's marks to match */
    struct gd_buf line;
    size_t line_start;
    bool lit_wait;     /* a synchronising literal was announced: "+" or NO owed */
    bool in_cmd;       /* the command being received continues after a literal */
    bool lit_end_owed; /* the backend framed a literal's end the proxy has yet to */
    struct bm_cmd cur;
    struct bm_cmd q[QMAX];
    size_t qn;
    enum want want;
    unsigned client_inflight; /* client commands received, not yet answered */
    struct gd_buf out;        /* the backend's output */
    size_t out_off;           /* ... delivered to the proxy up to here */
    struct gd_buf lits;       /* every literal payload sent, concatenated */
    /* The client side. */
    struct imf_framer cf;
    size_t coff;
    size_t lit_seen; /* literal octets the client got so far */
};

static void emit(struct bm *b, const char *s)
{
    gd_buf_add(&b->out, s, strlen(s));
}

static void emit_tagged(struct bm *b, const char *tag, const char *rest)
{
    gd_buf_add(&b->out, tag, strlen(tag));
    emit(b, rest);
}

static bool tag_char(uint8_t c)
{
    return c > 0x20 && c < 0x7f && strchr("(){%*\"\\+", c) == NULL;
}

static bool atom_char(uint8_t c)
{
    return c == '+' || (tag_char(c) && c != ']');
}

/* A line that must be a command's first line: "tag SP name". */
static void check_command(struct bm *b, const uint8_t *l, size_t n)
{
    size_t i = 0;
    while (i < n && tag_char(l[i]))
        i++;
    if (i == 0 || i > IMF_TAG_MAX || i >= n || l[i] != ' ')
        FAIL("backend got a line without a tag at %zu: %.*s", b->line_start, (int)n, l);
    memset(&b->cur, 0, sizeof(b->cur));
    memcpy(b->cur.tag, l, i);
    size_t s = ++i;
    while (i < n && atom_char(l[i]))
        i++;
    if (i == s || (i < n && l[i] != ' '))
        FAIL("backend got a line without a command name: %.*s", (int)n, l);
    const char *name = (const char *)l + s;
    size_t nl = i - s;
#define IS(w) (nl == strlen(w) && strncasecmp(name, (w), nl) == 0)
    const struct gd *d = b->d;
    if ((IS("LOGIN") || IS("AUTHENTICATE")) && d->p.require_tls &&
        !(d->tls && b->line_start >= d->tls_at))
        FAIL("%.*s reached the backend before TLS", (int)nl, name);
    b->cur.kind = IS("AUTHENTICATE") ? K_AUTH
                  : IS("IDLE")       ? K_IDLE
                  : IS("LOGOUT")     ? K_LOGOUT
                  : IS("ID")         ? K_ID
                                     : K_OTHER;
#undef IS
    b->cur.own =
        strcmp(b->cur.tag, IMF_GATE_ID_TAG) == 0 || strcmp(b->cur.tag, IMF_GATE_POLL_TAG) == 0;
    if (!b->cur.own) {
        if (!b->pipelining && b->client_inflight > 0)
            FAIL("pipelining off, yet a second client command reached the backend: %.*s", (int)n,
                 l);
        b->client_inflight++;
    }
}

static bool sasl_text(const uint8_t *l, size_t n)
{
    if (n == 1 && l[0] == '*')
        return true;
    for (size_t i = 0; i < n; i++)
        if (!((l[i] >= 'A' && l[i] <= 'Z') || (l[i] >= 'a' && l[i] <= 'z') ||
              (l[i] >= '0' && l[i] <= '9') || l[i] == '+' || l[i] == '/' || l[i] == '='))
            return false;
    return true;
}

static void check_mark(struct bm *b, enum gd_mark_kind kind)
{
    if (b->mark >= gd_mark_count(b->d))
        FAIL("backend framed a %s end at %zu the driver never forwarded",
             kind == GD_MARK_LINE ? "line" : "literal", b->off);
    struct gd_mark m = gd_mark_at(b->d, b->mark++);
    if (m.kind != kind || m.end != b->off)
        FAIL("backend framed a %s end at %zu; the driver forwarded a %s ending at %zu",
             kind == GD_MARK_LINE ? "line" : "literal", b->off,
             m.kind == GD_MARK_LINE ? "line" : "literal", m.end);
}

static void push_cmd(struct bm *b)
{
    if (b->qn == QMAX)
        FAIL("backend queue full");
    b->q[b->qn++] = b->cur;
}

static void on_line(struct bm *b, const struct imf_framer_ev *ev)
{
    const uint8_t *l = b->line.p;
    size_t n = b->line.len;
    check_mark(b, GD_MARK_LINE);
    if (n < 2 || l[n - 2] != '\r' || l[n - 1] != '\n')
        FAIL("a line to the backend does not end in CRLF");
    size_t t = n - 2;
    if (memchr(l, '\0', t) != NULL || memchr(l, '\r', t) != NULL)
        FAIL("a line to the backend has a NUL or a bare CR: %.*s", (int)t, l);
    unsigned f = ev->literal_flags;
    if (f & IMF_LIT_PRESENT) {
        if (f & IMF_LIT_TOO_BIG)
            FAIL("a literal over the limit reached the backend: %.*s", (int)t, l);
        if ((f & IMF_LIT_NONSYNC) && (b->sync_all || !b->lplus))
            FAIL("{N+} reached a backend that cannot take it: %.*s", (int)t, l);
        if ((f & IMF_LIT_MINUS) && (b->sync_all || !(b->lplus || b->lminus)))
            FAIL("{N-} reached a backend that cannot take it: %.*s", (int)t, l);
    }
    if (ev->first_line && b->want == W_SASL) {
        if ((f & IMF_LIT_PRESENT) || !sasl_text(l, t))
            FAIL("not a SASL line after AUTHENTICATE's \"+\": %.*s", (int)t, l);
        b->q[0].answered_line = true;
        b->q[0].plussed = false;
        b->want = W_COMMAND;
        return;
    }
    if (ev->first_line && b->want == W_DONE) {
        if ((f & IMF_LIT_PRESENT) || t != 4 || strncasecmp((const char *)l, "DONE", 4) != 0)
            FAIL("not DONE while the backend idles: %.*s", (int)t, l);
        b->q[0].answered_line = true;
        b->q[0].plussed = false;
        b->want = W_COMMAND;
        return;
    }
    if (ev->first_line)
        check_command(b, l, t);
    if (!(f & IMF_LIT_PRESENT)) {
        b->in_cmd = false;
        push_cmd(b);
        return;
    }
    b->in_cmd = true;
    if (!(f & (IMF_LIT_NONSYNC | IMF_LIT_MINUS))) {
        b->lit_wait = true;
        if (b->d->to_backend.len > b->off)
            FAIL("bytes after a synchronising literal's announcement before the \"+\"");
    }
}

/* The backend reads what the proxy sent it. */
static void bm_read(struct bm *b)
{
    const struct gd *d = b->d;
    if (b->lit_wait && d->to_backend.len > b->off)
        FAIL("bytes after a synchronising literal's announcement before the \"+\"");
    if (b->lit_end_owed) {
        /* A {0} after the backend's "+": the proxy frames its end only
         * once the "+" has reached it. */
        if (b->mark >= gd_mark_count(d))
            return;
        check_mark(b, GD_MARK_LITERAL);
        b->lit_end_owed = false;
    }
    for (size_t guard = 0; !b->lit_wait && guard < 4 * (d->to_backend.len + 16); guard++) {
        struct imf_framer_ev ev;
        size_t n =
            imf_framer_next(&b->fr, gd_at(&d->to_backend, b->off), d->to_backend.len - b->off, &ev);
        switch (ev.kind) {
        case IMF_EV_NEED_MORE:
            return;
        case IMF_EV_TEXT:
            if (b->line.len == 0)
                b->line_start = b->off;
            gd_buf_add(&b->line, gd_at(&d->to_backend, b->off), n);
            break;
        case IMF_EV_LINE_END:
            on_line(b, &ev);
            b->line.len = 0;
            break;
        case IMF_EV_LITERAL:
            break;
        case IMF_EV_LITERAL_END:
            if (b->mark >= gd_mark_count(d) && d->to_backend.len == b->off) {
                b->lit_end_owed = true;
                return;
            }
            check_mark(b, GD_MARK_LITERAL);
            break;
        default:
            FAIL("the backend's framer failed on what the proxy sent: %s",
                 imf_framer_error_names[ev.error]);
        }
        b->off += n;
    }
}

static void answered(struct bm *b, const struct bm_cmd *c)
{
    if (!c->own) {
        if (b->client_inflight == 0)
            FAIL("model: client command count");
        b->client_inflight--;
    }
}

/* An untagged response, sometimes with a literal. */
static void untagged(struct bm *b, uint8_t c)
{
    if ((c & 3) != 0) {
        emit(b, "* 3 EXISTS\r\n");
        return;
    }
    size_t len = (size_t)(c >> 2) % (sizeof(payload_src) - 1);
    size_t from = (size_t)(c >> 3) % (sizeof(payload_src) - 1 - len + 1);
    char head[64];
    snprintf(head, sizeof(head), "* 1 FETCH (BODY[] {%zu}\r\n", len);
    emit(b, head);
    gd_buf_add(&b->out, payload_src + from, len);
    gd_buf_add(&b->lits, payload_src + from, len);
    emit(b, ")\r\n");
}

/* The backend answers the oldest thing it owes (or says something
 * untagged). */
static void bm_answer(struct bm *b, uint8_t c, uint8_t c2)
{
    if (b->lit_wait) {
        b->lit_wait = false;
        if (c & 1) {
            emit(b, "+ go ahead\r\n");
            return;
        }
        emit_tagged(b, b->cur.tag, " NO [TOOBIG] literal refused\r\n");
        imf_framer_skip_literal(&b->fr);
        b->in_cmd = false;
        answered(b, &b->cur);
        return;
    }
    if (b->want != W_COMMAND || b->qn == 0 || (c & 0xc0) == 0xc0) {
        if (b->want == W_COMMAND && b->qn == 0 && !b->in_cmd && (c & 0x3f) == 0x3f &&
            b->out_off == b->out.len) {
            /* A "+" nothing asked for, delivered at once: sent later it
             * could pass a command on the wire, and any proxy would take
             * it for that command's "+". */
            emit(b, "+ nothing asked\r\n");
            gd_backend((struct gd *)b->d, gd_at(&b->out, b->out_off), b->out.len - b->out_off);
            b->out_off = b->out.len;
        } else
            untagged(b, c2);
        return;
    }
    struct bm_cmd *h = &b->q[0];
    if ((h->kind == K_AUTH || (h->kind == K_IDLE && !h->answered_line)) && (c & 2) &&
        h->rounds < 3) {
        h->plussed = true;
        h->rounds++;
        emit(b, h->kind == K_AUTH ? "+ \r\n" : "+ idling\r\n");
        b->want = h->kind == K_AUTH ? W_SASL : W_DONE;
        return;
    }
    if (h->kind == K_LOGOUT)
        emit(b, "* BYE logging out\r\n");
    if (h->kind == K_ID && h->own)
        emit(b, "* ID NIL\r\n");
    static const char *const status[] = {" OK done\r\n", " NO no\r\n", " BAD bad\r\n",
                                         " OK [READ-WRITE] fine\r\n"};
    const char *st = status[(c >> 2) & 3];
    if (h->kind == K_IDLE && h->answered_line)
        st = " OK IDLE terminated\r\n";
    if (h->kind == K_LOGOUT)
        st = " OK bye\r\n";
    emit_tagged(b, h->tag, st);
    answered(b, h);
    memmove(&b->q[0], &b->q[1], (b->qn - 1) * sizeof(b->q[0]));
    b->qn--;
}

/* The client's stream: backend literals arrive whole and unchanged. */
static void check_client(struct bm *b)
{
    const struct gd *d = b->d;
    for (size_t guard = 0; guard < 4 * (d->to_client.len + 16); guard++) {
        struct imf_framer_ev ev;
        size_t n =
            imf_framer_next(&b->cf, gd_at(&d->to_client, b->coff), d->to_client.len - b->coff, &ev);
        if (ev.kind == IMF_EV_NEED_MORE)
            return;
        if (ev.kind == IMF_EV_LITERAL) {
            if (b->lit_seen + n > b->lits.len ||
                memcmp(gd_at(&b->lits, b->lit_seen), gd_at(&d->to_client, b->coff), n) != 0)
                FAIL("a backend literal reached the client changed (at client offset %zu)",
                     b->coff);
            b->lit_seen += n;
        }
        b->coff += n;
    }
}

static void client_bytes(struct gd *d, struct rd *r, const uint8_t *p, size_t n)
{
    /* Cut at fuzzed places. */
    size_t at = 0;
    while (at < n) {
        size_t k = 1 + rd_byte(r) % 16;
        if (k > n - at || r->n == 0)
            k = n - at;
        gd_client(d, p + at, k);
        at += k;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct rd r = {data, size};
    uint8_t s0 = rd_byte(&r), s1 = rd_byte(&r), s2 = rd_byte(&r);
    struct imf_gate_params p = {
        .implicit_tls = (s0 & 0x01) != 0,
        .starttls_listener = (s0 & 0x02) != 0,
        .require_tls = (s0 & 0x04) != 0,
        .compress = (s0 & 0x08) != 0,
        .idle_poll = (s0 & 0x10) != 0,
        .idle_refresh = (s0 & 0x20) != 0,
        .strip_client_id = (s0 & 0x40) == 0,
        .quirks = (s0 & 0x80) ? IMF_QUIRKS_NONE : IMF_QUIRKS_AUTO,
        .pipelining = (s1 & 0x01) == 0,
        .pipelining_set = (s1 & 0x02) != 0,
        .literal_sync = (s1 & 0x04) != 0,
        .literal_sync_set = (s1 & 0x08) != 0,
        .crlf_split = (s1 & 0x10) != 0,
        .crlf_split_set = (s1 & 0x20) != 0,
        .max_literal = (s1 & 0x40) ? 8 : 0,
        .max_command = (s1 & 0x80) ? 40 : 0,
    };
    size_t gi = s2 % N_GREETINGS;
    bool exch55 = p.quirks == IMF_QUIRKS_AUTO && greetings[gi].exchange;

    struct gd *d = malloc(sizeof(*d));
    struct bm *b = calloc(1, sizeof(*b));
    if (d == NULL || b == NULL)
        abort();
    gd_init(d, &p, (s2 & 0x80) ? 200 : 0);
    b->d = d;
    current = d;
    b->lplus = greetings[gi].lplus;
    b->lminus = greetings[gi].lminus;
    b->sync_all = p.literal_sync_set ? p.literal_sync : (exch55 || p.literal_sync);
    b->pipelining = p.pipelining_set ? p.pipelining : (!exch55 && p.pipelining);
    imf_framer_init(&b->fr, IMF_FRAMER_COMMANDS, 0, p.max_literal);
    imf_framer_init(&b->cf, IMF_FRAMER_RESPONSES, 0, 0);
    if (s2 & 0x40)
        gd_send_id(d, "192.0.2.1", 1234);
    emit(b, greetings[gi].text);
    if (s2 & 0x20) {
        /* The greeting before anything else (else the steps deliver it). */
        gd_backend(d, b->out.p, b->out.len);
        b->out_off = b->out.len;
    }

    for (unsigned step = 0; step < 256 && r.n > 0 && !d->closed; step++) {
        uint8_t op = rd_byte(&r);
        switch (op % 8) {
        case 0:
        case 1: { /* raw client bytes */
            size_t n = rd_byte(&r) % 48;
            if (n > r.n)
                n = r.n;
            uint8_t buf[48];
            memcpy(buf, r.p, n);
            r.p += n;
            r.n -= n;
            client_bytes(d, &r, buf, n);
            break;
        }
        case 2:
        case 3: { /* a canned command */
            uint8_t c = rd_byte(&r);
            const char *t = canned[c % N_CANNED];
            const char *tag = tags[(c / N_CANNED) % (sizeof(tags) / sizeof(tags[0]))];
            const char *hole = strstr(t, "%s");
            struct gd_buf cmd = {0};
            gd_buf_add(&cmd, t, hole != NULL ? (size_t)(hole - t) : strlen(t));
            if (hole != NULL) {
                gd_buf_add(&cmd, tag, strlen(tag));
                gd_buf_add(&cmd, hole + 2, strlen(hole + 2));
            }
            client_bytes(d, &r, cmd.p, cmd.len);
            gd_buf_free(&cmd);
            break;
        }
        case 4:
        case 5: { /* the backend answers */
            uint8_t c = rd_byte(&r), c2 = rd_byte(&r);
            bm_answer(b, c, c2);
            break;
        }
        case 6: { /* part of the backend's output arrives */
            size_t k = (op >> 3) == 0 ? b->out.len - b->out_off : (size_t)(op >> 3);
            if (k > b->out.len - b->out_off)
                k = b->out.len - b->out_off;
            gd_backend(d, gd_at(&b->out, b->out_off), k);
            b->out_off += k;
            break;
        }
        default:
            gd_idle_timer(d);
            break;
        }
        bm_read(b);
        if (!d->closed)
            check_client(b);
    }
    current = NULL;
    gd_free(d);
    free(d);
    gd_buf_free(&b->line);
    gd_buf_free(&b->out);
    gd_buf_free(&b->lits);
    free(b);
    return 0;
}
