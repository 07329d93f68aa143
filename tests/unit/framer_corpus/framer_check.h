/* framer_check: what the unit test and the fuzz harness both need to judge
 * imf_framer.
 *
 * - feed(): runs the framer over a stream cut into pieces, checks every call
 *   against the API contract, and normalises the events (adjacent TEXT and
 *   adjacent LITERAL spans merged, NEED_MORE dropped, stop at ERROR).
 * - model(): an independent reference that frames a whole buffer the obvious
 *   way (find the LF, then parse the announcement backwards from the end of
 *   the line). It shares no code with the framer, so a framer that is wrong
 *   the same way at every split point still disagrees with it.
 *
 * Everything is static: include this header from exactly one file per
 * program. Failures are reported as a static message (NULL = fine). */
#ifndef IMF_TESTS_FRAMER_CHECK_H
#define IMF_TESTS_FRAMER_CHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "imapfront/imap_framer.h"

struct fc_ev {
    int kind; /* enum imf_framer_ev_kind; FC_END terminates a hand-written list */
    uint64_t len;
    uint64_t line_len;
    uint64_t literal_size;
    unsigned literal_flags;
    uint32_t announce_len;
    bool first_line;
    bool message_end;
    int error;
};

#define FC_END (-1)

struct fc_list {
    struct fc_ev *v;
    size_t n, cap;
    bool overflow;
};

/* How one run is set up. skip_too_big: call imf_framer_skip_literal() after
 * every LINE_END announcing a synchronising literal flagged TOO_BIG (what the
 * proxy does when it answers NO [TOOBIG]). */
struct fc_setup {
    enum imf_framer_mode mode;
    uint64_t max_line;
    uint64_t max_literal;
    bool skip_too_big;
};

static void fc_push(struct fc_list *l, const struct fc_ev *ev)
{
    if (l->n > 0 && (ev->kind == IMF_EV_TEXT || ev->kind == IMF_EV_LITERAL) &&
        l->v[l->n - 1].kind == ev->kind) {
        l->v[l->n - 1].len += ev->len;
        return;
    }
    if (l->n == l->cap) {
        l->overflow = true;
        return;
    }
    l->v[l->n++] = *ev;
}

static bool fc_skips(const struct fc_setup *su, unsigned flags)
{
    return su->skip_too_big && (flags & IMF_LIT_TOO_BIG) &&
           !(flags & (IMF_LIT_NONSYNC | IMF_LIT_MINUS));
}

/* Feeds data[0..len) cut at cuts[0..ncuts) (ascending offsets, duplicates and
 * 0/len allowed: they make empty pieces, which must be harmless). Appends the
 * normalised events to *out and the bytes consumed to *out_used. */
static const char *fc_feed(const struct fc_setup *su, const uint8_t *data, size_t len,
                           const size_t *cuts, size_t ncuts, struct fc_list *out, size_t *out_used)
{
    struct imf_framer fr;
    size_t pos = 0;
    bool at_start = true; /* what imf_framer_at_message_start() must say */

    imf_framer_init(&fr, su->mode, su->max_line, su->max_literal);
    for (size_t piece = 0; piece <= ncuts; piece++) {
        size_t end = piece < ncuts ? cuts[piece] : len;
        /* Every call either consumes a byte or emits a zero-length event, and
         * at most two zero-length events come in a row (LINE_END then
         * LITERAL_END), so this bounds a correct framer with room to spare. */
        size_t budget = 3 * (end - pos) + 8;

        if (end < pos || end > len)
            return "bad cut list";
        for (;;) {
            struct imf_framer_ev ev;
            size_t n;
            struct fc_ev e;

            if (budget-- == 0)
                return "framer makes no progress";
            if (imf_framer_at_message_start(&fr) != at_start)
                return "at_message_start disagrees with the events";
            n = imf_framer_next(&fr, data + pos, end - pos, &ev);
            if (n != ev.len || n > end - pos)
                return "returned length differs from ev.len or overruns the slice";
            if ((unsigned)ev.kind >= IMF_EV_KIND_COUNT)
                return "event kind out of range";
            if ((ev.kind == IMF_EV_TEXT || ev.kind == IMF_EV_LITERAL) ? n == 0 : n != 0)
                return "span events must cover bytes, zero-length events none";
            if (ev.kind == IMF_EV_NEED_MORE) {
                if (end != pos)
                    return "NEED_MORE with input left";
                break;
            }
            pos += n;
            at_start = false;
            e = (struct fc_ev){.kind = ev.kind, .len = n};
            if (ev.kind == IMF_EV_LINE_END) {
                e.line_len = ev.line_len;
                e.literal_size = ev.literal_size;
                e.literal_flags = ev.literal_flags;
                e.announce_len = ev.announce_len;
                e.first_line = ev.first_line;
                e.message_end = ev.message_end;
                if (ev.message_end) {
                    at_start = true;
                } else if (fc_skips(su, ev.literal_flags)) {
                    imf_framer_skip_literal(&fr);
                    at_start = true;
                }
            }
            if (ev.kind == IMF_EV_ERROR) {
                struct imf_framer_ev again;

                e.error = ev.error;
                fc_push(out, &e);
                *out_used = pos;
                /* Sticky: the framer stays failed and takes nothing more. */
                if (imf_framer_next(&fr, data + pos, len - pos, &again) != 0 ||
                    again.kind != IMF_EV_ERROR || again.error != ev.error)
                    return "ERROR is not sticky";
                if (imf_framer_at_message_start(&fr))
                    return "a failed framer claims to be at a message start";
                return NULL;
            }
            fc_push(out, &e);
        }
    }
    *out_used = pos;
    return NULL;
}

/* Checks that a normalised list is self-consistent: TEXT of a line adds up to
 * its line_len, literal octets to the announced size, LITERAL_END only after
 * the full literal, bytes sum to what was consumed. */
static const char *fc_consistent(const struct fc_setup *su, const struct fc_list *l, size_t used)
{
    uint64_t text = 0, sum = 0;
    uint64_t lit_expect = 0, lit_got = 0;
    bool in_literal = false;
    bool first = true;

    for (size_t i = 0; i < l->n; i++) {
        const struct fc_ev *e = &l->v[i];

        sum += e->len;
        switch (e->kind) {
        case IMF_EV_TEXT:
            if (in_literal)
                return "TEXT inside a literal";
            text += e->len;
            break;
        case IMF_EV_LINE_END:
            if (in_literal || e->line_len != text || text == 0)
                return "LINE_END line_len does not match its TEXT";
            if (e->first_line != first)
                return "first_line wrong";
            if (e->message_end != !(e->literal_flags & IMF_LIT_PRESENT))
                return "message_end must be the absence of a literal";
            if (e->literal_flags & IMF_LIT_PRESENT) {
                if (e->announce_len < 4 || e->announce_len > 26 || e->announce_len > e->line_len)
                    return "announce_len out of range";
            } else if (e->literal_flags != 0 || e->literal_size != 0 || e->announce_len != 0) {
                return "literal fields set without a literal";
            }
            text = 0;
            if (e->message_end || fc_skips(su, e->literal_flags)) {
                first = true;
            } else {
                in_literal = true;
                lit_expect = e->literal_size;
                lit_got = 0;
            }
            break;
        case IMF_EV_LITERAL:
            if (!in_literal)
                return "LITERAL outside a literal";
            lit_got += e->len;
            if (lit_got > lit_expect)
                return "more literal octets than announced";
            break;
        case IMF_EV_LITERAL_END:
            if (!in_literal || lit_got != lit_expect)
                return "LITERAL_END before the literal is complete";
            in_literal = false;
            first = false;
            break;
        case IMF_EV_ERROR:
            if (i + 1 != l->n)
                return "events after ERROR";
            if (e->error == IMF_FRAMER_LINE_TOO_LONG && (su->max_line == 0 || text != su->max_line))
                return "LINE_TOO_LONG not exactly at max_line";
            if (e->error == IMF_FRAMER_LITERAL_MALFORMED && su->mode != IMF_FRAMER_COMMANDS)
                return "malformed literal reported in RESPONSES mode";
            if (e->error <= IMF_FRAMER_OK || e->error >= IMF_FRAMER_ERROR_COUNT)
                return "bad error code";
            break;
        default:
            return "unexpected event kind";
        }
    }
    if (sum != used)
        return "event lengths do not add up to the bytes consumed";
    return NULL;
}

/* Parses the announcement at the end of line text t[0..n) (the optional CR
 * and the LF already removed). Returns 0 none, 1 literal, -1 malformed. */
static int fc_model_announce(const uint8_t *t, size_t n, struct fc_ev *e)
{
    size_t close, open, i;
    unsigned __int128 v = 0;
    size_t digits = 0;

    if (n == 0 || t[n - 1] != '}')
        return 0;
    close = n - 1;
    open = close;
    while (open > 0 && t[open - 1] != '{')
        open--;
    if (open == 0)
        return 0; /* no "{" on the line */
    open--;
    for (i = open + 1; i < close && t[i] >= '0' && t[i] <= '9'; i++) {
        v = v * 10 + (unsigned)(t[i] - '0');
        if (++digits > 20)
            return -1;
    }
    if (digits == 0 || v > UINT64_MAX)
        return -1;
    e->literal_flags = IMF_LIT_PRESENT;
    if (i < close && t[i] == '+') {
        e->literal_flags |= IMF_LIT_NONSYNC;
        i++;
    } else if (i < close && t[i] == '-') {
        e->literal_flags |= IMF_LIT_MINUS;
        i++;
    }
    if (i != close)
        return -1;
    if (open > 0 && t[open - 1] == '~') {
        e->literal_flags |= IMF_LIT_BINARY;
        open--;
    }
    e->literal_size = (uint64_t)v;
    e->announce_len = (uint32_t)(n - open); /* the CR/LF are added by the caller */
    return 1;
}

/* The reference framing of the whole stream. */
static void fc_model(const struct fc_setup *su, const uint8_t *d, size_t len, struct fc_list *out,
                     size_t *out_used)
{
    size_t pos = 0;
    bool first = true;

    while (pos < len) {
        const uint8_t *lf = memchr(d + pos, '\n', len - pos);
        size_t line = lf != NULL ? (size_t)(lf - (d + pos)) + 1 : len - pos;
        size_t text_n;
        struct fc_ev e = {.kind = IMF_EV_TEXT};
        int ann;

        if (su->max_line != 0 && line > su->max_line) {
            e.len = su->max_line;
            if (e.len > 0)
                fc_push(out, &e);
            e = (struct fc_ev){.kind = IMF_EV_ERROR, .error = IMF_FRAMER_LINE_TOO_LONG};
            fc_push(out, &e);
            *out_used = pos + su->max_line;
            return;
        }
        e.len = line;
        fc_push(out, &e);
        if (lf == NULL) {
            *out_used = len;
            return;
        }
        text_n = line - 1;
        if (text_n > 0 && d[pos + text_n - 1] == '\r')
            text_n--;
        e = (struct fc_ev){.kind = IMF_EV_LINE_END, .line_len = line, .first_line = first};
        ann = fc_model_announce(d + pos, text_n, &e);
        pos += line;
        if (ann < 0 && su->mode == IMF_FRAMER_COMMANDS) {
            e = (struct fc_ev){.kind = IMF_EV_ERROR, .error = IMF_FRAMER_LITERAL_MALFORMED};
            fc_push(out, &e);
            *out_used = pos;
            return;
        }
        if (ann <= 0) {
            e = (struct fc_ev){.kind = IMF_EV_LINE_END, .line_len = line, .first_line = first};
            e.message_end = true;
            fc_push(out, &e);
            first = true;
            continue;
        }
        e.announce_len += (uint32_t)(line - text_n);
        if ((su->max_literal != 0 && e.literal_size > su->max_literal) ||
            ((e.literal_flags & IMF_LIT_MINUS) && e.literal_size > 4096))
            e.literal_flags |= IMF_LIT_TOO_BIG;
        fc_push(out, &e);
        if (fc_skips(su, e.literal_flags)) {
            first = true;
            continue;
        }
        if (e.literal_size > len - pos) {
            e = (struct fc_ev){.kind = IMF_EV_LITERAL, .len = len - pos};
            if (e.len > 0)
                fc_push(out, &e);
            *out_used = len;
            return;
        }
        if (e.literal_size > 0) {
            struct fc_ev lit = {.kind = IMF_EV_LITERAL, .len = e.literal_size};

            fc_push(out, &lit);
        }
        pos += (size_t)e.literal_size;
        e = (struct fc_ev){.kind = IMF_EV_LITERAL_END};
        fc_push(out, &e);
        first = false;
    }
    *out_used = pos;
}

static bool fc_ev_equal(const struct fc_ev *a, const struct fc_ev *b)
{
    return a->kind == b->kind && a->len == b->len && a->line_len == b->line_len &&
           a->literal_size == b->literal_size && a->literal_flags == b->literal_flags &&
           a->announce_len == b->announce_len && a->first_line == b->first_line &&
           a->message_end == b->message_end && a->error == b->error;
}

/* Index of the first difference, or SIZE_MAX when equal. */
static size_t fc_list_diff(const struct fc_list *a, const struct fc_list *b)
{
    size_t n = a->n < b->n ? a->n : b->n;

    for (size_t i = 0; i < n; i++)
        if (!fc_ev_equal(&a->v[i], &b->v[i]))
            return i;
    return a->n == b->n ? SIZE_MAX : n;
}

static void fc_format(const struct fc_ev *e, char *buf, size_t size)
{
    const char *kind =
        e->kind >= 0 && e->kind < IMF_EV_KIND_COUNT ? imf_framer_ev_names[e->kind] : "(end)";

    if (e->kind == IMF_EV_LINE_END)
        snprintf(buf, size, "%s line_len=%llu size=%llu flags=0x%x ann=%u first=%d end=%d", kind,
                 (unsigned long long)e->line_len, (unsigned long long)e->literal_size,
                 e->literal_flags, e->announce_len, e->first_line, e->message_end);
    else if (e->kind == IMF_EV_ERROR)
        snprintf(buf, size, "%s %s", kind,
                 e->error >= 0 && e->error < IMF_FRAMER_ERROR_COUNT
                     ? imf_framer_error_names[e->error]
                     : "?");
    else
        snprintf(buf, size, "%s %llu", kind, (unsigned long long)e->len);
}

#endif
