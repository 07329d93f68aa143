/* imap_framer: incremental IMAP stream framing (see the header for the contract).
 *
 * How it stays fast: line text is searched for its LF with memchr (bounded by
 * what max_line still allows), literal octets are skipped by counting, and the
 * only bytes looked at one by one are those that follow the last "{" of the
 * line, which is found with memrchr. The announcement scanner is a small
 * state machine whose state after a run of bytes with no "{" in it depends
 * only on the run's last two bytes once it has seen something that cannot be
 * an announcement, so a long line costs two vectorised scans and a handful of
 * byte steps, however it is sliced. */
#include "imapfront/imap_framer.h"

#include <assert.h>
#include <string.h>

/* RFC 7888: a LITERAL- literal may not be longer than this. */
#define LITERAL_MINUS_MAX 4096u
/* uint64_t has 20 decimal digits; more (even leading zeros) is malformed. */
#define MAX_DIGITS 20u

/* Where the framer is (struct imf_framer.state). */
enum fr_state {
    FR_TEXT,     /* the next byte is line text */
    FR_LINE_END, /* the line's LF was consumed: LINE_END is owed */
    FR_LITERAL,  /* the next byte is literal data; LITERAL_END is owed at 0 left */
    FR_FAILED,   /* ERROR, forever */
};

/* The announcement scanner (struct imf_framer.scan). Only bytes of the current
 * line since its last "{" matter: the valid states spell "{digits[+-]}[CR]",
 * the JUNK states remember that a "{" was seen but what follows it cannot
 * announce a literal, and whether the line so far ends in "}" or "}\r" (which
 * makes it a malformed announcement in COMMANDS mode). The order matters:
 * every state below SC_JUNK is a valid prefix. */
enum fr_scan {
    SC_NONE,     /* no "{" in the line so far */
    SC_OPEN,     /* "{" */
    SC_DIGITS,   /* "{" 1*DIGIT */
    SC_SIGN,     /* "{" 1*DIGIT ("+" / "-") */
    SC_CLOSE,    /* ... "}" */
    SC_CLOSE_CR, /* ... "}" CR */
    SC_JUNK,
    SC_JUNK_CLOSE,    /* junk ending in "}" */
    SC_JUNK_CLOSE_CR, /* junk ending in "}" CR */
};

const char *const imf_framer_ev_names[IMF_EV_KIND_COUNT] = {
    [IMF_EV_NEED_MORE] = "need_more",     [IMF_EV_TEXT] = "text",
    [IMF_EV_LINE_END] = "line_end",       [IMF_EV_LITERAL] = "literal",
    [IMF_EV_LITERAL_END] = "literal_end", [IMF_EV_ERROR] = "error",
};
static_assert(sizeof(imf_framer_ev_names) / sizeof(imf_framer_ev_names[0]) == IMF_EV_KIND_COUNT,
              "event names");

const char *const imf_framer_error_names[IMF_FRAMER_ERROR_COUNT] = {
    [IMF_FRAMER_OK] = "ok",
    [IMF_FRAMER_LINE_TOO_LONG] = "line_too_long",
    [IMF_FRAMER_LITERAL_MALFORMED] = "literal_malformed",
};
static_assert(sizeof(imf_framer_error_names) / sizeof(imf_framer_error_names[0]) ==
                  IMF_FRAMER_ERROR_COUNT,
              "error names");

void imf_framer_init(struct imf_framer *fr, enum imf_framer_mode mode, uint64_t max_line,
                     uint64_t max_literal)
{
    memset(fr, 0, sizeof(*fr));
    fr->mode = (uint8_t)mode;
    fr->max_line = max_line;
    fr->max_literal = max_literal;
}

/* A new line begins: after the end of a message (cont = false) or after a
 * literal inside one (cont = true). */
static void start_line(struct imf_framer *fr, bool cont)
{
    fr->state = FR_TEXT;
    fr->cont_line = cont;
    fr->scan = SC_NONE;
    fr->last_byte = 0;
    fr->line_len = 0;
}

/* One byte in a state that already knows the token after the last "{" is not
 * an announcement. */
static uint8_t junk_step(uint8_t scan, uint8_t c)
{
    if (c == '}')
        return SC_JUNK_CLOSE;
    if (c == '\r' && scan == SC_JUNK_CLOSE)
        return SC_JUNK_CLOSE_CR;
    return SC_JUNK;
}

/* One byte in a valid state (SC_OPEN .. SC_CLOSE_CR); no "{" or LF here. */
static void scan_step(struct imf_framer *fr, uint8_t c)
{
    unsigned d = (unsigned)c - '0';

    switch (fr->scan) {
    case SC_OPEN:
        if (d < 10) {
            fr->value = d;
            fr->digits = 1;
            fr->scan = SC_DIGITS;
            return;
        }
        break;
    case SC_DIGITS:
        if (d < 10) {
            /* The overflow guard is written so that it cannot overflow itself. */
            if (fr->digits >= MAX_DIGITS || fr->value > (UINT64_MAX - d) / 10)
                break;
            fr->value = fr->value * 10 + d;
            fr->digits++;
            return;
        }
        if (c == '+' || c == '-') {
            fr->scan_flags |= c == '+' ? IMF_LIT_NONSYNC : IMF_LIT_MINUS;
            fr->scan = SC_SIGN;
            return;
        }
        if (c == '}') {
            fr->scan = SC_CLOSE;
            return;
        }
        break;
    case SC_SIGN:
        if (c == '}') {
            fr->scan = SC_CLOSE;
            return;
        }
        break;
    case SC_CLOSE:
        if (c == '\r') {
            fr->scan = SC_CLOSE_CR;
            return;
        }
        break;
    default:
        break;
    }
    fr->scan = junk_step(SC_JUNK, c);
}

/* Feeds n line bytes (no LF among them) to the scanner. Bytes before the last
 * "{" cannot change the outcome, so the scan starts there; and once the
 * token is known to be junk only the last two bytes matter. */
static void scan_span(struct imf_framer *fr, const uint8_t *p, size_t n)
{
    const uint8_t *end = p + n;
    const uint8_t *brace;

    if (n == 0 || p == NULL)
        return;
    brace = memrchr(p, '{', n);
    if (brace != NULL) {
        uint8_t before = brace > p ? brace[-1] : fr->last_byte;
        bool tilde = before == '~';

        fr->scan = SC_OPEN;
        fr->scan_flags = tilde ? IMF_LIT_BINARY : 0;
        fr->value = 0;
        fr->digits = 0;
        /* A "~" at the end of an earlier slice of this line is at line_len - 1 >= 0. */
        fr->brace_at = fr->line_len + (uint64_t)(brace - p) - tilde;
        p = brace + 1;
    }
    if (fr->scan != SC_NONE) {
        while (p < end && fr->scan < SC_JUNK)
            scan_step(fr, *p++);
        if (end - p > 2) {
            fr->scan = SC_JUNK;
            p = end - 2;
        }
        while (p < end)
            fr->scan = junk_step(fr->scan, *p++);
    }
    fr->last_byte = end[-1];
}

/* The LF of the current line was consumed (line_len includes it): decide what
 * the line announced and owe the LINE_END, or fail. */
static void end_line(struct imf_framer *fr)
{
    struct imf_framer_ev *ev = &fr->last_line;

    *ev = (struct imf_framer_ev){
        .kind = IMF_EV_LINE_END,
        .line_len = fr->line_len,
        .first_line = !fr->cont_line,
    };
    if (fr->scan == SC_CLOSE || fr->scan == SC_CLOSE_CR) {
        unsigned flags = IMF_LIT_PRESENT | fr->scan_flags;

        if ((fr->max_literal != 0 && fr->value > fr->max_literal) ||
            ((flags & IMF_LIT_MINUS) && fr->value > LITERAL_MINUS_MAX))
            flags |= IMF_LIT_TOO_BIG;
        ev->literal_size = fr->value;
        ev->literal_flags = flags;
        ev->announce_len = (uint32_t)(fr->line_len - fr->brace_at);
    } else if (fr->mode == IMF_FRAMER_COMMANDS &&
               (fr->scan == SC_JUNK_CLOSE || fr->scan == SC_JUNK_CLOSE_CR)) {
        /* The client may follow this line with octets it thinks are a literal;
         * nothing after it can be trusted to be a command. */
        fr->error = IMF_FRAMER_LITERAL_MALFORMED;
        fr->state = FR_FAILED;
        return;
    } else {
        ev->message_end = true;
    }
    fr->state = FR_LINE_END;
}

static size_t fail_now(struct imf_framer *fr, enum imf_framer_error error,
                       struct imf_framer_ev *out_ev)
{
    fr->error = (uint8_t)error;
    fr->state = FR_FAILED;
    out_ev->kind = IMF_EV_ERROR;
    out_ev->error = error;
    return 0;
}

static size_t next_text(struct imf_framer *fr, const uint8_t *data, size_t len,
                        struct imf_framer_ev *out_ev)
{
    size_t room = len;
    bool limited = false;
    const uint8_t *lf;

    if (len == 0)
        return 0; /* NEED_MORE */
    if (fr->max_line != 0 && fr->max_line - fr->line_len < room) {
        room = (size_t)(fr->max_line - fr->line_len);
        limited = true;
    }
    lf = room != 0 ? memchr(data, '\n', room) : NULL;
    if (lf != NULL) {
        size_t n = (size_t)(lf - data);

        scan_span(fr, data, n);
        fr->line_len += n + 1;
        end_line(fr);
        out_ev->kind = IMF_EV_TEXT;
        out_ev->len = n + 1;
        return n + 1;
    }
    if (limited) {
        /* data[room] exists and would be one line byte too many, LF or not.
         * The bytes that still fit are reported first, so that the error
         * comes at the same stream offset however the input is sliced. */
        if (room == 0)
            return fail_now(fr, IMF_FRAMER_LINE_TOO_LONG, out_ev);
        fr->line_len += room;
        fr->error = IMF_FRAMER_LINE_TOO_LONG;
        fr->state = FR_FAILED;
        out_ev->kind = IMF_EV_TEXT;
        out_ev->len = room;
        return room;
    }
    scan_span(fr, data, len);
    fr->line_len += len;
    out_ev->kind = IMF_EV_TEXT;
    out_ev->len = len;
    return len;
}

size_t imf_framer_next(struct imf_framer *fr, const uint8_t *data, size_t len,
                       struct imf_framer_ev *out_ev)
{
    *out_ev = (struct imf_framer_ev){.kind = IMF_EV_NEED_MORE};

    switch ((enum fr_state)fr->state) {
    case FR_TEXT:
        return next_text(fr, data, len, out_ev);
    case FR_LINE_END:
        *out_ev = fr->last_line;
        if (fr->last_line.literal_flags & IMF_LIT_PRESENT) {
            fr->state = FR_LITERAL;
            fr->literal_left = fr->last_line.literal_size;
        } else {
            start_line(fr, false);
        }
        return 0;
    case FR_LITERAL: {
        size_t n;

        if (fr->literal_left == 0) {
            out_ev->kind = IMF_EV_LITERAL_END;
            start_line(fr, true);
            return 0;
        }
        if (len == 0)
            return 0; /* NEED_MORE */
        n = fr->literal_left < len ? (size_t)fr->literal_left : len;
        fr->literal_left -= n;
        out_ev->kind = IMF_EV_LITERAL;
        out_ev->len = n;
        return n;
    }
    case FR_FAILED:
        break;
    }
    out_ev->kind = IMF_EV_ERROR;
    out_ev->error = (enum imf_framer_error)fr->error;
    return 0;
}

void imf_framer_skip_literal(struct imf_framer *fr)
{
    /* Only right after a LINE_END announcing a literal, before any octet of it. */
    if (fr->state == FR_LITERAL && fr->literal_left == fr->last_line.literal_size)
        start_line(fr, false);
}

bool imf_framer_in_literal(const struct imf_framer *fr, uint64_t *out_size, uint64_t *out_left)
{
    if (fr->state != FR_LITERAL || fr->literal_left == 0)
        return false;
    *out_size = fr->last_line.literal_size;
    *out_left = fr->literal_left;
    return true;
}

bool imf_framer_at_message_start(const struct imf_framer *fr)
{
    return fr->state == FR_TEXT && fr->line_len == 0 && !fr->cont_line;
}
