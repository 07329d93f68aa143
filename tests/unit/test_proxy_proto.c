/* unit.proxy_proto: PROXY protocol headers, per-IP counts (CIDR ranges:
 * unit.netaddr). */
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

#include "imapfront/iplimit.h"
#include "imapfront/proxy_proto.h"

/* Parses a header that is followed by payload; every strict prefix of the
 * header must say NEED_MORE, the whole must say DONE with the exact length
 * (the payload never counted). */
static void parse_all_prefixes(const uint8_t *hdr, size_t hlen, enum imf_proxy_protocol v,
                               struct imf_pp_info *out)
{
    uint8_t buf[IMF_PP_MAX + 16];
    memcpy(buf, hdr, hlen);
    memcpy(buf + hlen, "\x16\x03\x01", 3); /* a ClientHello starts after it */
    size_t len;
    const char *why;
    for (size_t n = 0; n < hlen; n++)
        assert_int_equal(imf_pp_parse(buf, n, v, out, &len, &why), IMF_PP_NEED_MORE);
    assert_int_equal(imf_pp_parse(buf, hlen + 3, v, out, &len, &why), IMF_PP_DONE);
    assert_int_equal(len, hlen);
}

static void check_v4(const struct sockaddr_storage *ss, const char *ip, int port)
{
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    char text[32];
    assert_int_equal(a->sin_family, AF_INET);
    inet_ntop(AF_INET, &a->sin_addr, text, sizeof(text));
    assert_string_equal(text, ip);
    assert_int_equal(ntohs(a->sin_port), port);
}

static void test_v1(void **state)
{
    (void)state;
    struct imf_pp_info info;
    const char *h = "PROXY TCP4 198.51.100.7 192.0.2.1 51234 993\r\n";
    parse_all_prefixes((const uint8_t *)h, strlen(h), IMF_PROXY_PROTOCOL_V1, &info);
    assert_false(info.local);
    check_v4(&info.src, "198.51.100.7", 51234);
    check_v4(&info.dst, "192.0.2.1", 993);
    parse_all_prefixes((const uint8_t *)h, strlen(h), IMF_PROXY_PROTOCOL_ANY, &info);

    h = "PROXY TCP6 2001:db8::7 2001:db8::1 4000 993\r\n";
    parse_all_prefixes((const uint8_t *)h, strlen(h), IMF_PROXY_PROTOCOL_V1, &info);
    assert_int_equal(info.src.ss_family, AF_INET6);
    h = "PROXY UNKNOWN\r\n";
    parse_all_prefixes((const uint8_t *)h, strlen(h), IMF_PROXY_PROTOCOL_V1, &info);
    assert_true(info.local);
}

static void test_v2(void **state)
{
    (void)state;
    struct imf_pp_info info;
    uint8_t h[64] = {
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51,
        0x55, 0x49, 0x54, 0x0A, 0x21, 0x11, 0x00, 0x0F, /* v2 PROXY, TCP over IPv4, 12 + 3 bytes */
        198,  51,   100,  7,    192,  0,    2,    1,
        0xC8, 0x22, 0x03, 0xE1, 0x04, 0x00, 0x00}; /* a TLV (NOOP) the parser skips */
    parse_all_prefixes(h, 16 + 15, IMF_PROXY_PROTOCOL_V2, &info);
    check_v4(&info.src, "198.51.100.7", 0xC822);
    check_v4(&info.dst, "192.0.2.1", 993);
    /* LOCAL: the balancer's own health check. */
    h[12] = 0x20;
    h[13] = 0x00;
    h[15] = 0;
    parse_all_prefixes(h, 16, IMF_PROXY_PROTOCOL_ANY, &info);
    assert_true(info.local);
}

static void expect_error(const void *data, size_t len, enum imf_proxy_protocol v, const char *why)
{
    struct imf_pp_info info;
    size_t hlen;
    const char *got = NULL;
    assert_int_equal(imf_pp_parse(data, len, v, &info, &hlen, &got), IMF_PP_ERROR);
    assert_non_null(got);
    if (why != NULL)
        assert_non_null(strstr(got, why));
}

static void test_malformed(void **state)
{
    (void)state;
    /* Not a header at all: a client speaking TLS or IMAP directly. */
    expect_error("\x16\x03\x01\x02\x00", 5, IMF_PROXY_PROTOCOL_ANY, "no PROXY");
    expect_error("A1 LOGIN", 8, IMF_PROXY_PROTOCOL_V1, "no PROXY");
    /* A v1 header where only v2 is allowed, and the other way round. */
    expect_error("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", 32, IMF_PROXY_PROTOCOL_V2, "no PROXY");
    expect_error("\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A", 12, IMF_PROXY_PROTOCOL_V1,
                 "no PROXY");
    static const char *bad_v1[] = {
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",       /* no CR */
        "PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",     /* protocol */
        "PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n",   /* address */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", /* port */
        "PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",    /* leading zero */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",       /* a field short */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",   /* a field too many */
        "PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",     /* family mismatch */
    };
    for (size_t i = 0; i < sizeof(bad_v1) / sizeof(bad_v1[0]); i++)
        expect_error(bad_v1[i], strlen(bad_v1[i]), IMF_PROXY_PROTOCOL_ANY, "PROXY v1");
    /* A v1 line that never ends. */
    char longline[200];
    memset(longline, 'x', sizeof(longline));
    memcpy(longline, "PROXY TCP4 ", 11);
    expect_error(longline, sizeof(longline), IMF_PROXY_PROTOCOL_V1, "too long");

    uint8_t v2[16] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51,
                      0x55, 0x49, 0x54, 0x0A, 0x31, 0x11, 0x00, 0x0C};
    expect_error(v2, 16, IMF_PROXY_PROTOCOL_V2, "version"); /* version 3 */
    v2[12] = 0x22;
    expect_error(v2, 16, IMF_PROXY_PROTOCOL_V2, "command");
    v2[12] = 0x21;
    v2[14] = 0xFF; /* 65292 bytes announced */
    expect_error(v2, 16, IMF_PROXY_PROTOCOL_V2, "too long");
    uint8_t shortaddr[16 + 4] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49,
                                 0x54, 0x0A, 0x21, 0x11, 0x00, 0x04, 1,    2,    3,    4};
    expect_error(shortaddr, sizeof(shortaddr), IMF_PROXY_PROTOCOL_V2, "truncated");
    shortaddr[13] = 0x12; /* UDP */
    expect_error(shortaddr, sizeof(shortaddr), IMF_PROXY_PROTOCOL_V2, "not a TCP");
}

static struct sockaddr_storage addr(const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (strchr(ip, ':') != NULL) {
        ss.ss_family = AF_INET6;
        inet_pton(AF_INET6, ip, &((struct sockaddr_in6 *)&ss)->sin6_addr);
    } else {
        ss.ss_family = AF_INET;
        inet_pton(AF_INET, ip, &((struct sockaddr_in *)&ss)->sin_addr);
    }
    return ss;
}

static void test_iplimit(void **state)
{
    (void)state;
    struct sockaddr_storage a = addr("198.51.100.1"), b = addr("2001:db8::1");
    assert_true(imf_iplimit_acquire((struct sockaddr *)&a, 2));
    assert_true(imf_iplimit_acquire((struct sockaddr *)&a, 2));
    assert_false(imf_iplimit_acquire((struct sockaddr *)&a, 2));
    assert_true(imf_iplimit_acquire((struct sockaddr *)&b, 2)); /* another address */
    assert_int_equal(imf_iplimit_count((struct sockaddr *)&a), 2);
    imf_iplimit_release((struct sockaddr *)&a);
    assert_true(imf_iplimit_acquire((struct sockaddr *)&a, 2));
    imf_iplimit_release((struct sockaddr *)&a);
    imf_iplimit_release((struct sockaddr *)&a);
    imf_iplimit_release((struct sockaddr *)&b);
    assert_int_equal(imf_iplimit_count((struct sockaddr *)&a), 0);
    assert_int_equal(imf_iplimit_count((struct sockaddr *)&b), 0);
    /* 0 means no limit. */
    for (int i = 0; i < 100; i++)
        assert_true(imf_iplimit_acquire((struct sockaddr *)&a, 0));
    for (int i = 0; i < 100; i++)
        imf_iplimit_release((struct sockaddr *)&a);
    assert_int_equal(imf_iplimit_count((struct sockaddr *)&a), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v1),
        cmocka_unit_test(test_v2),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_iplimit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
