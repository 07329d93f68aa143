/* unit.certwatch: file changes seen through a real loop, settled into one
 * callback; unrelated files ignored; the loop closes clean. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "imapfront/certwatch.h"
#include "imapfront/config.h"

struct run {
    uv_timer_t guard; /* ends a wait that sees no callback */
    unsigned calls;
    uint64_t called_at;
    uv_loop_t *loop;
};

static void on_change(void *arg)
{
    struct run *r = arg;
    r->calls++;
    r->called_at = uv_now(r->loop);
    uv_stop(r->loop);
}

static void on_guard(uv_timer_t *t)
{
    uv_stop(t->loop);
}

/* Runs the loop until the callback or ms pass. */
static void wait_for(struct run *r, uint64_t ms)
{
    uv_timer_start(&r->guard, on_guard, ms, 0);
    uv_run(r->loop, UV_RUN_DEFAULT);
    uv_timer_stop(&r->guard);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

static void test_rename_in_place_and_unrelated(void **state)
{
    (void)state;
    char dir[] = "/tmp/imf-test-certwatch-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char cert[256], key[256], tmp[256], other[256], ini[1024];
    snprintf(cert, sizeof(cert), "%s/cert.pem", dir);
    snprintf(key, sizeof(key), "%s/key.pem", dir);
    snprintf(tmp, sizeof(tmp), "%s/cert.pem.tmp", dir);
    snprintf(other, sizeof(other), "%s/other.txt", dir);
    write_file(cert, "one");
    write_file(key, "one");
    snprintf(ini, sizeof(ini),
             "[listen.a]\naddress = 127.0.0.1:0\n[tls]\ncertificate = %s\nprivate_key = %s\n"
             "[backend]\nservers = 127.0.0.1:143\n",
             cert, key);
    struct imf_config *cfg = NULL;
    char err[512];
    assert_int_equal(imf_config_parse("t.ini", ini, &cfg, err, sizeof(err)), 0);

    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct run r = {.loop = &loop};
    uv_timer_init(&loop, &r.guard);
    struct imf_certwatch *w = NULL;
    assert_int_equal(imf_certwatch_new(&loop, on_change, &r, &w), 0);
    assert_true(imf_certwatch_update(w, cfg) > 0);

    /* A file nobody named, in the same directory: nothing. */
    write_file(other, "x");
    wait_for(&r, IMF_CERTWATCH_SETTLE_MS + 500);
    assert_int_equal(r.calls, 0);

    /* A rename into place and a write in place: one callback, after the
     * settle time. */
    uint64_t start = uv_now(&loop);
    write_file(tmp, "two");
    assert_int_equal(rename(tmp, cert), 0);
    write_file(key, "two");
    wait_for(&r, IMF_CERTWATCH_SETTLE_MS + 3000);
    assert_int_equal(r.calls, 1);
    assert_true(r.called_at - start >= IMF_CERTWATCH_SETTLE_MS - 50);
    wait_for(&r, 300); /* no second callback for the same burst */
    assert_int_equal(r.calls, 1);

    /* Re-armed after the rename: the new inode is watched too. */
    imf_certwatch_update(w, cfg);
    write_file(cert, "three");
    wait_for(&r, IMF_CERTWATCH_SETTLE_MS + 3000);
    assert_int_equal(r.calls, 2);

    imf_certwatch_free(w);
    uv_close((uv_handle_t *)&r.guard, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    imf_config_unref(cfg);
    unlink(cert);
    unlink(key);
    unlink(other);
    rmdir(dir);
}

/* Files that do not exist (yet): the watch of an existing directory still
 * sees them arrive; nothing at all to watch is a count of 0. */
static void test_missing_files(void **state)
{
    (void)state;
    char dir[] = "/tmp/imf-test-certwatch-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char ini[1024], cert[256];
    snprintf(cert, sizeof(cert), "%s/late.pem", dir);
    snprintf(ini, sizeof(ini),
             "[listen.a]\naddress = 127.0.0.1:0\n[tls]\ncertificate = %s\n"
             "private_key = %s/nodir/key.pem\n[backend]\nservers = 127.0.0.1:143\n",
             cert, dir);
    struct imf_config *cfg = NULL;
    char err[512];
    assert_int_equal(imf_config_parse("t.ini", ini, &cfg, err, sizeof(err)), 0);
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct run r = {.loop = &loop};
    uv_timer_init(&loop, &r.guard);
    struct imf_certwatch *w = NULL;
    assert_int_equal(imf_certwatch_new(&loop, on_change, &r, &w), 0);
    assert_int_equal(imf_certwatch_update(w, cfg), 1); /* only dir */
    write_file(cert, "arrived");
    wait_for(&r, IMF_CERTWATCH_SETTLE_MS + 3000);
    assert_int_equal(r.calls, 1);
    imf_certwatch_free(w);
    uv_close((uv_handle_t *)&r.guard, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    imf_config_unref(cfg);
    unlink(cert);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rename_in_place_and_unrelated),
        cmocka_unit_test(test_missing_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
