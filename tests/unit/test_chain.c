/* unit.chain: property tests of the buffer chains.
 *
 * Every test drives chains with randomised operations (fixed seeds, bounded
 * counts) against a plain byte-array model, and checks after every step that
 * the bytes are the model's, and that the shared counters equal the sum of
 * what the chains hold: never negative, and back to zero at the end. */
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "imapfront/chain.h"

/* xorshift64*: reproducible and independent of the C library's rand(). */
static uint64_t rng_state;
static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ULL;
}
static size_t rnd_below(size_t n)
{
    return n == 0 ? 0 : (size_t)(rnd() % n);
}

/* A model of one chain: the bytes it must hold, in order. */
struct model {
    uint8_t *data;
    size_t len, cap;
};

static void model_push(struct model *m, const uint8_t *p, size_t n)
{
    if (n == 0)
        return;
    if (m->len + n > m->cap) {
        m->cap = (m->len + n) * 2;
        m->data = realloc(m->data, m->cap);
        assert_non_null(m->data);
    }
    memcpy(m->data + m->len, p, n);
    m->len += n;
}

static void model_pop(struct model *m, size_t n)
{
    if (n > 0)
        memmove(m->data, m->data + n, m->len - n);
    m->len -= n;
}

/* The chain holds exactly the model's bytes. */
static void check_same(const struct imf_chain *c, const struct model *m)
{
    assert_int_equal(c->bytes, m->len);
    uint8_t *buf = malloc(m->len + 1);
    assert_non_null(buf);
    assert_int_equal(imf_chain_copy_out(c, buf, m->len + 1), m->len);
    assert_memory_equal(buf, m->data, m->len);
    free(buf);
    /* The iovec view covers the same bytes in the same order. */
    struct imf_iovec iov[64];
    size_t total, off = 0;
    unsigned n = imf_chain_iov(c, iov, 64, SIZE_MAX, &total);
    for (unsigned i = 0; i < n; i++) {
        assert_memory_equal(iov[i].base, m->data + off, iov[i].len);
        off += iov[i].len;
    }
    assert_int_equal(off, total);
    size_t peek_len;
    const uint8_t *p = imf_chain_peek(c, &peek_len);
    if (m->len == 0) {
        assert_int_equal(peek_len, 0);
    } else {
        assert_non_null(p);
        assert_true(peek_len > 0 && peek_len <= m->len);
        assert_memory_equal(p, m->data, peek_len);
    }
}

static void check_counters(const struct imf_chain_counters *k, struct imf_chain *chains, size_t n)
{
    int64_t bytes = 0, links = 0;
    for (size_t i = 0; i < n; i++) {
        bytes += (int64_t)chains[i].bytes;
        links += chains[i].links;
        /* Blocks stay densely packed: every block but the two ends holds at
         * least IMF_SPLICE_MIN bytes (reads leave at most IMF_READ_MIN - 1
         * unused, splices relink only blocks holding IMF_SPLICE_MIN). */
        assert_true(chains[i].links <= chains[i].bytes / IMF_SPLICE_MIN + 2);
    }
    assert_true(atomic_load(&k->bytes) >= 0);
    assert_true(atomic_load(&k->links) >= 0);
    assert_int_equal(atomic_load(&k->bytes), bytes);
    assert_int_equal(atomic_load(&k->links), links);
}

static void fill(uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)rnd();
}

/* Random appends, reserve/commit pairs (including empty commits, as a read
 * that returns nothing), consumes, splices and clears across four chains
 * that share one set of counters. */
static void test_random_operations(void **state)
{
    (void)state;
    enum { CHAINS = 4, STEPS = 20000 };
    struct imf_chain_counters k = {0};
    struct imf_chain c[CHAINS];
    struct model m[CHAINS];
    memset(m, 0, sizeof(m));
    for (int i = 0; i < CHAINS; i++)
        imf_chain_init(&c[i], &k);
    rng_state = 0x9e3779b97f4a7c15ULL;
    uint8_t *buf = malloc(3 * IMF_BLOCK_DATA);
    assert_non_null(buf);

    for (int step = 0; step < STEPS; step++) {
        int i = (int)rnd_below(CHAINS);
        /* Sizes favour the edges: tiny, around a block, several blocks. */
        size_t sizes[] = {rnd_below(8), rnd_below(IMF_BLOCK_DATA + 2),
                          IMF_BLOCK_DATA - 1 + rnd_below(3), rnd_below(3 * IMF_BLOCK_DATA)};
        size_t n = sizes[rnd_below(4)];
        switch (rnd_below(6)) {
        case 0:
        case 1:
            fill(buf, n);
            assert_int_equal(imf_chain_append(&c[i], buf, n), 0);
            model_push(&m[i], buf, n);
            break;
        case 2: {
            uint8_t *dst;
            size_t room;
            size_t want = 1 + rnd_below(IMF_READ_MIN);
            assert_int_equal(imf_chain_reserve(&c[i], want, &dst, &room), 0);
            assert_true(room >= want);
            size_t w = rnd_below(4) == 0 ? 0 : rnd_below(room + 1);
            fill(dst, w);
            model_push(&m[i], dst, w);
            imf_chain_commit(&c[i], w);
            break;
        }
        case 3:
        case 4: {
            size_t take = rnd_below(m[i].len + 1);
            imf_chain_consume(&c[i], take);
            model_pop(&m[i], take);
            break;
        }
        case 5:
            if (rnd_below(20) == 0) {
                imf_chain_clear(&c[i]);
                m[i].len = 0;
            } else {
                /* Splice a prefix to another chain, as the relay does with
                 * literal payloads. */
                int j = (int)((i + 1 + (int)rnd_below(CHAINS - 1)) % CHAINS);
                size_t take = rnd_below(m[i].len + 1);
                assert_int_equal(imf_chain_splice(&c[j], &c[i], take), 0);
                model_push(&m[j], m[i].data, take);
                model_pop(&m[i], take);
                check_same(&c[j], &m[j]);
            }
            break;
        }
        check_same(&c[i], &m[i]);
        check_counters(&k, c, CHAINS);
    }
    for (int i = 0; i < CHAINS; i++) {
        imf_chain_clear(&c[i]);
        free(m[i].data);
    }
    assert_int_equal(atomic_load(&k.bytes), 0);
    assert_int_equal(atomic_load(&k.links), 0);
    free(buf);
}

/* An all-zero chain is empty and owns nothing; clearing it is harmless. */
static void test_zero_chain_is_empty(void **state)
{
    (void)state;
    struct imf_chain c;
    memset(&c, 0, sizeof(c));
    size_t n = 99;
    assert_null(imf_chain_peek(&c, &n));
    assert_int_equal(n, 0);
    imf_chain_consume(&c, 0);
    imf_chain_clear(&c);
    assert_int_equal(c.links, 0);
    assert_null(c.head);
}

/* A read that brings nothing (EOF, error) leaves no block behind, and a
 * drained chain releases every block: idle sessions hold no memory. */
static void test_idle_chain_holds_no_block(void **state)
{
    (void)state;
    struct imf_chain_counters k = {0};
    struct imf_chain c;
    imf_chain_init(&c, &k);
    uint8_t *p;
    size_t room;
    assert_int_equal(imf_chain_reserve(&c, IMF_BLOCK_DATA, &p, &room), 0);
    assert_int_equal(atomic_load(&k.links), 1);
    imf_chain_commit(&c, 0);
    assert_int_equal(c.links, 0);
    assert_int_equal(atomic_load(&k.links), 0);
    assert_int_equal(imf_chain_append(&c, "abc", 3), 0);
    imf_chain_consume(&c, 3);
    assert_int_equal(c.links, 0);
    assert_int_equal(atomic_load(&k.links), 0);
    assert_int_equal(atomic_load(&k.bytes), 0);
}

/* The relay's backpressure rule, on real chains: a reader that stops at
 * the high mark and resumes at the low mark, reading random amounts up to
 * one block per read, while a writer drains random amounts at random times.
 * What the direction holds never exceeds the bound plus one read, and every
 * byte arrives in order. */
static void test_backpressure_bound(void **state)
{
    (void)state;
    const size_t high = 256 * 1024, low = high / 2;
    struct imf_chain_counters k = {0};
    struct imf_chain rx, tx;
    imf_chain_init(&rx, &k);
    imf_chain_init(&tx, &k);
    rng_state = 0x1234567887654321ULL;
    uint64_t produced = 0, delivered = 0, check_seq = 0;
    bool reading = true;
    size_t peak = 0;
    for (int step = 0; step < 200000 && delivered < 64u * 1024 * 1024; step++) {
        size_t held = rx.bytes + tx.bytes;
        if (reading && held >= high)
            reading = false;
        else if (!reading && held <= low)
            reading = true;
        if (reading && rnd_below(2) == 0) {
            uint8_t *p;
            size_t room;
            assert_int_equal(imf_chain_reserve(&rx, IMF_READ_MIN, &p, &room), 0);
            size_t n = rnd_below(room + 1);
            for (size_t i = 0; i < n; i++)
                p[i] = (uint8_t)(produced + i);
            produced += n;
            imf_chain_commit(&rx, n);
        }
        /* The relay moves what it read towards the writer while under the
         * mark, as process_commands does. */
        while (rx.bytes > 0 && tx.bytes < high) {
            size_t n;
            const uint8_t *p = imf_chain_peek(&rx, &n);
            assert_int_equal(imf_chain_append(&tx, p, n), 0);
            imf_chain_consume(&rx, n);
        }
        if (rnd_below(3) == 0 && tx.bytes > 0) {
            size_t take = rnd_below(tx.bytes + 1);
            uint8_t tmp[4096];
            size_t left = take;
            while (left > 0) {
                size_t n = imf_chain_copy_out(&tx, tmp, left < sizeof(tmp) ? left : sizeof(tmp));
                for (size_t i = 0; i < n; i++)
                    assert_int_equal(tmp[i], (uint8_t)(check_seq + i));
                check_seq += n;
                imf_chain_consume(&tx, n);
                left -= n;
            }
            delivered += take;
        }
        held = rx.bytes + tx.bytes;
        if (held > peak)
            peak = held;
        assert_true(held <= high + IMF_BLOCK_DATA);
        assert_int_equal(atomic_load(&k.bytes), (int64_t)held);
    }
    assert_true(delivered > 0);
    imf_chain_clear(&rx);
    imf_chain_clear(&tx);
    assert_int_equal(atomic_load(&k.bytes), 0);
    assert_int_equal(atomic_load(&k.links), 0);
    print_message("# chain: peak held %zu bytes for a bound of %zu (+%d per read), %llu bytes "
                  "delivered\n",
                  peak, high, IMF_BLOCK_DATA, (unsigned long long)delivered);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_zero_chain_is_empty),
        cmocka_unit_test(test_idle_chain_holds_no_block),
        cmocka_unit_test(test_random_operations),
        cmocka_unit_test(test_backpressure_bound),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    imf_block_pool_drain();
    return rc;
}
