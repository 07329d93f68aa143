/* unit.netaddr: CIDR lists (parse, match, format) and the per-IP key. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <netinet/in.h>

#include "imapfront/netaddr.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

static struct sockaddr_storage addr(const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (strchr(ip, ':') != NULL) {
        ss.ss_family = AF_INET6;
        assert_int_equal(inet_pton(AF_INET6, ip, &((struct sockaddr_in6 *)&ss)->sin6_addr), 1);
    } else {
        ss.ss_family = AF_INET;
        assert_int_equal(inet_pton(AF_INET, ip, &((struct sockaddr_in *)&ss)->sin_addr), 1);
    }
    return ss;
}

static bool in_list(const struct imf_cidr *list, int n, const char *ip)
{
    struct sockaddr_storage ss = addr(ip);
    return imf_cidr_match(list, (size_t)n, (struct sockaddr *)&ss);
}

/* The text imf_cidr_format gives for the single range text parses to. */
static const char *canonical(const char *text)
{
    static char out[IMF_CIDR_TEXT_MAX];
    struct imf_cidr c;
    if (imf_cidr_parse(text, strlen(text), &c) < 0)
        return "(error)";
    imf_cidr_format(&c, out, sizeof(out));
    return out;
}

static void test_list_separators(void **state)
{
    (void)state;
    struct imf_cidr list[8];
    const char *bad;
    size_t bad_len;
    int n = imf_cidr_parse_list(" 10.0.0.0/8, 192.0.2.7 2001:db8::/32,127.0.0.1/32 ,, ", list, 8,
                                &bad, &bad_len);
    assert_int_equal(n, 4);
    assert_string_equal(canonical("10.0.0.0/8"), "10.0.0.0/8");
    const struct {
        const char *ip;
        bool in;
    } cases[] = {
        {"10.1.2.3", true},         {"11.0.0.1", false},     {"192.0.2.7", true},
        {"192.0.2.8", false},       {"2001:db8:1::5", true}, {"2001:db9::1", false},
        {"127.0.0.1", true},        {"127.0.0.2", false},    {"::ffff:10.9.9.9", true},
        {"::ffff:11.0.0.1", false},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++)
        if (in_list(list, n, cases[i].ip) != cases[i].in)
            fail_msg("%s: expected %s", cases[i].ip, cases[i].in ? "in" : "out");
    assert_int_equal(imf_cidr_parse_list("", list, 8, &bad, &bad_len), 0);
    assert_int_equal(imf_cidr_parse_list(" , ,", list, 8, &bad, &bad_len), 0);
    /* One entry past max is the bad one. */
    assert_int_equal(imf_cidr_parse_list("1.1.1.1 2.2.2.2", list, 1, &bad, &bad_len), -1);
    assert_int_equal(bad_len, 7);
    assert_memory_equal(bad, "2.2.2.2", 7);
}

static void test_bad_entries(void **state)
{
    (void)state;
    static const char *const bad_entries[] = {
        "300.1.1.1",      "10.0.0.0/",     "10.0.0.0/33",
        "::/129",         "10.0.0.0/-1",   "10.0.0.0/+8",
        "10.0.0.0/8x",    "10.0.0.0/0008", "10/8",
        "localhost",      "1.2.3.4/8/8",   "/8",
        "2001:db8::1::2", "fe80::1%eth0",  "10.0.0.0 /8" /* two entries: "/8" is bad */,
    };
    struct imf_cidr list[4];
    for (size_t i = 0; i < ARRAY_SIZE(bad_entries); i++) {
        char text[80];
        snprintf(text, sizeof(text), "192.0.2.0/24, %s", bad_entries[i]);
        const char *bad = NULL;
        size_t bad_len = 0;
        if (imf_cidr_parse_list(text, list, 4, &bad, &bad_len) != -1)
            fail_msg("\"%s\" was accepted", bad_entries[i]);
        /* The bad entry is pointed at, inside the text. */
        assert_true(bad >= text + 14 && bad + bad_len <= text + strlen(text));
    }
    /* Longer than any address: refused without overrunning. */
    char longer[200];
    memset(longer, '1', sizeof(longer) - 1);
    longer[sizeof(longer) - 1] = '\0';
    const char *bad;
    size_t bad_len;
    assert_int_equal(imf_cidr_parse_list(longer, list, 4, &bad, &bad_len), -1);
    assert_int_equal(bad_len, sizeof(longer) - 1);
}

static void test_prefix_edges(void **state)
{
    (void)state;
    struct imf_cidr list[2];
    const char *bad;
    size_t bad_len;

    /* /0 holds a whole family, and only that family. */
    int n = imf_cidr_parse_list("0.0.0.0/0", list, 2, &bad, &bad_len);
    assert_int_equal(n, 1);
    assert_true(in_list(list, n, "203.0.113.9"));
    assert_true(in_list(list, n, "::ffff:203.0.113.9"));
    assert_false(in_list(list, n, "2001:db8::1"));
    n = imf_cidr_parse_list("::/0", list, 2, &bad, &bad_len);
    assert_int_equal(n, 1);
    assert_true(in_list(list, n, "2001:db8::1"));
    assert_false(in_list(list, n, "203.0.113.9"));

    /* /32 and /128 are single addresses, like a bare one. */
    n = imf_cidr_parse_list("192.0.2.1/32 2001:db8::1/128", list, 2, &bad, &bad_len);
    assert_int_equal(n, 2);
    assert_true(in_list(list, n, "192.0.2.1"));
    assert_false(in_list(list, n, "192.0.2.0"));
    assert_true(in_list(list, n, "2001:db8::1"));
    assert_false(in_list(list, n, "2001:db8::2"));
    assert_string_equal(canonical("192.0.2.1"), "192.0.2.1/32");
    assert_string_equal(canonical("2001:db8::1"), "2001:db8::1/128");

    /* A prefix that is not a multiple of 8; host bits are dropped. */
    assert_string_equal(canonical("10.1.2.3/12"), "10.0.0.0/12");
    assert_string_equal(canonical("2001:db8:ffff::/33"), "2001:db8:8000::/33");
    n = imf_cidr_parse_list("10.31.0.0/11", list, 2, &bad, &bad_len);
    assert_true(in_list(list, n, "10.0.0.1"));
    assert_true(in_list(list, n, "10.31.255.255"));
    assert_false(in_list(list, n, "10.32.0.0"));
}

static void test_v4_mapped(void **state)
{
    (void)state;
    /* A mapped range written by hand is the IPv4 range it names, so it
     * matches IPv4 peers and mapped ones alike. */
    assert_string_equal(canonical("::ffff:10.0.0.0/104"), "10.0.0.0/8");
    assert_string_equal(canonical("::ffff:192.0.2.7"), "192.0.2.7/32");
    struct imf_cidr list[1];
    const char *bad;
    size_t bad_len;
    int n = imf_cidr_parse_list("::ffff:10.0.0.0/104", list, 1, &bad, &bad_len);
    assert_int_equal(n, 1);
    assert_true(in_list(list, n, "10.2.3.4"));
    assert_true(in_list(list, n, "::ffff:10.2.3.4"));
    assert_false(in_list(list, n, "11.2.3.4"));
    /* Shorter than the mapping prefix, it stays an IPv6 range. */
    assert_string_equal(canonical("::ffff:0.0.0.0/80"), "::/80");
}

static void test_key(void **state)
{
    (void)state;
    uint8_t a[IMF_NETADDR_KEY_LEN], b[IMF_NETADDR_KEY_LEN];
    struct sockaddr_storage x = addr("2001:db8:0:1::1"), y = addr("2001:db8:0:1:ffff::2");
    struct sockaddr_storage z = addr("2001:db8:0:2::1");
    assert_true(imf_netaddr_key((struct sockaddr *)&x, 64, a));
    assert_true(imf_netaddr_key((struct sockaddr *)&y, 64, b));
    assert_memory_equal(a, b, sizeof(a)); /* one /64 */
    assert_true(imf_netaddr_key((struct sockaddr *)&z, 64, b));
    assert_memory_not_equal(a, b, sizeof(a));
    assert_true(imf_netaddr_key((struct sockaddr *)&y, 128, b));
    assert_memory_not_equal(a, b, sizeof(a));
    struct sockaddr_storage w = addr("2001:db8:0:3::1");
    assert_true(imf_netaddr_key((struct sockaddr *)&z, 63, a));
    assert_true(imf_netaddr_key((struct sockaddr *)&w, 63, b));
    assert_memory_equal(a, b, sizeof(a)); /* ...:2 and ...:3 share their first 63 bits */
    assert_true(imf_netaddr_key((struct sockaddr *)&w, 64, b));
    assert_memory_not_equal(a, b, sizeof(a));

    /* IPv4, plain or mapped, is one key whatever the IPv6 prefix. */
    struct sockaddr_storage v4 = addr("198.51.100.7"), mapped = addr("::ffff:198.51.100.7");
    assert_true(imf_netaddr_key((struct sockaddr *)&v4, 32, a));
    assert_true(imf_netaddr_key((struct sockaddr *)&mapped, 128, b));
    assert_memory_equal(a, b, sizeof(a));
    assert_int_equal(a[0], 4);

    struct sockaddr_storage unix_addr;
    memset(&unix_addr, 0, sizeof(unix_addr));
    unix_addr.ss_family = AF_UNIX;
    assert_false(imf_netaddr_key((struct sockaddr *)&unix_addr, 64, a));
    assert_false(imf_cidr_match(NULL, 0, (struct sockaddr *)&unix_addr));
}

static void test_format_sockaddr(void **state)
{
    (void)state;
    struct sockaddr_storage v4 = addr("192.0.2.1"), v6 = addr("2001:db8::1");
    ((struct sockaddr_in *)&v4)->sin_port = htons(993);
    ((struct sockaddr_in6 *)&v6)->sin6_port = htons(143);
    char out[64];
    imf_format_sockaddr((struct sockaddr *)&v4, out, sizeof(out));
    assert_string_equal(out, "192.0.2.1:993");
    imf_format_sockaddr((struct sockaddr *)&v6, out, sizeof(out));
    assert_string_equal(out, "[2001:db8::1]:143");
    v4.ss_family = AF_UNIX;
    imf_format_sockaddr((struct sockaddr *)&v4, out, sizeof(out));
    assert_string_equal(out, "?");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_list_separators),
        cmocka_unit_test(test_bad_entries),
        cmocka_unit_test(test_prefix_edges),
        cmocka_unit_test(test_v4_mapped),
        cmocka_unit_test(test_key),
        cmocka_unit_test(test_format_sockaddr),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
