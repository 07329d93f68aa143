/* throttle: what a shared store merges into the table (imf_throttle_merge)
 * and the keys it is told about (imf_throttle_keys). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "imapfront/throttle.h"

#define T0 1000000000ull /* a monotonic "now", in ms */

static const struct imf_throttle_params params = {
    .fail_free = 3,
    .fail_ban = 6,
    .address_fail_free = 10,
    .address_fail_ban = 30,
    .window_ms = 600000,
    .ban_ms = 600000,
    .delay_max_ms = 16000,
    .user_lockout = false,
};

static struct sockaddr_in v4(const char *text)
{
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    assert_int_equal(inet_pton(AF_INET, text, &a.sin_addr), 1);
    return a;
}

static enum imf_throttle_verdict begin(const char *addr, const char *user, uint64_t now,
                                       uint64_t *out_delay)
{
    struct sockaddr_in a = v4(addr);
    return imf_throttle_begin(&params, (struct sockaddr *)&a, user, strlen(user), now, out_delay);
}

static void end(const char *addr, const char *user, bool ok, uint64_t now)
{
    struct sockaddr_in a = v4(addr);
    imf_throttle_end(&params, (struct sockaddr *)&a, user, strlen(user), 0, ok, false, now);
}

static int keys(const char *addr, const char *user, uint8_t out[3][IMF_THROTTLE_KEY_LEN])
{
    struct sockaddr_in a = v4(addr);
    return imf_throttle_keys(&params, (struct sockaddr *)&a, user, strlen(user), out);
}

static int setup(void **state)
{
    (void)state;
    return imf_throttle_setup(1000);
}

/* Keys name the same record in every process: the user part is not keyed
 * by the process's random key, and user names fold case. */
static void test_keys_are_stable_and_fold_case(void **state)
{
    (void)state;
    uint8_t a[3][IMF_THROTTLE_KEY_LEN], b[3][IMF_THROTTLE_KEY_LEN];
    assert_int_equal(keys("192.0.2.1", "Demo", a), 2);
    assert_int_equal(keys("192.0.2.1", "demo", b), 2);
    assert_memory_equal(a, b, sizeof(a[0]) * 2);
    assert_int_equal(imf_throttle_ban_threshold(&params, a[0]), 30); /* address */
    assert_int_equal(imf_throttle_ban_threshold(&params, a[1]), 6);  /* address, user */
    /* The user name is not in the key in clear. */
    assert_null(memmem(a[1], IMF_THROTTLE_KEY_LEN, "demo", 4));
    keys("192.0.2.1", "alice", b);
    assert_memory_not_equal(a[1], b[1], IMF_THROTTLE_KEY_LEN);
    assert_memory_equal(a[0], b[0], IMF_THROTTLE_KEY_LEN);
}

/* Another replica's failures: past fail_free the next attempt is delayed,
 * at fail_ban it is refused, for the time the store says is left. */
static void test_merged_failures_delay_then_ban(void **state)
{
    (void)state;
    uint8_t k[3][IMF_THROTTLE_KEY_LEN];
    keys("192.0.2.10", "demo", k);
    imf_throttle_merge(&params, k[1], 3, 590000, T0);
    uint64_t delay;
    assert_int_equal(begin("192.0.2.10", "demo", T0, &delay), IMF_THROTTLE_PASS);
    assert_int_equal(delay, 1000);
    end("192.0.2.10", "demo", false, T0); /* 4 now */
    imf_throttle_merge(&params, k[1], 6, 600000, T0 + 1);
    assert_int_equal(begin("192.0.2.10", "demo", T0 + 2, &delay), IMF_THROTTLE_BAN);
    /* The ban lasts what the store said, then the record is forgotten. */
    assert_int_equal(begin("192.0.2.10", "demo", T0 + 1 + 600000 + 1, &delay), IMF_THROTTLE_PASS);
    assert_int_equal(delay, 0);
    end("192.0.2.10", "demo", true, T0 + 600002);
}

/* A smaller count (the store forgot, or a stale read) never lowers ours. */
static void test_merge_never_lowers(void **state)
{
    (void)state;
    uint8_t k[3][IMF_THROTTLE_KEY_LEN];
    keys("192.0.2.20", "demo", k);
    uint64_t delay;
    for (int i = 0; i < 5; i++) {
        assert_int_equal(begin("192.0.2.20", "demo", T0, &delay), IMF_THROTTLE_PASS);
        end("192.0.2.20", "demo", false, T0);
    }
    imf_throttle_merge(&params, k[1], 1, 600000, T0);
    assert_int_equal(begin("192.0.2.20", "demo", T0, &delay), IMF_THROTTLE_PASS);
    assert_int_equal(delay, 4000); /* 5 failures: 2 past fail_free */
    end("192.0.2.20", "demo", false, T0);
    assert_int_equal(begin("192.0.2.20", "demo", T0, &delay), IMF_THROTTLE_BAN);
}

/* The user's success elsewhere (count 0) clears the (address, user)
 * record, never the address's own. */
static void test_merged_success_clears_the_pair(void **state)
{
    (void)state;
    uint8_t k[3][IMF_THROTTLE_KEY_LEN];
    keys("192.0.2.30", "demo", k);
    imf_throttle_merge(&params, k[0], 29, 600000, T0);
    imf_throttle_merge(&params, k[1], 5, 600000, T0);
    uint64_t delay;
    assert_int_equal(begin("192.0.2.30", "demo", T0, &delay), IMF_THROTTLE_PASS);
    end("192.0.2.30", "demo", false, T0); /* address 30: banned */
    imf_throttle_merge(&params, k[1], 0, 0, T0);
    imf_throttle_merge(&params, k[0], 0, 0, T0);
    assert_int_equal(begin("192.0.2.30", "other", T0, &delay), IMF_THROTTLE_BAN);
}

/* user_lockout off: a replica's per-user record is not taken in. */
static void test_user_records_ignored_without_user_lockout(void **state)
{
    (void)state;
    struct imf_throttle_params lockout = params;
    lockout.user_lockout = true;
    struct sockaddr_in a = v4("192.0.2.40");
    uint8_t k[3][IMF_THROTTLE_KEY_LEN];
    assert_int_equal(imf_throttle_keys(&lockout, (struct sockaddr *)&a, "bob", 3, k), 3);
    assert_int_equal(imf_throttle_ban_threshold(&params, k[2]), 0);
    uint64_t records, bans, capacity, after;
    imf_throttle_stats(T0, &records, &bans, &capacity);
    imf_throttle_merge(&params, k[2], 50, 600000, T0);
    imf_throttle_stats(T0, &after, &bans, &capacity);
    assert_int_equal(after, records);
    /* With it, the user is banned from another address too. */
    imf_throttle_merge(&lockout, k[2], 6, 600000, T0);
    struct sockaddr_in other = v4("198.51.100.1");
    uint64_t delay;
    assert_int_equal(imf_throttle_begin(&lockout, (struct sockaddr *)&other, "bob", 3, T0, &delay),
                     IMF_THROTTLE_BAN);
}

/* The users behind one NAT log in together: 100 different users in
 * progress at once from one address all pass, and still do after one of
 * them failed (the address record counts finished failures only). */
static void test_many_users_behind_one_address_pass_at_once(void **state)
{
    (void)state;
    char user[16];
    uint64_t delay;
    for (int i = 0; i < 100; i++) {
        snprintf(user, sizeof(user), "u%d", i);
        assert_int_equal(begin("192.0.2.50", user, T0, &delay), IMF_THROTTLE_PASS);
    }
    end("192.0.2.50", "u0", false, T0);
    for (int i = 100; i < 140; i++) {
        snprintf(user, sizeof(user), "u%d", i);
        assert_int_equal(begin("192.0.2.50", user, T0, &delay), IMF_THROTTLE_PASS);
        assert_int_equal(delay, 0);
    }
    for (int i = 1; i < 140; i++) {
        snprintf(user, sizeof(user), "u%d", i);
        end("192.0.2.50", user, true, T0 + 1);
    }
    /* Finished failures still ban the address: address_fail_ban = 30. */
    for (int i = 0; i < 30; i++) {
        snprintf(user, sizeof(user), "g%d", i);
        assert_int_equal(begin("192.0.2.51", user, T0, &delay), IMF_THROTTLE_PASS);
        end("192.0.2.51", user, false, T0);
    }
    assert_int_equal(begin("192.0.2.51", "someone", T0 + 1, &delay), IMF_THROTTLE_BAN);
}

/* One user from one address: 32 attempts in progress pass, the 33rd is
 * refused; once the first failure is back, attempts in progress count
 * towards fail_ban. */
static void test_one_user_parallel_attempts_are_bounded(void **state)
{
    (void)state;
    uint64_t delay;
    for (int i = 0; i < 32; i++)
        assert_int_equal(begin("192.0.2.60", "carol", T0, &delay), IMF_THROTTLE_PASS);
    assert_int_equal(begin("192.0.2.60", "carol", T0, &delay), IMF_THROTTLE_BAN);
    /* Another user from the same address is not held by carol's burst. */
    assert_int_equal(begin("192.0.2.60", "dave", T0, &delay), IMF_THROTTLE_PASS);
    end("192.0.2.60", "dave", true, T0);
    for (int i = 0; i < 32; i++)
        end("192.0.2.60", "carol", true, T0 + 1);
    assert_int_equal(begin("192.0.2.61", "erin", T0, &delay), IMF_THROTTLE_PASS);
    end("192.0.2.61", "erin", false, T0); /* 1 failure */
    for (int i = 0; i < 5; i++)           /* 1 + 5 in progress = fail_ban */
        assert_int_equal(begin("192.0.2.61", "erin", T0 + 1, &delay), IMF_THROTTLE_PASS);
    assert_int_equal(begin("192.0.2.61", "erin", T0 + 1, &delay), IMF_THROTTLE_BAN);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keys_are_stable_and_fold_case),
        cmocka_unit_test(test_merged_failures_delay_then_ban),
        cmocka_unit_test(test_merge_never_lowers),
        cmocka_unit_test(test_merged_success_clears_the_pair),
        cmocka_unit_test(test_user_records_ignored_without_user_lockout),
        cmocka_unit_test(test_many_users_behind_one_address_pass_at_once),
        cmocka_unit_test(test_one_user_parallel_attempts_are_bounded),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
