/* bodies.h: the message bodies the load client and the sink agree on.
 *
 * Both programs generate the same bytes from the same seed, so either side
 * can check what the proxy relayed without storing anything: the sink
 * checks each APPEND's CRC-32 against the one the client announced, the
 * client compares each FETCH body with the one it computes itself. The
 * text looks like mail (76-character lines of lowercase words), so DEFLATE
 * finds in it what it finds in real messages, roughly. */
#ifndef IMF_BENCH_BODIES_H
#define IMF_BENCH_BODIES_H

#include <stddef.h>
#include <stdint.h>

/* The flag an APPEND carries its body's CRC-32 in: "$crc32-" + 8 hex digits
 * (an IMAP keyword, so every proxy passes it through untouched). */
#define BENCH_CRC_FLAG "$crc32-"

/* The size of the body FETCH returns for message number n (1..), 1 to 4 KiB. */
static inline size_t bench_fetch_size(uint64_t n)
{
    return 1024 + (size_t)(n % 13) * 256;
}

/* Fills out[0..len) with the text of seed: words of 2..9 letters, lines of
 * at most 76 characters ended by CRLF. Cheap: one xorshift step per word. */
static inline void bench_body(uint8_t *out, size_t len, uint64_t seed)
{
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull;
    size_t col = 0;
    size_t i = 0;
    while (i < len) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        size_t word = 2 + (size_t)(x % 8);
        if (col + word + 1 > 76) {
            out[i++] = '\r';
            if (i < len)
                out[i++] = '\n';
            col = 0;
            continue;
        }
        for (size_t k = 0; k < word && i < len; k++)
            out[i++] = (uint8_t)('a' + (x >> (8 + 5 * k)) % 26);
        if (i < len)
            out[i++] = ' ';
        col += word + 1;
    }
}

#endif
