/* zchain: see include/imapfront/zchain.h. */
#include "imapfront/zchain.h"

#include <stdlib.h>
#include <sys/mman.h>

/* zlib's buffers (deflate's state, 5.9 KiB, and its window, hash chains
 * and pending output, 64 KiB each at our parameters; inflate's state,
 * 7.1 KiB, and 32 KiB window) are mapped rather than taken from malloc:
 * unmapped when the stream is released, they leave the process at once,
 * where freed heap chunks would stay in its RSS, scattered between the
 * sessions that used them. Only touched pages count while mapped. */
#define ZMAP_MIN 4096
#define ZMAP_MAX 6 /* mapped buffers per stream: deflate makes 5, inflate 2 */

struct zbox {
    z_stream zs; /* first: a z_stream * is the box */
    struct {
        void *p;
        size_t len;
    } map[ZMAP_MAX];
};

static voidpf zbox_alloc(voidpf opaque, uInt items, uInt size)
{
    struct zbox *b = opaque;
    size_t n = (size_t)items * size;
    if (n >= ZMAP_MIN) {
        for (size_t i = 0; i < ZMAP_MAX; i++) {
            if (b->map[i].p != NULL)
                continue;
            void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED)
                return Z_NULL;
            b->map[i].p = p;
            b->map[i].len = n;
            return p;
        }
    }
    return malloc(n);
}

static void zbox_free(voidpf opaque, voidpf p)
{
    struct zbox *b = opaque;
    for (size_t i = 0; i < ZMAP_MAX; i++) {
        if (b->map[i].p == p) {
            munmap(p, b->map[i].len);
            b->map[i].p = NULL;
            return;
        }
    }
    free(p);
}

/* A z_stream whose memory comes from zbox_alloc; freed with free() after
 * inflateEnd/deflateEnd. */
static z_stream *zbox_new(void)
{
    struct zbox *b = calloc(1, sizeof(*b));
    if (b == NULL)
        return NULL;
    b->zs.zalloc = zbox_alloc;
    b->zs.zfree = zbox_free;
    b->zs.opaque = b;
    return &b->zs;
}

/* (Re)creates the inflate side, with the window it had when released. */
static int zin_make(struct imf_zstate *z)
{
    if (z->zin != NULL)
        return 0;
    z_stream *zs = zbox_new();
    if (zs == NULL)
        return IMF_ZCHAIN_NOMEM;
    if (inflateInit2(zs, -15) != Z_OK) {
        free(zs);
        return IMF_ZCHAIN_NOMEM;
    }
    if (z->dict != NULL && inflateSetDictionary(zs, z->dict, (uInt)z->dict_len) != Z_OK) {
        inflateEnd(zs);
        free(zs);
        return IMF_ZCHAIN_NOMEM;
    }
    free(z->dict);
    z->dict = NULL;
    z->dict_len = 0;
    z->zin = zs;
    return 0;
}

static int zout_make(struct imf_zstate *z)
{
    if (z->zout != NULL)
        return 0;
    z_stream *zs = zbox_new();
    if (zs == NULL)
        return IMF_ZCHAIN_NOMEM;
    /* The window of what we send is ours to choose (the client inflates
     * with up to 32 KiB); zlib's own pairing of window and hash size
     * (15 with 8) scales down with it: deflate takes 4 * window + 512 *
     * 2^memLevel octets, 256 KiB at 32 KiB, 64 KiB at 8 KiB. */
    int wbits = z->wbits, mem_level = wbits - 7;
    if (deflateInit2(zs, z->level, Z_DEFLATED, -wbits, mem_level, Z_DEFAULT_STRATEGY) != Z_OK) {
        free(zs);
        return IMF_ZCHAIN_NOMEM;
    }
    z->zout = zs;
    return 0;
}

int imf_zchain_start(struct imf_zchain *zc, int level, unsigned window)
{
    struct imf_zstate *z = calloc(1, sizeof(*z));
    if (z == NULL)
        return IMF_ZCHAIN_NOMEM;
    z->level = level;
    z->wbits = 10; /* 1 KiB: zlib's raw deflate takes 9 as 10 anyway */
    while (z->wbits < 15 && (1u << (z->wbits + 1)) <= window)
        z->wbits++;
    zc->st = z;
    if (zin_make(z) == 0 && zout_make(z) == 0)
        return 0;
    imf_zchain_end(zc);
    return IMF_ZCHAIN_NOMEM;
}

void imf_zchain_end(struct imf_zchain *zc)
{
    struct imf_zstate *z = zc->st;
    if (z == NULL)
        return;
    if (z->zin != NULL) {
        inflateEnd(z->zin);
        free(z->zin);
    }
    if (z->zout != NULL) {
        deflateEnd(z->zout);
        free(z->zout);
    }
    free(z->dict);
    free(z);
    zc->st = NULL;
}

void imf_zchain_release(struct imf_zchain *zc, const struct imf_chain *in,
                        const struct imf_chain *out_src)
{
    struct imf_zstate *z = zc->st;
    if (z == NULL)
        return;
    if (z->zout != NULL && !z->zout_pending && out_src->bytes == 0) {
        deflateEnd(z->zout);
        free(z->zout);
        z->zout = NULL;
    }
    if (z->zin == NULL || z->zin_busy || in->bytes > 0 || z->zin_full)
        return;
    /* data_type after inflate(): the bits it holds of the next octet, +64
     * in the last block, +128 waiting for a block header (zlib.h). Only
     * with no bit held and no block begun is the window all there is. */
    int dt = z->zin->data_type;
    if (z->zin->total_in != 0 && ((dt & 128) == 0 || (dt & (64 | 63)) != 0)) {
        z->zin_busy = true; /* until more input comes */
        return;
    }
    uInt len = 0;
    uint8_t *dict = NULL;
    if (inflateGetDictionary(z->zin, NULL, &len) != Z_OK)
        return;
    if (len > 0) {
        dict = malloc(len);
        if (dict == NULL)
            return; /* keep it all: nothing lost */
        inflateGetDictionary(z->zin, dict, &len);
    }
    z->in_made += z->zin->total_out;
    z->in_used += z->zin->total_in;
    inflateEnd(z->zin);
    free(z->zin);
    z->zin = NULL;
    z->dict = dict;
    z->dict_len = len;
}

int imf_zchain_inflate(struct imf_zchain *zc, struct imf_chain *in, struct imf_chain *out,
                       size_t reserve, size_t *out_used, size_t *out_made)
{
    struct imf_zstate *z = zc->st;
    *out_used = *out_made = 0;
    z->zin_busy = false;
    if (zin_make(z) != 0)
        return IMF_ZCHAIN_NOMEM;
    size_t avail;
    const uint8_t *src = imf_chain_peek(in, &avail);
    uint8_t *dst;
    size_t room;
    if (imf_chain_reserve(out, reserve, &dst, &room) != 0)
        return IMF_ZCHAIN_NOMEM;
    z->zin->next_in = (Bytef *)src;
    z->zin->avail_in = (uInt)avail;
    z->zin->next_out = dst;
    z->zin->avail_out = (uInt)room;
    int rc = inflate(z->zin, Z_SYNC_FLUSH);
    *out_used = avail - z->zin->avail_in;
    *out_made = room - z->zin->avail_out;
    imf_chain_commit(out, *out_made);
    imf_chain_consume(in, *out_used);
    z->zin_full = z->zin->avail_out == 0;
    if (rc != Z_OK && rc != Z_BUF_ERROR)
        return IMF_ZCHAIN_CORRUPT; /* corrupt, or the stream ended: nothing more can follow */
    return *out_used > 0 || *out_made > 0;
}

bool imf_zchain_inflate_pending(const struct imf_zchain *zc, const struct imf_chain *in)
{
    return zc->st != NULL && (in->bytes > 0 || zc->st->zin_full);
}

uint64_t imf_zchain_inflated(const struct imf_zchain *zc)
{
    const struct imf_zstate *z = zc->st;
    if (z == NULL)
        return 0;
    return z->in_made + (z->zin != NULL ? z->zin->total_out : 0);
}

uint64_t imf_zchain_inflated_from(const struct imf_zchain *zc)
{
    const struct imf_zstate *z = zc->st;
    if (z == NULL)
        return 0;
    return z->in_used + (z->zin != NULL ? z->zin->total_in : 0);
}

int imf_zchain_deflate(struct imf_zchain *zc, struct imf_chain *in, struct imf_chain *out,
                       size_t reserve, size_t high, uint64_t *out_used, uint64_t *out_made)
{
    struct imf_zstate *z = zc->st;
    for (;;) {
        size_t avail = 0;
        const uint8_t *src = imf_chain_peek(in, &avail);
        bool flush = avail == 0;
        if ((flush && !z->zout_pending) || out->bytes >= high)
            return 0;
        if (zout_make(z) != 0)
            return IMF_ZCHAIN_NOMEM;
        uint8_t *dst;
        size_t room;
        if (imf_chain_reserve(out, reserve, &dst, &room) != 0)
            return IMF_ZCHAIN_NOMEM;
        z->zout->next_in = (Bytef *)src;
        z->zout->avail_in = (uInt)avail;
        z->zout->next_out = dst;
        z->zout->avail_out = (uInt)room;
        int rc = deflate(z->zout, flush ? Z_SYNC_FLUSH : Z_NO_FLUSH);
        size_t used = avail - z->zout->avail_in, made = room - z->zout->avail_out;
        imf_chain_commit(out, made);
        imf_chain_consume(in, used);
        *out_used += used;
        *out_made += made;
        if (rc != Z_OK && rc != Z_BUF_ERROR)
            return IMF_ZCHAIN_CORRUPT;
        if (used > 0)
            z->zout_pending = true;
        /* A flush is complete when deflate left output room unused. */
        if (flush && z->zout->avail_out != 0)
            z->zout_pending = false;
    }
}
