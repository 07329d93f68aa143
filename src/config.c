/* config: proxy.ini into a struct imf_config.
 *
 * Every key is one row of a table below. A row names the section, the key,
 * the value type, where the value goes, its default (a string that goes
 * through the very parser a user's value does), its bounds and flags. The
 * parser walks the tables; nothing here compares key names one by one.
 *
 * inih does the line syntax (sections, "key = value", comments, inline
 * "; comments"). We feed it through our own line reader so that we know the
 * line number of every key (the system libinih is built without
 * INI_HANDLER_LINENO), see every section header even when the section has no
 * keys, and refuse over-long lines instead of letting them be cut. */
#include "imapfront/config.h"
#include "imapfront/netaddr.h"

#include <arpa/inet.h>
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <ini.h>
#include <openssl/ssl.h>

#include "imapfront/log.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Longest line we accept, without its line ending. Values are short; the
 * longest realistic one is a backend list. */
#define IMF_CONFIG_MAX_LINE 4096
/* A config file is small; a huge one is a mistake (wrong path?). */
#define IMF_CONFIG_MAX_FILE (1024 * 1024)
/* How much of a bad value is quoted back in an error message, and of a
 * section name (room for "listen." and the longest valid listener name). */
#define IMF_CONFIG_QUOTE_MAX   64
#define IMF_CONFIG_SECTION_MAX 80

#define KiB  (UINT64_C(1024))
#define MiB  (KiB * 1024)
#define GiB  (MiB * 1024)
#define SEC  (UINT64_C(1000))
#define MIN  (SEC * 60)
#define HOUR (MIN * 60)
#define WEEK (HOUR * 24 * 7)

const char *const imf_listen_mode_names[IMF_LISTEN_MODE_COUNT] = {
    [IMF_LISTEN_IMPLICIT_TLS] = "implicit-tls",
    [IMF_LISTEN_STARTTLS] = "starttls",
};

enum imf_opt_type {
    IMF_OT_BOOL,          /* yes/no, on/off, true/false, 1/0 */
    IMF_OT_UINT,          /* decimal, min..max */
    IMF_OT_SIZE,          /* bytes, k/M/G suffix (1024-based), min..max */
    IMF_OT_DURATION,      /* milliseconds; ms/s/m/h suffix, bare = s; min..max */
    IMF_OT_STRING,        /* char *, NULL when empty */
    IMF_OT_ENUM,          /* one of the row's choices, stored as its value */
    IMF_OT_SOCKADDR,      /* struct imf_sockaddr; empty = off (len 0) */
    IMF_OT_SOCKADDR_LIST, /* struct imf_sockaddr * + size_t count; min..max entries */
    IMF_OT_COUNT
};

/* Row flags. */
#define IMF_CF_REQUIRED 0x1u /* must be set to a non-empty value */
#define IMF_CF_NOT_YET  0x2u /* accepted only with its default value (feature not built yet) */
#define IMF_CF_AUTO     0x4u /* UINT that also accepts "auto", stored as 0 */
/* A secret STRING (default empty) that may instead be read from a file
 * named by the key KEY_file: exactly one of the two; the file's content,
 * less one trailing newline. Keeps secrets out of a world-readable INI and
 * lets them come from a Kubernetes Secret or systemd credential. */
#define IMF_CF_FILE 0x8u
/* A SIGHUP cannot apply it (a socket bound, a table sized, privileges
 * dropped at start): a reload keeps the running value and says so, or, in
 * a section that is a socket ([listen.NAME]), is refused. As PgBouncer's
 * CF_NO_RELOAD. */
#define IMF_CF_RESTART 0x10u

/* One value of an enum key. Flip `supported` when the feature lands. */
struct imf_choice {
    const char *name;
    int value;
    bool supported;
};

struct imf_option {
    const char *section; /* "proxy", ..., or "listen.NAME" for the listener table */
    const char *key;
    enum imf_opt_type type;
    size_t offset;     /* of the field in struct imf_config / imf_listen_config */
    size_t size;       /* of that field (integers are stored by width) */
    size_t len_offset; /* SOCKADDR_LIST only: offset of the entry count */
    const char *def;   /* default, parsed like a user value */
    uint64_t min, max; /* bounds: value (UINT, SIZE, DURATION) or entry count (LIST) */
    const struct imf_choice *choices; /* ENUM only; ends with a NULL name */
    unsigned flags;
};

/* clang-format off */
static const struct imf_choice log_level_choices[] = {
    {"error", IMF_LOG_ERROR, true},
    {"warn", IMF_LOG_WARN, true},
    {"info", IMF_LOG_INFO, true},
    {"debug", IMF_LOG_DEBUG, true},
    {NULL, 0, false},
};
static const struct imf_choice log_format_choices[] = {
    {"text", IMF_LOG_TEXT, true},
    {"json", IMF_LOG_JSON, true},
    {NULL, 0, false},
};
static const struct imf_choice listen_mode_choices[] = {
    {"implicit-tls", IMF_LISTEN_IMPLICIT_TLS, true},
    {"starttls", IMF_LISTEN_STARTTLS, true},
    {NULL, 0, false},
};
static const struct imf_choice proxy_protocol_choices[] = {
    {"off", IMF_PROXY_PROTOCOL_OFF, true},
    {"v1", IMF_PROXY_PROTOCOL_V1, true},
    {"v2", IMF_PROXY_PROTOCOL_V2, true},
    {"any", IMF_PROXY_PROTOCOL_ANY, true},
    {NULL, 0, false},
};
static const struct imf_choice tls_version_choices[] = {
    {"1.0", TLS1_VERSION, true},
    {"1.1", TLS1_1_VERSION, true},
    {"1.2", TLS1_2_VERSION, true},
    {"1.3", TLS1_3_VERSION, true},
    {NULL, 0, false},
};
static const struct imf_choice balance_choices[] = {
    {"first", IMF_BALANCE_FIRST, true},
    {"roundrobin", IMF_BALANCE_ROUNDROBIN, true},
    {NULL, 0, false},
};
static const struct imf_choice quirks_choices[] = {
    {"none", IMF_QUIRKS_NONE, true},
    {"exchange55", IMF_QUIRKS_EXCHANGE55, true},
    {"auto", IMF_QUIRKS_AUTO, true},
    {NULL, 0, false},
};
static const struct imf_choice literal_plus_choices[] = {
    {"pass", IMF_LITERAL_PLUS_PASS, true},
    {"sync", IMF_LITERAL_PLUS_SYNC, true},
    {NULL, 0, false},
};
static const struct imf_choice idle_mode_choices[] = {
    {"pass", IMF_IDLE_PASS, true},
    {"poll", IMF_IDLE_POLL, true},
    {NULL, 0, false},
};
static const struct imf_choice check_choices[] = {
    {"off", IMF_CHECK_OFF, true},
    {"banner", IMF_CHECK_BANNER, true},
    {"login", IMF_CHECK_LOGIN, true},
    {NULL, 0, false},
};
static const struct imf_choice backend_tls_choices[] = {
    {"off", IMF_BACKEND_TLS_OFF, true},
    {"on", IMF_BACKEND_TLS_ON, true},
    {"starttls", IMF_BACKEND_TLS_STARTTLS, true},
    {NULL, 0, false},
};
static const struct imf_choice forward_ip_choices[] = {
    {"off", IMF_FORWARD_IP_OFF, true},
    {"id", IMF_FORWARD_IP_ID, true},
    {NULL, 0, false},
};

#define FIELD_SIZE(type, field) sizeof(((type *)0)->field)
/* OPT: a key of struct imf_config. OPT_LIST: the same for a SOCKADDR_LIST,
 * whose count lives in FIELD_len. LOPT: a key of every [listen.NAME];
 * POPT, POPT_LIST: of every backend pool; COPT: of [certificate.NAME]. */
#define OPT(sec, key, type, field, def, min, max, choices, flags) \
    {sec, key, IMF_OT_##type, offsetof(struct imf_config, field), \
     FIELD_SIZE(struct imf_config, field), 0, def, min, max, choices, flags}
#define OPT_LIST(sec, key, type, field, def, min, max, choices, flags) \
    {sec, key, IMF_OT_##type, offsetof(struct imf_config, field), \
     FIELD_SIZE(struct imf_config, field), offsetof(struct imf_config, field##_len), \
     def, min, max, choices, flags}
#define LOPT(sec, key, type, field, def, min, max, choices, flags) \
    {sec, key, IMF_OT_##type, offsetof(struct imf_listen_config, field), \
     FIELD_SIZE(struct imf_listen_config, field), 0, def, min, max, choices, flags}
#define POPT(sec, key, type, field, def, min, max, choices, flags) \
    {sec, key, IMF_OT_##type, offsetof(struct imf_pool_config, field), \
     FIELD_SIZE(struct imf_pool_config, field), 0, def, min, max, choices, flags}
#define POPT_LIST(sec, key, type, field, def, min, max, choices, flags) \
    {sec, key, IMF_OT_##type, offsetof(struct imf_pool_config, field), \
     FIELD_SIZE(struct imf_pool_config, field), offsetof(struct imf_pool_config, field##_len), \
     def, min, max, choices, flags}
#define COPT(sec, key, type, field, def, min, max, choices, flags) \
    {sec, key, IMF_OT_##type, offsetof(struct imf_cert_config, field), \
     FIELD_SIZE(struct imf_cert_config, field), 0, def, min, max, choices, flags}

/* The schema. One row per line: tests/unit/check_config_docs.py reads these
 * lines and compares them with docs/configuration.md. To enable a feature,
 * drop IMF_CF_NOT_YET from its row (or set its choice to true above). */
static const struct imf_option imf_options[] = {
    OPT("proxy", "workers", UINT, workers, "auto", 1, 64, NULL, IMF_CF_AUTO | IMF_CF_RESTART),
    OPT("proxy", "max_connections", UINT, max_connections, "10000", 1, 1000000, NULL, 0),
    OPT("proxy", "max_connections_per_ip", UINT, max_connections_per_ip, "0", 0, 1000000, NULL, 0),
    OPT("proxy", "ip_prefix_v6", UINT, ip_prefix_v6, "64", 32, 128, NULL, IMF_CF_RESTART),
    OPT("proxy", "user", STRING, user, "", 0, 0, NULL, IMF_CF_RESTART),
    OPT("proxy", "log_level", ENUM, log_level, "info", 0, 0, log_level_choices, 0),
    OPT("proxy", "log_format", ENUM, log_format, "text", 0, 0, log_format_choices, 0),
    OPT("proxy", "drain_timeout", DURATION, drain_timeout_ms, "30s", 0, WEEK, NULL, 0),
    OPT("tls", "certificate", STRING, certificate, "", 0, 0, NULL, IMF_CF_REQUIRED),
    OPT("tls", "private_key", STRING, private_key, "", 0, 0, NULL, IMF_CF_REQUIRED),
    OPT("tls", "min_version", ENUM, min_version, "1.2", 0, 0, tls_version_choices, 0),
    OPT("tls", "legacy_ciphers", BOOL, legacy_ciphers, "off", 0, 0, NULL, 0),
    OPT("tls", "session_tickets", BOOL, session_tickets, "on", 0, 0, NULL, 0),
    OPT("tls", "handshake_timeout", DURATION, handshake_timeout_ms, "10s", 1, WEEK, NULL, 0),
    OPT("imap", "max_line_length", SIZE, max_line_length, "64k", KiB, 16 * MiB, NULL, 0),
    OPT("imap", "max_literal_size", SIZE, max_literal_size, "64M", KiB, 4 * GiB, NULL, 0),
    OPT("imap", "max_command_size", SIZE, max_command_size, "128M", KiB, 16 * GiB, NULL, 0),
    OPT("imap", "hide_capabilities", STRING, hide_capabilities, "", 0, 0, NULL, 0),
    OPT("imap", "preauth_timeout", DURATION, preauth_timeout_ms, "60s", 1, WEEK, NULL, 0),
    OPT("imap", "idle_timeout", DURATION, idle_timeout_ms, "30m", SEC, WEEK, NULL, 0),
    OPT("imap", "buffer_limit", SIZE, buffer_limit, "256k", 16 * KiB, GiB, NULL, 0),
    OPT("imap", "compress", BOOL, compress, "off", 0, 0, NULL, 0),
    OPT("imap", "compress_level", UINT, compress_level, "1", 1, 9, NULL, 0),
    OPT("imap", "compress_window", SIZE, compress_window, "8k", KiB, 32 * KiB, NULL, 0),
    OPT("imap", "idle_keepalive", DURATION, idle_keepalive_ms, "0", 0, HOUR, NULL, 0),
    OPT("imap", "literal_stall", DURATION, literal_stall_ms, "30s", 0, WEEK, NULL, 0),
    OPT("login", "throttle", BOOL, login_throttle, "on", 0, 0, NULL, 0),
    OPT("login", "fail_free", UINT, login_fail_free, "3", 0, 1000, NULL, 0),
    OPT("login", "fail_ban", UINT, login_fail_ban, "6", 1, 10000, NULL, 0),
    OPT("login", "address_fail_free", UINT, login_address_fail_free, "10", 0, 100000, NULL, 0),
    OPT("login", "address_fail_ban", UINT, login_address_fail_ban, "30", 1, 100000, NULL, 0),
    OPT("login", "fail_window", DURATION, login_fail_window_ms, "10m", SEC, WEEK, NULL, 0),
    OPT("login", "ban_time", DURATION, login_ban_time_ms, "10m", SEC, WEEK, NULL, 0),
    OPT("login", "delay_max", DURATION, login_delay_max_ms, "16s", 0, HOUR, NULL, 0),
    OPT("login", "user_lockout", BOOL, login_user_lockout, "off", 0, 0, NULL, 0),
    OPT("login", "trusted_networks", STRING, login_trusted_networks, "", 0, 0, NULL, 0),
    OPT("login", "max_tracked", UINT, login_max_tracked, "100000", 100, 10000000, NULL, IMF_CF_RESTART),
    OPT("login", "store", STRING, login_store, "", 0, 0, NULL, 0),
    OPT("login", "store_password", STRING, login_store_password, "", 0, 0, NULL, IMF_CF_FILE),
    OPT("route", "map", STRING, route_map, "", 0, 0, NULL, 0),
    OPT("route", "default", STRING, route_default, "", 0, 0, NULL, 0),
    OPT("route", "ignore_case", BOOL, route_ignore_case, "yes", 0, 0, NULL, 0),
    OPT("admin", "address", SOCKADDR, admin_address, "", 0, 0, NULL, IMF_CF_RESTART),
    OPT("admin", "allow_from", STRING, admin_allow_from, "", 0, 0, NULL, 0),
    OPT("admin", "max_connections", UINT, admin_max_connections, "256", 1, 10000, NULL, IMF_CF_RESTART),
    OPT("admin", "timeout", DURATION, admin_timeout_ms, "10s", SEC, HOUR, NULL, IMF_CF_RESTART),
};

/* The keys of every backend pool, [backend.NAME] or [backend] (the pool
 * "default"). Their section reads "backend": the documentation lists them
 * once. */
static const struct imf_option imf_pool_options[] = {
    POPT_LIST("backend", "servers", SOCKADDR_LIST, servers, "", 1, 64, NULL, IMF_CF_REQUIRED),
    POPT("backend", "balance", ENUM, balance, "first", 0, 0, balance_choices, 0),
    POPT("backend", "connect_timeout", DURATION, connect_timeout_ms, "5s", 1, WEEK, NULL, 0),
    POPT("backend", "down_after", UINT, down_after, "3", 1, 1000, NULL, 0),
    POPT("backend", "retry_after", DURATION, retry_after_ms, "10s", 1, WEEK, NULL, 0),
    POPT("backend", "max_sessions", UINT, max_sessions, "0", 0, 1000000, NULL, 0),
    POPT("backend", "max_connecting", UINT, max_connecting, "16", 0, 100000, NULL, 0),
    POPT("backend", "queue_timeout", DURATION, queue_timeout_ms, "30s", 1, HOUR, NULL, 0),
    POPT("backend", "connect_rate", UINT, connect_rate, "50", 0, 1000000, NULL, 0),
    POPT("backend", "quirks", ENUM, quirks, "auto", 0, 0, quirks_choices, 0),
    POPT("backend", "pipelining", BOOL, pipelining, "on", 0, 0, NULL, 0),
    POPT("backend", "literal_plus", ENUM, literal_plus, "pass", 0, 0, literal_plus_choices, 0),
    POPT("backend", "literal_crlf_split", BOOL, literal_crlf_split, "off", 0, 0, NULL, 0),
    POPT("backend", "literal_crlf_split_delay", DURATION, literal_crlf_split_delay_ms, "5ms", 0, SEC, NULL, 0),
    POPT("backend", "forward_client_ip", ENUM, forward_client_ip, "off", 0, 0, forward_ip_choices, 0),
    POPT("backend", "idle", ENUM, idle_mode, "pass", 0, 0, idle_mode_choices, 0),
    POPT("backend", "check", ENUM, check, "off", 0, 0, check_choices, 0),
    POPT("backend", "check_interval", DURATION, check_interval_ms, "10s", 100, HOUR, NULL, 0),
    POPT("backend", "check_timeout", DURATION, check_timeout_ms, "5s", 10, HOUR, NULL, 0),
    POPT("backend", "check_user", STRING, check_user, "", 0, 0, NULL, 0),
    POPT("backend", "check_password", STRING, check_password, "", 0, 0, NULL, IMF_CF_FILE),
    POPT("backend", "check_mailbox", STRING, check_mailbox, "INBOX", 0, 0, NULL, 0),
    POPT("backend", "idle_refresh", DURATION, idle_refresh_ms, "0", 0, WEEK, NULL, 0),
    POPT("backend", "poll_interval", DURATION, poll_interval_ms, "30s", 100, HOUR, NULL, 0),
    POPT("backend", "tls", ENUM, tls, "off", 0, 0, backend_tls_choices, 0),
    POPT("backend", "tls_ca_file", STRING, tls_ca_file, "", 0, 0, NULL, 0),
    POPT("backend", "tls_verify", BOOL, tls_verify, "yes", 0, 0, NULL, 0),
    POPT("backend", "tls_server_name", STRING, tls_server_name, "", 0, 0, NULL, 0),
    POPT("backend", "tls_pin_sha256", STRING, tls_pin_sha256, "", 0, 0, NULL, 0),
};

/* The keys of every [listen.NAME] section. */
static const struct imf_option imf_listen_options[] = {
    LOPT("listen.NAME", "address", SOCKADDR, address, "", 0, 0, NULL, IMF_CF_REQUIRED | IMF_CF_RESTART),
    LOPT("listen.NAME", "mode", ENUM, mode, "implicit-tls", 0, 0, listen_mode_choices, 0),
    LOPT("listen.NAME", "require_tls", BOOL, require_tls, "yes", 0, 0, NULL, 0),
    LOPT("listen.NAME", "proxy_protocol", ENUM, proxy_protocol, "off", 0, 0, proxy_protocol_choices, 0),
    LOPT("listen.NAME", "proxy_protocol_from", STRING, proxy_protocol_from, "", 0, 0, NULL, 0),
};

/* The keys of every [certificate.NAME] section: more certificates, chosen
 * by the name a client asks for with SNI. */
static const struct imf_option imf_cert_options[] = {
    COPT("certificate.NAME", "certificate", STRING, certificate, "", 0, 0, NULL, IMF_CF_REQUIRED),
    COPT("certificate.NAME", "private_key", STRING, private_key, "", 0, 0, NULL, IMF_CF_REQUIRED),
    COPT("certificate.NAME", "server_names", STRING, server_names, "", 0, 0, NULL, IMF_CF_REQUIRED),
};
/* clang-format on */

/* The sections that are not [listen.NAME], in file order. */
static const char *const imf_main_sections[] = {"proxy", "tls", "imap", "login", "route", "admin"};

#define IMF_OPTIONS_LEN        ARRAY_SIZE(imf_options)
#define IMF_LISTEN_OPTIONS_LEN ARRAY_SIZE(imf_listen_options)

/* Sections written any number of times as [PREFIX.NAME]: each is an array
 * in struct imf_config whose elements start with their char name[64]. */
enum named_kind { NAMED_LISTEN, NAMED_CERT, NAMED_POOL, NAMED_COUNT };
struct named_section {
    const char *prefix; /* "listen." */
    bool fixed;         /* sockets: a reload may not add, remove or move one */
    const struct imf_option *options;
    size_t options_len;
    size_t elem_size;
    size_t array_offset; /* of the array pointer in struct imf_config */
    size_t len_offset;   /* of its element count */
};
static const struct named_section named_sections[NAMED_COUNT] = {
    {"listen.", true, imf_listen_options, ARRAY_SIZE(imf_listen_options),
     sizeof(struct imf_listen_config), offsetof(struct imf_config, listeners),
     offsetof(struct imf_config, listeners_len)},
    {"certificate.", false, imf_cert_options, ARRAY_SIZE(imf_cert_options),
     sizeof(struct imf_cert_config), offsetof(struct imf_config, certs),
     offsetof(struct imf_config, certs_len)},
    {"backend.", false, imf_pool_options, ARRAY_SIZE(imf_pool_options),
     sizeof(struct imf_pool_config), offsetof(struct imf_config, pools),
     offsetof(struct imf_config, pools_len)},
};
#define NAMED_KEYS_MAX 32
static_assert(ARRAY_SIZE(imf_listen_options) <= NAMED_KEYS_MAX, "named keys");
static_assert(ARRAY_SIZE(imf_cert_options) <= NAMED_KEYS_MAX, "named keys");
static_assert(ARRAY_SIZE(imf_pool_options) <= NAMED_KEYS_MAX, "named keys");
static_assert(offsetof(struct imf_listen_config, name) == 0, "name first");
static_assert(offsetof(struct imf_cert_config, name) == 0, "name first");
static_assert(offsetof(struct imf_pool_config, name) == 0, "name first");

static void **named_array(struct imf_config *cfg, const struct named_section *ns)
{
    return (void **)((char *)cfg + ns->array_offset);
}

static size_t *named_len(struct imf_config *cfg, const struct named_section *ns)
{
    return (size_t *)((char *)cfg + ns->len_offset);
}

static char *named_elem(struct imf_config *cfg, const struct named_section *ns, size_t i)
{
    return (char *)*named_array(cfg, ns) + i * ns->elem_size;
}

/* Integers are stored by width, so one row type serves bool, unsigned,
 * uint16_t, uint64_t and enum fields. Enums here have non-negative values,
 * which the compiler stores as a 4-byte unsigned integer. */
static_assert(sizeof(enum imf_balance) == sizeof(uint32_t), "enum fields are 4 bytes");
static_assert(sizeof(enum imf_listen_mode) == sizeof(uint32_t), "enum fields are 4 bytes");
static_assert(sizeof(bool) == 1, "bool fields are 1 byte");

static void store_uint(void *field, size_t size, uint64_t v)
{
    switch (size) {
    case 1: {
        uint8_t x = (uint8_t)v;
        memcpy(field, &x, 1);
        break;
    }
    case 2: {
        uint16_t x = (uint16_t)v;
        memcpy(field, &x, 2);
        break;
    }
    case 4: {
        uint32_t x = (uint32_t)v;
        memcpy(field, &x, 4);
        break;
    }
    case 8:
        memcpy(field, &v, 8);
        break;
    default:
        abort(); /* a table row with an integer field of odd width */
    }
}

static uint64_t load_uint(const void *field, size_t size)
{
    switch (size) {
    case 1: {
        uint8_t x;
        memcpy(&x, field, 1);
        return x;
    }
    case 2: {
        uint16_t x;
        memcpy(&x, field, 2);
        return x;
    }
    case 4: {
        uint32_t x;
        memcpy(&x, field, 4);
        return x;
    }
    case 8: {
        uint64_t x;
        memcpy(&x, field, 8);
        return x;
    }
    default:
        abort();
    }
}

/* ---- value parsers ------------------------------------------------------ */

/* Decimal digits only (no sign, no spaces). *out_end is where the digits
 * stop, also on failure; -EINVAL without digits, -ERANGE above UINT64_MAX. */
static int parse_digits(const char *s, uint64_t *out, const char **out_end)
{
    uint64_t v = 0;
    bool overflow = false;
    const char *p = s;
    for (; *p >= '0' && *p <= '9'; p++) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            overflow = true;
        else
            v = v * 10 + d;
    }
    *out_end = p;
    if (p == s)
        return -EINVAL;
    if (overflow)
        return -ERANGE;
    *out = v;
    return 0;
}

/* Digits followed by a unit from units[] (or none: bare_mult). */
struct imf_unit {
    const char *suffix;
    uint64_t mult;
};

static int parse_with_unit(const char *text, const struct imf_unit *units, size_t units_len,
                           uint64_t bare_mult, uint64_t *out)
{
    uint64_t n;
    const char *end;
    int rc = parse_digits(text, &n, &end);
    if (rc == -EINVAL)
        return rc;
    /* On overflow, a bad suffix is still reported as the real mistake. */
    uint64_t mult = 0;
    if (*end == '\0') {
        mult = bare_mult;
    } else {
        for (size_t i = 0; i < units_len; i++) {
            if (strcmp(end, units[i].suffix) == 0) {
                mult = units[i].mult;
                break;
            }
        }
        if (mult == 0)
            return -EINVAL;
    }
    if (rc == -ERANGE)
        return -ERANGE;
    if (n > UINT64_MAX / mult)
        return -ERANGE;
    *out = n * mult;
    return 0;
}

int imf_config_parse_size(const char *text, uint64_t *out_bytes)
{
    static const struct imf_unit units[] = {
        {"k", KiB}, {"K", KiB}, {"M", MiB}, {"m", MiB}, {"G", GiB}, {"g", GiB},
    };
    /* parse_digits leaves *out untouched on failure, so does this. */
    uint64_t v;
    int rc = parse_with_unit(text, units, ARRAY_SIZE(units), 1, &v);
    if (rc == 0)
        *out_bytes = v;
    return rc;
}

int imf_config_parse_duration(const char *text, uint64_t *out_ms)
{
    static const struct imf_unit units[] = {
        {"ms", 1},
        {"s", SEC},
        {"m", MIN},
        {"h", HOUR},
    };
    uint64_t v;
    int rc = parse_with_unit(text, units, ARRAY_SIZE(units), SEC, &v);
    if (rc == 0)
        *out_ms = v;
    return rc;
}

static int parse_port(const char *s, uint16_t *out)
{
    uint64_t v;
    const char *end;
    if (strlen(s) > 5 || parse_digits(s, &v, &end) < 0 || *end != '\0' || v > 65535)
        return -EINVAL;
    *out = (uint16_t)v;
    return 0;
}

int imf_config_parse_sockaddr(const char *text, struct imf_sockaddr *out_addr)
{
    struct imf_sockaddr a;
    memset(&a, 0, sizeof(a));
    size_t len = strlen(text);
    if (len == 0 || len >= sizeof(a.text))
        return -EINVAL;
    char host[INET6_ADDRSTRLEN];
    const char *port;
    uint16_t portnum;
    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (close == NULL || close[1] != ':')
            return -EINVAL;
        size_t hlen = (size_t)(close - text - 1);
        if (hlen == 0 || hlen >= sizeof(host))
            return -EINVAL;
        memcpy(host, text + 1, hlen);
        host[hlen] = '\0';
        port = close + 2;
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&a.ss;
        if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1 || parse_port(port, &portnum) < 0)
            return -EINVAL;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(portnum);
        a.len = sizeof(*sin6);
    } else {
        /* IPv4 only: an unbracketed IPv6 address has several colons and
         * fails inet_pton(AF_INET) below. */
        const char *colon = strrchr(text, ':');
        if (colon == NULL)
            return -EINVAL;
        size_t hlen = (size_t)(colon - text);
        if (hlen == 0 || hlen >= sizeof(host))
            return -EINVAL;
        memcpy(host, text, hlen);
        host[hlen] = '\0';
        port = colon + 1;
        struct sockaddr_in *sin = (struct sockaddr_in *)&a.ss;
        if (inet_pton(AF_INET, host, &sin->sin_addr) != 1 || parse_port(port, &portnum) < 0)
            return -EINVAL;
        sin->sin_family = AF_INET;
        sin->sin_port = htons(portnum);
        a.len = sizeof(*sin);
    }
    memcpy(a.text, text, len + 1);
    *out_addr = a;
    return 0;
}

/* A DNS host name (RFC 1123 labels, and '_' which some sites use): at
 * most 253 octets, labels of 1..63, not all digits and dots (that would be
 * a mistyped IPv4 address). */
static bool valid_host_name(const char *h, size_t len)
{
    if (len == 0 || len > 253)
        return false;
    size_t label = 0;
    bool alpha = false;
    for (size_t i = 0; i < len; i++) {
        char c = h[i];
        if (c == '.') {
            if (label == 0 || h[i - 1] == '-')
                return false;
            label = 0;
            continue;
        }
        bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
        bool ok = letter || (c >= '0' && c <= '9') || (c == '-' && label > 0);
        if (!ok || ++label > 63)
            return false;
        alpha = alpha || letter || c == '-';
    }
    return alpha && h[len - 1] != '-';
}

int imf_config_parse_server(const char *text, struct imf_sockaddr *out_addr)
{
    if (imf_config_parse_sockaddr(text, out_addr) == 0)
        return 0;
    struct imf_sockaddr a;
    memset(&a, 0, sizeof(a));
    size_t len = strlen(text);
    const char *colon = strrchr(text, ':');
    uint16_t port;
    if (len >= sizeof(a.text) || colon == NULL || !valid_host_name(text, (size_t)(colon - text)) ||
        parse_port(colon + 1, &port) < 0 || port == 0)
        return -EINVAL;
    memcpy(a.text, text, len + 1);
    a.named = true;
    *out_addr = a;
    return 0;
}

int imf_sockaddr_host_port(const struct imf_sockaddr *a, char *host, size_t host_len, char *port,
                           size_t port_len)
{
    const char *colon = strrchr(a->text, ':');
    if (colon == NULL)
        return -EINVAL;
    size_t hlen = (size_t)(colon - a->text);
    size_t plen = strlen(colon + 1);
    if (hlen >= host_len || plen >= port_len)
        return -EINVAL;
    memcpy(host, a->text, hlen);
    host[hlen] = '\0';
    memcpy(port, colon + 1, plen + 1);
    return 0;
}

/* Same address and port, for cross-checks. Port 0 means "kernel picks" and
 * never clashes. */
static bool same_endpoint(const struct imf_sockaddr *a, const struct imf_sockaddr *b)
{
    if (a->named || b->named)
        return a->named && b->named && strcasecmp(a->text, b->text) == 0;
    if (a->len == 0 || b->len == 0 || a->ss.ss_family != b->ss.ss_family)
        return false;
    if (a->ss.ss_family == AF_INET) {
        const struct sockaddr_in *x = (const struct sockaddr_in *)&a->ss;
        const struct sockaddr_in *y = (const struct sockaddr_in *)&b->ss;
        return x->sin_port != 0 && x->sin_port == y->sin_port &&
               x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)&a->ss;
    const struct sockaddr_in6 *y = (const struct sockaddr_in6 *)&b->ss;
    return x->sin6_port != 0 && x->sin6_port == y->sin6_port &&
           memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
}

/* ---- formatting for messages -------------------------------------------- */

/* `"value"`, shortened when long: messages stay one readable line. */
static void quote(const char *value, char *buf, size_t buf_len)
{
    size_t len = strlen(value);
    if (len > IMF_CONFIG_QUOTE_MAX)
        snprintf(buf, buf_len, "\"%.*s...\"", IMF_CONFIG_QUOTE_MAX, value);
    else
        snprintf(buf, buf_len, "\"%s\"", value);
}

static void format_value(enum imf_opt_type type, uint64_t v, char *buf, size_t buf_len)
{
    static const struct imf_unit sizes[] = {{"G", GiB}, {"M", MiB}, {"k", KiB}};
    static const struct imf_unit times[] = {{"h", HOUR}, {"m", MIN}, {"s", SEC}};
    const struct imf_unit *units = NULL;
    const char *bare = "";
    if (type == IMF_OT_SIZE) {
        units = sizes;
    } else if (type == IMF_OT_DURATION) {
        units = times;
        bare = "ms";
    }
    for (size_t i = 0; units != NULL && i < 3; i++) {
        if (v != 0 && v % units[i].mult == 0) {
            snprintf(buf, buf_len, "%" PRIu64 "%s", v / units[i].mult, units[i].suffix);
            return;
        }
    }
    snprintf(buf, buf_len, "%" PRIu64 "%s", v, bare);
}

static void format_choices(const struct imf_choice *c, char *buf, size_t buf_len)
{
    size_t used = 0;
    buf[0] = '\0';
    for (; c->name != NULL && used < buf_len; c++) {
        int n = snprintf(buf + used, buf_len - used, "%s%s", used ? ", " : "", c->name);
        if (n < 0)
            break;
        used += (size_t)n;
    }
}

/* ---- setting one value -------------------------------------------------- */

static void free_field(const struct imf_option *opt, void *base)
{
    void *field = (char *)base + opt->offset;
    if (opt->type == IMF_OT_STRING) {
        char **s = field;
        if ((opt->flags & IMF_CF_FILE) && *s != NULL)
            explicit_bzero(*s, strlen(*s)); /* a secret: leave no copy in freed memory */
        free(*s);
        *s = NULL;
    } else if (opt->type == IMF_OT_SOCKADDR_LIST) {
        struct imf_sockaddr **list = field;
        free(*list);
        *list = NULL;
        *(size_t *)((char *)base + opt->len_offset) = 0;
    }
}

static bool bool_word(const char *s, bool *out)
{
    static const char *const yes[] = {"yes", "on", "true", "1"};
    static const char *const no[] = {"no", "off", "false", "0"};
    for (size_t i = 0; i < ARRAY_SIZE(yes); i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return true;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return true;
        }
    }
    return false;
}

static int set_list(const struct imf_option *opt, void *base, const char *value, char *why,
                    size_t why_len)
{
    struct imf_sockaddr *list = NULL;
    size_t n = 0;
    const char *p = value;
    char item[sizeof(list->text)];
    char q[IMF_CONFIG_QUOTE_MAX + 8];
    while (*p != '\0') {
        const char *comma = strchr(p, ',');
        const char *stop = comma ? comma : p + strlen(p);
        while (p < stop && (*p == ' ' || *p == '\t'))
            p++;
        const char *e = stop;
        while (e > p && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        size_t ilen = (size_t)(e - p);
        if (ilen == 0) {
            snprintf(why, why_len, "empty entry in the list");
            free(list);
            return -EINVAL;
        }
        if (n >= opt->max) {
            snprintf(why, why_len, "more than %" PRIu64 " addresses", opt->max);
            free(list);
            return -ERANGE;
        }
        struct imf_sockaddr a;
        bool ok = ilen < sizeof(item);
        if (ok) {
            memcpy(item, p, ilen);
            item[ilen] = '\0';
            ok = imf_config_parse_server(item, &a) == 0;
        }
        if (!ok) {
            char tmp[IMF_CONFIG_QUOTE_MAX + 4];
            int shown = ilen < IMF_CONFIG_QUOTE_MAX ? (int)ilen : IMF_CONFIG_QUOTE_MAX;
            snprintf(tmp, sizeof(tmp), "%.*s%s", shown, p,
                     ilen > IMF_CONFIG_QUOTE_MAX ? "..." : "");
            snprintf(q, sizeof(q), "\"%s\"", tmp);
            snprintf(why, why_len, "%s is not an address (use IPv4:port, [IPv6]:port or name:port)",
                     q);
            free(list);
            return -EINVAL;
        }
        for (size_t i = 0; i < n; i++) {
            if (same_endpoint(&list[i], &a)) {
                snprintf(why, why_len, "%s is listed twice", a.text);
                free(list);
                return -EINVAL;
            }
        }
        struct imf_sockaddr *grown = realloc(list, (n + 1) * sizeof(*list));
        if (grown == NULL) {
            snprintf(why, why_len, "out of memory");
            free(list);
            return -ENOMEM;
        }
        list = grown;
        list[n++] = a;
        p = comma ? comma + 1 : stop;
        if (comma != NULL && *p == '\0') {
            snprintf(why, why_len, "empty entry in the list");
            free(list);
            return -EINVAL;
        }
    }
    if (n != 0 && n < opt->min) {
        snprintf(why, why_len, "needs at least %" PRIu64 " addresses", opt->min);
        free(list);
        return -ERANGE;
    }
    free_field(opt, base);
    *(struct imf_sockaddr **)((char *)base + opt->offset) = list;
    *(size_t *)((char *)base + opt->len_offset) = n;
    return 0;
}

/* Parses value into the row's field of base (a struct imf_config or
 * imf_listen_config). On failure leaves the field as it was and writes the
 * reason (without key or line) into why. Used for defaults and user values
 * alike. */
static int set_value(const struct imf_option *opt, void *base, const char *value, char *why,
                     size_t why_len)
{
    void *field = (char *)base + opt->offset;
    char q[IMF_CONFIG_QUOTE_MAX + 8];
    char lo[32], hi[32];
    uint64_t v = 0;
    int rc = 0;
    quote(value, q, sizeof(q));

    switch (opt->type) {
    case IMF_OT_BOOL: {
        bool b;
        if (!bool_word(value, &b)) {
            snprintf(why, why_len, "%s is not a boolean (use yes/no, on/off, true/false or 1/0)",
                     q);
            return -EINVAL;
        }
        store_uint(field, opt->size, b);
        return 0;
    }
    case IMF_OT_UINT:
        if ((opt->flags & IMF_CF_AUTO) && strcasecmp(value, "auto") == 0) {
            store_uint(field, opt->size, 0);
            return 0;
        }
        {
            const char *end;
            rc = parse_digits(value, &v, &end);
            if (*end != '\0')
                rc = -EINVAL;
        }
        if (rc == -EINVAL) {
            snprintf(why, why_len, "%s is not a number%s", q,
                     (opt->flags & IMF_CF_AUTO) ? " or auto" : "");
            return rc;
        }
        break;
    case IMF_OT_SIZE:
        rc = imf_config_parse_size(value, &v);
        if (rc == -EINVAL) {
            snprintf(why, why_len, "%s is not a size (use k, M or G)", q);
            return rc;
        }
        break;
    case IMF_OT_DURATION:
        rc = imf_config_parse_duration(value, &v);
        if (rc == -EINVAL) {
            snprintf(why, why_len, "%s is not a duration (use ms, s, m or h)", q);
            return rc;
        }
        break;
    case IMF_OT_STRING: {
        char *copy = NULL;
        if (value[0] != '\0') {
            copy = strdup(value);
            if (copy == NULL) {
                snprintf(why, why_len, "out of memory");
                return -ENOMEM;
            }
        }
        free_field(opt, base);
        *(char **)field = copy;
        return 0;
    }
    case IMF_OT_ENUM:
        for (const struct imf_choice *c = opt->choices; c->name != NULL; c++) {
            if (strcasecmp(value, c->name) == 0) {
                if (!c->supported) {
                    snprintf(why, why_len, "%s is not supported yet", c->name);
                    return -ENOTSUP;
                }
                store_uint(field, opt->size, (uint64_t)c->value);
                return 0;
            }
        }
        {
            char names[256];
            format_choices(opt->choices, names, sizeof(names));
            snprintf(why, why_len, "%s is not one of %s", q, names);
        }
        return -EINVAL;
    case IMF_OT_SOCKADDR: {
        struct imf_sockaddr a;
        if (value[0] == '\0') {
            memset(&a, 0, sizeof(a));
        } else if (imf_config_parse_sockaddr(value, &a) < 0) {
            snprintf(why, why_len, "%s is not an address (use IPv4:port or [IPv6]:port)", q);
            return -EINVAL;
        }
        memcpy(field, &a, sizeof(a));
        return 0;
    }
    case IMF_OT_SOCKADDR_LIST:
        return set_list(opt, base, value, why, why_len);
    case IMF_OT_COUNT:
        break;
    }

    /* UINT, SIZE, DURATION: bounds. */
    if (rc == 0 && (v < opt->min || v > opt->max))
        rc = -ERANGE;
    if (rc == -ERANGE) {
        format_value(opt->type, opt->min, lo, sizeof(lo));
        format_value(opt->type, opt->max, hi, sizeof(hi));
        snprintf(why, why_len, "%s is out of range (%s..%s%s)", q, lo, hi,
                 (opt->flags & IMF_CF_AUTO) ? " or auto" : "");
        return rc;
    }
    store_uint(field, opt->size, v);
    return 0;
}

/* Whether the row's field holds the same value in a and b. */
static bool field_equal(const struct imf_option *opt, const void *a, const void *b)
{
    const char *fa = (const char *)a + opt->offset;
    const char *fb = (const char *)b + opt->offset;
    switch (opt->type) {
    case IMF_OT_STRING: {
        const char *sa = *(char *const *)fa, *sb = *(char *const *)fb;
        return (sa == NULL || sb == NULL) ? sa == sb : strcmp(sa, sb) == 0;
    }
    case IMF_OT_SOCKADDR: {
        const struct imf_sockaddr *x = (const void *)fa, *y = (const void *)fb;
        return x->len == y->len && memcmp(&x->ss, &y->ss, x->len) == 0;
    }
    case IMF_OT_SOCKADDR_LIST: {
        size_t na = *(const size_t *)((const char *)a + opt->len_offset);
        size_t nb = *(const size_t *)((const char *)b + opt->len_offset);
        const struct imf_sockaddr *x = *(struct imf_sockaddr *const *)fa;
        const struct imf_sockaddr *y = *(struct imf_sockaddr *const *)fb;
        if (na != nb)
            return false;
        for (size_t i = 0; i < na; i++)
            if (x[i].named != y[i].named || strcmp(x[i].text, y[i].text) != 0 ||
                x[i].len != y[i].len || memcmp(&x[i].ss, &y[i].ss, x[i].len) != 0)
                return false;
        return true;
    }
    default:
        return load_uint(fa, opt->size) == load_uint(fb, opt->size);
    }
}

/* ---- parsing a file ----------------------------------------------------- */

enum section_kind { SECTION_NONE, SECTION_MAIN, SECTION_NAMED };

/* Per [PREFIX.NAME] section: where things were written, for messages. */
struct named_meta {
    unsigned header_line;
    bool plain; /* the pool "default" written as [backend] */
    unsigned key_lines[NAMED_KEYS_MAX];
    unsigned file_lines[NAMED_KEYS_MAX]; /* IMF_CF_FILE rows: where KEY_file was set */
    bool from_file[NAMED_KEYS_MAX];      /* ... and the value came from that file */
};

struct parse_ctx {
    const char *name; /* the file, in messages */
    const char *pos, *end;
    bool mid_line; /* the reader handed out part of a line, the rest is pending */
    unsigned line; /* of the line inih is working on, 1-based */

    struct imf_config *cfg;
    enum section_kind kind;
    size_t section; /* index in imf_main_sections, or listener index */
    unsigned section_lines[ARRAY_SIZE(imf_main_sections)];
    unsigned key_lines[IMF_OPTIONS_LEN];
    unsigned file_lines[IMF_OPTIONS_LEN]; /* IMF_CF_FILE rows: where KEY_file was set */
    bool from_file[IMF_OPTIONS_LEN];      /* ... and the value came from that file */
    enum named_kind named;                /* with SECTION_NAMED: which kind */
    struct named_meta *meta[NAMED_COUNT]; /* parallel to each kind's array */

    int rc; /* first error, 0 while none */
    char *err;
    size_t err_len;
};

/* Records the first error: "FILE:LINE: what: reason", or "FILE: what:
 * reason" when line is 0. Later errors are dropped. */
__attribute__((format(printf, 5, 6))) static void fail(struct parse_ctx *ctx, int rc, unsigned line,
                                                       const char *what, const char *fmt, ...)
{
    if (ctx->rc != 0)
        return;
    ctx->rc = rc;
    if (ctx->err == NULL || ctx->err_len == 0)
        return;
    char reason[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    if (line != 0)
        snprintf(ctx->err, ctx->err_len, "%s:%u: %s: %s", ctx->name, line, what, reason);
    else
        snprintf(ctx->err, ctx->err_len, "%s: %s: %s", ctx->name, what, reason);
}

static int apply_defaults(struct parse_ctx *ctx, const struct imf_option *table, size_t len,
                          void *base)
{
    char why[256];
    for (size_t i = 0; i < len; i++) {
        int rc = set_value(&table[i], base, table[i].def, why, sizeof(why));
        if (rc < 0) {
            /* A bad row; the unit tests load a config, so this never ships. */
            fail(ctx, rc, 0, table[i].key, "bad built-in default: %s", why);
            return rc;
        }
    }
    return 0;
}

static bool valid_section_name(const char *s, size_t len)
{
    if (len == 0 || len >= FIELD_SIZE(struct imf_listen_config, name))
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return false;
    }
    return true;
}

/* "[backend.default]" and "[backend]" name one pool: a second header for it
 * is refused with a message that says so. */
static void enter_named(struct parse_ctx *ctx, enum named_kind kind, const char *sec,
                        const char *name, size_t nlen, bool plain)
{
    const struct named_section *ns = &named_sections[kind];
    struct imf_config *cfg = ctx->cfg;
    if (!valid_section_name(name, nlen)) {
        fail(ctx, -EINVAL, ctx->line, sec,
             "invalid section name (use 1 to 63 of A-Z, a-z, 0-9, _ and -)");
        return;
    }
    size_t n = *named_len(cfg, ns);
    for (size_t i = 0; i < n; i++) {
        const char *other = named_elem(cfg, ns, i);
        if (strlen(other) == nlen && memcmp(other, name, nlen) == 0) {
            if (ctx->meta[kind][i].plain != plain)
                fail(ctx, -EINVAL, ctx->line, sec,
                     "[backend] is the pool \"default\", already defined on line %u; "
                     "write only one of [backend] and [backend.default]",
                     ctx->meta[kind][i].header_line);
            else
                fail(ctx, -EINVAL, ctx->line, sec, "duplicate section (first on line %u)",
                     ctx->meta[kind][i].header_line);
            return;
        }
    }
    void *arr = realloc(*named_array(cfg, ns), (n + 1) * ns->elem_size);
    if (arr == NULL) {
        fail(ctx, -ENOMEM, ctx->line, sec, "out of memory");
        return;
    }
    *named_array(cfg, ns) = arr;
    struct named_meta *m = realloc(ctx->meta[kind], (n + 1) * sizeof(*m));
    if (m == NULL) {
        fail(ctx, -ENOMEM, ctx->line, sec, "out of memory");
        return;
    }
    ctx->meta[kind] = m;
    char *elem = named_elem(cfg, ns, n);
    memset(elem, 0, ns->elem_size);
    memset(&m[n], 0, sizeof(m[n]));
    *named_len(cfg, ns) = n + 1;
    memcpy(elem, name, nlen);
    elem[nlen] = '\0';
    m[n].header_line = ctx->line;
    m[n].plain = plain;
    ctx->kind = SECTION_NAMED;
    ctx->named = kind;
    ctx->section = n;
    apply_defaults(ctx, ns->options, ns->options_len, elem);
}

/* A "[name]" header on the current line (s, len: the line without its
 * ending). inih parses the line too; we only track which section we are in. */
static void enter_section(struct parse_ctx *ctx, const char *s, size_t len)
{
    const char *close = memchr(s, ']', len);
    if (close == NULL)
        return; /* inih reports the syntax error */
    const char *name = s + 1;
    size_t nlen = (size_t)(close - name);
    char sec[IMF_CONFIG_SECTION_MAX + 8];
    int shown = nlen > IMF_CONFIG_SECTION_MAX ? IMF_CONFIG_SECTION_MAX : (int)nlen;
    snprintf(sec, sizeof(sec), "[%.*s%s]", shown, name, nlen > IMF_CONFIG_SECTION_MAX ? "..." : "");

    /* inih ignores what follows "]"; a key written there would vanish. */
    const char *rest = close + 1;
    while (rest < s + len && (*rest == ' ' || *rest == '\t' || *rest == '\r'))
        rest++;
    if (rest < s + len && *rest != ';' && *rest != '#') {
        fail(ctx, -EINVAL, ctx->line, sec, "unexpected text after the section name");
        return;
    }

    for (int k = 0; k < NAMED_COUNT; k++) {
        size_t plen = strlen(named_sections[k].prefix);
        if (nlen >= plen && memcmp(name, named_sections[k].prefix, plen) == 0) {
            enter_named(ctx, (enum named_kind)k, sec, name + plen, nlen - plen, false);
            return;
        }
    }
    if (nlen == strlen("backend") && memcmp(name, "backend", nlen) == 0) {
        enter_named(ctx, NAMED_POOL, sec, IMF_POOL_DEFAULT, strlen(IMF_POOL_DEFAULT), true);
        return;
    }
    for (size_t i = 0; i < ARRAY_SIZE(imf_main_sections); i++) {
        if (strlen(imf_main_sections[i]) == nlen && memcmp(imf_main_sections[i], name, nlen) == 0) {
            if (ctx->section_lines[i] != 0) {
                fail(ctx, -EINVAL, ctx->line, sec, "duplicate section (first on line %u)",
                     ctx->section_lines[i]);
                return;
            }
            ctx->section_lines[i] = ctx->line;
            ctx->kind = SECTION_MAIN;
            ctx->section = i;
            return;
        }
    }
    fail(ctx, -EINVAL, ctx->line, sec, "unknown section");
}

/* inih's line source (fgets-like). Hands out the text one line at a time,
 * in pieces when inih's buffer is smaller than the line, and looks at each
 * new line first: counts it, checks its length, tracks section headers. */
static char *read_line(char *buf, int num, void *stream)
{
    struct parse_ctx *ctx = stream;
    if (ctx->rc != 0 || num < 2)
        return NULL;
    if (!ctx->mid_line) {
        if (ctx->pos >= ctx->end)
            return NULL;
        ctx->line++;
        const char *nl = memchr(ctx->pos, '\n', (size_t)(ctx->end - ctx->pos));
        size_t len = (size_t)((nl ? nl : ctx->end) - ctx->pos);
        if (len > IMF_CONFIG_MAX_LINE) {
            fail(ctx, -EINVAL, ctx->line, "line", "longer than %d bytes", IMF_CONFIG_MAX_LINE);
            return NULL;
        }
        const char *s = ctx->pos;
        if (ctx->line == 1 && len >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) {
            s += 3; /* inih skips a UTF-8 BOM too */
            len -= 3;
        }
        while (len > 0 && (*s == ' ' || *s == '\t')) {
            s++;
            len--;
        }
        if (len > 0 && *s == '[') {
            enter_section(ctx, s, len);
            if (ctx->rc != 0)
                return NULL;
        }
    }
    const char *nl = memchr(ctx->pos, '\n', (size_t)(ctx->end - ctx->pos));
    size_t left = (size_t)((nl ? nl + 1 : ctx->end) - ctx->pos);
    size_t n = left < (size_t)num - 1 ? left : (size_t)num - 1;
    memcpy(buf, ctx->pos, n);
    buf[n] = '\0';
    ctx->pos += n;
    ctx->mid_line = n < left;
    return buf;
}

/* Largest secret file we read: secrets are short; a big file is a wrong
 * path. */
#define IMF_CONFIG_MAX_SECRET 65536

/* Reads a secret file into *out (malloc'd): its content less one trailing
 * "\n" (or "\r\n"). Returns 0, or a negative code with a reason that never
 * quotes the content. */
static int read_secret(const char *path, char **out, char *why, size_t why_len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        int rc = -errno;
        snprintf(why, why_len, "cannot open %s: %s", path, strerror(-rc));
        return rc;
    }
    char *text = malloc(IMF_CONFIG_MAX_SECRET + 1);
    if (text == NULL) {
        fclose(f);
        snprintf(why, why_len, "out of memory");
        return -ENOMEM;
    }
    size_t n = fread(text, 1, IMF_CONFIG_MAX_SECRET + 1, f);
    int rc = 0;
    if (ferror(f)) {
        rc = -EIO;
        snprintf(why, why_len, "cannot read %s", path);
    } else if (n > IMF_CONFIG_MAX_SECRET) {
        rc = -EFBIG;
        snprintf(why, why_len, "%s is larger than 64 KiB, not a secret?", path);
    } else if (memchr(text, '\0', n) != NULL) {
        rc = -EINVAL;
        snprintf(why, why_len, "%s contains a NUL byte", path);
    }
    fclose(f);
    if (rc == 0) {
        if (n > 0 && text[n - 1] == '\n')
            n--;
        if (n > 0 && text[n - 1] == '\r')
            n--;
        text[n] = '\0';
        if (n == 0) {
            rc = -EINVAL;
            snprintf(why, why_len, "%s is empty", path);
        }
    }
    if (rc != 0) {
        explicit_bzero(text, IMF_CONFIG_MAX_SECRET + 1);
        free(text);
        return rc;
    }
    *out = text;
    return 0;
}

/* Where the keys of one section went, for on_key: the struct the values go
 * into, and per row of its table the lines of KEY and KEY_file. */
struct section_lines {
    void *base;
    unsigned *key_lines;
    unsigned *file_lines;
    bool *from_file;
};

/* "[backend]" for the pool written so, else "[PREFIX.NAME]". */
static void named_label(struct parse_ctx *ctx, enum named_kind k, size_t e, char *buf,
                        size_t buf_len)
{
    const struct named_section *ns = &named_sections[k];
    if (ctx->meta[k][e].plain)
        snprintf(buf, buf_len, "[backend]");
    else
        snprintf(buf, buf_len, "[%s%s]", ns->prefix, named_elem(ctx->cfg, ns, e));
}

/* "KEY_file = PATH" for a row with IMF_CF_FILE (index i of its table):
 * the value comes from the file. An empty PATH counts as not set. */
static int on_file_key(struct parse_ctx *ctx, const struct imf_option *opt, size_t i,
                       const char *key, const char *value, const char *secname,
                       const struct section_lines *sl)
{
    if (sl->file_lines[i] != 0) {
        fail(ctx, -EINVAL, ctx->line, key, "set twice in %s (first on line %u)", secname,
             sl->file_lines[i]);
        return 0;
    }
    sl->file_lines[i] = ctx->line;
    if (value[0] == '\0')
        return 1;
    char **field = (char **)((char *)sl->base + opt->offset);
    if (*field != NULL) {
        fail(ctx, -EINVAL, ctx->line, key, "%s is set too (line %u); set only one of them",
             opt->key, sl->key_lines[i]);
        return 0;
    }
    char why[512];
    int rc = read_secret(value, field, why, sizeof(why));
    if (rc != 0) {
        fail(ctx, rc, ctx->line, key, "%s", why);
        return 0;
    }
    sl->from_file[i] = true;
    return 1;
}

/* inih's handler for "key = value"; returns 0 to stop at the first error. */
static int on_key(void *user, const char *section, const char *key, const char *value)
{
    struct parse_ctx *ctx = user;
    const struct imf_option *table;
    size_t len;
    struct section_lines sl;
    char secname[IMF_CONFIG_QUOTE_MAX + 16];
    const char *main_section = NULL;
    (void)section; /* inih truncates long section names; we track our own */

    if (ctx->rc != 0)
        return 0;
    switch (ctx->kind) {
    case SECTION_MAIN:
        table = imf_options;
        len = IMF_OPTIONS_LEN;
        sl = (struct section_lines){ctx->cfg, ctx->key_lines, ctx->file_lines, ctx->from_file};
        main_section = imf_main_sections[ctx->section];
        snprintf(secname, sizeof(secname), "[%s]", main_section);
        break;
    case SECTION_NAMED: {
        const struct named_section *ns = &named_sections[ctx->named];
        struct named_meta *m = &ctx->meta[ctx->named][ctx->section];
        table = ns->options;
        len = ns->options_len;
        sl = (struct section_lines){named_elem(ctx->cfg, ns, ctx->section), m->key_lines,
                                    m->file_lines, m->from_file};
        named_label(ctx, ctx->named, ctx->section, secname, sizeof(secname));
        break;
    }
    default:
        fail(ctx, -EINVAL, ctx->line, key, "key outside of any section");
        return 0;
    }

    size_t i;
    for (i = 0; i < len; i++) {
        if ((main_section == NULL || strcmp(table[i].section, main_section) == 0) &&
            strcmp(table[i].key, key) == 0)
            break;
    }
    if (i == len) {
        size_t klen = strlen(key), slen = sizeof("_file") - 1;
        if (klen > slen && strcmp(key + klen - slen, "_file") == 0) {
            for (i = 0; i < len; i++)
                if ((table[i].flags & IMF_CF_FILE) &&
                    (main_section == NULL || strcmp(table[i].section, main_section) == 0) &&
                    strlen(table[i].key) == klen - slen &&
                    strncmp(table[i].key, key, klen - slen) == 0)
                    return on_file_key(ctx, &table[i], i, key, value, secname, &sl);
        }
    }
    if (i == len) {
        fail(ctx, -EINVAL, ctx->line, key, "unknown key in %s", secname);
        return 0;
    }
    const struct imf_option *opt = &table[i];
    if (sl.key_lines[i] != 0) {
        fail(ctx, -EINVAL, ctx->line, key, "set twice in %s (first on line %u)", secname,
             sl.key_lines[i]);
        return 0;
    }
    if ((opt->flags & IMF_CF_FILE) && value[0] != '\0' && sl.file_lines[i] != 0 &&
        *(char **)((char *)sl.base + opt->offset) != NULL) {
        fail(ctx, -EINVAL, ctx->line, key, "%s_file is set too (line %u); set only one of them",
             key, sl.file_lines[i]);
        return 0;
    }
    sl.key_lines[i] = ctx->line;
    if (value[0] == '\0' && (opt->flags & IMF_CF_REQUIRED)) {
        fail(ctx, -EINVAL, ctx->line, key, "must not be empty");
        return 0;
    }

    char why[512];
    int rc = set_value(opt, sl.base, value, why, sizeof(why));
    if (rc < 0) {
        fail(ctx, rc, ctx->line, key, "%s", why);
        return 0;
    }

    if (opt->flags & IMF_CF_NOT_YET) {
        /* Compare with the default parsed the same way, so "on" and "yes"
         * both count as the default "on". */
        union {
            struct imf_config c;
            struct imf_listen_config l;
            struct imf_cert_config cert;
            struct imf_pool_config p;
        } scratch;
        memset(&scratch, 0, sizeof(scratch));
        rc = set_value(opt, &scratch, opt->def, why, sizeof(why));
        bool same = rc == 0 && field_equal(opt, sl.base, &scratch);
        free_field(opt, &scratch);
        if (rc < 0) {
            fail(ctx, rc, ctx->line, key, "bad built-in default: %s", why);
            return 0;
        }
        if (!same) {
            fail(ctx, -ENOTSUP, ctx->line, key, "not supported yet");
            return 0;
        }
    }
    return 1;
}

static size_t option_index(const char *section, const char *key)
{
    for (size_t i = 0; i < IMF_OPTIONS_LEN; i++)
        if (strcmp(imf_options[i].section, section) == 0 && strcmp(imf_options[i].key, key) == 0)
            return i;
    abort(); /* asked for a key that is not in the table */
}

/* [login] store: "redis://HOST:PORT[/DB]" (an IPv6 HOST in brackets) or
 * "unix:/PATH". HOST may be a name: it is resolved here, at
 * load (and at each reload), because hiredis would resolve it blocking the
 * worker's loop. Fills the login_store_* fields. Returns 0 or fails ctx. */
static int parse_store(struct parse_ctx *ctx, struct imf_config *cfg)
{
    size_t row = option_index("login", "store");
    unsigned line = ctx->key_lines[row];
    const char *v = cfg->login_store;
    if (strncmp(v, "unix:", 5) == 0 && v[5] == '/') {
        cfg->login_store_unix = v + 5;
        return 0;
    }
    if (strncmp(v, "redis://", 8) != 0)
        goto bad;
    const char *host = v + 8, *end;
    if (*host == '[') { /* [IPv6]:PORT */
        host++;
        end = strchr(host, ']');
        if (end == NULL || end[1] != ':')
            goto bad;
    } else {
        end = strchr(host, ':');
        if (end == NULL)
            goto bad;
    }
    size_t host_len = (size_t)(end - host);
    char name[256];
    if (host_len == 0 || host_len >= sizeof(name))
        goto bad;
    memcpy(name, host, host_len);
    name[host_len] = '\0';
    const char *p = end + (*end == ']' ? 2 : 1);
    char *stop;
    errno = 0;
    unsigned long port = strtoul(p, &stop, 10);
    if (stop == p || port == 0 || port > 65535 || errno != 0)
        goto bad;
    unsigned long db = 0;
    if (*stop == '/') {
        p = stop + 1;
        db = strtoul(p, &stop, 10);
        if (stop == p || db > 1000000 || errno != 0)
            goto bad;
    }
    if (*stop != '\0')
        goto bad;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
#ifdef IMF_FUZZING
    hints.ai_flags = AI_NUMERICHOST; /* no DNS queries from a fuzzer */
#endif
    int gai = getaddrinfo(name, NULL, &hints, &res);
    if (gai != 0 || res == NULL) {
        fail(ctx, -EINVAL, line, "store", "cannot resolve \"%s\": %s", name, gai_strerror(gai));
        return -1;
    }
    const void *a = res->ai_family == AF_INET6
                        ? (const void *)&((struct sockaddr_in6 *)res->ai_addr)->sin6_addr
                        : (const void *)&((struct sockaddr_in *)res->ai_addr)->sin_addr;
    inet_ntop(res->ai_family, a, cfg->login_store_host, sizeof(cfg->login_store_host));
    freeaddrinfo(res);
    cfg->login_store_port = (uint16_t)port;
    cfg->login_store_db = (uint32_t)db;
    return 0;
bad:
    fail(ctx, -EINVAL, line, "store",
         "\"%s\" is not redis://HOST:PORT, redis://HOST:PORT/DB or unix:/PATH", v);
    return -1;
}

/* A CIDR list key (text as written, NULL when empty) into out[0..
 * IMF_CIDR_MAX) and *out_len; an error names the bad entry. */
static int parse_cidrs(struct parse_ctx *ctx, const char *text, struct imf_cidr *out,
                       size_t *out_len, unsigned line, const char *key)
{
    *out_len = 0;
    if (text == NULL)
        return 0;
    const char *bad = NULL;
    size_t bad_len = 0;
    int n = imf_cidr_parse_list(text, out, IMF_CIDR_MAX, &bad, &bad_len);
    if (n < 0) {
        int shown = bad_len > IMF_CONFIG_QUOTE_MAX ? IMF_CONFIG_QUOTE_MAX : (int)bad_len;
        fail(ctx, -EINVAL, line, key,
             "\"%.*s\" is not an address or CIDR range (at most %d entries)", shown, bad,
             IMF_CIDR_MAX);
        return -EINVAL;
    }
    *out_len = (size_t)n;
    return 0;
}

/* The row of key in the table of a named section kind. */
static size_t named_row(enum named_kind kind, const char *key)
{
    const struct named_section *ns = &named_sections[kind];
    for (size_t i = 0; i < ns->options_len; i++)
        if (strcmp(ns->options[i].key, key) == 0)
            return i;
    abort(); /* asked for a key that is not in the table */
}

static size_t pool_row(const char *key)
{
    return named_row(NAMED_POOL, key);
}

/* A SHA-256 digest written as 64 hex digits (optionally "AB:CD:..."), or
 * as 44 characters of base64 (RFC 4648, with its one '=' of padding). */
static int parse_pin(const char *text, uint8_t out[IMF_PIN_LEN])
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t len = strlen(text);
    if (len == 44 && text[43] == '=' && text[42] != '=') {
        uint32_t acc = 0;
        unsigned bits = 0;
        size_t n = 0;
        for (size_t i = 0; i < 43; i++) {
            const char *c = text[i] != '\0' ? strchr(b64, text[i]) : NULL;
            if (c == NULL)
                return -EINVAL;
            acc = (acc << 6) | (uint32_t)(c - b64);
            bits += 6;
            if (bits >= 8) {
                bits -= 8;
                out[n++] = (uint8_t)(acc >> bits);
            }
        }
        /* 43 characters carry 258 bits: the last 2 must be zero. */
        return n == IMF_PIN_LEN && (acc & ((1u << bits) - 1)) == 0 ? 0 : -EINVAL;
    }
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        if (n == IMF_PIN_LEN || !isxdigit((unsigned char)text[i]) ||
            !isxdigit((unsigned char)text[i + 1]))
            return -EINVAL;
        char pair[3] = {text[i], text[i + 1], '\0'};
        out[n++] = (uint8_t)strtoul(pair, NULL, 16);
        i += 2;
        if (text[i] == ':' && n < IMF_PIN_LEN && text[i + 1] != '\0')
            i++;
    }
    return n == IMF_PIN_LEN ? 0 : -EINVAL;
}

/* The cross-checks of one pool (m: where its keys were written). */
static void check_pool(struct parse_ctx *ctx, struct imf_pool_config *p, const struct named_meta *m)
{
    /* check = login sends these in quoted strings: they must be quotable
     * (RFC 9051: no CR, LF or NUL; 8-bit text would need a literal, which
     * an old server may refuse). The value itself is never echoed: it may
     * be the password. */
    if (p->check == IMF_CHECK_LOGIN) {
        static const char *const keys[] = {"check_user", "check_password", "check_mailbox"};
        const char *values[] = {p->check_user, p->check_password, p->check_mailbox};
        for (size_t k = 0; k < ARRAY_SIZE(keys); k++) {
            size_t row = pool_row(keys[k]);
            unsigned line = m->key_lines[row];
            if (m->from_file[row])
                line = m->file_lines[row];
            if (values[k] == NULL) {
                fail(ctx, -EINVAL, line != 0 ? line : m->key_lines[pool_row("check")], keys[k],
                     "required by check = login%s",
                     (imf_pool_options[row].flags & IMF_CF_FILE) ? " (or its _file form)" : "");
                return;
            }
            if (strlen(values[k]) > 1000) {
                fail(ctx, -EINVAL, line, keys[k], "longer than 1000 characters");
                return;
            }
            for (const unsigned char *c = (const unsigned char *)values[k]; *c != '\0'; c++) {
                if (*c == '\r' || *c == '\n' || *c >= 0x80) {
                    fail(ctx, -EINVAL, line, keys[k],
                         "holds CR, LF or an 8-bit character, which an IMAP quoted string "
                         "cannot carry");
                    return;
                }
            }
        }
    }

    if (p->tls_server_name != NULL &&
        !valid_host_name(p->tls_server_name, strlen(p->tls_server_name))) {
        char q[IMF_CONFIG_QUOTE_MAX + 8];
        quote(p->tls_server_name, q, sizeof(q));
        fail(ctx, -EINVAL, m->key_lines[pool_row("tls_server_name")], "tls_server_name",
             "%s is not a host name", q);
        return;
    }
    if (p->tls_pin_sha256 != NULL) {
        if (parse_pin(p->tls_pin_sha256, p->tls_pin) != 0) {
            char q[IMF_CONFIG_QUOTE_MAX + 8];
            quote(p->tls_pin_sha256, q, sizeof(q));
            fail(ctx, -EINVAL, m->key_lines[pool_row("tls_pin_sha256")], "tls_pin_sha256",
                 "%s is not a SHA-256 digest (64 hex digits, ':' between pairs allowed, or 44 "
                 "base64 characters)",
                 q);
            return;
        }
        p->tls_pin_set = true;
    }

    /* quirks is a preset of the shields; a shield's own key, when written,
     * wins over the preset (auto applies it per server, in gate.c). */
    p->pipelining_set = m->key_lines[pool_row("pipelining")] != 0;
    p->literal_plus_set = m->key_lines[pool_row("literal_plus")] != 0;
    p->literal_crlf_split_set = m->key_lines[pool_row("literal_crlf_split")] != 0;
    if (p->quirks == IMF_QUIRKS_EXCHANGE55) {
        if (!p->pipelining_set)
            p->pipelining = false;
        if (!p->literal_plus_set)
            p->literal_plus = IMF_LITERAL_PLUS_SYNC;
        if (!p->literal_crlf_split_set)
            p->literal_crlf_split = true;
    }
}

/* What needs the whole file: required keys and keys that depend on each
 * other. */
static void check_whole(struct parse_ctx *ctx)
{
    struct imf_config *cfg = ctx->cfg;
    char what[IMF_CONFIG_QUOTE_MAX + 64];

    if (cfg->listeners_len == 0) {
        fail(ctx, -EINVAL, 0, "[listen.NAME]", "at least one listener section is required");
        return;
    }
    for (int k = 0; k < NAMED_COUNT; k++) {
        const struct named_section *ns = &named_sections[k];
        for (size_t e = 0; e < *named_len(cfg, ns); e++) {
            for (size_t i = 0; i < ns->options_len; i++) {
                const struct imf_option *opt = &ns->options[i];
                if ((opt->flags & IMF_CF_REQUIRED) && ctx->meta[k][e].key_lines[i] == 0) {
                    char label[IMF_CONFIG_QUOTE_MAX + 16];
                    named_label(ctx, (enum named_kind)k, e, label, sizeof(label));
                    snprintf(what, sizeof(what), "%s %s", label, opt->key);
                    fail(ctx, -EINVAL, ctx->meta[k][e].header_line, what, "required");
                    return;
                }
            }
        }
    }
    for (size_t i = 0; i < IMF_OPTIONS_LEN; i++) {
        const struct imf_option *opt = &imf_options[i];
        if ((opt->flags & IMF_CF_REQUIRED) && ctx->key_lines[i] == 0) {
            snprintf(what, sizeof(what), "[%s] %s", opt->section, opt->key);
            fail(ctx, -EINVAL, 0, what, "required");
            return;
        }
    }
    /* Sessions use the pool "default" until the route map picks others. */
    if (cfg->pools_len == 0) {
        fail(ctx, -EINVAL, 0, "[backend] servers", "required");
        return;
    }
    if (imf_config_pool(cfg, IMF_POOL_DEFAULT) == NULL) {
        fail(ctx, -EINVAL, ctx->meta[NAMED_POOL][0].header_line, "[backend]",
             "required: the pool sessions use (or name it [backend.default])");
        return;
    }
    for (size_t e = 0; e < cfg->pools_len; e++) {
        check_pool(ctx, &cfg->pools[e], &ctx->meta[NAMED_POOL][e]);
        if (ctx->rc != 0)
            return;
    }

    /* Two listeners on one address would share it through SO_REUSEPORT and
     * split the connections between them without a word. */
    size_t addr_row = named_row(NAMED_LISTEN, "address");
    for (size_t b = 1; b < cfg->listeners_len; b++) {
        for (size_t a = 0; a < b; a++) {
            if (same_endpoint(&cfg->listeners[a].address, &cfg->listeners[b].address)) {
                fail(ctx, -EINVAL, ctx->meta[NAMED_LISTEN][b].key_lines[addr_row], "address",
                     "%s is already used by [listen.%s]", cfg->listeners[b].address.text,
                     cfg->listeners[a].name);
                return;
            }
        }
    }
    /* PROXY headers are taken only from the balancers named. */
    size_t pp_row = named_row(NAMED_LISTEN, "proxy_protocol");
    size_t from_row = named_row(NAMED_LISTEN, "proxy_protocol_from");
    for (size_t li = 0; li < cfg->listeners_len; li++) {
        struct imf_listen_config *l = &cfg->listeners[li];
        const struct named_meta *lm = &ctx->meta[NAMED_LISTEN][li];
        if (parse_cidrs(ctx, l->proxy_protocol_from, l->proxy_from, &l->proxy_from_len,
                        lm->key_lines[from_row], "proxy_protocol_from") < 0)
            return;
        if (l->proxy_protocol != IMF_PROXY_PROTOCOL_OFF && l->proxy_from_len == 0) {
            snprintf(what, sizeof(what), "[listen.%s] proxy_protocol_from", l->name);
            fail(ctx, -EINVAL, lm->key_lines[pp_row] ? lm->key_lines[pp_row] : lm->header_line,
                 what, "required when proxy_protocol is on (the load balancers to trust)");
            return;
        }
    }

    /* TLS 1.0 and 1.1 have none of the AEAD suites: without the CBC ones
     * such a client could never agree on a cipher. */
    if (cfg->min_version < TLS1_2_VERSION && !cfg->legacy_ciphers) {
        fail(ctx, -EINVAL, ctx->key_lines[option_index("tls", "min_version")], "min_version",
             "TLS 1.0 and 1.1 need legacy_ciphers = on (they have no AEAD cipher suites)");
        return;
    }

    /* zlib's window is a power of two (its windowBits). */
    if ((cfg->compress_window & (cfg->compress_window - 1)) != 0) {
        fail(ctx, -EINVAL, ctx->key_lines[option_index("imap", "compress_window")],
             "compress_window", "must be a power of two from 1k to 32k (1k, 2k, 4k, 8k, 16k, 32k)");
        return;
    }

    if (parse_cidrs(ctx, cfg->admin_allow_from, cfg->admin_allow, &cfg->admin_allow_len,
                    ctx->key_lines[option_index("admin", "allow_from")], "allow_from") < 0)
        return;
    if (parse_cidrs(ctx, cfg->login_trusted_networks, cfg->login_trusted, &cfg->login_trusted_len,
                    ctx->key_lines[option_index("login", "trusted_networks")],
                    "trusted_networks") < 0)
        return;

    if (cfg->login_store != NULL && parse_store(ctx, cfg) != 0)
        return;

    size_t admin_row = option_index("admin", "address");
    for (size_t a = 0; a < cfg->listeners_len; a++) {
        if (same_endpoint(&cfg->listeners[a].address, &cfg->admin_address)) {
            fail(ctx, -EINVAL, ctx->key_lines[admin_row], "address",
                 "%s is already used by [listen.%s]", cfg->admin_address.text,
                 cfg->listeners[a].name);
            return;
        }
    }

    /* A command line is held until it is complete, within the per-direction
     * buffer limit; a longer line could never complete. */
    if (cfg->max_line_length > cfg->buffer_limit) {
        size_t ml = option_index("imap", "max_line_length");
        size_t bl = option_index("imap", "buffer_limit");
        bool blame_ml = ctx->key_lines[ml] >= ctx->key_lines[bl];
        char a[32], b[32];
        format_value(IMF_OT_SIZE, cfg->max_line_length, a, sizeof(a));
        format_value(IMF_OT_SIZE, cfg->buffer_limit, b, sizeof(b));
        fail(ctx, -EINVAL, ctx->key_lines[blame_ml ? ml : bl],
             blame_ml ? "max_line_length" : "buffer_limit",
             "max_line_length (%s) must not exceed buffer_limit (%s)", a, b);
        return;
    }

    /* A whole command holds at least one literal of the largest size. */
    size_t mc = option_index("imap", "max_command_size");
    if (cfg->max_command_size < cfg->max_literal_size + cfg->max_line_length) {
        if (ctx->key_lines[mc] != 0) {
            char a[32], b[32];
            format_value(IMF_OT_SIZE, cfg->max_command_size, a, sizeof(a));
            format_value(IMF_OT_SIZE, cfg->max_literal_size, b, sizeof(b));
            fail(ctx, -EINVAL, ctx->key_lines[mc], "max_command_size",
                 "max_command_size (%s) must exceed max_literal_size (%s) by max_line_length", a,
                 b);
            return;
        }
        cfg->max_command_size = cfg->max_literal_size + cfg->max_line_length;
    }
}

static void free_config(struct imf_config *cfg)
{
    if (cfg == NULL)
        return;
    for (size_t i = 0; i < IMF_OPTIONS_LEN; i++)
        free_field(&imf_options[i], cfg);
    for (int k = 0; k < NAMED_COUNT; k++) {
        const struct named_section *ns = &named_sections[k];
        for (size_t e = 0; e < *named_len(cfg, ns); e++)
            for (size_t i = 0; i < ns->options_len; i++)
                free_field(&ns->options[i], named_elem(cfg, ns, e));
        if (k == NAMED_POOL)
            for (size_t e = 0; e < cfg->pools_len; e++)
                if (cfg->pools[e].tls_ctx_free != NULL)
                    cfg->pools[e].tls_ctx_free(cfg->pools[e].tls_ctx);
        free(*named_array(cfg, ns));
    }
    free(cfg->path);
    free(cfg);
}

/* inih's switches are process-wide variables in Debian's build. We want the
 * same ones for every parse, so set them once: a heap line buffer that grows
 * (our reader enforces IMF_CONFIG_MAX_LINE), stop at the first error, no
 * Python-style continuation lines (an indented line is an error, not a
 * silent append to the previous value), "; comments" after values. */
static void setup_inih(void)
{
    ini_use_stack = false;
    ini_allow_realloc = true;
    ini_max_line = 2 * IMF_CONFIG_MAX_LINE + 8;
    ini_stop_on_first_error = true;
    ini_allow_multiline = false;
    ini_allow_inline_comments = true;
    ini_allow_no_value = false;
}

static pthread_once_t imf_inih_once = PTHREAD_ONCE_INIT;

/* The common path of imf_config_parse and imf_config_load: text is
 * text_len bytes (NUL-terminated, no NUL inside). */
static int parse_text(const char *name, const char *text, size_t text_len,
                      struct imf_config **out_cfg, char *err, size_t err_len)
{
    struct parse_ctx ctx;
    memset(&ctx, 0, sizeof(ctx));
    ctx.name = name;
    ctx.pos = text;
    ctx.end = text + text_len;
    ctx.err = err;
    ctx.err_len = err_len;
    if (err != NULL && err_len > 0)
        err[0] = '\0';

    pthread_once(&imf_inih_once, setup_inih);

    ctx.cfg = calloc(1, sizeof(*ctx.cfg));
    if (ctx.cfg == NULL || (ctx.cfg->path = strdup(name)) == NULL) {
        free(ctx.cfg);
        fail(&ctx, -ENOMEM, 0, "config", "out of memory");
        return -ENOMEM;
    }
    atomic_init(&ctx.cfg->refs, 1);

    if (apply_defaults(&ctx, imf_options, IMF_OPTIONS_LEN, ctx.cfg) == 0) {
        int line = ini_parse_stream(read_line, &ctx, on_key, &ctx);
        if (line == -2)
            fail(&ctx, -ENOMEM, 0, "config", "out of memory");
        else if (line > 0)
            fail(&ctx, -EINVAL, (unsigned)line, "syntax",
                 "expected \"[section]\", \"key = value\" or a comment");
        else if (line < 0)
            fail(&ctx, -EIO, 0, "config", "cannot be parsed");
        if (ctx.rc == 0)
            check_whole(&ctx);
    }
    if (ctx.rc == 0) {
        /* Lines of the keys that name files: errors found when the files
         * are read (TLS) can then say FILE:LINE: key. */
        ctx.cfg->certificate_line = ctx.key_lines[option_index("tls", "certificate")];
        ctx.cfg->private_key_line = ctx.key_lines[option_index("tls", "private_key")];
        for (size_t i = 0; i < ctx.cfg->certs_len; i++) {
            const unsigned *lines = ctx.meta[NAMED_CERT][i].key_lines;
            ctx.cfg->certs[i].certificate_line = lines[named_row(NAMED_CERT, "certificate")];
            ctx.cfg->certs[i].private_key_line = lines[named_row(NAMED_CERT, "private_key")];
        }
    }
    for (int k = 0; k < NAMED_COUNT; k++)
        free(ctx.meta[k]);
    if (ctx.rc != 0) {
        free_config(ctx.cfg);
        return ctx.rc;
    }
    *out_cfg = ctx.cfg;
    return 0;
}

int imf_config_parse(const char *name, const char *text, struct imf_config **out_cfg, char *err,
                     size_t err_len)
{
    return parse_text(name, text, strlen(text), out_cfg, err, err_len);
}

int imf_config_load(const char *path, struct imf_config **out_cfg, char *err, size_t err_len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        int rc = -errno;
        if (err != NULL && err_len > 0)
            snprintf(err, err_len, "%s: cannot open: %s", path, strerror(-rc));
        return rc;
    }
    char *text = malloc(IMF_CONFIG_MAX_FILE + 1);
    if (text == NULL) {
        fclose(f);
        if (err != NULL && err_len > 0)
            snprintf(err, err_len, "%s: out of memory", path);
        return -ENOMEM;
    }
    size_t len = fread(text, 1, IMF_CONFIG_MAX_FILE + 1, f);
    int rc = 0;
    const char *why = NULL;
    if (ferror(f)) {
        rc = -EIO;
        why = "cannot read";
    } else if (len > IMF_CONFIG_MAX_FILE) {
        rc = -EFBIG;
        why = "larger than 1 MiB, not a config file?";
    } else if (memchr(text, '\0', len) != NULL) {
        rc = -EINVAL;
        why = "contains a NUL byte, not a text file";
    }
    fclose(f);
    if (rc == 0) {
        text[len] = '\0';
        rc = parse_text(path, text, len, out_cfg, err, err_len);
    } else if (err != NULL && err_len > 0) {
        snprintf(err, err_len, "%s: %s", path, why);
    }
    free(text);
    return rc;
}

struct imf_config *imf_config_ref(struct imf_config *cfg)
{
    /* Taking a reference needs no ordering: the caller already holds one. */
    atomic_fetch_add_explicit(&cfg->refs, 1, memory_order_relaxed);
    return cfg;
}

void imf_config_unref(struct imf_config *cfg)
{
    if (cfg == NULL)
        return;
    /* Release so that this thread's reads happen before the free; acquire on
     * the last one so that the free sees everyone else's. */
    if (atomic_fetch_sub_explicit(&cfg->refs, 1, memory_order_acq_rel) == 1)
        free_config(cfg);
}

const struct imf_pool_config *imf_config_pool(const struct imf_config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->pools_len; i++)
        if (strcmp(cfg->pools[i].name, name) == 0)
            return &cfg->pools[i];
    return NULL;
}

/* ---- reload: what needs a restart ---------------------------------------- */

/* The row's value in base, as a user would write it, for messages. */
static void format_field(const struct imf_option *opt, const void *base, char *buf, size_t buf_len)
{
    const char *field = (const char *)base + opt->offset;
    switch (opt->type) {
    case IMF_OT_BOOL:
        snprintf(buf, buf_len, "%s", load_uint(field, opt->size) ? "on" : "off");
        return;
    case IMF_OT_STRING: {
        const char *v = *(char *const *)field;
        /* A secret is never echoed. */
        snprintf(buf, buf_len, "%s",
                 v == NULL                    ? "(empty)"
                 : (opt->flags & IMF_CF_FILE) ? "(secret)"
                                              : v);
        return;
    }
    case IMF_OT_ENUM: {
        uint64_t v = load_uint(field, opt->size);
        for (const struct imf_choice *c = opt->choices; c->name != NULL; c++) {
            if ((uint64_t)c->value == v) {
                snprintf(buf, buf_len, "%s", c->name);
                return;
            }
        }
        snprintf(buf, buf_len, "%" PRIu64, v);
        return;
    }
    case IMF_OT_SOCKADDR: {
        const struct imf_sockaddr *a = (const void *)field;
        snprintf(buf, buf_len, "%s", a->len == 0 ? "(empty)" : a->text);
        return;
    }
    case IMF_OT_SOCKADDR_LIST: {
        size_t n = *(const size_t *)((const char *)base + opt->len_offset);
        snprintf(buf, buf_len, "%zu address%s", n, n == 1 ? "" : "es");
        return;
    }
    case IMF_OT_UINT:
        if ((opt->flags & IMF_CF_AUTO) && load_uint(field, opt->size) == 0) {
            snprintf(buf, buf_len, "auto");
            return;
        }
        /* fall through */
    default:
        format_value(opt->type, load_uint(field, opt->size), buf, buf_len);
        return;
    }
}

/* Sets the row's field of dst to its value in src. 0 or -ENOMEM (dst
 * unchanged). */
static int copy_field(const struct imf_option *opt, void *dst, const void *src)
{
    char *df = (char *)dst + opt->offset;
    const char *sf = (const char *)src + opt->offset;
    switch (opt->type) {
    case IMF_OT_STRING: {
        const char *v = *(char *const *)sf;
        char *copy = NULL;
        if (v != NULL && (copy = strdup(v)) == NULL)
            return -ENOMEM;
        free_field(opt, dst);
        *(char **)df = copy;
        return 0;
    }
    case IMF_OT_SOCKADDR_LIST: {
        size_t n = *(const size_t *)((const char *)src + opt->len_offset);
        const struct imf_sockaddr *v = *(struct imf_sockaddr *const *)sf;
        struct imf_sockaddr *copy = NULL;
        if (n > 0) {
            copy = malloc(n * sizeof(*copy));
            if (copy == NULL)
                return -ENOMEM;
            memcpy(copy, v, n * sizeof(*copy));
        }
        free_field(opt, dst);
        *(struct imf_sockaddr **)df = copy;
        *(size_t *)((char *)dst + opt->len_offset) = n;
        return 0;
    }
    case IMF_OT_SOCKADDR:
        memcpy(df, sf, sizeof(struct imf_sockaddr));
        return 0;
    default:
        store_uint(df, opt->size, load_uint(sf, opt->size));
        return 0;
    }
}

static void *named_find(const struct imf_config *cfg, const struct named_section *ns,
                        const char *name)
{
    struct imf_config *c = (struct imf_config *)cfg; /* the accessors are not const */
    for (size_t i = 0; i < *named_len(c, ns); i++)
        if (strcmp(named_elem(c, ns, i), name) == 0)
            return named_elem(c, ns, i);
    return NULL;
}

/* The restart rows of one table, between a running section and the next
 * one (both non-NULL). A change is kept back to the running value and
 * reported, or, with refuse set, written into why and -EBUSY returned. */
static int restart_rows(const struct imf_option *table, size_t len, const char *label,
                        const void *running, void *next, bool refuse, imf_config_restart_fn report,
                        void *arg, char *why, size_t why_len)
{
    for (size_t i = 0; i < len; i++) {
        const struct imf_option *opt = &table[i];
        if (!(opt->flags & IMF_CF_RESTART) || field_equal(opt, running, next))
            continue;
        char what[IMF_CONFIG_QUOTE_MAX + 48], kept[160];
        snprintf(what, sizeof(what), "%s %s", label, opt->key);
        format_field(opt, running, kept, sizeof(kept));
        if (refuse) {
            snprintf(why, why_len, "%s changed (still %s)", what, kept);
            return -EBUSY;
        }
        if (copy_field(opt, next, running) < 0) {
            snprintf(why, why_len, "out of memory");
            return -ENOMEM;
        }
        if (report != NULL)
            report(arg, what, kept);
    }
    return 0;
}

int imf_config_restart_keys(const struct imf_config *running, struct imf_config *next,
                            imf_config_restart_fn report, void *arg, char *why, size_t why_len)
{
    char label[IMF_CONFIG_QUOTE_MAX + 16];
    /* First what refuses the reload, so that next is untouched then. */
    for (int k = 0; k < NAMED_COUNT; k++) {
        const struct named_section *ns = &named_sections[k];
        if (!ns->fixed)
            continue;
        struct imf_config *r = (struct imf_config *)running;
        for (size_t e = 0; e < *named_len(r, ns); e++) {
            const char *name = named_elem(r, ns, e);
            void *n = named_find(next, ns, name);
            snprintf(label, sizeof(label), "[%s%s]", ns->prefix, name);
            if (n == NULL) {
                snprintf(why, why_len, "%s was removed", label);
                return -EBUSY;
            }
            int rc = restart_rows(ns->options, ns->options_len, label, named_elem(r, ns, e), n,
                                  true, NULL, NULL, why, why_len);
            if (rc < 0)
                return rc;
        }
        for (size_t e = 0; e < *named_len(next, ns); e++) {
            const char *name = named_elem(next, ns, e);
            if (named_find(running, ns, name) == NULL) {
                snprintf(why, why_len, "[%s%s] was added", ns->prefix, name);
                return -EBUSY;
            }
        }
    }
    for (size_t i = 0; i < IMF_OPTIONS_LEN; i++) {
        snprintf(label, sizeof(label), "[%s]", imf_options[i].section);
        int rc = restart_rows(&imf_options[i], 1, label, running, next, false, report, arg, why,
                              why_len);
        if (rc < 0)
            return rc;
    }
    for (int k = 0; k < NAMED_COUNT; k++) {
        const struct named_section *ns = &named_sections[k];
        if (ns->fixed)
            continue;
        for (size_t e = 0; e < *named_len(next, ns); e++) {
            char *n = named_elem(next, ns, e);
            const void *r = named_find(running, ns, n);
            if (r == NULL)
                continue; /* a new section: nothing runs with it yet */
            snprintf(label, sizeof(label), "[%s%s]", ns->prefix, n);
            int rc = restart_rows(ns->options, ns->options_len, label, r, n, false, report, arg,
                                  why, why_len);
            if (rc < 0)
                return rc;
        }
    }
    return 0;
}
