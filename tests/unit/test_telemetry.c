/* unit.telemetry: command latency bookkeeping and the anomaly detectors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "imapfront/telemetry.h"

static struct imf_telemetry_stats st;

static void sent(struct imf_tracker **t, const char *tag, const char *name, const char *line,
                 uint64_t now)
{
    assert_int_equal(imf_telemetry_sent(t, tag, name, (const uint8_t *)line, strlen(line), now), 0);
    assert_non_null(*t);
}

static void test_latency_buckets(void **state)
{
    (void)state;
    memset(&st, 0, sizeof(st));
    struct imf_tracker *t = NULL;
    sent(&t, "a1", "UID FETCH", "a1 UID FETCH 1:* (FLAGS)\r\n", 1000);
    sent(&t, "a2", "NOOP", "a2 NOOP\r\n", 1000);
    sent(&t, "a3", "XYZZY", "a3 XYZZY\r\n", 1000);
    /* Completions in any order; each lands in its command's bucket. */
    assert_true(imf_telemetry_tagged(&t, &st, "a2", 1000 + 400));     /* 0.4 ms */
    assert_true(imf_telemetry_tagged(&t, &st, "a1", 1000 + 70000));   /* 70 ms */
    assert_true(imf_telemetry_tagged(&t, &st, "a3", 1000 + 9000000)); /* 9 s */
    assert_null(t); /* nothing in flight: nothing held */
    assert_int_equal(atomic_load(&st.lat_buckets[IMF_TCMD_NOOP][0]), 1);
    assert_int_equal(atomic_load(&st.lat_buckets[IMF_TCMD_FETCH][4]), 1); /* <= 100 ms */
    assert_int_equal(atomic_load(&st.lat_buckets[IMF_TCMD_OTHER][8]), 1); /* <= 30 s */
    assert_int_equal(atomic_load(&st.lat_sum_us[IMF_TCMD_FETCH]), 70000);
    /* A tag nobody sent is an anomaly; a known tag cannot complete twice. */
    assert_false(imf_telemetry_tagged(&t, &st, "zz", 5000));
    assert_false(imf_telemetry_tagged(&t, &st, "a1", 5000));
    assert_int_equal(atomic_load(&st.anomalies[IMF_ANOMALY_UNKNOWN_TAG]), 2);
}

static void test_classify(void **state)
{
    (void)state;
    assert_int_equal(imf_telemetry_classify("UID FETCH"), IMF_TCMD_FETCH);
    assert_int_equal(imf_telemetry_classify("EXAMINE"), IMF_TCMD_SELECT);
    assert_int_equal(imf_telemetry_classify("UID MOVE"), IMF_TCMD_MOVE);
    assert_int_equal(imf_telemetry_classify("GETQUOTAROOT"), IMF_TCMD_OTHER);
}

/* More commands in flight than slots: the extra ones are not measured and
 * their completions are not anomalies. */
static void test_overflow(void **state)
{
    (void)state;
    memset(&st, 0, sizeof(st));
    struct imf_tracker *t = NULL;
    char tag[8];
    for (int i = 0; i < IMF_TRACK_SLOTS + 3; i++) {
        snprintf(tag, sizeof(tag), "t%d", i);
        sent(&t, tag, "NOOP", "x NOOP\r\n", 0);
    }
    for (int i = 0; i < IMF_TRACK_SLOTS + 3; i++) {
        snprintf(tag, sizeof(tag), "t%d", i);
        assert_true(imf_telemetry_tagged(&t, &st, tag, 10));
        /* Held exactly while something is in flight. */
        assert_true((t == NULL) == (i == IMF_TRACK_SLOTS + 2));
    }
    assert_int_equal(atomic_load(&st.anomalies[IMF_ANOMALY_UNKNOWN_TAG]), 0);
    assert_int_equal(atomic_load(&st.lat_buckets[IMF_TCMD_NOOP][0]), IMF_TRACK_SLOTS);
}

/* An idle session holds no tracker; one in flight at a time stays at one
 * slot however many commands pass; the response detectors accept NULL. */
static void test_idle_holds_nothing(void **state)
{
    (void)state;
    memset(&st, 0, sizeof(st));
    struct imf_tracker *t = NULL;
    assert_false(imf_telemetry_response_literal(t, &st, 5000000));
    assert_false(imf_telemetry_tagged(&t, &st, "x", 1));
    assert_null(t);
    for (int i = 0; i < 100; i++) {
        sent(&t, "n", "NOOP", "n NOOP\r\n", 0);
        assert_int_equal(t->cap, 1);
        assert_true(imf_telemetry_tagged(&t, &st, "n", 1));
        assert_null(t);
    }
    /* A tag too long to keep is counted, and its completion is no anomaly. */
    const char *long_tag = "0123456789012345678901234567890123456789";
    sent(&t, long_tag, "NOOP", "x NOOP\r\n", 0);
    assert_true(imf_telemetry_tagged(&t, &st, long_tag, 1));
    assert_null(t);
    sent(&t, "f", "FETCH", "f FETCH 1 (BODY[]<0.10>)\r\n", 0);
    imf_telemetry_free(&t);
    assert_null(t);
    assert_int_equal(atomic_load(&st.anomalies[IMF_ANOMALY_UNKNOWN_TAG]), 1);
}

static void test_fetch_oversize(void **state)
{
    (void)state;
    memset(&st, 0, sizeof(st));
    struct imf_tracker *t = NULL;
    sent(&t, "p", "UID FETCH", "p UID FETCH 7 (BODY.PEEK[]<0.100> BODY[TEXT]<50.20>)\r\n", 0);
    assert_false(imf_telemetry_response_literal(t, &st, 100));
    assert_true(imf_telemetry_response_literal(t, &st, 101));
    assert_int_equal(atomic_load(&st.anomalies[IMF_ANOMALY_FETCH_OVERSIZE]), 1);
    /* A whole-body FETCH in flight too: any size may be legitimate. */
    sent(&t, "w", "FETCH", "w FETCH 1 (BODY[])\r\n", 0);
    assert_false(imf_telemetry_response_literal(t, &st, 5000000));
    imf_telemetry_tagged(&t, &st, "w", 1);
    /* ENVELOPE / RFC822 FETCHes carry literals of any size as well. */
    sent(&t, "e", "FETCH", "e FETCH 1 (RFC822.HEADER)\r\n", 0);
    assert_false(imf_telemetry_response_literal(t, &st, 5000000));
    imf_telemetry_free(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_latency_buckets),    cmocka_unit_test(test_classify),
        cmocka_unit_test(test_overflow),           cmocka_unit_test(test_fetch_oversize),
        cmocka_unit_test(test_idle_holds_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
