/* route: the user -> pool map: its file format, every error with its line,
 * the lookup order, case folding, and a 1,000,000-entry map. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <stdatomic.h>
#include <uv.h>

#include "imapfront/config.h"
#include "imapfront/log.h"

#include "imapfront/route.h"

static const char *const pools[] = {"default", "legacy", "new"};

static struct imf_route_params params(bool ignore_case, const char *def)
{
    return (struct imf_route_params){.path = NULL,
                                     .default_pool = def,
                                     .ignore_case = ignore_case,
                                     .pools = pools,
                                     .pools_len = 3};
}

/* Parses text with p; asserts it loads. */
static struct imf_route *load_with(const char *text, const struct imf_route_params *p)
{
    struct imf_route *r = NULL;
    char err[512] = "";
    int rc = imf_route_parse("map", text, strlen(text), p, &r, err, sizeof(err));
    if (rc != 0)
        fail_msg("unexpected error: %s", err);
    assert_non_null(r);
    return r;
}

static struct imf_route *load(const char *text)
{
    struct imf_route_params p = params(false, NULL);
    return load_with(text, &p);
}

/* Parses text; asserts it fails with exactly the message want. */
static void assert_error(const char *text, bool ignore_case, const char *want)
{
    struct imf_route_params p = params(ignore_case, NULL);
    struct imf_route *r = NULL;
    char err[512] = "";
    int rc = imf_route_parse("map", text, strlen(text), &p, &r, err, sizeof(err));
    assert_true(rc < 0);
    assert_null(r);
    assert_string_equal(err, want);
}

static const char *lookup(const struct imf_route *r, const char *user,
                          enum imf_route_match *out_how)
{
    return imf_route_lookup(r, user, strlen(user), out_how);
}

static void assert_route(const struct imf_route *r, const char *user, const char *pool,
                         enum imf_route_match how)
{
    enum imf_route_match got = IMF_ROUTE_MATCH_COUNT;
    const char *p = lookup(r, user, &got);
    if (pool == NULL)
        assert_null(p);
    else
        assert_string_equal(p != NULL ? p : "(null)", pool);
    assert_string_equal(imf_route_match_names[got], imf_route_match_names[how]);
}

static void test_file_syntax(void **state)
{
    (void)state;
    struct imf_route *r = load("# the first users moved\n"
                               "\n"
                               "alice@example.org new\n"
                               "  bob@example.org\t\tnew   # moved on Monday\n"
                               "\t\n"
                               "carol legacy\r\n"
                               "*@old.example.org legacy\n"
                               "dave@example.org new"); /* no final newline */
    assert_int_equal(imf_route_count(r), 5);
    assert_route(r, "alice@example.org", "new", IMF_ROUTE_USER);
    assert_route(r, "bob@example.org", "new", IMF_ROUTE_USER);
    assert_route(r, "carol", "legacy", IMF_ROUTE_USER);
    assert_route(r, "dave@example.org", "new", IMF_ROUTE_USER);
    assert_route(r, "x@old.example.org", "legacy", IMF_ROUTE_DOMAIN);
    assert_route(r, "eve@example.org", NULL, IMF_ROUTE_NONE);
    assert_route(r, "", NULL, IMF_ROUTE_NONE);
    /* A comment is not a name. */
    assert_route(r, "#", NULL, IMF_ROUTE_NONE);
    imf_route_unref(r);
}

static void test_empty_map(void **state)
{
    (void)state;
    struct imf_route_params p = params(true, "legacy");
    struct imf_route *r = load_with("", &p);
    assert_int_equal(imf_route_count(r), 0);
    assert_route(r, "anyone", "legacy", IMF_ROUTE_DEFAULT);
    imf_route_unref(r);
    r = load_with("# nothing yet\n\n", &p);
    assert_int_equal(imf_route_count(r), 0);
    assert_route(r, "anyone@example.org", "legacy", IMF_ROUTE_DEFAULT);
    imf_route_unref(r);
}

/* Exact name first, then *@domain of the part after the last '@', then
 * the default. */
static void test_lookup_order(void **state)
{
    (void)state;
    struct imf_route_params p = params(false, "legacy");
    struct imf_route *r = load_with("*@example.org new\n"
                                    "stays@example.org legacy\n"
                                    "*@b.example default\n",
                                    &p);
    assert_route(r, "stays@example.org", "legacy", IMF_ROUTE_USER);
    assert_route(r, "moved@example.org", "new", IMF_ROUTE_DOMAIN);
    assert_route(r, "someone@elsewhere.org", "legacy", IMF_ROUTE_DEFAULT);
    assert_route(r, "no-domain", "legacy", IMF_ROUTE_DEFAULT);
    assert_route(r, "trailing-at@", "legacy", IMF_ROUTE_DEFAULT);
    /* Several '@': the domain is what follows the last one. */
    assert_route(r, "a@b.example@example.org", "new", IMF_ROUTE_DOMAIN);
    assert_route(r, "a@example.org@b.example", "default", IMF_ROUTE_DOMAIN);
    assert_route(r, "@@example.org", "new", IMF_ROUTE_DOMAIN);
    /* The pattern itself is not an exact name of a user... */
    assert_route(r, "*@example.org", "new", IMF_ROUTE_DOMAIN);
    /* ...and a subdomain is another domain. */
    assert_route(r, "x@sub.example.org", "legacy", IMF_ROUTE_DEFAULT);
    imf_route_unref(r);
}

static void test_ignore_case(void **state)
{
    (void)state;
    const char *text = "Alice@Example.ORG new\n"
                       "*@Old.Example.org legacy\n";
    struct imf_route_params p = params(true, NULL);
    struct imf_route *r = load_with(text, &p);
    assert_route(r, "alice@example.org", "new", IMF_ROUTE_USER);
    assert_route(r, "ALICE@EXAMPLE.ORG", "new", IMF_ROUTE_USER);
    assert_route(r, "someone@OLD.example.ORG", "legacy", IMF_ROUTE_DOMAIN);
    imf_route_unref(r);

    p = params(false, NULL);
    r = load_with(text, &p);
    assert_route(r, "Alice@Example.ORG", "new", IMF_ROUTE_USER);
    assert_route(r, "alice@example.org", NULL, IMF_ROUTE_NONE);
    assert_route(r, "someone@Old.Example.org", "legacy", IMF_ROUTE_DOMAIN);
    assert_route(r, "someone@old.example.org", NULL, IMF_ROUTE_NONE);
    imf_route_unref(r);

    /* Two names that differ only in case are one name when case is
     * ignored, and two when it is not. */
    assert_error("bob new\nBOB legacy\n", true,
                 "map:2: \"BOB\" is already routed to pool new (names compared without regard "
                 "to case)");
    r = load("bob new\nBOB legacy\n");
    assert_route(r, "BOB", "legacy", IMF_ROUTE_USER);
    assert_route(r, "bob", "new", IMF_ROUTE_USER);
    imf_route_unref(r);
}

/* Bytes above 0x7f are part of a name and match exactly, even with
 * ignore_case (only ASCII letters fold). */
static void test_8bit_names(void **state)
{
    (void)state;
    struct imf_route_params p = params(true, "default");
    struct imf_route *r = load_with("j\xc3\xb6rg@example.org new\n"
                                    "*@\xe4\xbe\x8b\xe5\xad\x90.example legacy\n"
                                    "\xff\xfe legacy\n",
                                    &p);
    assert_int_equal(imf_route_count(r), 3);
    assert_route(r, "J\xc3\xb6RG@example.org", "new", IMF_ROUTE_USER);
    /* U+00D6 (upper-case O with diaeresis) is not folded to U+00F6. */
    assert_route(r, "j\xc3\x96rg@example.org", "default", IMF_ROUTE_DEFAULT);
    assert_route(r, "x@\xe4\xbe\x8b\xe5\xad\x90.example", "legacy", IMF_ROUTE_DOMAIN);
    assert_route(r, "\xff\xfe", "legacy", IMF_ROUTE_USER);
    imf_route_unref(r);
    assert_error("bad\x01name new\n", false, "map:1: control character 0x01 in the user name");
}

static void test_duplicates(void **state)
{
    (void)state;
    /* The same pair twice is harmless. */
    struct imf_route *r = load("alice new\nalice new\n");
    assert_int_equal(imf_route_count(r), 1);
    imf_route_unref(r);
    assert_error("alice new\n\n# a comment\nalice legacy\n", false,
                 "map:4: \"alice\" is already routed to pool new");
    assert_error("*@example.org new\nbob new\n*@example.org legacy\n", false,
                 "map:3: \"*@example.org\" is already routed to pool new");
}

/* Every other error, with its line number. */
static void test_errors(void **state)
{
    (void)state;
    assert_error("alice new\nbob\n", false, "map:2: a user without a pool (expected: USER POOL)");
    assert_error("alice new\nbob new legacy\n", false,
                 "map:2: more than two fields (expected: USER POOL)");
    assert_error("alice new\n\nbob nowhere\n", false, "map:3: no pool named \"nowhere\"");
    assert_error("alice New\n", false, "map:1: no pool named \"New\"");
    assert_error("* new\n", false, "map:1: a pattern must be *@domain");
    assert_error("*@ new\n", false, "map:1: a pattern must be *@domain");
    assert_error("*example.org new\n", false, "map:1: a pattern must be *@domain");
    assert_error("*@a@b new\n", false, "map:1: the domain of *@domain cannot hold '@' or '*'");
    assert_error("*@*.example new\n", false,
                 "map:1: the domain of *@domain cannot hold '@' or '*'");
    assert_error("a\0b new\n", false, "map:1: a user without a pool (expected: USER POOL)");

    /* The limits: 255 bytes of user name, 63 of pool name. */
    char text[600];
    char user[300];
    memset(user, 'u', 255);
    user[255] = '\0';
    snprintf(text, sizeof(text), "x new\n%s new\n", user);
    struct imf_route *r = load(text);
    assert_route(r, user, "new", IMF_ROUTE_USER);
    imf_route_unref(r);
    snprintf(text, sizeof(text), "x new\n%su new\n", user);
    assert_error(text, false, "map:2: user name longer than 255 bytes");
    char pool[80];
    memset(pool, 'p', 64);
    pool[64] = '\0';
    snprintf(text, sizeof(text), "x new\ny %s\n", pool);
    assert_error(text, false, "map:2: pool name longer than 63 bytes");

    /* An unknown default: no line, the key instead. */
    struct imf_route_params p = params(false, "nowhere");
    char err[256];
    assert_true(imf_route_parse("map", "", 0, &p, &r, err, sizeof(err)) < 0);
    assert_string_equal(err, "[route] default: no pool named \"nowhere\"");
}

/* A NUL byte inside a line: the text has a length, not a terminator. */
static void test_nul_byte(void **state)
{
    (void)state;
    static const char text[] = "alice new\nb\0b new\n";
    struct imf_route_params p = params(false, NULL);
    struct imf_route *r = NULL;
    char err[256];
    assert_true(imf_route_parse("map", text, sizeof(text) - 1, &p, &r, err, sizeof(err)) < 0);
    assert_string_equal(err, "map:2: control character 0x00 in the user name");
}

/* The same text split into lines of any length gives the same map; every
 * prefix of a good file either loads or fails with a line number. */
static void test_every_prefix(void **state)
{
    (void)state;
    const char *text = "a@x new\n*@y legacy # c\n\nb default\r\nc@d@y new\n";
    size_t len = strlen(text);
    struct imf_route_params p = params(true, NULL);
    for (size_t n = 0; n <= len; n++) {
        struct imf_route *r = NULL;
        char err[256] = "";
        int rc = imf_route_parse("map", text, n, &p, &r, err, sizeof(err));
        if (rc == 0) {
            if (n == len) {
                assert_int_equal(imf_route_count(r), 4);
                assert_route(r, "C@D@Y", "new", IMF_ROUTE_USER);
            }
            imf_route_unref(r);
        } else {
            assert_non_null(strstr(err, "map:"));
        }
    }
}

static void test_load_file(void **state)
{
    (void)state;
    char path[] = "/tmp/test_route_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *text = "alice new\nbob\n";
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    struct imf_route_params p = params(false, NULL);
    p.path = path;
    struct imf_route *r = NULL;
    char err[512], want[600];
    assert_true(imf_route_load(&p, &r, err, sizeof(err)) < 0);
    snprintf(want, sizeof(want), "%s:2: a user without a pool (expected: USER POOL)", path);
    assert_string_equal(err, want);
    unlink(path);
    assert_true(imf_route_load(&p, &r, err, sizeof(err)) < 0);
    snprintf(want, sizeof(want), "%s: cannot open: No such file or directory", path);
    assert_string_equal(err, want);
}

#define BIG 1000000u

/* 1,000,000 entries: every 1000th and a sample of others found with its
 * pool, names not in the map not found. The time is the benchmark's
 * business (bench/route.c); this bound only catches a quadratic load. */
static void test_million(void **state)
{
    (void)state;
    size_t cap = (size_t)BIG * 40, len = 0;
    char *text = malloc(cap);
    assert_non_null(text);
    for (unsigned i = 0; i < BIG; i++)
        len += (size_t)snprintf(text + len, cap - len, "user%u@d%u.example %s\n", i, i % 997,
                                pools[i % 3]);
    struct imf_route_params p = params(true, NULL);
    struct imf_route *r = load_with(text, &p);
    free(text);
    assert_int_equal(imf_route_count(r), BIG);
    char name[64];
    for (unsigned i = 0; i < BIG; i += 997) {
        snprintf(name, sizeof(name), "USER%u@d%u.example", i, i % 997);
        assert_route(r, name, pools[i % 3], IMF_ROUTE_USER);
        snprintf(name, sizeof(name), "user%u@d%u.example", i + BIG, i % 997);
        assert_route(r, name, NULL, IMF_ROUTE_NONE);
    }
    assert_route(r, "user999999@d999999.example", NULL, IMF_ROUTE_NONE);
    snprintf(name, sizeof(name), "user%u@d%u.example", BIG - 1, (BIG - 1) % 997);
    assert_route(r, name, pools[(BIG - 1) % 3], IMF_ROUTE_USER);
    /* Table plus names: under 64 bytes an entry. */
    assert_true(imf_route_memory(r) < (size_t)BIG * 64);
    imf_route_unref(r);
}

#define BASE_INI                                                                           \
    "[listen.a]\naddress = 127.0.0.1:0\n[tls]\ncertificate = c.pem\nprivate_key = k.pem\n" \
    "[backend]\nservers = 127.0.0.1:143\n"

static struct imf_config *config(const char *route_section)
{
    char text[1024], err[512];
    snprintf(text, sizeof(text), "%s%s", BASE_INI, route_section);
    struct imf_config *cfg = NULL;
    if (imf_config_parse("proxy.ini", text, &cfg, err, sizeof(err)) != 0)
        fail_msg("config: %s", err);
    return cfg;
}

/* [route] in the config table: configured with a map or a default;
 * ignore_case defaults to yes. */
static void test_config_keys(void **state)
{
    (void)state;
    struct imf_config *cfg = config("");
    assert_false(imf_route_configured(cfg));
    assert_true(cfg->route_ignore_case);
    imf_config_unref(cfg);
    cfg = config("[route]\ndefault = default\nignore_case = no\n");
    assert_true(imf_route_configured(cfg));
    assert_false(cfg->route_ignore_case);
    imf_config_unref(cfg);
    cfg = config("[route]\nmap = /nonexistent/route.map\n");
    assert_true(imf_route_configured(cfg));
    assert_string_equal(cfg->route_map, "/nonexistent/route.map");
    imf_config_unref(cfg);
}

/* Readers on other threads take the current map while the loop's thread
 * swaps it: each reader sees one whole map or the other. */
#define SWAPS   2000
#define READERS 2

static atomic_bool swapping_done;
static atomic_uint bad_reads;

static void reader(void *arg)
{
    atomic_uint *reads = arg;
    /* Bounded: the swaps end, and so do we (plus a floor of reads). */
    for (unsigned i = 0; i < 10000000u && (!atomic_load(&swapping_done) || i < 1000); i++) {
        struct imf_route *r = imf_route_current();
        if (r == NULL) {
            atomic_fetch_add(&bad_reads, 1);
            continue;
        }
        const char *a = lookup(r, "a@example.org", NULL);
        const char *b = lookup(r, "b@example.org", NULL);
        /* Map one sends a to legacy and b to new; map two the reverse. */
        bool one = a != NULL && b != NULL && strcmp(a, "legacy") == 0 && strcmp(b, "new") == 0;
        bool two = a != NULL && b != NULL && strcmp(a, "new") == 0 && strcmp(b, "legacy") == 0;
        if (!one && !two)
            atomic_fetch_add(&bad_reads, 1);
        imf_route_unref(r);
        atomic_fetch_add(reads, 1);
    }
}

static void test_swap_under_readers(void **state)
{
    (void)state;
    imf_log_setup(IMF_LOG_ERROR, IMF_LOG_TEXT);
    char dir[] = "/tmp/test_route_swap_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char one[600], two[600], section[1400];
    snprintf(one, sizeof(one), "%s/one.map", dir);
    snprintf(two, sizeof(two), "%s/two.map", dir);
    FILE *f = fopen(one, "w");
    fputs("a@example.org legacy\nb@example.org new\n", f);
    fclose(f);
    f = fopen(two, "w");
    fputs("a@example.org new\n*@example.org legacy\n", f);
    fclose(f);
    snprintf(section, sizeof(section), "[route]\nmap = %s\n", one);
    struct imf_config *cfg_one = config(section);
    snprintf(section, sizeof(section), "[route]\nmap = %s\n", two);
    struct imf_config *cfg_two = config(section);

    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    char err[512];
    assert_int_equal(imf_route_start(&loop, cfg_one, pools, 3, err, sizeof(err)), 0);
    atomic_store(&swapping_done, false);
    atomic_store(&bad_reads, 0);
    atomic_uint reads[READERS];
    uv_thread_t threads[READERS];
    for (int t = 0; t < READERS; t++) {
        atomic_init(&reads[t], 0);
        assert_int_equal(uv_thread_create(&threads[t], reader, &reads[t]), 0);
    }
    for (int i = 0; i < SWAPS; i++)
        assert_int_equal(imf_route_reload(i % 2 ? cfg_one : cfg_two, pools, 3), 0);
    atomic_store(&swapping_done, true);
    for (int t = 0; t < READERS; t++) {
        uv_thread_join(&threads[t]);
        assert_true(atomic_load(&reads[t]) >= 1000);
    }
    assert_int_equal(atomic_load(&bad_reads), 0);

    /* A bad map keeps the running one (the last reload loaded map one). */
    f = fopen(one, "w");
    fputs("a@example.org\n", f);
    fclose(f);
    assert_true(imf_route_reload(cfg_one, pools, 3) < 0);
    struct imf_route *r = imf_route_current();
    assert_non_null(r);
    assert_string_equal(imf_route_path(r), one);
    assert_route(r, "a@example.org", "legacy", IMF_ROUTE_USER);
    imf_route_unref(r);

    imf_route_stop();
    assert_null(imf_route_current());
    /* Every handle closes: the loop ends with nothing left. */
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
    imf_config_unref(cfg_one);
    imf_config_unref(cfg_two);
    unlink(one);
    unlink(two);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_file_syntax),
        cmocka_unit_test(test_empty_map),
        cmocka_unit_test(test_lookup_order),
        cmocka_unit_test(test_ignore_case),
        cmocka_unit_test(test_8bit_names),
        cmocka_unit_test(test_duplicates),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_nul_byte),
        cmocka_unit_test(test_every_prefix),
        cmocka_unit_test(test_load_file),
        cmocka_unit_test(test_million),
        cmocka_unit_test(test_config_keys),
        cmocka_unit_test(test_swap_under_readers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
