/* unit.tls: SNI name matching and building contexts from config. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include <errno.h>
#include <openssl/x509.h>
#include <time.h>

#include "imapfront/tls.h"

static void test_name_matching(void **state)
{
    (void)state;
    const char *list = "mail.example.com, *.example.org imap.test";
    assert_true(imf_tls_name_matches(list, "mail.example.com"));
    assert_true(imf_tls_name_matches(list, "MAIL.Example.COM"));
    assert_true(imf_tls_name_matches(list, "mail.example.com."));
    assert_true(imf_tls_name_matches(list, "imap.test"));
    assert_true(imf_tls_name_matches(list, "a.example.org"));
    /* A wildcard is one label: neither the bare domain nor two labels. */
    assert_false(imf_tls_name_matches(list, "example.org"));
    assert_false(imf_tls_name_matches(list, "a.b.example.org"));
    assert_false(imf_tls_name_matches(list, ".example.org"));
    assert_false(imf_tls_name_matches(list, "xexample.org"));
    assert_false(imf_tls_name_matches(list, "example.com"));
    assert_false(imf_tls_name_matches(list, "mail.example.co"));
    assert_false(imf_tls_name_matches(list, ""));
    assert_false(imf_tls_name_matches("", "mail.example.com"));
}

/* A context cannot be built from files that do not exist, and the error
 * names the section and the file. */
static void test_missing_files(void **state)
{
    (void)state;
    struct imf_config *cfg = NULL;
    char err[512];
    assert_int_equal(imf_config_parse("t.ini",
                                      "[listen.a]\naddress = 127.0.0.1:0\n[tls]\n"
                                      "certificate = /nonexistent/c.pem\nprivate_key = k\n"
                                      "[backend]\nservers = 127.0.0.1:143\n",
                                      &cfg, err, sizeof(err)),
                     0);
    SSL_CTX *ctx = NULL;
    assert_true(imf_tls_ctx_new(cfg, &ctx, err, sizeof(err)) < 0);
    assert_null(ctx);
    /* FILE:LINE: key: reason, like every config error. */
    assert_string_equal(err, "t.ini:4: certificate: cannot load /nonexistent/c.pem: "
                             "No such file or directory");
    imf_config_unref(cfg);
}

/* notAfter as seconds since the epoch, for both encodings: UTCTime up to
 * 2049, GeneralizedTime from 2050 (RFC 5280, 4.1.2.5). */
static void test_not_after(void **state)
{
    (void)state;
    int64_t t = 0;
    assert_int_equal(imf_tls_not_after(NULL, &t), -EINVAL);
    static const int64_t times[] = {0, 1796952499, 2000000000, 2524608000, 4102444799};
    for (size_t i = 0; i < sizeof(times) / sizeof(times[0]); i++) {
        X509 *x = X509_new();
        assert_non_null(x);
        assert_non_null(ASN1_TIME_set(X509_getm_notAfter(x), (time_t)times[i]));
        assert_int_equal(imf_tls_not_after(x, &t), 0);
        assert_int_equal(t, times[i]);
        X509_free(x);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_not_after),
        cmocka_unit_test(test_name_matching),
        cmocka_unit_test(test_missing_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
