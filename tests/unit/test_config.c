/* unit.config: proxy.ini parsing. Errors are compared as whole strings,
 * line numbers included, because that text is what a user reads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include "imapfront/config.h"
#include "imapfront/route.h"
#include "imapfront/log.h"

#ifndef IMF_SRCDIR
#error "IMF_SRCDIR (the source tree, for proxy.ini.example) must be defined by the build"
#endif

/* The smallest valid file: 7 lines, so text appended to it starts at line 8. */
#define BASE                  \
    "[listen.a]\n"            \
    "address = 127.0.0.1:0\n" \
    "[tls]\n"                 \
    "certificate = c.pem\n"   \
    "private_key = k.pem\n"   \
    "[backend]\n"             \
    "servers = 127.0.0.1:143\n"

/* The pool [backend] defines. */
#define DEF(cfg) imf_config_pool((cfg), IMF_POOL_DEFAULT)

#define KiB (UINT64_C(1024))
#define MiB (KiB * 1024)
#define GiB (MiB * 1024)

static struct imf_config *parse_ok(const char *text)
{
    struct imf_config *cfg = NULL;
    char err[512] = "";
    int rc = imf_config_parse("t.ini", text, &cfg, err, sizeof(err));
    if (rc != 0)
        print_error("unexpected error: %s\n", err);
    assert_int_equal(rc, 0);
    assert_non_null(cfg);
    return cfg;
}

static void expect_error(const char *text, const char *want)
{
    struct imf_config *cfg = (struct imf_config *)(uintptr_t)1; /* must stay untouched */
    char err[512] = "";
    int rc = imf_config_parse("t.ini", text, &cfg, err, sizeof(err));
    assert_true(rc < 0);
    assert_ptr_equal(cfg, (struct imf_config *)(uintptr_t)1);
    assert_string_equal(err, want);
}

/* BASE followed by extra lines, which start at line 8. */
static struct imf_config *parse_base(const char *extra)
{
    char text[8192];
    snprintf(text, sizeof(text), "%s%s", BASE, extra);
    return parse_ok(text);
}

static void expect_base_error(const char *extra, const char *want)
{
    char text[8192];
    snprintf(text, sizeof(text), "%s%s", BASE, extra);
    expect_error(text, want);
}

/* ---- the example file and the defaults ---------------------------------- */

static void test_example_loads(void **state)
{
    (void)state;
    struct imf_config *cfg = NULL;
    char err[512] = "";
    int rc = imf_config_load(IMF_SRCDIR "/proxy.ini.example", &cfg, err, sizeof(err));
    if (rc != 0)
        print_error("%s\n", err);
    assert_int_equal(rc, 0);
    assert_string_equal(cfg->path, IMF_SRCDIR "/proxy.ini.example");
    assert_int_equal(cfg->workers, 0);
    assert_int_equal(cfg->max_connections, 10000);
    assert_int_equal(cfg->listeners_len, 1);
    assert_string_equal(cfg->listeners[0].name, "imaps");
    assert_string_equal(cfg->listeners[0].address.text, "0.0.0.0:993");
    assert_int_equal(cfg->listeners[0].mode, IMF_LISTEN_IMPLICIT_TLS);
    assert_null(cfg->listeners[0].proxy_protocol_from);
    assert_string_equal(cfg->certificate, "/etc/imapfront/fullchain.pem");
    assert_string_equal(cfg->private_key, "/etc/imapfront/privkey.pem");
    assert_int_equal(DEF(cfg)->servers_len, 1);
    assert_string_equal(DEF(cfg)->servers[0].text, "192.0.2.10:143");
    assert_int_equal(cfg->max_literal_size, 64 * MiB);
    assert_int_equal(cfg->admin_address.len, 0);
    imf_config_unref(cfg);
}

static void test_defaults(void **state)
{
    (void)state;
    struct imf_config *cfg = parse_ok(BASE);
    assert_string_equal(cfg->path, "t.ini");
    assert_int_equal(cfg->workers, 0);
    assert_int_equal(cfg->max_connections, 10000);
    assert_int_equal(cfg->max_connections_per_ip, 0);
    assert_null(cfg->user);
    assert_int_equal(cfg->log_level, IMF_LOG_INFO);
    assert_int_equal(cfg->log_format, IMF_LOG_TEXT);

    assert_int_equal(cfg->listeners_len, 1);
    const struct imf_listen_config *l = &cfg->listeners[0];
    assert_string_equal(l->name, "a");
    assert_int_equal(l->mode, IMF_LISTEN_IMPLICIT_TLS);
    assert_true(l->require_tls);
    assert_int_equal(l->proxy_protocol, IMF_PROXY_PROTOCOL_OFF);
    assert_null(l->proxy_protocol_from);
    assert_int_equal(l->address.ss.ss_family, AF_INET);
    assert_int_equal(l->address.len, sizeof(struct sockaddr_in));

    assert_string_equal(cfg->certificate, "c.pem");
    assert_string_equal(cfg->private_key, "k.pem");
    assert_int_equal(cfg->min_version, TLS1_2_VERSION);
    assert_true(cfg->session_tickets);
    assert_int_equal(cfg->handshake_timeout_ms, 10000);

    assert_int_equal(DEF(cfg)->servers_len, 1);
    assert_int_equal(DEF(cfg)->balance, IMF_BALANCE_FIRST);
    assert_int_equal(DEF(cfg)->connect_timeout_ms, 5000);
    assert_int_equal(DEF(cfg)->quirks, IMF_QUIRKS_AUTO);
    assert_false(DEF(cfg)->pipelining_set);
    assert_true(DEF(cfg)->pipelining);
    assert_int_equal(DEF(cfg)->literal_plus, IMF_LITERAL_PLUS_PASS);
    assert_false(DEF(cfg)->literal_crlf_split);
    assert_int_equal(DEF(cfg)->forward_client_ip, IMF_FORWARD_IP_OFF);

    assert_int_equal(cfg->max_line_length, 64 * KiB);
    assert_int_equal(cfg->max_literal_size, 64 * MiB);
    assert_null(cfg->hide_capabilities);
    assert_int_equal(cfg->preauth_timeout_ms, 60000);
    assert_int_equal(cfg->idle_timeout_ms, 30 * 60000);
    assert_int_equal(cfg->buffer_limit, 256 * KiB);

    assert_int_equal(cfg->admin_address.len, 0); /* off unless set */
    imf_config_unref(cfg);
}

static void test_listen_mode_names(void **state)
{
    (void)state;
    assert_string_equal(imf_listen_mode_names[IMF_LISTEN_IMPLICIT_TLS], "implicit-tls");
    assert_string_equal(imf_listen_mode_names[IMF_LISTEN_STARTTLS], "starttls");
}

/* ---- value types -------------------------------------------------------- */

static void test_bool(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        bool value;
    } good[] = {
        {"yes", true},    {"no", false}, {"on", true}, {"off", false}, {"true", true},
        {"false", false}, {"1", true},   {"0", false}, {"YES", true},  {"Off", false},
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        char text[512];
        /* [tls] already exists in BASE: build the file without it. */
        snprintf(text, sizeof(text),
                 "[listen.a]\naddress = 127.0.0.1:0\n[backend]\nservers = 127.0.0.1:1\n"
                 "[tls]\ncertificate = c\nprivate_key = k\nsession_tickets = %s\n",
                 good[i].text);
        struct imf_config *cfg = parse_ok(text);
        assert_int_equal(cfg->session_tickets, good[i].value);
        imf_config_unref(cfg);
    }
    expect_error("[tls]\nsession_tickets = maybe\n",
                 "t.ini:2: session_tickets: \"maybe\" is not a boolean "
                 "(use yes/no, on/off, true/false or 1/0)");
    expect_error("[tls]\nsession_tickets =\n", "t.ini:2: session_tickets: \"\" is not a boolean "
                                               "(use yes/no, on/off, true/false or 1/0)");
}

static void test_uint(void **state)
{
    (void)state;
    struct imf_config *cfg = parse_base("[proxy]\nworkers = 64\nmax_connections = 1\n");
    assert_int_equal(cfg->workers, 64);
    assert_int_equal(cfg->max_connections, 1);
    imf_config_unref(cfg);
    cfg = parse_base("[proxy]\nworkers = AUTO\nmax_connections = 1000000\n");
    assert_int_equal(cfg->workers, 0);
    assert_int_equal(cfg->max_connections, 1000000);
    imf_config_unref(cfg);

    expect_base_error("[proxy]\nworkers = 0\n",
                      "t.ini:9: workers: \"0\" is out of range (1..64 or auto)");
    expect_base_error("[proxy]\nworkers = 65\n",
                      "t.ini:9: workers: \"65\" is out of range (1..64 or auto)");
    expect_base_error("[proxy]\nworkers = many\n",
                      "t.ini:9: workers: \"many\" is not a number or auto");
    expect_base_error("[proxy]\nmax_connections = -1\n",
                      "t.ini:9: max_connections: \"-1\" is not a number");
    expect_base_error("[proxy]\nmax_connections = 10k\n",
                      "t.ini:9: max_connections: \"10k\" is not a number");
    expect_base_error("[proxy]\nmax_connections = 0\n",
                      "t.ini:9: max_connections: \"0\" is out of range (1..1000000)");
    expect_base_error("[proxy]\nmax_connections = 99999999999999999999999\n",
                      "t.ini:9: max_connections: \"99999999999999999999999\" is out of range "
                      "(1..1000000)");
    expect_base_error("[proxy]\nmax_connections = 99999999999999999999999x\n",
                      "t.ini:9: max_connections: \"99999999999999999999999x\" is not a number");
}

static void test_size(void **state)
{
    (void)state;
    struct imf_config *cfg =
        parse_base("[imap]\nbuffer_limit = 1G\nmax_line_length = 16384\nmax_literal_size = 4G\n");
    assert_int_equal(cfg->buffer_limit, GiB);
    assert_int_equal(cfg->max_line_length, 16384);
    assert_int_equal(cfg->max_literal_size, 4 * GiB);
    imf_config_unref(cfg);
    cfg = parse_base("[imap]\nbuffer_limit = 16k\nmax_line_length = 1K\nmax_literal_size = 2M\n");
    assert_int_equal(cfg->buffer_limit, 16 * KiB);
    assert_int_equal(cfg->max_line_length, KiB);
    assert_int_equal(cfg->max_literal_size, 2 * MiB);
    imf_config_unref(cfg);

    expect_base_error("[imap]\nbuffer_limit = 12q\n",
                      "t.ini:9: buffer_limit: \"12q\" is not a size (use k, M or G)");
    expect_base_error("[imap]\nbuffer_limit = 1.5M\n",
                      "t.ini:9: buffer_limit: \"1.5M\" is not a size (use k, M or G)");
    expect_base_error("[imap]\nbuffer_limit = M\n",
                      "t.ini:9: buffer_limit: \"M\" is not a size (use k, M or G)");
    expect_base_error("[imap]\nbuffer_limit = 1 M\n",
                      "t.ini:9: buffer_limit: \"1 M\" is not a size (use k, M or G)");
    expect_base_error("[imap]\nbuffer_limit = 16383\n",
                      "t.ini:9: buffer_limit: \"16383\" is out of range (16k..1G)");
    expect_base_error("[imap]\nbuffer_limit = 1025M\n",
                      "t.ini:9: buffer_limit: \"1025M\" is out of range (16k..1G)");
    expect_base_error("[imap]\nbuffer_limit = 99999999999G\n",
                      "t.ini:9: buffer_limit: \"99999999999G\" is out of range (16k..1G)");
    expect_base_error("[imap]\nmax_literal_size = 4097M\n",
                      "t.ini:9: max_literal_size: \"4097M\" is out of range (1k..4G)");

    /* compress_window: zlib's window, a power of two from 1k to 32k. */
    cfg = parse_base("[imap]\ncompress_window = 1k\n");
    assert_int_equal(cfg->compress_window, KiB);
    imf_config_unref(cfg);
    cfg = parse_base("[imap]\ncompress_window = 32k\n");
    assert_int_equal(cfg->compress_window, 32 * KiB);
    imf_config_unref(cfg);
    expect_base_error("[imap]\ncompress_window = 3k\n",
                      "t.ini:9: compress_window: must be a power of two from 1k to 32k (1k, 2k, "
                      "4k, 8k, 16k, 32k)");
    expect_base_error("[imap]\ncompress_window = 64k\n",
                      "t.ini:9: compress_window: \"64k\" is out of range (1k..32k)");
}

static void test_parse_size_edges(void **state)
{
    (void)state;
    uint64_t v = 7;
    assert_int_equal(imf_config_parse_size("0", &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(imf_config_parse_size("18446744073709551615", &v), 0);
    assert_int_equal(v, UINT64_MAX);
    assert_int_equal(imf_config_parse_size("16777215G", &v), 0);
    assert_int_equal(v, 16777215 * GiB);
    v = 7;
    assert_int_equal(imf_config_parse_size("18446744073709551616", &v), -ERANGE);
    assert_int_equal(imf_config_parse_size("17179869184G", &v), -ERANGE); /* 2^64 exactly */
    assert_int_equal(imf_config_parse_size("99999999999G", &v), -ERANGE);
    assert_int_equal(imf_config_parse_size("99999999999999999999999", &v), -ERANGE);
    assert_int_equal(v, 7); /* untouched on failure */
    assert_int_equal(imf_config_parse_size("", &v), -EINVAL);
    assert_int_equal(imf_config_parse_size("k", &v), -EINVAL);
    assert_int_equal(imf_config_parse_size("+1k", &v), -EINVAL);
    assert_int_equal(imf_config_parse_size("1kB", &v), -EINVAL);
    assert_int_equal(imf_config_parse_size("99999999999999999999999x", &v), -EINVAL);
    assert_int_equal(v, 7);
}

static void test_duration(void **state)
{
    (void)state;
    struct imf_config *cfg = parse_base("[imap]\npreauth_timeout = 1500ms\nidle_timeout = 1s\n");
    assert_int_equal(cfg->preauth_timeout_ms, 1500);
    assert_int_equal(cfg->idle_timeout_ms, 1000);
    imf_config_unref(cfg);
    cfg = parse_base("[imap]\npreauth_timeout = 45\nidle_timeout = 168h\n");
    assert_int_equal(cfg->preauth_timeout_ms, 45000);
    assert_int_equal(cfg->idle_timeout_ms, UINT64_C(168) * 3600 * 1000);
    imf_config_unref(cfg);
    cfg = parse_base("[imap]\npreauth_timeout = 1ms\nidle_timeout = 2m\n");
    assert_int_equal(cfg->preauth_timeout_ms, 1);
    assert_int_equal(cfg->idle_timeout_ms, 120000);
    imf_config_unref(cfg);

    expect_base_error("[imap]\nidle_timeout = 999ms\n",
                      "t.ini:9: idle_timeout: \"999ms\" is out of range (1s..168h)");
    expect_base_error("[imap]\nidle_timeout = 169h\n",
                      "t.ini:9: idle_timeout: \"169h\" is out of range (1s..168h)");
    expect_base_error("[imap]\npreauth_timeout = 0\n",
                      "t.ini:9: preauth_timeout: \"0\" is out of range (1ms..168h)");
    expect_base_error("[imap]\npreauth_timeout = 10x\n",
                      "t.ini:9: preauth_timeout: \"10x\" is not a duration (use ms, s, m or h)");
    expect_base_error("[imap]\npreauth_timeout = 1d\n",
                      "t.ini:9: preauth_timeout: \"1d\" is not a duration (use ms, s, m or h)");
    expect_base_error("[imap]\npreauth_timeout = 99999999999999999h\n",
                      "t.ini:9: preauth_timeout: \"99999999999999999h\" is out of range "
                      "(1ms..168h)");

    uint64_t ms = 3;
    assert_int_equal(imf_config_parse_duration("5124095576030h", &ms), 0);
    assert_int_equal(ms, UINT64_C(5124095576030) * 3600000);
    assert_int_equal(imf_config_parse_duration("5124095576031h", &ms), -ERANGE);
    assert_int_equal(imf_config_parse_duration("18446744073709552s", &ms), -ERANGE);
    assert_int_equal(imf_config_parse_duration("18446744073709551615ms", &ms), 0);
    assert_int_equal(ms, UINT64_MAX);
    assert_int_equal(imf_config_parse_duration("", &ms), -EINVAL);
    assert_int_equal(imf_config_parse_duration("s", &ms), -EINVAL);
    assert_int_equal(imf_config_parse_duration("1 s", &ms), -EINVAL);
    assert_int_equal(imf_config_parse_duration("1S", &ms), -EINVAL);
}

static void test_string(void **state)
{
    (void)state;
    struct imf_config *cfg = parse_ok("[listen.a]\naddress = 127.0.0.1:0\n"
                                      "[backend]\nservers = 127.0.0.1:1\n"
                                      "[tls]\ncertificate = /srv/my certs/a;b.pem\n"
                                      "private_key =   k.pem   \n");
    assert_string_equal(cfg->certificate, "/srv/my certs/a;b.pem");
    assert_string_equal(cfg->private_key, "k.pem");
    imf_config_unref(cfg);
}

static void test_enum(void **state)
{
    (void)state;
    struct imf_config *cfg = parse_base("[proxy]\nlog_level = debug\nlog_format = JSON\n");
    assert_int_equal(cfg->log_level, IMF_LOG_DEBUG);
    assert_int_equal(cfg->log_format, IMF_LOG_JSON);
    imf_config_unref(cfg);
    cfg = parse_ok("[listen.a]\naddress = 127.0.0.1:0\n[backend]\nservers = 127.0.0.1:1\n"
                   "[tls]\ncertificate = c\nprivate_key = k\nmin_version = 1.3\n");
    assert_int_equal(cfg->min_version, TLS1_3_VERSION);
    imf_config_unref(cfg);

    expect_base_error("[proxy]\nlog_level = loud\n",
                      "t.ini:9: log_level: \"loud\" is not one of error, warn, info, debug");
    expect_base_error("[proxy]\nlog_format = xml\n",
                      "t.ini:9: log_format: \"xml\" is not one of text, json");
    expect_error("[tls]\nmin_version = 1.4\n",
                 "t.ini:2: min_version: \"1.4\" is not one of 1.0, 1.1, 1.2, 1.3");
}

/* Old clients on request only: TLS 1.0/1.1 need the CBC suites too, and
 * asking for one without the other is an error rather than a proxy that
 * no old client can agree with. */
static void test_legacy_tls(void **state)
{
    (void)state;
#define TLS_HEAD                                                                   \
    "[listen.a]\naddress = 127.0.0.1:0\n[backend]\nservers = 127.0.0.1:1\n[tls]\n" \
    "certificate = c\nprivate_key = k\n"
    struct imf_config *cfg = parse_ok(TLS_HEAD "min_version = 1.0\nlegacy_ciphers = on\n");
    assert_int_equal(cfg->min_version, TLS1_VERSION);
    assert_true(cfg->legacy_ciphers);
    imf_config_unref(cfg);
    cfg = parse_ok(TLS_HEAD "min_version = 1.1\nlegacy_ciphers = on\n");
    assert_int_equal(cfg->min_version, TLS1_1_VERSION);
    imf_config_unref(cfg);
    cfg = parse_ok(TLS_HEAD "legacy_ciphers = yes\n"); /* CBC for TLS 1.2 clients */
    assert_int_equal(cfg->min_version, TLS1_2_VERSION);
    assert_true(cfg->legacy_ciphers);
    imf_config_unref(cfg);
    cfg = parse_ok(TLS_HEAD);
    assert_false(cfg->legacy_ciphers);
    imf_config_unref(cfg);
    expect_error(TLS_HEAD "min_version = 1.1\n",
                 "t.ini:8: min_version: TLS 1.0 and 1.1 need legacy_ciphers = on (they have no "
                 "AEAD cipher suites)");
#undef TLS_HEAD
}

/* A file in a fresh temporary directory, holding len bytes of text;
 * the path goes into out (the caller removes it). */
static void write_temp(char *out, size_t out_len, const char *dir, const char *name,
                       const char *text, size_t len)
{
    snprintf(out, out_len, "%s/%s", dir, name);
    FILE *f = fopen(out, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

/* check_password_file: the secret comes from a file (less one trailing
 * newline), exactly one of the two forms is set, and no error message
 * ever quotes the secret. */
static void test_secret_files(void **state)
{
    (void)state;
    char dir[] = "/tmp/imf-test-secret-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char pw[256], crlf[256], two[256], empty[256], nl[256], nul[256], text[1024], want[1024];
    write_temp(pw, sizeof(pw), dir, "pw", "s3cret-Value\n", 13);
    write_temp(crlf, sizeof(crlf), dir, "crlf", "s3cret\r\n", 8);
    write_temp(two, sizeof(two), dir, "two", "abc\n\n", 5);
    write_temp(empty, sizeof(empty), dir, "empty", "", 0);
    write_temp(nl, sizeof(nl), dir, "nl", "\n", 1);
    write_temp(nul, sizeof(nul), dir, "nul", "a\0b", 3);

    snprintf(text, sizeof(text), "check = login\ncheck_user = svc\ncheck_password_file = %s\n", pw);
    struct imf_config *cfg = parse_base(text);
    assert_string_equal(DEF(cfg)->check_password, "s3cret-Value");
    imf_config_unref(cfg);
    snprintf(text, sizeof(text), "check_password_file = %s\n", crlf);
    cfg = parse_base(text);
    assert_string_equal(DEF(cfg)->check_password, "s3cret");
    imf_config_unref(cfg);
    snprintf(text, sizeof(text), "check_password_file = %s\n", two); /* only one is stripped */
    cfg = parse_base(text);
    assert_string_equal(DEF(cfg)->check_password, "abc\n");
    imf_config_unref(cfg);
    /* An empty value of either form counts as not set. */
    snprintf(text, sizeof(text), "check_password =\ncheck_password_file = %s\n", pw);
    cfg = parse_base(text);
    assert_string_equal(DEF(cfg)->check_password, "s3cret-Value");
    imf_config_unref(cfg);
    cfg = parse_base("check_password_file =\ncheck_password = inline\n");
    assert_string_equal(DEF(cfg)->check_password, "inline");
    imf_config_unref(cfg);

    /* Both forms: an error in either order, naming both and no secret. */
    snprintf(text, sizeof(text), "check_password = inline\ncheck_password_file = %s\n", pw);
    expect_base_error(text, "t.ini:9: check_password_file: check_password is set too (line 8); "
                            "set only one of them");
    snprintf(text, sizeof(text), "check_password_file = %s\ncheck_password = inline\n", pw);
    expect_base_error(text, "t.ini:9: check_password: check_password_file is set too (line 8); "
                            "set only one of them");
    snprintf(text, sizeof(text), "check_password_file = %s\ncheck_password_file = %s\n", pw, pw);
    expect_base_error(text, "t.ini:9: check_password_file: set twice in [backend] (first on "
                            "line 8)");

    /* Unreadable, empty, or not text: FILE:LINE: key: reason. */
    snprintf(text, sizeof(text), "check_password_file = %s/missing\n", dir);
    snprintf(want, sizeof(want),
             "t.ini:8: check_password_file: cannot open %s/missing: No such file or directory",
             dir);
    expect_base_error(text, want);
    snprintf(text, sizeof(text), "check_password_file = %s\n", empty);
    snprintf(want, sizeof(want), "t.ini:8: check_password_file: %s is empty", empty);
    expect_base_error(text, want);
    snprintf(text, sizeof(text), "check_password_file = %s\n", nl);
    snprintf(want, sizeof(want), "t.ini:8: check_password_file: %s is empty", nl);
    expect_base_error(text, want);
    snprintf(text, sizeof(text), "check_password_file = %s\n", nul);
    snprintf(want, sizeof(want), "t.ini:8: check_password_file: %s contains a NUL byte", nul);
    expect_base_error(text, want);
    snprintf(text, sizeof(text), "check_password_file = %s\n", dir);
    snprintf(want, sizeof(want), "t.ini:8: check_password_file: cannot read %s", dir);
    expect_base_error(text, want);
    /* A secret from a file that IMAP cannot quote is blamed on the
     * _file line, without quoting it. */
    snprintf(text, sizeof(text), "check = login\ncheck_user = svc\ncheck_password_file = %s\n",
             two);
    expect_base_error(text, "t.ini:10: check_password: holds CR, LF or an 8-bit character, which "
                            "an IMAP quoted string cannot carry");
    /* Only keys flagged as secrets have the form. */
    expect_base_error("check_user_file = x\n",
                      "t.ini:8: check_user_file: unknown key in [backend]");
    expect_error("[tls]\ncertificate_file = x\n",
                 "t.ini:2: certificate_file: unknown key in [tls]");
    /* A named pool has the form too, with its own lines. */
    snprintf(text, sizeof(text),
             "[backend.x]\nservers = 127.0.0.1:1\ncheck = login\ncheck_user = svc\n"
             "check_password_file = %s\n",
             pw);
    cfg = parse_base(text);
    assert_string_equal(imf_config_pool(cfg, "x")->check_password, "s3cret-Value");
    assert_null(DEF(cfg)->check_password);
    imf_config_unref(cfg);
    snprintf(text, sizeof(text),
             "[backend.x]\nservers = 127.0.0.1:1\ncheck_password = a\ncheck_password_file = %s\n",
             pw);
    expect_base_error(text, "t.ini:11: check_password_file: check_password is set too (line 10); "
                            "set only one of them");

    const char *files[] = {pw, crlf, two, empty, nl, nul};
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
        assert_int_equal(unlink(files[i]), 0);
    assert_int_equal(rmdir(dir), 0);
}

/* [admin] allow_from uses the CIDR parser of proxy_protocol_from. */
static void test_admin_keys(void **state)
{
    (void)state;
    struct imf_config *cfg = parse_base("[admin]\naddress = 127.0.0.1:9100\n"
                                        "allow_from = 127.0.0.1, 10.0.0.0/8 ::1\n"
                                        "max_connections = 500\ntimeout = 2s\n");
    assert_int_equal(cfg->admin_allow_len, 3);
    assert_int_equal(cfg->admin_allow[1].prefix, 8);
    assert_int_equal(cfg->admin_max_connections, 500);
    assert_int_equal(cfg->admin_timeout_ms, 2000);
    imf_config_unref(cfg);
    cfg = parse_base("");
    assert_int_equal(cfg->admin_allow_len, 0);
    assert_int_equal(cfg->admin_max_connections, 256);
    assert_int_equal(cfg->admin_timeout_ms, 10000);
    imf_config_unref(cfg);
    expect_base_error("[admin]\nallow_from = 10.0.0.0/8, localhost\n",
                      "t.ini:9: allow_from: \"localhost\" is not an address or CIDR range (at "
                      "most 32 entries)");
    expect_base_error("[admin]\ntimeout = 500ms\n",
                      "t.ini:9: timeout: \"500ms\" is out of range (1s..1h)");
}

static void test_sockaddr(void **state)
{
    (void)state;
    struct imf_sockaddr a;
    assert_int_equal(imf_config_parse_sockaddr("127.0.0.1:993", &a), 0);
    assert_string_equal(a.text, "127.0.0.1:993");
    assert_int_equal(a.len, sizeof(struct sockaddr_in));
    const struct sockaddr_in *sin = (const struct sockaddr_in *)&a.ss;
    assert_int_equal(sin->sin_family, AF_INET);
    assert_int_equal(ntohs(sin->sin_port), 993);
    assert_int_equal(ntohl(sin->sin_addr.s_addr), 0x7f000001);

    assert_int_equal(imf_config_parse_sockaddr("[::1]:65535", &a), 0);
    assert_int_equal(a.len, sizeof(struct sockaddr_in6));
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&a.ss;
    assert_int_equal(sin6->sin6_family, AF_INET6);
    assert_int_equal(ntohs(sin6->sin6_port), 65535);
    assert_true(IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr));

    assert_int_equal(imf_config_parse_sockaddr("[::]:0", &a), 0);
    assert_int_equal(imf_config_parse_sockaddr("0.0.0.0:0", &a), 0);
    assert_int_equal(imf_config_parse_sockaddr("[2001:db8::ffff:1.2.3.4]:143", &a), 0);

    static const char *const bad[] = {
        "",
        "127.0.0.1",
        "127.0.0.1:",
        "127.0.0.1:65536",
        ":993",
        "localhost:993",
        "::1:993",
        "[::1]993",
        "[::1]",
        "[]:1",
        "[127.0.0.1]:1",
        "1.2.3.4:-1",
        "1.2.3.4:+1",
        "1.2.3.4:0x10",
        "1.2.3.256:1",
        "1.2.3.4:1 ",
        "[::1]:1:2",
        "[::1]:000000001",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (imf_config_parse_sockaddr(bad[i], &a) != -EINVAL)
            fail_msg("accepted \"%s\"", bad[i]);
    }

    expect_error("[listen.a]\naddress = localhost:993\n",
                 "t.ini:2: address: \"localhost:993\" is not an address "
                 "(use IPv4:port or [IPv6]:port)");
    expect_error("[listen.a]\naddress = 127.0.0.1:65536\n",
                 "t.ini:2: address: \"127.0.0.1:65536\" is not an address "
                 "(use IPv4:port or [IPv6]:port)");
    expect_error("[listen.a]\naddress =\n", "t.ini:2: address: must not be empty");
}

static void test_sockaddr_list(void **state)
{
    (void)state;
    struct imf_config *cfg =
        parse_ok("[listen.a]\naddress = 127.0.0.1:0\n[tls]\ncertificate = c\nprivate_key = k\n"
                 "[backend]\nservers = 127.0.0.1:143, [::1]:143 ,10.0.0.1:1\n");
    assert_int_equal(DEF(cfg)->servers_len, 3);
    assert_string_equal(DEF(cfg)->servers[0].text, "127.0.0.1:143");
    assert_string_equal(DEF(cfg)->servers[1].text, "[::1]:143");
    assert_int_equal(DEF(cfg)->servers[1].ss.ss_family, AF_INET6);
    assert_string_equal(DEF(cfg)->servers[2].text, "10.0.0.1:1");
    assert_false(DEF(cfg)->servers[0].named);
    imf_config_unref(cfg);

    /* Host names are kept as written, resolved later (not here). */
    cfg = parse_ok("[listen.a]\naddress = 127.0.0.1:0\n[tls]\ncertificate = c\nprivate_key = k\n"
                   "[backend]\nservers = mail.example.org:143, nonexistent.invalid:993, "
                   "127.0.0.1:143\n");
    assert_int_equal(DEF(cfg)->servers_len, 3);
    assert_true(DEF(cfg)->servers[0].named);
    assert_int_equal(DEF(cfg)->servers[0].len, 0);
    char host[64], port[8];
    assert_int_equal(
        imf_sockaddr_host_port(&DEF(cfg)->servers[1], host, sizeof(host), port, sizeof(port)), 0);
    assert_string_equal(host, "nonexistent.invalid");
    assert_string_equal(port, "993");
    assert_false(DEF(cfg)->servers[2].named);
    imf_config_unref(cfg);

    /* 64 servers fit, 65 do not. */
    char text[4096];
    size_t used = (size_t)snprintf(text, sizeof(text), "[backend]\nservers = ");
    for (int i = 1; i <= 65; i++)
        used += (size_t)snprintf(text + used, sizeof(text) - used, "%s127.0.0.1:%d",
                                 i > 1 ? "," : "", i);
    expect_error(text, "t.ini:2: servers: more than 64 addresses");
    char *last = strrchr(text, ',');
    *last = '\0';
    strcat(text, "\n[listen.a]\naddress = 127.0.0.1:0\n[tls]\ncertificate = c\nprivate_key = k\n");
    cfg = parse_ok(text);
    assert_int_equal(DEF(cfg)->servers_len, 64);
    imf_config_unref(cfg);

    expect_error("[backend]\nservers = 127.0.0.1:1,\n",
                 "t.ini:2: servers: empty entry in the list");
    expect_error("[backend]\nservers = , 127.0.0.1:1\n",
                 "t.ini:2: servers: empty entry in the list");
    expect_error("[backend]\nservers = 127.0.0.1:1,,127.0.0.1:2\n",
                 "t.ini:2: servers: empty entry in the list");
    expect_error("[backend]\nservers = 127.0.0.1:1, mail.example.com\n",
                 "t.ini:2: servers: \"mail.example.com\" is not an address "
                 "(use IPv4:port, [IPv6]:port or name:port)");
    expect_error("[backend]\nservers = mail..example.com:143\n",
                 "t.ini:2: servers: \"mail..example.com:143\" is not an address "
                 "(use IPv4:port, [IPv6]:port or name:port)");
    expect_error("[backend]\nservers = 10.0.0.300:143\n",
                 "t.ini:2: servers: \"10.0.0.300:143\" is not an address "
                 "(use IPv4:port, [IPv6]:port or name:port)");
    expect_error("[backend]\nservers = -mail.example.com:143\n",
                 "t.ini:2: servers: \"-mail.example.com:143\" is not an address "
                 "(use IPv4:port, [IPv6]:port or name:port)");
    expect_error("[backend]\nservers = mail.example.com:0\n",
                 "t.ini:2: servers: \"mail.example.com:0\" is not an address "
                 "(use IPv4:port, [IPv6]:port or name:port)");
    expect_error("[backend]\nservers = mail.example.com:143, MAIL.example.com:143\n",
                 "t.ini:2: servers: MAIL.example.com:143 is listed twice");
    expect_error("[backend]\nservers = 127.0.0.1:1, [::1]:2, 127.0.0.1:1\n",
                 "t.ini:2: servers: 127.0.0.1:1 is listed twice");
    expect_error("[backend]\nservers =\n", "t.ini:2: servers: must not be empty");
}

/* ---- TLS to the backend ------------------------------------------------- */

static void test_backend_tls_keys(void **state)
{
    (void)state;
    struct imf_config *cfg = parse_base("");
    assert_int_equal(DEF(cfg)->tls, IMF_BACKEND_TLS_OFF);
    assert_true(DEF(cfg)->tls_verify);
    assert_null(DEF(cfg)->tls_ca_file);
    assert_null(DEF(cfg)->tls_server_name);
    assert_false(DEF(cfg)->tls_pin_set);
    assert_null(DEF(cfg)->tls_ctx); /* built later, by imf_btls_prepare */
    imf_config_unref(cfg);

    /* The same digest in the three forms accepted. */
    static const char *const forms[] = {
        "tls_pin_sha256 = 000102030405060708090a0b0c0d0e0f101112131415161718191A1B1C1D1E1F\n",
        "tls_pin_sha256 = 00:01:02:03:04:05:06:07:08:09:0A:0B:0C:0D:0E:0F:10:11:12:13:14:15:16:"
        "17:18:19:1A:1B:1C:1D:1E:1F\n",
        "tls_pin_sha256 = AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
    };
    for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
        char extra[512];
        snprintf(extra, sizeof(extra),
                 "tls = starttls\ntls_ca_file = ca.pem\ntls_verify = no\n"
                 "tls_server_name = mail.example.org\n%s",
                 forms[i]);
        cfg = parse_base(extra);
        const struct imf_pool_config *p = DEF(cfg);
        assert_int_equal(p->tls, IMF_BACKEND_TLS_STARTTLS);
        assert_string_equal(p->tls_ca_file, "ca.pem");
        assert_false(p->tls_verify);
        assert_string_equal(p->tls_server_name, "mail.example.org");
        assert_true(p->tls_pin_set);
        for (unsigned b = 0; b < IMF_PIN_LEN; b++)
            assert_int_equal(p->tls_pin[b], b);
        imf_config_unref(cfg);
    }

    expect_base_error("tls = yes\n", "t.ini:8: tls: \"yes\" is not one of off, on, starttls");
    expect_base_error("tls_pin_sha256 = 0001\n",
                      "t.ini:8: tls_pin_sha256: \"0001\" is not a SHA-256 digest (64 hex digits, "
                      "':' between pairs allowed, or 44 base64 characters)");
    /* One hex digit short, one too many, a bad character, base64 without
     * its padding or with bits past the digest. */
    static const char *const bad[] = {
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1",
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f00",
        "g00102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        "00:01:02:03:04:05:06:07:08:09:0A:0B:0C:0D:0E:0F:10:11:12:13:14:15:16:17:18:19:1A:1B:1C:"
        "1D:1E:1F:",
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh9=",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char extra[256];
        snprintf(extra, sizeof(extra), "tls = on\ntls_pin_sha256 = %s\n", bad[i]);
        struct imf_config *c = (struct imf_config *)(uintptr_t)1;
        char err[512] = "";
        char text[8192];
        snprintf(text, sizeof(text), "%s%s", BASE, extra);
        assert_true(imf_config_parse("t.ini", text, &c, err, sizeof(err)) < 0);
        assert_non_null(strstr(err, "t.ini:9: tls_pin_sha256: "));
        assert_non_null(strstr(err, "is not a SHA-256 digest"));
    }
    expect_base_error("tls_server_name = not a name\n",
                      "t.ini:8: tls_server_name: \"not a name\" is not a host name");
}

/* ---- file syntax -------------------------------------------------------- */

static void test_inline_comments(void **state)
{
    (void)state;
    struct imf_config *cfg = parse_ok("; a comment\n"
                                      "# another\n"
                                      "[proxy]   ; the proxy\n"
                                      "workers = 4 ; one per core\n"
                                      "user =              ; optional\n"
                                      "log_level = warn\t; tab before\n"
                                      "[listen.a] ; first\n"
                                      "  address = [::1]:0   ; indented\n"
                                      "[tls]\n"
                                      "certificate = c.pem;not-a-comment\n"
                                      "private_key = k.pem #not-a-comment-either\n"
                                      "[backend]\n"
                                      "servers = 127.0.0.1:1 ; the only one\n");
    assert_int_equal(cfg->workers, 4);
    assert_null(cfg->user);
    assert_int_equal(cfg->log_level, IMF_LOG_WARN);
    assert_string_equal(cfg->listeners[0].address.text, "[::1]:0");
    assert_string_equal(cfg->certificate, "c.pem;not-a-comment");
    assert_string_equal(cfg->private_key, "k.pem #not-a-comment-either");
    assert_int_equal(DEF(cfg)->servers_len, 1);
    imf_config_unref(cfg);
}

static void test_line_endings_and_bom(void **state)
{
    (void)state;
    struct imf_config *cfg = parse_ok("\xEF\xBB\xBF[listen.a]\r\naddress = 127.0.0.1:0\r\n"
                                      "[tls]\r\ncertificate = c\r\nprivate_key = k\r\n"
                                      "[backend]\r\nservers = 127.0.0.1:1"); /* no final EOL */
    assert_string_equal(cfg->certificate, "c");
    assert_string_equal(DEF(cfg)->servers[0].text, "127.0.0.1:1");
    imf_config_unref(cfg);
    expect_error("\xEF\xBB\xBF[tls]\r\ncertificate = c\r\n\r\nbogus = 1\r\n",
                 "t.ini:4: bogus: unknown key in [tls]");
}

static void test_unknown(void **state)
{
    (void)state;
    expect_error("[proxy]\nworkers = 2\ncolour = blue\n",
                 "t.ini:3: colour: unknown key in [proxy]");
    expect_error("[proxy]\n\n\n[listn.imaps]\naddress = 127.0.0.1:993\n",
                 "t.ini:4: [listn.imaps]: unknown section");
    /* An empty unknown section is still reported, at its header. */
    expect_base_error("[server]\n", "t.ini:8: [server]: unknown section");
    expect_error("[Proxy]\n", "t.ini:1: [Proxy]: unknown section");
    expect_error("[ proxy ]\n", "t.ini:1: [ proxy ]: unknown section");
    /* A key known elsewhere is unknown in the wrong section. */
    expect_error("[tls]\nworkers = 2\n", "t.ini:2: workers: unknown key in [tls]");
    expect_error("[listen.x]\naddress = 127.0.0.1:1\ncertificate = c\n",
                 "t.ini:3: certificate: unknown key in [listen.x]");
    expect_error("workers = 2\n[proxy]\n", "t.ini:1: workers: key outside of any section");
    expect_error("[proxy] workers = 2\n",
                 "t.ini:1: [proxy]: unexpected text after the section name");
}

static void test_syntax(void **state)
{
    (void)state;
    expect_error("[proxy]\nworkers 2\n",
                 "t.ini:2: syntax: expected \"[section]\", \"key = value\" or a comment");
    expect_error("[proxy\nworkers = 2\n",
                 "t.ini:1: syntax: expected \"[section]\", \"key = value\" or a comment");
    /* No continuation lines: an indented line after a value is an error. */
    expect_error("[tls]\ncertificate = a\n  b.pem\n",
                 "t.ini:3: syntax: expected \"[section]\", \"key = value\" or a comment");

    char text[6000];
    memset(text, 0, sizeof(text));
    strcpy(text, "[proxy]\n; ");
    memset(text + strlen(text), 'x', 4094);
    strcat(text, "\n"); /* a 4096-byte line is fine */
    strcat(text, "[nope]\n");
    expect_error(text, "t.ini:3: [nope]: unknown section");
    text[strlen("[proxy]\n; ") + 4094] = 'x'; /* 4097 bytes */
    expect_error(text, "t.ini:2: line: longer than 4096 bytes");
}

static void test_long_values(void **state)
{
    (void)state;
    /* Values longer than inih's default 200-byte line buffer survive whole. */
    char text[4200];
    size_t used = (size_t)snprintf(text, sizeof(text),
                                   "[listen.a]\naddress = 127.0.0.1:0\n[tls]\nprivate_key = k\n"
                                   "certificate = /");
    for (int i = 0; i < 300; i++)
        text[used++] = (char)('a' + i % 26);
    used += (size_t)snprintf(text + used, sizeof(text) - used,
                             ".pem\n[backend]\nservers = 127.0.0.1:1\n");
    struct imf_config *cfg = parse_ok(text);
    assert_int_equal(strlen(cfg->certificate), 305);
    assert_int_equal(cfg->certificate[300], 'n');
    imf_config_unref(cfg);

    /* A long bad value is quoted shortened. */
    char bad[400];
    used = (size_t)snprintf(bad, sizeof(bad), "[imap]\nbuffer_limit = ");
    memset(bad + used, '7', 200);
    strcpy(bad + used + 200, "q\n");
    char want[200] = "t.ini:2: buffer_limit: \"";
    memset(want + strlen(want), '7', 64);
    strcat(want, "...\" is not a size (use k, M or G)");
    expect_error(bad, want);
}

static void test_duplicates(void **state)
{
    (void)state;
    expect_error("[proxy]\nworkers = 2\nlog_level = info\nworkers = 2\n",
                 "t.ini:4: workers: set twice in [proxy] (first on line 2)");
    expect_error("[proxy]\nworkers = 2\n[tls]\n[proxy]\n",
                 "t.ini:4: [proxy]: duplicate section (first on line 1)");
    expect_error("[listen.a]\naddress = 127.0.0.1:1\naddress = 127.0.0.1:2\n",
                 "t.ini:3: address: set twice in [listen.a] (first on line 2)");
    expect_error("[listen.a]\naddress = 127.0.0.1:1\n[listen.b]\n[listen.a]\n",
                 "t.ini:4: [listen.a]: duplicate section (first on line 1)");
    /* The same key in two listeners is fine; the same address is not. */
    expect_base_error("[listen.b]\naddress = 127.0.0.1:993\n[listen.c]\naddress = 127.0.0.1:993\n",
                      "t.ini:11: address: 127.0.0.1:993 is already used by [listen.b]");
    expect_base_error("[listen.b]\naddress = [::1]:993\n[listen.c]\naddress = [0::1]:993\n",
                      "t.ini:11: address: [0::1]:993 is already used by [listen.b]");
}

static void test_first_error_wins(void **state)
{
    (void)state;
    expect_error("[proxy]\nworkers = 0\ncolour = red\n[nope]\n",
                 "t.ini:2: workers: \"0\" is out of range (1..64 or auto)");
    expect_error("[proxy]\nworkers 0\ncolour = red\n",
                 "t.ini:2: syntax: expected \"[section]\", \"key = value\" or a comment");
    expect_error("[nope]\nworkers 0\n", "t.ini:1: [nope]: unknown section");
}

static void test_listener_names(void **state)
{
    (void)state;
    char name63[64];
    memset(name63, 'n', 63);
    name63[63] = '\0';
    char text[512];
    snprintf(text, sizeof(text),
             "[listen.%s]\naddress = 127.0.0.1:0\n[listen.A-z_0]\naddress = 127.0.0.1:0\n"
             "[tls]\ncertificate = c\nprivate_key = k\n[backend]\nservers = 127.0.0.1:1\n",
             name63);
    struct imf_config *cfg = parse_ok(text);
    assert_int_equal(cfg->listeners_len, 2);
    assert_string_equal(cfg->listeners[0].name, name63);
    assert_string_equal(cfg->listeners[1].name, "A-z_0");
    imf_config_unref(cfg);

    snprintf(text, sizeof(text), "[listen.%sn]\n", name63);
    char want[512];
    snprintf(want, sizeof(want),
             "t.ini:1: [listen.%sn]: invalid section name (use 1 to 63 of A-Z, a-z, 0-9, _ "
             "and -)",
             name63);
    expect_error(text, want);
    expect_error(
        "[listen.]\n",
        "t.ini:1: [listen.]: invalid section name (use 1 to 63 of A-Z, a-z, 0-9, _ and -)");
    expect_error("[listen.a b]\n",
                 "t.ini:1: [listen.a b]: invalid section name (use 1 to 63 of A-Z, a-z, 0-9, _ "
                 "and -)");
    expect_error("[listen.a.b]\n",
                 "t.ini:1: [listen.a.b]: invalid section name (use 1 to 63 of A-Z, a-z, 0-9, _ "
                 "and -)");
}

static void test_several_listeners(void **state)
{
    (void)state;
    struct imf_config *cfg = parse_ok("[listen.v4]\naddress = 127.0.0.1:0\n"
                                      "[tls]\ncertificate = c\nprivate_key = k\n"
                                      "[listen.v6]\naddress = [::1]:0\nmode = implicit-tls\n"
                                      "[listen.any6]\naddress = [::]:10993\n"
                                      "[backend]\nservers = [::1]:143\n"
                                      "[listen.again]\naddress = 127.0.0.1:0\n");
    assert_int_equal(cfg->listeners_len, 4);
    assert_string_equal(cfg->listeners[0].name, "v4");
    assert_string_equal(cfg->listeners[1].name, "v6");
    assert_string_equal(cfg->listeners[2].name, "any6");
    assert_string_equal(cfg->listeners[3].name, "again"); /* port 0 twice: no clash */
    assert_int_equal(cfg->listeners[1].address.ss.ss_family, AF_INET6);
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&cfg->listeners[2].address.ss;
    assert_int_equal(ntohs(sin6->sin6_port), 10993);
    assert_true(IN6_IS_ADDR_UNSPECIFIED(&sin6->sin6_addr));
    for (size_t i = 0; i < cfg->listeners_len; i++) {
        assert_int_equal(cfg->listeners[i].mode, IMF_LISTEN_IMPLICIT_TLS);
        assert_true(cfg->listeners[i].require_tls);
    }
    imf_config_unref(cfg);
}

static void test_required(void **state)
{
    (void)state;
    expect_error("", "t.ini: [listen.NAME]: at least one listener section is required");
    expect_error("[tls]\ncertificate = c\nprivate_key = k\n[backend]\nservers = 127.0.0.1:1\n",
                 "t.ini: [listen.NAME]: at least one listener section is required");
    expect_error("[listen.a]\naddress = 127.0.0.1:0\n[listen.b]\nmode = implicit-tls\n",
                 "t.ini:3: [listen.b] address: required");
    expect_error("[listen.a]\naddress = 127.0.0.1:0\n[backend]\nservers = 127.0.0.1:1\n",
                 "t.ini: [tls] certificate: required");
    expect_error("[listen.a]\naddress = 127.0.0.1:0\n[tls]\ncertificate = c\n"
                 "[backend]\nservers = 127.0.0.1:1\n",
                 "t.ini: [tls] private_key: required");
    expect_error("[listen.a]\naddress = 127.0.0.1:0\n[tls]\ncertificate = c\nprivate_key = k\n",
                 "t.ini: [backend] servers: required");
    expect_error("[tls]\ncertificate =  ; nothing\n", "t.ini:2: certificate: must not be empty");
}

static void test_not_yet(void **state)
{
    (void)state;
    /* The default value, written out, is accepted (also in another spelling). */
    struct imf_config *cfg = parse_ok("[listen.a]\naddress = 127.0.0.1:0\n[tls]\ncertificate = c\n"
                                      "private_key = k\n[backend]\nservers = 127.0.0.1:1\n"
                                      "check = OFF\n");
    assert_int_equal(DEF(cfg)->check, IMF_CHECK_OFF);
    assert_int_equal(cfg->compress_level, 1); /* fast: see docs/performance.md */
    imf_config_unref(cfg);

    static const struct {
        const char *text;
        const char *want;
    } cases[] = {
        {"[imap]\ncompress = sometimes\n", "t.ini:9: compress: \"sometimes\" is not a boolean (use "
                                           "yes/no, on/off, true/false or 1/0)"},
        /* A bad value is reported as bad, not as "not supported yet". */
        {"[imap]\ncompress = maybe\n",
         "t.ini:9: compress: \"maybe\" is not a boolean (use yes/no, on/off, true/false or 1/0)"},
        {"[imap]\ncompress_level = 0\n", "t.ini:9: compress_level: \"0\" is out of range (1..9)"},
        {"[listen.b]\nmode = tls\n", "t.ini:9: mode: \"tls\" is not one of implicit-tls, starttls"},
        {"[admin]\naddress = nowhere\n",
         "t.ini:9: address: \"nowhere\" is not an address (use IPv4:port or [IPv6]:port)"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        expect_base_error(cases[i].text, cases[i].want);
}

/* imf_format_sockaddr gives back what imf_config_parse_sockaddr read. */
static void test_format_sockaddr(void **state)
{
    (void)state;
    static const char *const texts[] = {"127.0.0.1:993", "[::1]:143", "[2001:db8::7]:65535"};
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        struct imf_sockaddr a;
        char out[80];
        assert_int_equal(imf_config_parse_sockaddr(texts[i], &a), 0);
        imf_format_sockaddr((const struct sockaddr *)&a.ss, out, sizeof(out));
        assert_string_equal(out, texts[i]);
    }
    struct sockaddr unknown = {.sa_family = AF_UNIX};
    char out[8];
    imf_format_sockaddr(&unknown, out, sizeof(out));
    assert_string_equal(out, "?");
}

/* Deep health checks: login needs its account, and every value it sends
 * must fit an IMAP quoted string; the password is never quoted back. */
static void test_check_keys(void **state)
{
    (void)state;
    struct imf_config *cfg = parse_base("check = login\ncheck_user = svc\n"
                                        "check_password = a \"b\" \\c\ncheck_timeout = 2s\n");
    assert_int_equal(DEF(cfg)->check, IMF_CHECK_LOGIN);
    assert_string_equal(DEF(cfg)->check_password, "a \"b\" \\c");
    assert_string_equal(DEF(cfg)->check_mailbox, "INBOX");
    assert_int_equal(DEF(cfg)->check_interval_ms, 10000);
    assert_int_equal(DEF(cfg)->check_timeout_ms, 2000);
    imf_config_unref(cfg);
    cfg = parse_base("check = banner\n"); /* banner needs no account */
    assert_int_equal(DEF(cfg)->check, IMF_CHECK_BANNER);
    imf_config_unref(cfg);

    expect_base_error("check = login\ncheck_password = pw\n",
                      "t.ini:8: check_user: required by check = login");
    expect_base_error("check = login\ncheck_user = svc\n",
                      "t.ini:8: check_password: required by check = login (or its _file form)");
    expect_base_error("check = login\ncheck_user = svc\ncheck_password = pw\ncheck_mailbox =\n",
                      "t.ini:11: check_mailbox: required by check = login");
    expect_base_error("check = login\ncheck_user = svc\ncheck_password = p\xc3\xa4ss\n",
                      "t.ini:10: check_password: holds CR, LF or an 8-bit character, which an "
                      "IMAP quoted string cannot carry");
    expect_base_error("check_interval = 10ms\n",
                      "t.ini:8: check_interval: \"10ms\" is out of range (100ms..1h)");
    expect_base_error("check = deep\n",
                      "t.ini:8: check: \"deep\" is not one of off, banner, login");
}

/* PROXY protocol listeners name the balancers they trust; limits and the
 * user to run as are plain values. */
static void test_operations_keys(void **state)
{
    (void)state;
    struct imf_config *cfg =
        parse_base("[listen.lb]\naddress = 127.0.0.1:0\nproxy_protocol = any\n"
                   "proxy_protocol_from = 10.0.0.0/8, 192.0.2.7 2001:db8::/32\n"
                   "[proxy]\nmax_connections_per_ip = 5\nuser = nobody\n");
    assert_int_equal(cfg->listeners[1].proxy_protocol, IMF_PROXY_PROTOCOL_ANY);
    assert_int_equal(cfg->listeners[1].proxy_from_len, 3);
    assert_int_equal(cfg->listeners[1].proxy_from[2].prefix, 32);
    assert_int_equal(cfg->max_connections_per_ip, 5);
    assert_string_equal(cfg->user, "nobody");
    imf_config_unref(cfg);
    expect_base_error(
        "[listen.lb]\naddress = 127.0.0.1:0\nproxy_protocol = v2\n",
        "t.ini:10: [listen.lb] proxy_protocol_from: required when proxy_protocol is on "
        "(the load balancers to trust)");
    expect_base_error("[listen.lb]\naddress = 127.0.0.1:0\nproxy_protocol = v1\n"
                      "proxy_protocol_from = 10.0.0.0/33\n",
                      "t.ini:11: proxy_protocol_from: \"10.0.0.0/33\" is not an address or CIDR "
                      "range (at most 32 entries)");
}

/* The front-door keys (STARTTLS listeners, capability hiding, client-IP
 * forwarding) are accepted and land in the snapshot. */
static void test_front_door_keys(void **state)
{
    (void)state;
    struct imf_config *cfg =
        parse_base("[listen.b]\naddress = 127.0.0.1:0\nmode = starttls\nrequire_tls = no\n"
                   "[imap]\nhide_capabilities = QUOTA, X-FOO\n");
    assert_int_equal(cfg->listeners_len, 2);
    assert_int_equal(cfg->listeners[1].mode, IMF_LISTEN_STARTTLS);
    assert_false(cfg->listeners[1].require_tls);
    assert_true(cfg->listeners[0].require_tls);
    assert_string_equal(cfg->hide_capabilities, "QUOTA, X-FOO");
    imf_config_unref(cfg);
    cfg = parse_ok("[listen.a]\naddress = 127.0.0.1:0\n[tls]\ncertificate = c\nprivate_key = k\n"
                   "[backend]\nservers = 127.0.0.1:143\nforward_client_ip = id\n");
    assert_int_equal(DEF(cfg)->forward_client_ip, IMF_FORWARD_IP_ID);
    imf_config_unref(cfg);
}

/* [certificate.NAME] sections: any number, all keys required, names unique. */
static void test_certificate_sections(void **state)
{
    (void)state;
    struct imf_config *cfg =
        parse_base("[certificate.one]\ncertificate = 1.pem\nprivate_key = 1.key\n"
                   "server_names = a.test, *.b.test\n"
                   "[certificate.two]\ncertificate = 2.pem\nprivate_key = 2.key\n"
                   "server_names = c.test\n");
    assert_int_equal(cfg->certs_len, 2);
    assert_string_equal(cfg->certs[0].name, "one");
    assert_string_equal(cfg->certs[0].server_names, "a.test, *.b.test");
    assert_string_equal(cfg->certs[1].certificate, "2.pem");
    imf_config_unref(cfg);
    expect_base_error("[certificate.one]\ncertificate = 1.pem\nprivate_key = 1.key\n",
                      "t.ini:8: [certificate.one] server_names: required");
    expect_base_error("[certificate.one]\ncertificate = 1.pem\nprivate_key = 1.key\n"
                      "server_names = a\n[certificate.one]\n",
                      "t.ini:12: [certificate.one]: duplicate section (first on line 8)");
    expect_base_error("[certificate.one]\ncolour = red\n",
                      "t.ini:9: colour: unknown key in [certificate.one]");
}

/* quirks = exchange55 turns on every shield; a shield's own key wins. */
static void test_quirks_preset(void **state)
{
    (void)state;
    struct imf_config *cfg = parse_ok("[listen.a]\naddress = 127.0.0.1:0\n[tls]\ncertificate = c\n"
                                      "private_key = k\n[backend]\nservers = 127.0.0.1:143\n"
                                      "quirks = exchange55\n");
    assert_false(DEF(cfg)->pipelining);
    assert_int_equal(DEF(cfg)->literal_plus, IMF_LITERAL_PLUS_SYNC);
    assert_true(DEF(cfg)->literal_crlf_split);
    imf_config_unref(cfg);
    cfg = parse_ok("[listen.a]\naddress = 127.0.0.1:0\n[tls]\ncertificate = c\nprivate_key = k\n"
                   "[backend]\npipelining = on\nservers = 127.0.0.1:143\nquirks = exchange55\n"
                   "literal_crlf_split = off\n");
    assert_true(DEF(cfg)->pipelining);
    assert_int_equal(DEF(cfg)->literal_plus, IMF_LITERAL_PLUS_SYNC);
    assert_false(DEF(cfg)->literal_crlf_split);
    imf_config_unref(cfg);
    cfg = parse_ok("[listen.a]\naddress = 127.0.0.1:0\n[tls]\ncertificate = c\nprivate_key = k\n"
                   "[backend]\nservers = 127.0.0.1:143\n");
    assert_true(DEF(cfg)->pipelining);
    assert_int_equal(DEF(cfg)->literal_plus, IMF_LITERAL_PLUS_PASS);
    assert_false(DEF(cfg)->literal_crlf_split);
    imf_config_unref(cfg);
}

static void test_cross_checks(void **state)
{
    (void)state;
    expect_base_error("[imap]\nmax_line_length = 512k\n",
                      "t.ini:9: max_line_length: max_line_length (512k) must not exceed "
                      "buffer_limit (256k)");
    expect_base_error("[imap]\nmax_line_length = 64k\nbuffer_limit = 32k\n",
                      "t.ini:10: buffer_limit: max_line_length (64k) must not exceed "
                      "buffer_limit (32k)");
    expect_base_error("[imap]\nbuffer_limit = 32k\n",
                      "t.ini:9: buffer_limit: max_line_length (64k) must not exceed "
                      "buffer_limit (32k)");
    struct imf_config *cfg = parse_base("[imap]\nmax_line_length = 1M\nbuffer_limit = 1M\n");
    assert_int_equal(cfg->max_line_length, cfg->buffer_limit);
    imf_config_unref(cfg);
}

/* ---- files, errors buffers, references ---------------------------------- */

static void test_load_errors(void **state)
{
    (void)state;
    struct imf_config *cfg = NULL;
    char err[512];
    assert_int_equal(imf_config_load("/nonexistent-dir/proxy.ini", &cfg, err, sizeof(err)),
                     -ENOENT);
    assert_null(cfg);
    assert_string_equal(err, "/nonexistent-dir/proxy.ini: cannot open: No such file or directory");

    const char *tmpdir = getenv("TMPDIR");
    char path[512];
    snprintf(path, sizeof(path), "%s/imf-test-config-XXXXXX", tmpdir && *tmpdir ? tmpdir : "/tmp");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    assert_non_null(f);
    fputs("[proxy]\nworkers = 3\n\n[imap]\nbuffer_limit = 12q\n", f);
    fclose(f);
    assert_int_equal(imf_config_load(path, &cfg, err, sizeof(err)), -EINVAL);
    char want[600];
    snprintf(want, sizeof(want), "%s:5: buffer_limit: \"12q\" is not a size (use k, M or G)", path);
    assert_string_equal(err, want);

    f = fopen(path, "w");
    assert_non_null(f);
    fwrite("[proxy]\n\0x\n", 1, 11, f);
    fclose(f);
    assert_int_equal(imf_config_load(path, &cfg, err, sizeof(err)), -EINVAL);
    snprintf(want, sizeof(want), "%s: contains a NUL byte, not a text file", path);
    assert_string_equal(err, want);
    assert_null(cfg);
    unlink(path);
}

static void test_err_buffers(void **state)
{
    (void)state;
    struct imf_config *cfg = NULL;
    char err[12];
    memset(err, 'z', sizeof(err));
    assert_int_equal(imf_config_parse("t.ini", "[nope]\n", &cfg, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "t.ini:1: [n"); /* truncated, terminated */
    assert_int_equal(imf_config_parse("t.ini", "[nope]\n", &cfg, NULL, 0), -EINVAL);
    assert_null(cfg);
}

static void test_refcount(void **state)
{
    (void)state;
    struct imf_config *cfg = parse_ok(BASE);
    assert_ptr_equal(imf_config_ref(cfg), cfg);
    assert_ptr_equal(imf_config_ref(cfg), cfg);
    imf_config_unref(cfg);
    imf_config_unref(cfg);
    assert_string_equal(cfg->certificate, "c.pem"); /* still one reference */
    imf_config_unref(cfg);                          /* freed: valgrind checks */
    imf_config_unref(NULL);
}

/* [backend.NAME]: pools with every [backend] key, each its own defaults;
 * [backend] is the pool "default"; pools are found by name. */
static void test_pools(void **state)
{
    (void)state;
    struct imf_config *cfg = parse_base("balance = roundrobin\n"
                                        "[backend.archive]\n"
                                        "servers = 192.0.2.20:143, 192.0.2.21:143\n"
                                        "quirks = exchange55\n"
                                        "max_sessions = 7\n"
                                        "check = banner\n"
                                        "[backend.new-mail]\n"
                                        "servers = [2001:db8::1]:143\n"
                                        "idle = poll\n");
    assert_int_equal(cfg->pools_len, 3);
    const struct imf_pool_config *d = DEF(cfg);
    const struct imf_pool_config *a = imf_config_pool(cfg, "archive");
    const struct imf_pool_config *n = imf_config_pool(cfg, "new-mail");
    assert_non_null(d);
    assert_non_null(a);
    assert_non_null(n);
    assert_null(imf_config_pool(cfg, "Archive")); /* names are case-sensitive */
    assert_null(imf_config_pool(cfg, "backend"));
    assert_string_equal(d->name, "default");
    assert_int_equal(d->balance, IMF_BALANCE_ROUNDROBIN);
    assert_int_equal(d->servers_len, 1);
    assert_true(d->pipelining);
    assert_int_equal(d->check, IMF_CHECK_OFF);
    /* The archive's keys stay in the archive; the rest are defaults. */
    assert_int_equal(a->servers_len, 2);
    assert_string_equal(a->servers[1].text, "192.0.2.21:143");
    assert_int_equal(a->balance, IMF_BALANCE_FIRST);
    assert_int_equal(a->max_sessions, 7);
    assert_int_equal(a->max_connecting, 16);
    assert_int_equal(a->check, IMF_CHECK_BANNER);
    assert_string_equal(a->check_mailbox, "INBOX");
    assert_false(a->pipelining); /* the exchange55 preset, per pool */
    assert_true(a->literal_crlf_split);
    assert_int_equal(n->idle_mode, IMF_IDLE_POLL);
    assert_int_equal(n->servers[0].ss.ss_family, AF_INET6);
    assert_int_equal(n->quirks, IMF_QUIRKS_AUTO);
    /* Without [route] only "default" is reached. */
    assert_true(imf_route_reaches(cfg, NULL, d->name));
    assert_false(imf_route_reaches(cfg, NULL, a->name));
    imf_config_unref(cfg);

    /* [backend.default] is [backend] under its own name. */
    cfg = parse_ok("[listen.a]\naddress = 127.0.0.1:0\n[tls]\ncertificate = c\nprivate_key = k\n"
                   "[backend.default]\nservers = 127.0.0.1:1\n");
    assert_int_equal(cfg->pools_len, 1);
    assert_string_equal(DEF(cfg)->servers[0].text, "127.0.0.1:1");
    imf_config_unref(cfg);

    expect_base_error("[backend.default]\nservers = 127.0.0.1:1\n",
                      "t.ini:8: [backend.default]: [backend] is the pool \"default\", already "
                      "defined on line 6; write only one of [backend] and [backend.default]");
    expect_error("[listen.a]\naddress = 127.0.0.1:0\n[tls]\ncertificate = c\nprivate_key = k\n"
                 "[backend.default]\nservers = 127.0.0.1:1\n[backend]\nservers = 127.0.0.1:2\n",
                 "t.ini:8: [backend]: [backend] is the pool \"default\", already defined on "
                 "line 6; write only one of [backend] and [backend.default]");
    expect_base_error("[backend.x]\nservers = 127.0.0.1:1\n[backend.x]\n",
                      "t.ini:10: [backend.x]: duplicate section (first on line 8)");
    expect_base_error("[backend.]\n", "t.ini:8: [backend.]: invalid section name (use 1 to 63 "
                                      "of A-Z, a-z, 0-9, _ and -)");
    expect_base_error("[backend.x]\nbalance = first\n", "t.ini:8: [backend.x] servers: required");
    expect_base_error("[backend.x]\nservers = 127.0.0.1:1\nservers = 127.0.0.1:2\n",
                      "t.ini:10: servers: set twice in [backend.x] (first on line 9)");
    expect_base_error("[backend.x]\nservers = 127.0.0.1:1\nfrobnicate = 1\n",
                      "t.ini:10: frobnicate: unknown key in [backend.x]");
    expect_base_error("[backend.x]\nservers = 127.0.0.1:1\nmax_literal_size = 1M\n",
                      "t.ini:10: max_literal_size: unknown key in [backend.x]");
    /* Cross-checks run per pool, at the lines of that pool. */
    expect_base_error("[backend.x]\nservers = 127.0.0.1:1\ncheck = login\ncheck_user = svc\n",
                      "t.ini:10: check_password: required by check = login (or its _file form)");
    /* Only named pools: sessions would have nowhere to go. */
    expect_error("[listen.a]\naddress = 127.0.0.1:0\n[tls]\ncertificate = c\nprivate_key = k\n"
                 "[backend.x]\nservers = 127.0.0.1:1\n",
                 "t.ini:6: [backend]: required: the pool sessions use (or name it "
                 "[backend.default])");
}

/* Reload: the keys the table flags as needing a restart, found by name. */
struct kept {
    char lines[8][160];
    size_t n;
};

static void note_kept(void *arg, const char *what, const char *kept)
{
    struct kept *k = arg;
    if (k->n < 8)
        snprintf(k->lines[k->n++], sizeof(k->lines[0]), "%s=%s", what, kept);
}

#define TWO_LISTENERS                                                                     \
    "[listen.a]\naddress = 127.0.0.1:9993\n[listen.b]\naddress = 127.0.0.1:9994\n[tls]\n" \
    "certificate = c\nprivate_key = k\n[backend]\nservers = 127.0.0.1:1\n"

static void test_restart_keys(void **state)
{
    (void)state;
    struct imf_config *run = parse_ok(TWO_LISTENERS "[proxy]\nworkers = 2\nuser = mail\n"
                                                    "[admin]\naddress = 127.0.0.1:9100\n");
    char why[256] = "";
    struct kept k = {0};

    /* Sections reordered, restart keys changed, other keys changed. */
    struct imf_config *next =
        parse_ok("[listen.b]\naddress = 127.0.0.1:9994\nmode = starttls\n"
                 "[listen.a]\naddress = 127.0.0.1:9993\n[tls]\ncertificate = c\nprivate_key = k\n"
                 "[backend]\nservers = 127.0.0.1:2\n[proxy]\nworkers = auto\nip_prefix_v6 = 56\n"
                 "max_connections = 5\n[admin]\naddress = 127.0.0.1:9101\ntimeout = 20s\n");
    assert_int_equal(imf_config_restart_keys(run, next, note_kept, &k, why, sizeof(why)), 0);
    assert_int_equal(k.n, 5);
    assert_string_equal(k.lines[0], "[proxy] workers=2");
    assert_string_equal(k.lines[1], "[proxy] ip_prefix_v6=64");
    assert_string_equal(k.lines[2], "[proxy] user=mail");
    assert_string_equal(k.lines[3], "[admin] address=127.0.0.1:9100");
    assert_string_equal(k.lines[4], "[admin] timeout=10s");
    /* The running values are back in next; the rest is next's. */
    assert_int_equal(next->workers, 2);
    assert_int_equal(next->ip_prefix_v6, 64);
    assert_string_equal(next->user, "mail");
    assert_string_equal(next->admin_address.text, "127.0.0.1:9100");
    assert_int_equal(next->admin_timeout_ms, 10000);
    assert_int_equal(next->max_connections, 5);
    assert_string_equal(DEF(next)->servers[0].text, "127.0.0.1:2");
    assert_int_equal(next->listeners[0].mode, IMF_LISTEN_STARTTLS);
    /* Once kept, nothing more to report. */
    k.n = 0;
    assert_int_equal(imf_config_restart_keys(run, next, note_kept, &k, why, sizeof(why)), 0);
    assert_int_equal(k.n, 0);
    imf_config_unref(next);

    /* A listening socket cannot move, appear or go: refused, next untouched. */
    static const struct {
        const char *text, *why;
    } refused[] = {
        {"[listen.a]\naddress = 127.0.0.1:9993\n[listen.b]\naddress = 127.0.0.1:9995\n",
         "[listen.b] address changed (still 127.0.0.1:9994)"},
        {"[listen.a]\naddress = 127.0.0.1:9993\n", "[listen.b] was removed"},
        {"[listen.a]\naddress = 127.0.0.1:9993\n[listen.c]\naddress = 127.0.0.1:9994\n",
         "[listen.b] was removed"},
        {"[listen.a]\naddress = 127.0.0.1:9993\n[listen.b]\naddress = 127.0.0.1:9994\n"
         "[listen.c]\naddress = 127.0.0.1:9995\n",
         "[listen.c] was added"},
    };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        char text[1024];
        snprintf(text, sizeof(text),
                 "%s[tls]\ncertificate = c\nprivate_key = k\n[backend]\nservers = 127.0.0.1:1\n"
                 "[proxy]\nworkers = 3\n",
                 refused[i].text);
        next = parse_ok(text);
        k.n = 0;
        assert_int_equal(imf_config_restart_keys(run, next, note_kept, &k, why, sizeof(why)),
                         -EBUSY);
        assert_string_equal(why, refused[i].why);
        assert_int_equal(k.n, 0);
        assert_int_equal(next->workers, 3);
        imf_config_unref(next);
    }
    /* The same config: nothing to say. */
    k.n = 0;
    assert_int_equal(imf_config_restart_keys(run, run, note_kept, &k, why, sizeof(why)), 0);
    assert_int_equal(k.n, 0);
    imf_config_unref(run);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_example_loads),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_listen_mode_names),
        cmocka_unit_test(test_bool),
        cmocka_unit_test(test_uint),
        cmocka_unit_test(test_size),
        cmocka_unit_test(test_parse_size_edges),
        cmocka_unit_test(test_duration),
        cmocka_unit_test(test_string),
        cmocka_unit_test(test_enum),
        cmocka_unit_test(test_sockaddr),
        cmocka_unit_test(test_sockaddr_list),
        cmocka_unit_test(test_backend_tls_keys),
        cmocka_unit_test(test_inline_comments),
        cmocka_unit_test(test_line_endings_and_bom),
        cmocka_unit_test(test_unknown),
        cmocka_unit_test(test_syntax),
        cmocka_unit_test(test_long_values),
        cmocka_unit_test(test_duplicates),
        cmocka_unit_test(test_first_error_wins),
        cmocka_unit_test(test_listener_names),
        cmocka_unit_test(test_several_listeners),
        cmocka_unit_test(test_required),
        cmocka_unit_test(test_not_yet),
        cmocka_unit_test(test_front_door_keys),
        cmocka_unit_test(test_operations_keys),
        cmocka_unit_test(test_quirks_preset),
        cmocka_unit_test(test_certificate_sections),
        cmocka_unit_test(test_cross_checks),
        cmocka_unit_test(test_check_keys),
        cmocka_unit_test(test_legacy_tls),
        cmocka_unit_test(test_secret_files),
        cmocka_unit_test(test_admin_keys),
        cmocka_unit_test(test_format_sockaddr),
        cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_err_buffers),
        cmocka_unit_test(test_refcount),
        cmocka_unit_test(test_pools),
        cmocka_unit_test(test_restart_keys),
    };
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
