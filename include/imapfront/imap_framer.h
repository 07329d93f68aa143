/* imap_framer: incremental IMAP stream framing, pure (no I/O, no allocation).
 *
 * The framer is fed arbitrary slices of one direction of an IMAP stream
 * (client commands or server responses) and reports, one event per call,
 * what the bytes at the front of the slice are: line text, the end of a
 * line (with the literal it announces, if any), literal octets, the end of a
 * literal, or an error. Feeding the same stream split at any offsets yields
 * the same events modulo chunking (adjacent TEXT or LITERAL events may be
 * split or merged differently; zero-length events are identical).
 *
 * Lines end at LF (CRLF is the norm; a bare LF is accepted as the RFC
 * tolerates it). A line announces a literal when its text ends in
 * "{N}", "{N+}", "{N-}", "~{N}", "~{N+}" or "~{N-}" just before the (CR)LF;
 * N is 1 to 20 decimal digits and must fit in a uint64_t. The framer never
 * changes bytes and makes no policy decisions: limits are reported, the
 * caller decides what to answer. */
#ifndef IMAPFRONT_IMAP_FRAMER_H
#define IMAPFRONT_IMAP_FRAMER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum imf_framer_mode {
    IMF_FRAMER_COMMANDS,  /* client -> server */
    IMF_FRAMER_RESPONSES, /* server -> client */
    IMF_FRAMER_MODE_COUNT
};

enum imf_framer_ev_kind {
    IMF_EV_NEED_MORE,   /* the slice is used up; ev.len is 0 */
    IMF_EV_TEXT,        /* ev.len bytes of line text (announcement and LF included) */
    IMF_EV_LINE_END,    /* zero bytes: the line whose LF was just consumed ended */
    IMF_EV_LITERAL,     /* ev.len octets of literal data */
    IMF_EV_LITERAL_END, /* zero bytes: the announced octets have all been consumed */
    IMF_EV_ERROR,       /* zero bytes; ev.error says why; the framer stays failed */
    IMF_EV_KIND_COUNT
};

enum imf_framer_error {
    IMF_FRAMER_OK,
    IMF_FRAMER_LINE_TOO_LONG,     /* line text exceeded max_line (when non-zero) */
    IMF_FRAMER_LITERAL_MALFORMED, /* commands only: "{1x}", "{-1}", "{}", overflow ... */
    IMF_FRAMER_ERROR_COUNT
};

/* Bits of imf_framer_ev.literal_flags on IMF_EV_LINE_END. */
#define IMF_LIT_PRESENT 0x01u /* the line announces a literal */
#define IMF_LIT_NONSYNC 0x02u /* "{N+}" (RFC 7888 LITERAL+) */
#define IMF_LIT_MINUS   0x04u /* "{N-}" (RFC 7888 LITERAL-) */
#define IMF_LIT_BINARY  0x08u /* "~{N}" (RFC 3516 literal8) */
#define IMF_LIT_TOO_BIG 0x10u /* N > max_literal (non-zero), or "{N-}" with N > 4096 */

struct imf_framer_ev {
    enum imf_framer_ev_kind kind;
    size_t len; /* input bytes this event covers (TEXT, LITERAL); else 0 */

    /* IMF_EV_LINE_END only. */
    uint64_t line_len;      /* bytes of the whole line, LF included */
    uint64_t literal_size;  /* N, when IMF_LIT_PRESENT */
    unsigned literal_flags; /* IMF_LIT_* */
    uint32_t announce_len;  /* bytes from "{" or "~{" to the LF, inclusive */
    bool first_line;        /* the line starts a command/response (no literal before it) */
    bool message_end;       /* no literal follows: the command/response is complete */

    /* IMF_EV_ERROR only. */
    enum imf_framer_error error;
};

/* Zero apart from the mode and the limits after imf_framer_init(); a caller
 * may embed it anywhere. Fields are private. */
struct imf_framer {
    uint8_t mode;       /* enum imf_framer_mode */
    uint8_t state;      /* what the next input byte is, or which zero-length event is owed */
    uint8_t scan;       /* announcement scanner state over the current line's bytes */
    uint8_t scan_flags; /* IMF_LIT_NONSYNC/MINUS/BINARY seen by the scanner */
    uint8_t digits;     /* digits of N read so far */
    uint8_t last_byte;  /* last line byte seen so far, to spot "~" before "{" */
    uint8_t error;      /* enum imf_framer_error once failed */
    bool cont_line;     /* the current line continues a message after a literal */
    uint64_t value;     /* N read so far */
    uint64_t brace_at;  /* line offset of the "{" (or "~{") the scanner follows */
    uint64_t line_len;  /* bytes of the current line consumed so far */
    uint64_t literal_left;
    uint64_t max_line;              /* 0 = unlimited */
    uint64_t max_literal;           /* 0 = unlimited */
    struct imf_framer_ev last_line; /* the LINE_END owed or last delivered */
};

/* Prepares a framer. max_line and max_literal of 0 mean no limit. */
void imf_framer_init(struct imf_framer *fr, enum imf_framer_mode mode, uint64_t max_line,
                     uint64_t max_literal);

/* Looks at the front of data[0..len) and fills *out_ev with the next event;
 * returns the number of input bytes the event covers (== out_ev->len). The
 * caller advances its slice by that many bytes and calls again. Zero-length
 * events (LINE_END, LITERAL_END, ERROR) are reported even when len is 0;
 * NEED_MORE means the framer wants more input. Never reads past data+len. */
size_t imf_framer_next(struct imf_framer *fr, const uint8_t *data, size_t len,
                       struct imf_framer_ev *out_ev);

/* Called right after a LINE_END that announced a literal, to tell the framer
 * the literal will not come (a synchronising literal the proxy refused): the
 * framer then expects the start of a new command. */
void imf_framer_skip_literal(struct imf_framer *fr);

/* True while literal octets are still owed: sets the announced size and
 * how many are yet to come. */
bool imf_framer_in_literal(const struct imf_framer *fr, uint64_t *out_size, uint64_t *out_left);

/* True when the framer is between messages (a new command/response starts
 * with the next byte). */
bool imf_framer_at_message_start(const struct imf_framer *fr);

extern const char *const imf_framer_ev_names[IMF_EV_KIND_COUNT];
extern const char *const imf_framer_error_names[IMF_FRAMER_ERROR_COUNT];

#endif
