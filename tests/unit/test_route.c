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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_file_syntax),  cmocka_unit_test(test_empty_map),
        cmocka_unit_test(test_lookup_order), cmocka_unit_test(test_ignore_case),
        cmocka_unit_test(test_8bit_names),   cmocka_unit_test(test_duplicates),
        cmocka_unit_test(test_errors),       cmocka_unit_test(test_nul_byte),
        cmocka_unit_test(test_every_prefix), cmocka_unit_test(test_load_file),
        cmocka_unit_test(test_million),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
