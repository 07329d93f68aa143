/* chain: see include/imapfront/chain.h. */
#include "imapfront/chain.h"

#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "imapfront/util.h"

/* Blocks freed by a thread are kept for its next allocation, up to a cap, so
 * the relay's steady state does no malloc. The pool is per thread because a
 * session never leaves its worker. */
#define POOL_MAX 64 /* 8 MiB of blocks */

static _Thread_local struct imf_block *pool_head;
static _Thread_local size_t pool_len;

static struct imf_block *block_get(void)
{
    struct imf_block *b = pool_head;
    if (b != NULL) {
        pool_head = b->next;
        pool_len--;
    } else {
        b = malloc(sizeof(*b));
        if (b == NULL)
            return NULL;
    }
    b->next = NULL;
    b->start = 0;
    b->end = 0;
    return b;
}

static void block_put(struct imf_block *b)
{
    if (pool_len >= POOL_MAX) {
        free(b);
        return;
    }
    b->next = pool_head;
    pool_head = b;
    pool_len++;
}

size_t imf_block_pool_cached(void)
{
    return pool_len;
}

void imf_block_pool_drain(void)
{
    while (pool_head != NULL) {
        struct imf_block *b = pool_head;
        pool_head = b->next;
        free(b);
    }
    pool_len = 0;
}

static void count(struct imf_chain *c, int64_t bytes, int64_t links)
{
    struct imf_chain_counters *k = c->counters;
    if (k == NULL)
        return;
    /* One writer per counter set: a relaxed load+store is enough and cheaper
     * than a locked add. */
    if (bytes != 0)
        atomic_store_explicit(&k->bytes,
                              atomic_load_explicit(&k->bytes, memory_order_relaxed) + bytes,
                              memory_order_relaxed);
    if (links != 0)
        atomic_store_explicit(&k->links,
                              atomic_load_explicit(&k->links, memory_order_relaxed) + links,
                              memory_order_relaxed);
}

void imf_chain_init(struct imf_chain *c, struct imf_chain_counters *counters)
{
    memset(c, 0, sizeof(*c));
    c->counters = counters;
}

static void link_block(struct imf_chain *c, struct imf_block *b)
{
    if (c->tail != NULL)
        c->tail->next = b;
    else
        c->head = b;
    c->tail = b;
    c->links++;
    count(c, 0, 1);
}

/* Unlinks and releases the head block. */
static void drop_head(struct imf_chain *c)
{
    struct imf_block *b = c->head;
    c->head = b->next;
    if (c->head == NULL)
        c->tail = NULL;
    c->links--;
    count(c, 0, -1);
    block_put(b);
}

void imf_chain_clear(struct imf_chain *c)
{
    struct imf_block *b = c->head;
    while (b != NULL) {
        struct imf_block *next = b->next;
        block_put(b);
        b = next;
    }
    count(c, -(int64_t)c->bytes, -(int64_t)c->links);
    c->head = c->tail = NULL;
    c->bytes = 0;
    c->links = 0;
}

int imf_chain_reserve(struct imf_chain *c, size_t want, uint8_t **out_ptr, size_t *out_len)
{
    if (want > IMF_BLOCK_DATA)
        want = IMF_BLOCK_DATA;
    if (want == 0)
        want = 1;
    struct imf_block *t = c->tail;
    if (t != NULL && t->start == t->end) {
        /* An empty tail (fully consumed or never filled) is reused from the
         * start. */
        t->start = t->end = 0;
    }
    if (t == NULL || IMF_BLOCK_DATA - t->end < want) {
        t = block_get();
        if (t == NULL)
            return UV_ENOMEM;
        link_block(c, t);
    }
    *out_ptr = t->data + t->end;
    *out_len = IMF_BLOCK_DATA - t->end;
    return 0;
}

void imf_chain_commit(struct imf_chain *c, size_t len)
{
    imf_assert(c->tail != NULL && len <= IMF_BLOCK_DATA - c->tail->end);
    if (len == 0 && c->head == c->tail && c->tail->start == c->tail->end) {
        /* A read that brought nothing: do not keep an idle block. */
        drop_head(c);
        return;
    }
    c->tail->end += (uint32_t)len;
    c->bytes += len;
    count(c, (int64_t)len, 0);
}

int imf_chain_append(struct imf_chain *c, const void *data, size_t len)
{
    const uint8_t *p = data;
    while (len > 0) {
        uint8_t *dst;
        size_t room;
        /* Fill what the tail has left before taking a new block, so that
         * a chain of many small appends stays densely packed. */
        int rc = imf_chain_reserve(c, 1, &dst, &room);
        if (rc != 0)
            return rc;
        size_t n = len < room ? len : room;
        memcpy(dst, p, n);
        imf_chain_commit(c, n);
        p += n;
        len -= n;
    }
    return 0;
}

const uint8_t *imf_chain_peek(const struct imf_chain *c, size_t *out_len)
{
    for (struct imf_block *b = c->head; b != NULL; b = b->next) {
        if (b->end > b->start) {
            *out_len = b->end - b->start;
            return b->data + b->start;
        }
    }
    *out_len = 0;
    return NULL;
}

size_t imf_chain_copy_out(const struct imf_chain *c, void *out, size_t len)
{
    uint8_t *o = out;
    size_t done = 0;
    for (struct imf_block *b = c->head; b != NULL && done < len; b = b->next) {
        size_t n = b->end - b->start;
        if (n > len - done)
            n = len - done;
        memcpy(o + done, b->data + b->start, n);
        done += n;
    }
    return done;
}

void imf_chain_consume(struct imf_chain *c, size_t len)
{
    imf_assert(len <= c->bytes);
    c->bytes -= len;
    count(c, -(int64_t)len, 0);
    while (c->head != NULL) {
        struct imf_block *b = c->head;
        size_t n = b->end - b->start;
        if (len < n) {
            b->start += (uint32_t)len;
            return;
        }
        len -= n;
        drop_head(c);
        if (len == 0 && (c->head == NULL || c->head->end > c->head->start))
            return;
    }
}

int imf_chain_splice(struct imf_chain *dst, struct imf_chain *src, size_t len)
{
    imf_assert(len <= src->bytes);
    while (len > 0) {
        struct imf_block *b = src->head;
        size_t avail = b->end - b->start;
        if (avail == 0) {
            drop_head(src);
            continue;
        }
        if (avail <= len && avail >= IMF_SPLICE_MIN) {
            /* The whole rest of the block goes: relink it. */
            src->head = b->next;
            if (src->head == NULL)
                src->tail = NULL;
            src->links--;
            src->bytes -= avail;
            count(src, -(int64_t)avail, -1);
            b->next = NULL;
            if (dst->tail != NULL && dst->tail->start == dst->tail->end && dst->head == dst->tail)
                drop_head(dst); /* an empty block left by a reservation */
            link_block(dst, b);
            dst->bytes += avail;
            count(dst, (int64_t)avail, 0);
            len -= avail;
            continue;
        }
        size_t n = avail < len ? avail : len;
        int rc = imf_chain_append(dst, b->data + b->start, n);
        if (rc != 0)
            return rc;
        imf_chain_consume(src, n);
        len -= n;
    }
    return 0;
}

unsigned imf_chain_iov(const struct imf_chain *c, struct imf_iovec *iov, unsigned max, size_t limit,
                       size_t *out_bytes)
{
    unsigned n = 0;
    size_t total = 0;
    for (struct imf_block *b = c->head; b != NULL && n < max && total < limit; b = b->next) {
        size_t len = b->end - b->start;
        if (len == 0)
            continue;
        if (len > limit - total)
            len = limit - total;
        iov[n].base = b->data + b->start;
        iov[n].len = len;
        n++;
        total += len;
    }
    *out_bytes = total;
    return n;
}
