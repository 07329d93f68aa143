/* fuzz_framer: libFuzzer harness for the IMAP framer.
 *
 * Input: one selector byte, then the stream. The selector picks the mode,
 * the limits and whether TOO_BIG synchronising literals are skipped (as the
 * proxy does after NO [TOOBIG]). The stream is framed whole, one byte at a
 * time, split in two, and cut at several pseudo-random places derived from
 * the data; every feeding must obey the API contract, give the same
 * normalised events, and agree with the reference model. Any difference
 * aborts. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../unit/framer_corpus/framer_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define RANDOM_FEEDINGS 4

static const uint64_t max_lines[] = {0, 8, 32, 200};
static const uint64_t max_literals[] = {0, 2, 64, 5000};

static void die(const char *what, const char *detail, const struct fc_list *a,
                const struct fc_list *b)
{
    size_t i = a != NULL && b != NULL ? fc_list_diff(a, b) : SIZE_MAX;
    char x[160] = "(none)", y[160] = "(none)";

    if (i != SIZE_MAX && i < a->n)
        fc_format(&a->v[i], x, sizeof(x));
    if (i != SIZE_MAX && i < b->n)
        fc_format(&b->v[i], y, sizeof(y));
    fprintf(stderr, "fuzz_framer: %s: %s", what, detail != NULL ? detail : "");
    if (i != SIZE_MAX)
        fprintf(stderr, " (event %zu: [%s] vs [%s])", i, x, y);
    fputc('\n', stderr);
    abort();
}

static uint64_t mix(uint64_t h)
{
    /* splitmix64 finaliser: cut positions follow the data, so a crash
     * reproduces from the input file alone. */
    h += 0x9e3779b97f4a7c15u;
    h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9u;
    h = (h ^ (h >> 27)) * 0x94d049bb133111ebu;
    return h ^ (h >> 31);
}

static void check_feeding(const struct fc_setup *su, const uint8_t *s, size_t len,
                          const size_t *cuts, size_t ncuts, const struct fc_list *want,
                          size_t want_used, struct fc_list *scratch, const char *what)
{
    size_t used = 0;
    const char *err;

    scratch->n = 0;
    scratch->overflow = false;
    err = fc_feed(su, s, len, cuts, ncuts, scratch, &used);
    if (err != NULL)
        die(what, err, NULL, NULL);
    if (scratch->overflow)
        die(what, "event list overflow", NULL, NULL);
    if (fc_list_diff(want, scratch) != SIZE_MAX)
        die(what, "events differ from the whole feeding", want, scratch);
    if (used != want_used)
        die(what, "consumed a different number of bytes", NULL, NULL);
}

/* Buffers kept across runs: allocating a megabyte per run under ASan would
 * cost more than the framing itself. */
static struct fc_ev *ev_bufs[3];
static size_t *cut_buf;
static size_t buf_len;

static void reserve(size_t len)
{
    if (cut_buf != NULL && len <= buf_len)
        return;
    for (int i = 0; i < 3; i++) {
        free(ev_bufs[i]);
        ev_bufs[i] = malloc((3 * len + 8) * sizeof(struct fc_ev));
    }
    free(cut_buf);
    cut_buf = malloc((len + 1) * sizeof(size_t));
    if (ev_bufs[0] == NULL || ev_bufs[1] == NULL || ev_bufs[2] == NULL || cut_buf == NULL)
        abort();
    buf_len = len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fc_setup su;
    const uint8_t *s;
    size_t len, cap, used = 0, model_used = 0, ncuts;
    struct fc_list whole, model, scratch;
    size_t *cuts;
    uint64_t h = 0xcbf29ce484222325u;
    const char *err;

    if (size == 0)
        return 0;
    su = (struct fc_setup){
        .mode = (data[0] & 1) ? IMF_FRAMER_RESPONSES : IMF_FRAMER_COMMANDS,
        .max_line = max_lines[(data[0] >> 1) & 3],
        .max_literal = max_literals[(data[0] >> 3) & 3],
        .skip_too_big = (data[0] >> 5) & 1,
    };
    s = data + 1;
    len = size - 1;
    /* Normalised events never outnumber three per input byte plus a few. */
    cap = 3 * len + 8;
    reserve(len);
    whole = (struct fc_list){ev_bufs[0], 0, cap, false};
    model = (struct fc_list){ev_bufs[1], 0, cap, false};
    scratch = (struct fc_list){ev_bufs[2], 0, cap, false};
    cuts = cut_buf;

    err = fc_feed(&su, s, len, NULL, 0, &whole, &used);
    if (err != NULL)
        die("whole", err, NULL, NULL);
    if (whole.overflow)
        die("whole", "event list overflow", NULL, NULL);
    err = fc_consistent(&su, &whole, used);
    if (err != NULL)
        die("whole", err, NULL, NULL);
    if (used != len && (whole.n == 0 || whole.v[whole.n - 1].kind != IMF_EV_ERROR))
        die("whole", "lengths do not add up to the stream", NULL, NULL);
    fc_model(&su, s, len, &model, &model_used);
    if (fc_list_diff(&model, &whole) != SIZE_MAX || model_used != used)
        die("model", "framer disagrees with the reference model", &model, &whole);

    /* One byte at a time. */
    for (size_t i = 1; i < len; i++)
        cuts[i - 1] = i;
    check_feeding(&su, s, len, cuts, len > 0 ? len - 1 : 0, &whole, used, &scratch, "bytewise");

    for (size_t i = 0; i < size; i++)
        h = (h ^ data[i]) * 0x100000001b3u;

    /* Two pieces. */
    cuts[0] = len > 0 ? (size_t)(mix(h) % (len + 1)) : 0;
    check_feeding(&su, s, len, cuts, 1, &whole, used, &scratch, "two pieces");

    /* Several cuts, piece sizes on different scales (0 repeats a cut). */
    for (int r = 0; r < RANDOM_FEEDINGS; r++) {
        size_t pos = 0, scale = (size_t)1 << (r * 2); /* 1, 4, 16, 64 */

        ncuts = 0;
        for (;;) {
            h = mix(h);
            pos += (size_t)(h % (scale + 1));
            if (pos > len || ncuts > len)
                break;
            cuts[ncuts++] = pos;
        }
        check_feeding(&su, s, len, cuts, ncuts, &whole, used, &scratch, "random cuts");
    }
    return 0;
}
