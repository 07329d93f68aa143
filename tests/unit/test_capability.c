/* unit.capability: what clients are shown of a server's capabilities. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "imapfront/capability.h"

/* Rewrites in and compares with want; want NULL means "left alone". */
static void check(const struct imf_cap_policy *pol, const char *in, const char *want)
{
    uint8_t out[1024];
    size_t out_len = 0;
    bool changed =
        imf_capability_rewrite((const uint8_t *)in, strlen(in), pol, out, sizeof(out), &out_len);
    if (want == NULL) {
        if (changed)
            fail_msg("rewrote %s into %.*s", in, (int)out_len, out);
        return;
    }
    if (!changed)
        fail_msg("left %s alone, wanted %s", in, want);
    out[out_len] = '\0';
    assert_string_equal((const char *)out, want);
}

static const struct imf_cap_policy after_tls = {.tls_active = true};

static void test_untagged_after_tls(void **state)
{
    (void)state;
    check(&after_tls,
          "* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED AUTH=PLAIN COMPRESS=DEFLATE IDLE\r\n",
          "* CAPABILITY IMAP4rev1 AUTH=PLAIN IDLE\r\n");
    /* Case does not matter, nor does a bare LF. */
    check(&after_tls, "* capability imap4rev1 starttls compress=deflate\n",
          "* capability imap4rev1\n");
    /* Nothing to remove: the line comes back the same. */
    check(&after_tls, "* CAPABILITY IMAP4rev1 IDLE\r\n", "* CAPABILITY IMAP4rev1 IDLE\r\n");
}

static void test_response_codes(void **state)
{
    (void)state;
    check(&after_tls, "* OK [CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN] Dovecot ready.\r\n",
          "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] Dovecot ready.\r\n");
    check(&after_tls, "a1 OK [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE SORT] Logged in\r\n",
          "a1 OK [CAPABILITY IMAP4rev1 SORT] Logged in\r\n");
    check(&after_tls, "* PREAUTH [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n",
          "* PREAUTH [CAPABILITY IMAP4rev1] ready\r\n");
}

static void test_before_tls(void **state)
{
    (void)state;
    struct imf_cap_policy pol = {.offer_starttls = true, .login_disabled = true};
    check(&pol, "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN AUTH=LOGIN IDLE] ready\r\n",
          "* OK [CAPABILITY IMAP4rev1 SASL-IR IDLE STARTTLS LOGINDISABLED] ready\r\n");
    pol.login_disabled = false;
    check(&pol, "* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN\r\n",
          "* CAPABILITY IMAP4rev1 AUTH=PLAIN STARTTLS\r\n");
}

static void test_hide_list_and_literal_plus(void **state)
{
    (void)state;
    struct imf_cap_policy pol = {
        .tls_active = true, .hide = "QUOTA, X-*  NOTIFY CONTEXT=*", .add_literal_plus = true};
    check(&pol, "* CAPABILITY IMAP4rev1 QUOTA X-* NOTIFY CONTEXT=SEARCH CONTEXT=SORT IDLE\r\n",
          "* CAPABILITY IMAP4rev1 IDLE LITERAL+\r\n");
    check(&pol, "* CAPABILITY IMAP4rev1 LITERAL+\r\n", "* CAPABILITY IMAP4rev1 LITERAL+\r\n");
    /* Hiding is by whole name: QUOTA hides neither QUOTAX nor QUOTA=RES-STORAGE. */
    check(&pol, "* CAPABILITY QUOTAX QUOTA=RES-STORAGE\r\n",
          "* CAPABILITY QUOTAX QUOTA=RES-STORAGE LITERAL+\r\n");
}

/* Lines that merely mention capabilities are not lists. */
static void test_not_a_list(void **state)
{
    (void)state;
    check(&after_tls, "* OK CAPABILITY STARTTLS is great\r\n", NULL);
    check(&after_tls, "* 1 FETCH (BODY[] {30}\r\n", NULL);
    check(&after_tls, "a1 NO [CAPABILITY STARTTLS] no\r\n", NULL);
    check(&after_tls, "* CAPABILITYX STARTTLS\r\n", NULL);
    check(&after_tls, "* OK [CAPABILITY STARTTLS\r\n", NULL);
    check(&after_tls, "STARTTLS\r\n", NULL);
    check(&after_tls, "\r\n", NULL);
    check(&after_tls, "", NULL);
}

/* Found by fuzz_capability: with LITERAL+ already announced, a second
 * rewrite moved it behind STARTTLS/LOGINDISABLED. Rewriting is idempotent. */
static void test_rewrite_is_idempotent(void **state)
{
    (void)state;
    struct imf_cap_policy pol = {
        .offer_starttls = true, .login_disabled = true, .add_literal_plus = true};
    const char *in = "a1 OK [CAPABILITY] done\r\n";
    uint8_t once[128], twice[192];
    size_t once_len, twice_len;
    assert_true(imf_capability_rewrite((const uint8_t *)in, strlen(in), &pol, once, sizeof(once),
                                       &once_len));
    assert_true(imf_capability_rewrite(once, once_len, &pol, twice, sizeof(twice), &twice_len));
    assert_int_equal(once_len, twice_len);
    assert_memory_equal(once, twice, once_len);
    assert_memory_equal(once, "a1 OK [CAPABILITY STARTTLS LOGINDISABLED LITERAL+] done\r\n",
                        once_len);
    /* Also found by the fuzzer: a stray CR inside the list is a separator,
     * not a name. */
    check(&after_tls, "* CAPABILITY IL* \r \n", "* CAPABILITY IL*\n");
}

/* The output never exceeds the stated growth, whatever the policy. */
static void test_growth_bound(void **state)
{
    (void)state;
    struct imf_cap_policy pol = {
        .offer_starttls = true, .login_disabled = true, .add_literal_plus = true};
    const char *in = "* CAPABILITY\r\n";
    uint8_t out[64];
    size_t out_len;
    assert_true(imf_capability_rewrite((const uint8_t *)in, strlen(in), &pol, out,
                                       strlen(in) + IMF_CAP_GROWTH, &out_len));
    assert_true(out_len <= strlen(in) + IMF_CAP_GROWTH);
    assert_memory_equal(out, "* CAPABILITY STARTTLS LOGINDISABLED LITERAL+\r\n", out_len);
    /* Too small an output buffer: refused rather than overrun. */
    assert_false(imf_capability_rewrite((const uint8_t *)in, strlen(in), &pol, out,
                                        strlen(in) + IMF_CAP_GROWTH - 1, &out_len));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_untagged_after_tls),
        cmocka_unit_test(test_response_codes),
        cmocka_unit_test(test_before_tls),
        cmocka_unit_test(test_hide_list_and_literal_plus),
        cmocka_unit_test(test_not_a_list),
        cmocka_unit_test(test_growth_bound),
        cmocka_unit_test(test_rewrite_is_idempotent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
