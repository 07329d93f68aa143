/* throttle: failed logins per client address and per (address, user),
 * shared by all workers, for [login]. A fixed table of records (its size
 * set once at start, the oldest record evicted when it is full), so memory
 * stays bounded whatever clients do; it lives for the process, so a SIGHUP
 * keeps it. Time is passed in (monotonic milliseconds).
 *
 * An attempt is begun when its user name is known and before its password
 * reaches the backend, and ended with the backend's verdict. Attempts in
 * progress count toward the ban, so parallel sessions cannot get more
 * guesses past it than one session can. User names are kept only as a
 * keyed hash; passwords only as the keyed hash the gate made. */
#ifndef IMAPFRONT_THROTTLE_H
#define IMAPFRONT_THROTTLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* The thresholds, from [login] (may change on reload). */
struct imf_throttle_params {
    uint32_t fail_free;         /* failures per (address, user) answered without delay */
    uint32_t fail_ban;          /* failures per (address, user) after which the proxy refuses */
    uint32_t address_fail_free; /* the same per address, any user */
    uint32_t address_fail_ban;
    uint64_t window_ms;    /* failures older than this (and no ban) are forgotten */
    uint64_t ban_ms;       /* how long a ban lasts */
    uint64_t delay_max_ms; /* cap of the delay (1 s, 2 s, 4 s, ...) */
    bool user_lockout;     /* also count per user, from any address */
};

struct imf_config;

/* The thresholds of cfg's [login] section into out. */
void imf_throttle_params_from(const struct imf_config *cfg, struct imf_throttle_params *out);

enum imf_throttle_verdict {
    IMF_THROTTLE_PASS, /* ask the backend; answer a failure after *out_delay_ms */
    IMF_THROTTLE_BAN,  /* refuse without asking the backend */
    IMF_THROTTLE_VERDICT_COUNT
};

/* Sizes the table (records; each attempt uses up to three) and draws the
 * process's random keys. Call once before any worker runs; later calls
 * change nothing. Returns 0 or UV_ENOMEM. */
int imf_throttle_setup(uint32_t max_records);

/* Records of the table (0 before setup). */
uint32_t imf_throttle_capacity(void);

/* The random key for hashing passwords (the gate's secret_key). */
const uint64_t *imf_throttle_secret_key(void);

/* Begins an attempt from addr as user (user_len octets, may be 0). */
enum imf_throttle_verdict imf_throttle_begin(const struct imf_throttle_params *p,
                                             const struct sockaddr *addr, const char *user,
                                             size_t user_len, uint64_t now_ms,
                                             uint64_t *out_delay_ms);

/* Ends an attempt that imf_throttle_begin() passed: ok, or a failure whose
 * password hash is secret_hash (0: unknown; the same non-zero hash failing
 * again for the same address and user counts once). aborted: no verdict
 * came (the session ended): only the attempt in progress is undone.
 * Returns true when a new failure was counted (not a repeated password). */
bool imf_throttle_end(const struct imf_throttle_params *p, const struct sockaddr *addr,
                      const char *user, size_t user_len, uint64_t secret_hash, bool ok,
                      bool aborted, uint64_t now_ms);

/* The octets of a record's key: kind, address, a hash of the user name.
 * The same in every process (the hash is not keyed by a per-process
 * secret), so that replicas sharing a store name one record alike. */
#define IMF_THROTTLE_KEY_LEN 32

/* The keys of an attempt's records (address; address and user; user with
 * user_lockout) into out, in that order. Returns their number (2 or 3). */
int imf_throttle_keys(const struct imf_throttle_params *p, const struct sockaddr *addr,
                      const char *user, size_t user_len, uint8_t out[3][IMF_THROTTLE_KEY_LEN]);

/* Merges what a shared store says of one record: count failures within
 * the window, of which ttl_ms remain (the ban too, once count reaches the
 * ban threshold of the key's kind). The local count only grows (the
 * store's count includes this process's own failures). count 0: the
 * user's success elsewhere cleared the record (dropped unless an attempt
 * of its own is in progress). A key of a kind p does not use is ignored. */
void imf_throttle_merge(const struct imf_throttle_params *p,
                        const uint8_t key[IMF_THROTTLE_KEY_LEN], uint32_t count, uint64_t ttl_ms,
                        uint64_t now_ms);

/* The failures of key's kind at which p bans (0 for a malformed key). */
uint32_t imf_throttle_ban_threshold(const struct imf_throttle_params *p,
                                    const uint8_t key[IMF_THROTTLE_KEY_LEN]);

/* For /metrics: records in use, bans in force (at now_ms), the capacity. */
void imf_throttle_stats(uint64_t now_ms, uint64_t *out_records, uint64_t *out_bans,
                        uint64_t *out_capacity);

/* Bytes the table takes (benchmark). */
size_t imf_throttle_memory(void);

#endif
