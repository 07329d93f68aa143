/* iplimit: which client addresses share one count. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "imapfront/iplimit.h"

static struct sockaddr_storage addr_of(const char *text)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, text, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
    } else {
        assert_int_equal(inet_pton(AF_INET6, text, &v6->sin6_addr), 1);
        v6->sin6_family = AF_INET6;
    }
    return ss;
}

static bool acquire(const char *text, uint32_t max)
{
    struct sockaddr_storage ss = addr_of(text);
    return imf_iplimit_acquire((struct sockaddr *)&ss, max);
}

static void release(const char *text)
{
    struct sockaddr_storage ss = addr_of(text);
    imf_iplimit_release((struct sockaddr *)&ss);
}

static uint32_t count(const char *text)
{
    struct sockaddr_storage ss = addr_of(text);
    return imf_iplimit_count((struct sockaddr *)&ss);
}

/* Default /64: every address of one /64 counts against the same limit, the
 * next /64 has its own. */
static void test_v6_default_prefix_64(void **state)
{
    (void)state;
    assert_true(acquire("2001:db8:1:2::1", 2));
    assert_true(acquire("2001:db8:1:2:ffff:ffff:ffff:fffe", 2));
    assert_false(acquire("2001:db8:1:2:dead:beef:0:1", 2));
    assert_int_equal(count("2001:db8:1:2:1234::5"), 2);
    assert_true(acquire("2001:db8:1:3::1", 2));
    assert_int_equal(count("2001:db8:1:3::1"), 1);
    release("2001:db8:1:2::1");
    release("2001:db8:1:2:ffff:ffff:ffff:fffe");
    release("2001:db8:1:3::1");
    assert_int_equal(count("2001:db8:1:2::1"), 0);
    assert_int_equal(count("2001:db8:1:3::1"), 0);
}

/* A prefix that is not a multiple of 8 masks inside a byte. */
static void test_v6_prefix_inside_a_byte(void **state)
{
    (void)state;
    imf_iplimit_set_prefix_v6(60);
    assert_true(acquire("2001:db8:0:10::1", 0));
    assert_true(acquire("2001:db8:0:1f::1", 0)); /* same /60 */
    assert_int_equal(count("2001:db8:0:1a::7"), 2);
    assert_int_equal(count("2001:db8:0:20::1"), 0); /* the next /60 */
    release("2001:db8:0:10::1");
    release("2001:db8:0:1f::1");
    imf_iplimit_set_prefix_v6(128);
    assert_true(acquire("2001:db8::1", 0));
    assert_int_equal(count("2001:db8::2"), 0);
    assert_int_equal(count("2001:db8::1"), 1);
    release("2001:db8::1");
    imf_iplimit_set_prefix_v6(64);
}

/* IPv4 stays per address; an IPv4-mapped IPv6 address is that IPv4
 * address, not a member of ::ffff:0:0/64. */
static void test_v4_per_address(void **state)
{
    (void)state;
    assert_true(acquire("192.0.2.1", 1));
    assert_false(acquire("192.0.2.1", 1));
    assert_true(acquire("192.0.2.2", 1));
    assert_int_equal(count("::ffff:192.0.2.1"), 1);
    assert_int_equal(count("::ffff:192.0.2.3"), 0);
    release("192.0.2.1");
    release("192.0.2.2");
    assert_int_equal(count("192.0.2.1"), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v6_default_prefix_64),
        cmocka_unit_test(test_v6_prefix_inside_a_byte),
        cmocka_unit_test(test_v4_per_address),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
