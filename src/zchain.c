/* zchain: see include/imapfront/zchain.h. */
#include "imapfront/zchain.h"

#include <stdlib.h>

int imf_zchain_start(struct imf_zchain *z, int level)
{
    z->zin = calloc(1, sizeof(*z->zin));
    z->zout = calloc(1, sizeof(*z->zout));
    bool in_ok = z->zin != NULL && inflateInit2(z->zin, -15) == Z_OK;
    bool out_ok = z->zout != NULL &&
                  deflateInit2(z->zout, level, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) == Z_OK;
    if (in_ok && out_ok)
        return 0;
    if (in_ok)
        inflateEnd(z->zin);
    if (out_ok)
        deflateEnd(z->zout);
    free(z->zin);
    free(z->zout);
    z->zin = z->zout = NULL;
    return IMF_ZCHAIN_NOMEM;
}

void imf_zchain_end(struct imf_zchain *z)
{
    if (z->zin != NULL) {
        inflateEnd(z->zin);
        free(z->zin);
    }
    if (z->zout != NULL) {
        deflateEnd(z->zout);
        free(z->zout);
    }
    z->zin = z->zout = NULL;
}

int imf_zchain_inflate(struct imf_zchain *z, struct imf_chain *in, struct imf_chain *out,
                       size_t reserve, size_t *out_used, size_t *out_made)
{
    *out_used = *out_made = 0;
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

bool imf_zchain_inflate_pending(const struct imf_zchain *z, const struct imf_chain *in)
{
    return z->zin != NULL && (in->bytes > 0 || z->zin_full);
}

uint64_t imf_zchain_inflated(const struct imf_zchain *z)
{
    return z->zin != NULL ? z->zin->total_out : 0;
}

uint64_t imf_zchain_inflated_from(const struct imf_zchain *z)
{
    return z->zin != NULL ? z->zin->total_in : 0;
}

int imf_zchain_deflate(struct imf_zchain *z, struct imf_chain *in, struct imf_chain *out,
                       size_t reserve, size_t high, uint64_t *out_used, uint64_t *out_made)
{
    for (;;) {
        size_t avail = 0;
        const uint8_t *src = imf_chain_peek(in, &avail);
        bool flush = avail == 0;
        if ((flush && !z->zout_pending) || out->bytes >= high)
            return 0;
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
