/* zchain: COMPRESS=DEFLATE (RFC 4978, raw deflate) between two chains, one
 * stream each way. Pure: no I/O; zlib's state is allocated at start and
 * freed at end, so a session that never compresses holds one NULL. While
 * a session is idle imf_zchain_release() frees most of it (about 300 KiB
 * of deflate state, 7 KiB of inflate state and its window): the next
 * octets either way make it again. */
#ifndef IMAPFRONT_ZCHAIN_H
#define IMAPFRONT_ZCHAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <zlib.h>

#include "imapfront/chain.h"

/* Allocated by imf_zchain_start(), so that a session that never
 * compresses holds one NULL. */
struct imf_zstate {
    z_stream *zin, *zout; /* zlib's state, NULL while released */
    uint8_t *dict;        /* while zin is released: the window it had */
    size_t dict_len;
    uint64_t in_made, in_used; /* inflated and consumed by earlier zin's */
    int level;                 /* deflate's */
    int wbits;                 /* deflate's window: 2^wbits octets (10..15) */
    bool zin_full;             /* inflate filled its output: it may hold more */
    bool zin_busy;             /* zin stopped inside a block: it cannot be released */
    bool zout_pending;         /* deflated input not yet sync-flushed */
};

struct imf_zchain {
    struct imf_zstate *st; /* NULL until started */
};

/* Returns of imf_zchain_inflate() beyond 0 (need more) and 1 (progress). */
#define IMF_ZCHAIN_CORRUPT (-1) /* not a deflate stream, or it ended */
#define IMF_ZCHAIN_NOMEM   (-2)

/* Starts both streams; level is deflate's (1..9), window its window in
 * octets (a power of two, 1 KiB..32 KiB; others are rounded down; inflate
 * always takes the client's up to 32 KiB). Returns 0 or
 * IMF_ZCHAIN_NOMEM (then nothing is held). */
int imf_zchain_start(struct imf_zchain *z, int level, unsigned window);

/* Frees what start allocated (any time; a zeroed one holds nothing). */
void imf_zchain_end(struct imf_zchain *z);

static inline bool imf_zchain_active(const struct imf_zchain *z)
{
    return z->st != NULL;
}

/* True while imf_zchain_release() may still free something. */
static inline bool imf_zchain_releasable(const struct imf_zchain *z)
{
    const struct imf_zstate *st = z->st;
    return st != NULL && (st->zout != NULL || (st->zin != NULL && !st->zin_busy));
}

/* Frees zlib's state where that loses nothing: the deflate side once
 * everything given to it is flushed and out_src (its input) is empty; the
 * inflate side once in (its input) is empty and the client's stream stopped
 * at a block boundary on a whole octet (a sync or full flush does), keeping
 * only the window the client's next blocks may refer to. The deflate side
 * starts afresh, without history: a new raw deflater's blocks after a sync
 * flush are a valid continuation of the stream. Idempotent. */
void imf_zchain_release(struct imf_zchain *z, const struct imf_chain *in,
                        const struct imf_chain *out_src);

/* Inflates from in into out (up to one reservation of at least reserve
 * bytes). Returns 1 on progress, 0 when it needs more input, or an
 * IMF_ZCHAIN_* error; *out_used and *out_made say how many octets it took and
 * gave. */
int imf_zchain_inflate(struct imf_zchain *z, struct imf_chain *in, struct imf_chain *out,
                       size_t reserve, size_t *out_used, size_t *out_made);

/* True while inflate may still give output: input waits, or its last call
 * filled the room it had. */
bool imf_zchain_inflate_pending(const struct imf_zchain *z, const struct imf_chain *in);

/* Octets inflated since start, and what they came from. */
uint64_t imf_zchain_inflated(const struct imf_zchain *z);
uint64_t imf_zchain_inflated_from(const struct imf_zchain *z);

/* Deflates in into out until in is empty or out holds high octets; once
 * in is empty, sync-flushes so that nothing waits in the compressor.
 * Returns 0 or an IMF_ZCHAIN_* error; adds what it took and gave to
 * *out_used and *out_made. */
int imf_zchain_deflate(struct imf_zchain *z, struct imf_chain *in, struct imf_chain *out,
                       size_t reserve, size_t high, uint64_t *out_used, uint64_t *out_made);

#endif
