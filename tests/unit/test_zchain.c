/* unit.zchain: COMPRESS over chains, against zlib on the other side. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <zlib.h>

#include "imapfront/zchain.h"

#define RESERVE 16384

/* Some text the way mail is: words, lines, a repeat now and then. */
static size_t make_text(uint8_t *buf, size_t len, unsigned seed)
{
    static const char *const words[] = {"mail",   "proxy ",   "literal", "\r\n",
                                        "FETCH ", "deflate ", "the ",    "backend "};
    size_t n = 0;
    while (n < len) {
        seed = seed * 1103515245u + 12345u;
        const char *w = words[(seed >> 16) % 8];
        size_t k = strlen(w);
        if (k > len - n)
            k = len - n;
        memcpy(buf + n, w, k);
        n += k;
    }
    return n;
}

/* Raw deflate of in, one sync flush at the end (what a client sends). */
static size_t client_deflate(const uint8_t *in, size_t len, uint8_t *out, size_t cap)
{
    z_stream z = {0};
    assert_int_equal(deflateInit2(&z, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY), Z_OK);
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)len;
    z.next_out = out;
    z.avail_out = (uInt)cap;
    assert_int_equal(deflate(&z, Z_SYNC_FLUSH), Z_OK);
    size_t n = cap - z.avail_out;
    deflateEnd(&z);
    return n;
}

/* Inflates what the client sent, fed in slices of step octets; the output
 * must be the text, whatever the slicing. */
static void inflate_sliced(size_t step)
{
    static uint8_t text[200000], wire[220000];
    size_t tlen = make_text(text, sizeof(text), 7);
    size_t wlen = client_deflate(text, tlen, wire, sizeof(wire));
    struct imf_chain_counters k = {0};
    struct imf_chain in, out;
    imf_chain_init(&in, &k);
    imf_chain_init(&out, &k);
    struct imf_zchain z = {0};
    assert_int_equal(imf_zchain_start(&z, 1, 32768), 0);
    size_t fed = 0;
    for (unsigned rounds = 0;
         rounds < 10000000 && (fed < wlen || imf_zchain_inflate_pending(&z, &in)); rounds++) {
        if (fed < wlen && in.bytes == 0) {
            size_t n = step < wlen - fed ? step : wlen - fed;
            assert_int_equal(imf_chain_append(&in, wire + fed, n), 0);
            fed += n;
        }
        size_t used, made;
        int rc = imf_zchain_inflate(&z, &in, &out, RESERVE, &used, &made);
        assert_true(rc == 0 || rc == 1);
    }
    assert_int_equal(out.bytes, tlen);
    uint8_t *got = malloc(tlen);
    assert_int_equal(imf_chain_copy_out(&out, got, tlen), tlen);
    assert_memory_equal(got, text, tlen);
    assert_int_equal(imf_zchain_inflated(&z), tlen);
    assert_int_equal(imf_zchain_inflated_from(&z), wlen);
    free(got);
    imf_zchain_end(&z);
    imf_chain_clear(&in);
    imf_chain_clear(&out);
    assert_int_equal(k.bytes, 0);
}

static void test_inflate_any_slicing(void **state)
{
    (void)state;
    inflate_sliced(1);
    inflate_sliced(7);
    inflate_sliced(4096);
    inflate_sliced(1 << 20);
}

/* What the proxy deflates, a client inflates to the same bytes; nothing
 * waits in the compressor once the input is used up (sync flush), and the
 * output stops at the high mark until it is taken. */
static void round_trip(int level, unsigned window)
{
    static uint8_t text[300000], back[300000];
    size_t tlen = make_text(text, sizeof(text), 3);
    struct imf_chain_counters k = {0};
    struct imf_chain in, out;
    imf_chain_init(&in, &k);
    imf_chain_init(&out, &k);
    struct imf_zchain z = {0};
    assert_int_equal(imf_zchain_start(&z, level, window), 0);
    assert_int_equal(imf_chain_append(&in, text, tlen), 0);
    z_stream c = {0};
    assert_int_equal(inflateInit2(&c, -15), Z_OK);
    size_t got = 0;
    uint64_t used = 0, made = 0;
    for (unsigned rounds = 0; rounds < 100000; rounds++) {
        assert_int_equal(imf_zchain_deflate(&z, &in, &out, RESERVE, 8192, &used, &made), 0);
        assert_true(out.bytes < 8192 + RESERVE * 2);
        if (out.bytes == 0 && in.bytes == 0)
            break;
        /* The client takes what was made. */
        size_t avail;
        const uint8_t *p = imf_chain_peek(&out, &avail);
        c.next_in = (Bytef *)p;
        c.avail_in = (uInt)avail;
        c.next_out = back + got;
        c.avail_out = (uInt)(sizeof(back) - got);
        int rc = inflate(&c, Z_SYNC_FLUSH);
        assert_true(rc == Z_OK || rc == Z_BUF_ERROR);
        got = sizeof(back) - c.avail_out;
        imf_chain_consume(&out, avail - c.avail_in);
    }
    assert_int_equal(used, tlen);
    assert_int_equal(got, tlen);
    assert_memory_equal(back, text, tlen);
    inflateEnd(&c);
    imf_zchain_end(&z);
    imf_chain_clear(&in);
    imf_chain_clear(&out);
}

/* ... with every window compress_window allows (the client inflates with
 * a 32 KiB window, as any client does). */
static void test_deflate_round_trip_and_high_mark(void **state)
{
    (void)state;
    round_trip(6, 32768);
    round_trip(1, 8192);
    round_trip(1, 1024);
    round_trip(9, 2048);
}

static void test_corrupt_input(void **state)
{
    (void)state;
    struct imf_chain_counters k = {0};
    struct imf_chain in, out;
    imf_chain_init(&in, &k);
    imf_chain_init(&out, &k);
    struct imf_zchain z = {0};
    assert_false(imf_zchain_active(&z));
    assert_int_equal(imf_zchain_start(&z, 1, 32768), 0);
    assert_true(imf_zchain_active(&z));
    /* A stored block whose length and its complement disagree. */
    static const uint8_t bad[] = {0x00, 0x05, 0x00, 0x05, 0x00, 'h', 'e', 'l', 'l', 'o'};
    assert_int_equal(imf_chain_append(&in, bad, sizeof(bad)), 0);
    size_t used, made;
    assert_int_equal(imf_zchain_inflate(&z, &in, &out, RESERVE, &used, &made), IMF_ZCHAIN_CORRUPT);
    imf_zchain_end(&z);
    imf_zchain_end(&z); /* twice is harmless */
    assert_false(imf_zchain_active(&z));
    imf_chain_clear(&in);
    imf_chain_clear(&out);
}

/* A client's deflater, kept across messages as RFC 4978 streams are. */
static size_t client_send(z_stream *c, const uint8_t *in, size_t len, int flush, uint8_t *out,
                          size_t cap)
{
    c->next_in = (Bytef *)in;
    c->avail_in = (uInt)len;
    c->next_out = out;
    c->avail_out = (uInt)cap;
    assert_int_equal(deflate(c, flush), Z_OK);
    assert_int_equal(c->avail_in, 0);
    return cap - c->avail_out;
}

/* Inflates everything in into out. */
static void inflate_all(struct imf_zchain *z, struct imf_chain *in, struct imf_chain *out)
{
    for (unsigned rounds = 0; rounds < 1000 && imf_zchain_inflate_pending(z, in); rounds++) {
        size_t used, made;
        int rc = imf_zchain_inflate(z, in, out, RESERVE, &used, &made);
        assert_true(rc == 0 || rc == 1);
    }
}

/* Released at a sync flush, the inflate side keeps only the window: the
 * client's next message, which refers back to the first (it is the same
 * text: a few octets on the wire), still inflates to the text. */
static void test_release_inflate_keeps_window(void **state)
{
    (void)state;
    static uint8_t text[3000], wire[8000], back[3000];
    size_t tlen = make_text(text, sizeof(text), 11);
    struct imf_chain_counters k = {0};
    struct imf_chain in, out, none;
    imf_chain_init(&in, &k);
    imf_chain_init(&out, &k);
    imf_chain_init(&none, &k);
    struct imf_zchain z = {0};
    assert_int_equal(imf_zchain_start(&z, 1, 32768), 0);
    z_stream c = {0};
    assert_int_equal(deflateInit2(&c, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY), Z_OK);

    size_t w1 = client_send(&c, text, tlen, Z_SYNC_FLUSH, wire, sizeof(wire));
    assert_int_equal(imf_chain_append(&in, wire, w1), 0);
    inflate_all(&z, &in, &out);
    assert_int_equal(out.bytes, tlen);
    imf_chain_consume(&out, tlen);

    imf_zchain_release(&z, &in, &none);
    assert_null(z.st->zin);
    assert_null(z.st->zout);
    assert_int_equal(z.st->dict_len, tlen);
    assert_true(imf_zchain_active(&z));
    assert_false(imf_zchain_releasable(&z));

    size_t w2 = client_send(&c, text, tlen, Z_SYNC_FLUSH, wire, sizeof(wire));
    assert_true(w2 < 64); /* a back reference, not the text again */
    assert_int_equal(imf_chain_append(&in, wire, w2), 0);
    inflate_all(&z, &in, &out);
    assert_non_null(z.st->zin);
    assert_null(z.st->dict);
    assert_int_equal(out.bytes, tlen);
    assert_int_equal(imf_chain_copy_out(&out, back, tlen), tlen);
    assert_memory_equal(back, text, tlen);
    assert_int_equal(imf_zchain_inflated(&z), 2 * tlen);
    assert_int_equal(imf_zchain_inflated_from(&z), w1 + w2);

    deflateEnd(&c);
    imf_zchain_end(&z);
    imf_chain_clear(&in);
    imf_chain_clear(&out);
    assert_int_equal(k.bytes, 0);
}

/* Stopped inside a block (half a message received), the inflate side holds
 * bits and block state no window carries: it is kept, and the rest of the
 * message inflates as if nothing had been asked. */
static void test_release_inflate_not_inside_block(void **state)
{
    (void)state;
    static uint8_t text[20000], wire[30000], back[20000];
    size_t tlen = make_text(text, sizeof(text), 5);
    struct imf_chain_counters k = {0};
    struct imf_chain in, out, none;
    imf_chain_init(&in, &k);
    imf_chain_init(&out, &k);
    imf_chain_init(&none, &k);
    struct imf_zchain z = {0};
    assert_int_equal(imf_zchain_start(&z, 1, 32768), 0);
    size_t wlen = client_deflate(text, tlen, wire, sizeof(wire));
    assert_int_equal(imf_chain_append(&in, wire, wlen / 2), 0);
    inflate_all(&z, &in, &out);
    imf_zchain_release(&z, &in, &none);
    assert_non_null(z.st->zin);
    assert_null(z.st->zout);
    assert_false(imf_zchain_releasable(&z)); /* until more input */
    assert_int_equal(imf_chain_append(&in, wire + wlen / 2, wlen - wlen / 2), 0);
    inflate_all(&z, &in, &out);
    assert_int_equal(out.bytes, tlen);
    assert_int_equal(imf_chain_copy_out(&out, back, tlen), tlen);
    assert_memory_equal(back, text, tlen);
    imf_zchain_release(&z, &in, &none);
    assert_null(z.st->zin); /* now at the sync flush's boundary */
    imf_zchain_end(&z);
    imf_chain_clear(&in);
    imf_chain_clear(&out);
}

/* The deflate side released after a sync flush starts afresh; the client's
 * one inflater reads both parts as one stream. */
static void test_release_deflate_continues_stream(void **state)
{
    (void)state;
    static uint8_t text[5000], back[10000];
    size_t tlen = make_text(text, sizeof(text), 9);
    struct imf_chain_counters k = {0};
    struct imf_chain src, out, none;
    imf_chain_init(&src, &k);
    imf_chain_init(&out, &k);
    imf_chain_init(&none, &k);
    struct imf_zchain z = {0};
    assert_int_equal(imf_zchain_start(&z, 1, 32768), 0);
    z_stream c = {0};
    assert_int_equal(inflateInit2(&c, -15), Z_OK);
    size_t got = 0;
    for (int part = 0; part < 2; part++) {
        uint64_t used = 0, made = 0;
        assert_int_equal(imf_chain_append(&src, text, tlen), 0);
        assert_int_equal(imf_zchain_deflate(&z, &src, &out, RESERVE, SIZE_MAX, &used, &made), 0);
        assert_int_equal(used, tlen);
        assert_int_equal(src.bytes, 0);
        imf_zchain_release(&z, &none, &src);
        assert_null(z.st->zout);
        size_t avail;
        const uint8_t *p = imf_chain_peek(&out, &avail);
        assert_int_equal(avail, out.bytes);
        c.next_in = (Bytef *)p;
        c.avail_in = (uInt)avail;
        c.next_out = back + got;
        c.avail_out = (uInt)(sizeof(back) - got);
        int rc = inflate(&c, Z_SYNC_FLUSH);
        assert_true(rc == Z_OK);
        assert_int_equal(c.avail_in, 0);
        got = sizeof(back) - c.avail_out;
        imf_chain_consume(&out, avail);
        assert_int_equal(got, (size_t)(part + 1) * tlen);
    }
    assert_memory_equal(back, text, tlen);
    assert_memory_equal(back + tlen, text, tlen);
    inflateEnd(&c);
    imf_zchain_end(&z);
    imf_chain_clear(&src);
    imf_chain_clear(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_inflate_any_slicing),
        cmocka_unit_test(test_deflate_round_trip_and_high_mark),
        cmocka_unit_test(test_corrupt_input),
        cmocka_unit_test(test_release_inflate_keeps_window),
        cmocka_unit_test(test_release_inflate_not_inside_block),
        cmocka_unit_test(test_release_deflate_continues_stream),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
