/* check: the LOGIN line of a login health check. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "imapfront/check.h"

static void test_login_line_quotes(void **state)
{
    (void)state;
    char out[128];
    size_t n = imf_check_login_line(out, sizeof(out), "t1", "svc", "a\"b\\c d");
    assert_string_equal(out, "t1 LOGIN \"svc\" \"a\\\"b\\\\c d\"\r\n");
    assert_int_equal(n, strlen(out));
}

/* Too small a buffer gives 0, never a cut line that would send half a
 * password; the exact size (line plus NUL) fits. */
static void test_login_line_bounds(void **state)
{
    (void)state;
    char out[64];
    const char *want = "t1 LOGIN \"u\" \"\\\"\"\r\n";
    size_t need = strlen(want) + 1;
    for (size_t len = 0; len < need; len++)
        assert_int_equal(imf_check_login_line(out, len, "t1", "u", "\""), 0);
    assert_int_equal(imf_check_login_line(out, need, "t1", "u", "\""), need - 1);
    assert_string_equal(out, want);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_login_line_quotes),
        cmocka_unit_test(test_login_line_bounds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
