/* chain: byte queues made of fixed-size blocks, with exact accounting.
 *
 * A chain is a FIFO of bytes stored in a singly linked list of blocks. An
 * all-zero struct imf_chain is a valid empty chain that owns no memory;
 * blocks are taken from a per-thread pool when bytes arrive and given back
 * as soon as they are consumed, so an idle session holds no block at all.
 *
 * Every chain may point at a struct imf_chain_counters shared by the chains
 * of one worker: it always equals the sum of the bytes and links those
 * chains hold (the "receive chain length" Q239082's server got wrong). The
 * counters are written by one thread and may be read by any. */
#ifndef IMAPFRONT_CHAIN_H
#define IMAPFRONT_CHAIN_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* Bytes of payload per block: eight whole TLS records. A socket read fills
 * at most one block, and on loopback the kernel's work per read and per
 * write (each read also sends the peer a window update, and each write
 * wakes the backend) costs more than the bytes: 128 KiB reads took 30 %
 * off the CPU per GiB relayed compared with 32 KiB ones. Idle sessions
 * hold no block, so the size costs memory only while bytes are queued. */
#define IMF_BLOCK_DATA (128 * 1024)

/* What a socket read asks imf_chain_reserve() for: a read goes into the
 * tail block while it has this much room, so blocks stay nearly full
 * however small the reads are. */
#define IMF_READ_MIN (8 * 1024)

struct imf_block {
    struct imf_block *next;
    uint32_t start; /* first byte not yet consumed */
    uint32_t end;   /* one past the last byte written */
    uint8_t data[IMF_BLOCK_DATA];
};

struct imf_chain_counters {
    _Atomic int64_t bytes; /* bytes held by all chains using these counters */
    _Atomic int64_t links; /* blocks held by them */
};

struct imf_chain {
    struct imf_block *head;
    struct imf_block *tail;
    size_t bytes;                        /* unconsumed bytes */
    uint32_t links;                      /* blocks in the list */
    struct imf_chain_counters *counters; /* borrowed; may be NULL */
};

/* Sets an empty chain that reports to counters (may be NULL). */
void imf_chain_init(struct imf_chain *c, struct imf_chain_counters *counters);

/* Frees every block; the chain is empty afterwards and keeps its counters. */
void imf_chain_clear(struct imf_chain *c);

/* Copies len bytes to the end of the chain. Returns 0 or UV_ENOMEM. */
int imf_chain_append(struct imf_chain *c, const void *data, size_t len);

/* Free space at the end of the chain, at least min(want, IMF_BLOCK_DATA)
 * bytes (a block is added if the tail has less: at most want - 1 bytes of
 * the old tail stay unused, so want bounds the waste per block). The caller writes there and then
 * calls imf_chain_commit(). Returns 0 or UV_ENOMEM. A reservation that is not committed costs at
 * most one empty block, released by the next consume or clear. */
int imf_chain_reserve(struct imf_chain *c, size_t want, uint8_t **out_ptr, size_t *out_len);
void imf_chain_commit(struct imf_chain *c, size_t len);

/* The first contiguous run of unconsumed bytes (NULL, 0 when empty). */
const uint8_t *imf_chain_peek(const struct imf_chain *c, size_t *out_len);

/* Copies up to len bytes from the front into out without consuming them;
 * returns how many were copied. */
size_t imf_chain_copy_out(const struct imf_chain *c, void *out, size_t len);

/* Drops len bytes (<= c->bytes) from the front, releasing emptied blocks. */
void imf_chain_consume(struct imf_chain *c, size_t len);

/* Moves the first len (<= src->bytes) bytes of src to the end of dst.
 * Blocks holding at least IMF_SPLICE_MIN of them are relinked, not copied
 * (the relay's literal payloads then cost no copy); smaller runs are copied
 * so that chains stay densely packed. Returns 0 or UV_ENOMEM (then nothing
 * of the failed step has moved). */
#define IMF_SPLICE_MIN (IMF_BLOCK_DATA / 4)
int imf_chain_splice(struct imf_chain *dst, struct imf_chain *src, size_t len);

/* Fills up to max buffers (base, len) describing the first bytes of the
 * chain, at most limit bytes; returns the number used and sets *out_bytes.
 * The bytes stay in the chain: consume them when the write completes. */
struct imf_iovec {
    void *base;
    size_t len;
};
unsigned imf_chain_iov(const struct imf_chain *c, struct imf_iovec *iov, unsigned max, size_t limit,
                       size_t *out_bytes);

/* Per-thread block pool statistics (for tests and metrics). */
size_t imf_block_pool_cached(void);
/* Frees the calling thread's cached blocks (at thread exit). */
void imf_block_pool_drain(void);

#endif
