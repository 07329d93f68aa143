/* backend: passive health's rule and admission's counts and token bucket.
 * The health table is process-wide, so every test uses addresses of its
 * own. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "imapfront/backend.h"
#include "imapfront/config.h"

static struct imf_config *config(const char *backend_keys)
{
    char text[1024];
    snprintf(text, sizeof(text),
             "[listen.a]\naddress = 127.0.0.1:0\n[tls]\ncertificate = c.pem\n"
             "private_key = k.pem\n[backend]\n%s",
             backend_keys);
    struct imf_config *cfg = NULL;
    char err[256] = "";
    int rc = imf_config_parse("t.ini", text, &cfg, err, sizeof(err));
    if (rc != 0)
        fail_msg("%s", err);
    return cfg;
}

static const struct imf_pool_config *pool_of(const struct imf_config *cfg)
{
    return imf_config_pool(cfg, IMF_POOL_DEFAULT);
}

static bool down(const struct imf_config *cfg, size_t index)
{
    struct imf_backend_info info[IMF_BACKEND_MAX];
    imf_backend_info(pool_of(cfg), info, IMF_BACKEND_MAX);
    return info[index].down;
}

/* A server that completed a connect recently is slow, not down: its
 * timeouts do not count; an outright failure does. */
static void test_timeouts_after_a_completed_connect_do_not_count(void **state)
{
    (void)state;
    struct imf_config *cfg = config("servers = 192.0.2.1:143, 192.0.2.2:143\ndown_after = 1\n");
    imf_backend_report(pool_of(cfg), 0, IMF_CONNECT_OK);
    for (int i = 0; i < 5; i++)
        imf_backend_report(pool_of(cfg), 0, IMF_CONNECT_TIMEOUT);
    assert_false(down(cfg, 0));
    imf_backend_report(pool_of(cfg), 0, IMF_CONNECT_FAILED);
    assert_true(down(cfg, 0));
    assert_false(down(cfg, 1));
    imf_config_unref(cfg);
}

/* A server never seen to complete a connect: its timeouts count. */
static void test_timeouts_of_a_silent_server_count(void **state)
{
    (void)state;
    struct imf_config *cfg = config("servers = 192.0.2.3:143, 192.0.2.4:143\ndown_after = 2\n");
    imf_backend_report(pool_of(cfg), 0, IMF_CONNECT_TIMEOUT);
    assert_false(down(cfg, 0));
    imf_backend_report(pool_of(cfg), 0, IMF_CONNECT_TIMEOUT);
    assert_true(down(cfg, 0));
    imf_config_unref(cfg);
}

/* Passive health never takes out the last server that is up. */
static void test_last_server_up_fails_open(void **state)
{
    (void)state;
    struct imf_config *cfg = config("servers = 192.0.2.5:143, 192.0.2.6:143\ndown_after = 1\n");
    imf_backend_report(pool_of(cfg), 0, IMF_CONNECT_FAILED);
    assert_true(down(cfg, 0));
    for (int i = 0; i < 3; i++)
        imf_backend_report(pool_of(cfg), 1, IMF_CONNECT_FAILED);
    assert_false(down(cfg, 1));
    assert_true(imf_backend_any_up(pool_of(cfg)));
    uint8_t order[2];
    size_t up = 0;
    assert_int_equal(imf_backend_plan(pool_of(cfg), order, &up), 2);
    assert_int_equal(up, 1);
    assert_int_equal(order[0], 1);
    imf_config_unref(cfg);
}

static void test_limits_count_sessions_and_connects(void **state)
{
    (void)state;
    struct imf_config *cfg =
        config("servers = 192.0.2.7:143\nmax_sessions = 2\nmax_connecting = 1\nconnect_rate = 0\n");
    uint64_t wait = 0;
    assert_int_equal(imf_backend_acquire(pool_of(cfg), 0, pool_of(cfg), &wait), IMF_ADMIT_OK);
    assert_int_equal(imf_backend_acquire(pool_of(cfg), 0, pool_of(cfg), &wait),
                     IMF_ADMIT_FULL); /* connecting */
    imf_backend_connect_done(pool_of(cfg), 0);
    assert_int_equal(imf_backend_acquire(pool_of(cfg), 0, pool_of(cfg), &wait), IMF_ADMIT_OK);
    imf_backend_connect_done(pool_of(cfg), 0);
    assert_int_equal(imf_backend_acquire(pool_of(cfg), 0, pool_of(cfg), &wait),
                     IMF_ADMIT_FULL); /* sessions */
    imf_backend_release(pool_of(cfg), 0);
    assert_int_equal(imf_backend_acquire(pool_of(cfg), 0, pool_of(cfg), &wait), IMF_ADMIT_OK);
    struct imf_backend_info info[1];
    imf_backend_info(pool_of(cfg), info, 1);
    assert_int_equal(info[0].sessions, 2);
    assert_int_equal(info[0].connecting, 1);
    imf_backend_connect_done(pool_of(cfg), 0);
    imf_backend_release(pool_of(cfg), 0);
    imf_backend_release(pool_of(cfg), 0);
    imf_config_unref(cfg);
}

/* A server new to the process is warming: a first bucket of connect_rate
 * connects, then one every 1/connect_rate s. */
static void test_connect_rate_bucket(void **state)
{
    (void)state;
    struct imf_config *cfg = config("servers = 192.0.2.8:143\nconnect_rate = 5\n");
    uint64_t wait = 0;
    for (int i = 0; i < 5; i++) {
        assert_int_equal(imf_backend_acquire(pool_of(cfg), 0, pool_of(cfg), &wait), IMF_ADMIT_OK);
        imf_backend_connect_done(pool_of(cfg), 0);
        imf_backend_release(pool_of(cfg), 0);
    }
    assert_int_equal(imf_backend_acquire(pool_of(cfg), 0, pool_of(cfg), &wait), IMF_ADMIT_RATE);
    assert_true(wait > 0 && wait <= 200);
    struct imf_backend_info info[1];
    imf_backend_info(pool_of(cfg), info, 1);
    assert_true(info[0].warming);
    assert_int_equal(info[0].sessions, 0); /* a refused acquire holds nothing */
    assert_int_equal(info[0].connecting, 0);
    imf_config_unref(cfg);
}

/* The oldest head of all workers' queues goes first. */
static void test_queue_heads(void **state)
{
    (void)state;
    imf_backend_queue_head(0, 100);
    imf_backend_queue_head(1, 50);
    assert_false(imf_backend_queue_first(0, 100));
    assert_true(imf_backend_queue_first(1, 50));
    imf_backend_queue_head(1, 0); /* worker 1's queue is empty */
    assert_true(imf_backend_queue_first(0, 100));
    imf_backend_queue_head(0, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_timeouts_after_a_completed_connect_do_not_count),
        cmocka_unit_test(test_timeouts_of_a_silent_server_count),
        cmocka_unit_test(test_last_server_up_fails_open),
        cmocka_unit_test(test_limits_count_sessions_and_connects),
        cmocka_unit_test(test_connect_rate_bucket),
        cmocka_unit_test(test_queue_heads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
