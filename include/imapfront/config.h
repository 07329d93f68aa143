/* config: proxy.ini parsed by inih into an immutable, reference-counted
 * snapshot. Every option is one row of a table (section, key, type, default,
 * bounds, flags) in config.c; defaults go through the same parser as user
 * values. Errors read "FILE:LINE: key: reason". */
#ifndef IMAPFRONT_CONFIG_H
#define IMAPFRONT_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "imapfront/netaddr.h"

enum imf_listen_mode { IMF_LISTEN_IMPLICIT_TLS, IMF_LISTEN_STARTTLS, IMF_LISTEN_MODE_COUNT };

enum imf_balance { IMF_BALANCE_FIRST, IMF_BALANCE_ROUNDROBIN, IMF_BALANCE_COUNT };

enum imf_quirks {
    IMF_QUIRKS_NONE,       /* the shields as their keys say */
    IMF_QUIRKS_EXCHANGE55, /* the Exchange 5.5 preset, whatever the server says */
    IMF_QUIRKS_AUTO,       /* the preset the backend's greeting calls for (gate.c) */
    IMF_QUIRKS_COUNT
};

enum imf_literal_plus { IMF_LITERAL_PLUS_PASS, IMF_LITERAL_PLUS_SYNC, IMF_LITERAL_PLUS_COUNT };

enum imf_forward_ip { IMF_FORWARD_IP_OFF, IMF_FORWARD_IP_ID, IMF_FORWARD_IP_COUNT };

enum imf_idle_mode {
    IMF_IDLE_PASS, /* relay IDLE to the backend */
    IMF_IDLE_POLL, /* the backend lacks IDLE: the proxy emulates it with NOOPs */
    IMF_IDLE_MODE_COUNT
};

enum imf_check {
    IMF_CHECK_OFF,
    IMF_CHECK_BANNER, /* greet the backend periodically */
    IMF_CHECK_LOGIN,  /* and log in with a service account */
    IMF_CHECK_COUNT
};

/* How a pool's servers are spoken to (backend_tls.h). */
enum imf_backend_tls {
    IMF_BACKEND_TLS_OFF,
    IMF_BACKEND_TLS_ON,       /* TLS from the first byte (imaps) */
    IMF_BACKEND_TLS_STARTTLS, /* greeting, STARTTLS, then TLS */
    IMF_BACKEND_TLS_COUNT
};

/* SHA-256 digest length, for tls_pin_sha256. */
#define IMF_PIN_LEN 32

enum imf_proxy_protocol {
    IMF_PROXY_PROTOCOL_OFF,
    IMF_PROXY_PROTOCOL_V1,
    IMF_PROXY_PROTOCOL_V2,
    IMF_PROXY_PROTOCOL_ANY,
    IMF_PROXY_PROTOCOL_COUNT
};

/* A socket address as written ("127.0.0.1:993", "[::1]:993") and resolved,
 * or (a backend server only) a host name and port ("mail.example.org:143"):
 * named is then set, ss and len are empty, and the name is resolved on
 * every connect (imf_sockaddr_host_port gives its parts). */
struct imf_sockaddr {
    char text[128];
    struct sockaddr_storage ss;
    socklen_t len;
    bool named;
};

/* The host and port of a named address: host is text up to its last ':'
 * (written into host, at most host_len bytes with the NUL), port the
 * digits after it (into port, at least 6 bytes). Returns 0, or -EINVAL when
 * a does not fit (never for an address the config accepted). */
int imf_sockaddr_host_port(const struct imf_sockaddr *a, char *host, size_t host_len, char *port,
                           size_t port_len);

struct imf_listen_config {
    char name[64]; /* NAME of [listen.NAME] */
    struct imf_sockaddr address;
    enum imf_listen_mode mode;
    bool require_tls;
    enum imf_proxy_protocol proxy_protocol;
    char *proxy_protocol_from;                /* as written; NULL when empty */
    struct imf_cidr proxy_from[IMF_CIDR_MAX]; /* parsed */
    size_t proxy_from_len;
};

/* [certificate.NAME]: another certificate, served to clients whose SNI
 * matches one of server_names ("mail.example.org", "*.example.org"). */
struct imf_cert_config {
    char name[64]; /* NAME of [certificate.NAME] */
    char *certificate;
    char *private_key;
    char *server_names; /* as written: names separated by commas or spaces */
    unsigned certificate_line, private_key_line; /* where they were written */
};

/* The pool a plain [backend] section defines. */
#define IMF_POOL_DEFAULT "default"

/* [backend.NAME]: a pool of backend servers and how sessions use them.
 * A session keeps a pointer to its pool (inside its config snapshot). */
struct imf_pool_config {
    char name[64]; /* NAME of [backend.NAME]; "default" for [backend] */
    struct imf_sockaddr *servers;
    size_t servers_len;
    enum imf_balance balance;
    uint64_t connect_timeout_ms;
    uint32_t down_after;       /* failed connects in a row that mark a server down */
    uint64_t retry_after_ms;   /* how long a down server is skipped */
    uint32_t max_sessions;     /* backend connections per server, 0 = no limit */
    uint32_t max_connecting;   /* connects in progress per server, 0 = no limit */
    uint64_t queue_timeout_ms; /* how long a session may wait for a backend */
    uint32_t connect_rate;     /* connects a second to a warming server, 0 = off */
    enum imf_quirks quirks;
    bool pipelining;
    enum imf_literal_plus literal_plus;
    bool literal_crlf_split;
    bool pipelining_set, literal_plus_set, literal_crlf_split_set; /* written in the file */
    uint64_t literal_crlf_split_delay_ms; /* settle time between the two writes */
    enum imf_forward_ip forward_client_ip;
    enum imf_idle_mode idle_mode;
    enum imf_check check;
    uint64_t check_interval_ms; /* a check of every server this often */
    uint64_t check_timeout_ms;  /* a check taking longer fails */
    char *check_user;           /* check = login: the service account */
    char *check_password;       /* never logged; or read from check_password_file */
    char *check_mailbox;        /* check = login: EXAMINEd by the check */
    uint64_t idle_refresh_ms;   /* 0 = never: re-issue a client's IDLE to the backend this often */
    uint64_t poll_interval_ms;  /* idle = poll: NOOP this often */
    /* TLS to the servers (backend_tls.c). */
    enum imf_backend_tls tls;
    char *tls_ca_file;     /* NULL: the system store */
    bool tls_verify;       /* verify the chain and the name */
    char *tls_server_name; /* NULL: the host as written in servers, when a name */
    char *tls_pin_sha256;  /* as written; NULL when empty */
    bool tls_pin_set;
    uint8_t tls_pin[IMF_PIN_LEN]; /* tls_pin_sha256 decoded */
    /* The client SSL_CTX of a pool with tls != off, built after the file is
     * read (imf_btls_prepare) and freed with the snapshot through
     * tls_ctx_free (config.c does not link the TLS library). */
    void *tls_ctx;
    void (*tls_ctx_free)(void *ctx);
};

struct imf_config {
    char *path; /* file it came from, or the name given to imf_config_parse */

    /* [proxy] */
    unsigned workers; /* 0 = auto (number of CPUs) */
    uint32_t max_connections;
    uint32_t max_connections_per_ip; /* 0 = no limit */
    uint32_t ip_prefix_v6;           /* IPv6 clients count per network of these bits */
    char *user;                      /* NULL = keep the current user */
    int log_level;                   /* enum imf_log_level */
    int log_format;                  /* enum imf_log_format */
    uint64_t drain_timeout_ms;       /* SIGTERM: how long sessions may finish */

    /* [listen.NAME], in file order */
    struct imf_listen_config *listeners;
    size_t listeners_len;

    /* [certificate.NAME], in file order */
    struct imf_cert_config *certs;
    size_t certs_len;

    /* [tls] */
    char *certificate;
    char *private_key;
    unsigned certificate_line, private_key_line; /* where they were written, for errors */
    uint16_t min_version;                        /* TLS1_VERSION .. TLS1_3_VERSION */
    bool legacy_ciphers;                         /* add ECDHE CBC suites for old clients */
    bool session_tickets;
    uint64_t handshake_timeout_ms;

    /* [backend.NAME], in file order; [backend] is the pool "default" */
    struct imf_pool_config *pools;
    size_t pools_len;

    /* [imap] */
    uint64_t max_line_length;
    uint64_t max_literal_size;
    uint64_t max_command_size; /* a whole command: its lines and literals */
    char *hide_capabilities;   /* as written (space/comma separated); NULL when empty */
    uint64_t preauth_timeout_ms;
    uint64_t idle_timeout_ms;
    uint64_t buffer_limit;
    bool compress;              /* COMPRESS=DEFLATE terminated at the proxy */
    uint32_t compress_level;    /* zlib level of what the proxy deflates (1..9) */
    uint32_t compress_window;   /* deflate window of what the proxy sends, 1 KiB..32 KiB, 2^n */
    uint64_t idle_keepalive_ms; /* 0 = off: "* OK Still here" to an IDLE client this often */
    uint64_t literal_stall_ms;  /* 0 = off: report a client literal without progress this long */

    /* [login] */
    bool login_throttle;              /* throttling of failed logins on */
    uint32_t login_fail_free;         /* per (address, user): failures answered at once */
    uint32_t login_fail_ban;          /* ... failures after which the proxy refuses */
    uint32_t login_address_fail_free; /* per address, any user */
    uint32_t login_address_fail_ban;
    uint64_t login_fail_window_ms;
    uint64_t login_ban_time_ms;
    uint64_t login_delay_max_ms;
    bool login_user_lockout;                     /* also count per user from any address */
    uint32_t login_max_tracked;                  /* records of the table (fixed at start) */
    char *login_trusted_networks;                /* as written; NULL when empty */
    struct imf_cidr login_trusted[IMF_CIDR_MAX]; /* parsed */
    size_t login_trusted_len;
    char *login_store;          /* as written; NULL: local memory only */
    char *login_store_password; /* Redis AUTH; NULL: none */
    /* login_store parsed (and its host name resolved) at load: */
    char login_store_host[64];    /* numeric address, or a unix socket path below */
    const char *login_store_unix; /* into login_store, after "unix:"; NULL for TCP */
    uint16_t login_store_port;
    uint32_t login_store_db; /* SELECTed after connecting (redis://HOST:PORT/DB) */

    /* [route] (route.h reads them) */
    char *route_map;        /* the user -> pool map file; NULL = none */
    char *route_default;    /* the pool of users not in the map; NULL = none */
    bool route_ignore_case; /* ASCII letters of user names match without regard to case */

    /* [admin] */
    struct imf_sockaddr admin_address;         /* admin_address.len == 0: off */
    char *admin_allow_from;                    /* as written; NULL when empty (anyone) */
    struct imf_cidr admin_allow[IMF_CIDR_MAX]; /* parsed */
    size_t admin_allow_len;
    uint32_t admin_max_connections;
    uint64_t admin_timeout_ms;

    _Atomic int refs; /* private: see imf_config_ref/unref */
};

/* Reads and checks the file at path. On success returns 0 and a snapshot with
 * one reference in *out_cfg; on failure returns a negative errno-style code,
 * leaves *out_cfg untouched and writes "FILE:LINE: key: reason" (or
 * "FILE: reason" when the file cannot be read) into err. */
int imf_config_load(const char *path, struct imf_config **out_cfg, char *err, size_t err_len);

/* The same for an in-memory INI text; name stands for the file in errors. */
int imf_config_parse(const char *name, const char *text, struct imf_config **out_cfg, char *err,
                     size_t err_len);

/* Reference counting; the last unref frees. Safe across threads. */
struct imf_config *imf_config_ref(struct imf_config *cfg);
void imf_config_unref(struct imf_config *cfg);

/* The pool named name, or NULL. Borrowed from cfg. */
const struct imf_pool_config *imf_config_pool(const struct imf_config *cfg, const char *name);

/* Called for each key a reload cannot apply and that changed: what is
 * "[proxy] workers", kept the running value as a user writes it ("auto"). */
typedef void (*imf_config_restart_fn)(void *arg, const char *what, const char *kept);

/* What a reload from running to next cannot apply: the keys the option
 * table flags "needs a restart". A [listen.NAME] section (a socket) added,
 * removed or with such a key changed refuses the reload: returns -EBUSY
 * with the reason in why and next untouched. Any other such key that
 * changed gets its running value back in next, and report (may be NULL)
 * is called. Sections are matched by name, never by position. Returns 0,
 * -EBUSY, or -ENOMEM (why says so). next must not be shared yet. */
int imf_config_restart_keys(const struct imf_config *running, struct imf_config *next,
                            imf_config_restart_fn report, void *arg, char *why, size_t why_len);

/* Value parsers shared with the rest of the program; 0 or -EINVAL/-ERANGE. */
int imf_config_parse_size(const char *text, uint64_t *out_bytes);
int imf_config_parse_duration(const char *text, uint64_t *out_ms);
int imf_config_parse_sockaddr(const char *text, struct imf_sockaddr *out_addr);
/* As imf_config_parse_sockaddr, and also "NAME:PORT" with a DNS host name
 * (letters, digits, '-' and '_' in dot-separated labels), not resolved:
 * out_addr->named is then set. */
int imf_config_parse_server(const char *text, struct imf_sockaddr *out_addr);
/* The reverse, imf_format_sockaddr, is in netaddr.h. */

extern const char *const imf_listen_mode_names[IMF_LISTEN_MODE_COUNT];

#endif
