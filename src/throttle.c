/* throttle: see include/imapfront/throttle.h. One preallocated array of
 * records, a hash index of 32-bit links into it and a least-recently-used
 * list; all under one lock (a lookup is a short walk, made only at login). */
#include "imapfront/throttle.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/siphash.h>

#include "imapfront/config.h"
#include "imapfront/iplimit.h"
#include "imapfront/netaddr.h"

/* Logins of one user from one address in progress before any has failed,
 * past which more are refused (a first burst of parallel guesses for one
 * account is bounded by it). The address record alone has no such bound,
 * and its attempts in progress never count: the users behind one NAT log in
 * together after a failover, and refusing them would make every mail
 * client there ask its user for the password. */
#define PARALLEL_MAX 32

#define NIL    UINT32_MAX
#define HASHES 4 /* distinct failed passwords remembered per (address, user) */

enum kind { KIND_ADDRESS = 1, KIND_ADDRESS_USER = 2, KIND_USER = 3 };

struct record {
    uint8_t key[32]; /* kind, 17 address octets (or zero), 8 octets of the user's hash */
    uint64_t first_ms, ban_until_ms;
    uint32_t hashes[HASHES]; /* low bits of failed passwords' hashes */
    uint16_t fails, pending;
    uint8_t nhash;
    uint32_t hnext, older, newer; /* index chain, LRU list */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct record *records;
static uint32_t *index_heads;
static uint32_t capacity, index_mask, in_use, free_next, oldest = NIL, newest = NIL;
static uint64_t user_key[2], secret_key[2];

void imf_throttle_params_from(const struct imf_config *c, struct imf_throttle_params *p)
{
    p->fail_free = c->login_fail_free;
    p->fail_ban = c->login_fail_ban;
    p->address_fail_free = c->login_address_fail_free;
    p->address_fail_ban = c->login_address_fail_ban;
    p->window_ms = c->login_fail_window_ms;
    p->ban_ms = c->login_ban_time_ms;
    p->delay_max_ms = c->login_delay_max_ms;
    p->user_lockout = c->login_user_lockout;
}

int imf_throttle_setup(uint32_t max_records)
{
    pthread_mutex_lock(&lock);
    int rc = 0;
    if (records == NULL && max_records > 0) {
        uint32_t buckets = 1;
        while (buckets < max_records && buckets < (1u << 30))
            buckets <<= 1;
        records = calloc(max_records, sizeof(*records));
        index_heads = malloc(buckets * sizeof(*index_heads));
        if (records == NULL || index_heads == NULL) {
            free(records);
            free(index_heads);
            records = NULL;
            index_heads = NULL;
            rc = UV_ENOMEM;
        } else {
            memset(index_heads, 0xff, buckets * sizeof(*index_heads));
            capacity = max_records;
            index_mask = buckets - 1;
            RAND_bytes((uint8_t *)user_key, sizeof(user_key));
            RAND_bytes((uint8_t *)secret_key, sizeof(secret_key));
            for (uint32_t k = 0; k < capacity; k++)
                records[k].hnext = k + 1 < capacity ? k + 1 : NIL;
            free_next = 0;
        }
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

uint32_t imf_throttle_capacity(void)
{
    return capacity;
}

const uint64_t *imf_throttle_secret_key(void)
{
    return secret_key;
}

size_t imf_throttle_memory(void)
{
    return (size_t)capacity * sizeof(struct record) + ((size_t)index_mask + 1) * sizeof(uint32_t);
}

/* The address part of a key, as the per-IP limit keys it (IPv6 by prefix). */
static void address_key(const struct sockaddr *addr, uint8_t out[IMF_NETADDR_KEY_LEN])
{
    imf_netaddr_key(addr, imf_iplimit_prefix_v6(), out);
}

static void make_key(uint8_t key[32], enum kind k, const uint8_t addr[IMF_NETADDR_KEY_LEN],
                     const char *user, size_t user_len)
{
    memset(key, 0, 32);
    key[0] = (uint8_t)k;
    if (k != KIND_USER)
        memcpy(key + 1, addr, IMF_NETADDR_KEY_LEN);
    if (k != KIND_ADDRESS) {
        /* Directory servers match user names without regard to case:
         * "Demo" and "demo" are one account, and share one count. */
        uint8_t folded[256];
        size_t n = user_len < sizeof(folded) ? user_len : sizeof(folded);
        for (size_t i = 0; i < n; i++) {
            uint8_t c = (uint8_t)user[i];
            folded[i] = c >= 'A' && c <= 'Z' ? (uint8_t)(c + 32) : c;
        }
        /* Not keyed by user_key: every replica sharing a store must
         * name the record alike (bucket() still hashes with the key). */
        SHA256_CTX c;
        uint8_t h[SHA256_DIGEST_LENGTH];
        SHA256_Init(&c);
        SHA256_Update(&c, "imapfront login user", 21);
        SHA256_Update(&c, folded, n);
        SHA256_Final(h, &c);
        memcpy(key + 18, h, 8);
    }
}

static uint32_t bucket(const uint8_t key[32])
{
    return (uint32_t)SIPHASH_24(user_key, key, 32) & index_mask;
}

static void lru_unlink(uint32_t i)
{
    struct record *r = &records[i];
    if (r->older != NIL)
        records[r->older].newer = r->newer;
    else
        oldest = r->newer;
    if (r->newer != NIL)
        records[r->newer].older = r->older;
    else
        newest = r->older;
}

static void lru_push(uint32_t i)
{
    records[i].older = newest;
    records[i].newer = NIL;
    if (newest != NIL)
        records[newest].newer = i;
    newest = i;
    if (oldest == NIL)
        oldest = i;
}

static void drop(uint32_t i)
{
    uint32_t *pp = &index_heads[bucket(records[i].key)];
    while (*pp != i)
        pp = &records[*pp].hnext;
    *pp = records[i].hnext;
    lru_unlink(i);
    memset(&records[i], 0, sizeof(records[i]));
    records[i].hnext = free_next;
    free_next = i;
    in_use--;
}

static uint32_t find(const uint8_t key[32])
{
    for (uint32_t i = index_heads[bucket(key)]; i != NIL; i = records[i].hnext)
        if (memcmp(records[i].key, key, 32) == 0)
            return i;
    return NIL;
}

/* Finds or makes the record of key (evicting the least recently used). */
static struct record *get(const uint8_t key[32], bool create)
{
    uint32_t i = find(key);
    if (i != NIL) {
        lru_unlink(i);
        lru_push(i);
        return &records[i];
    }
    if (!create || capacity == 0)
        return NULL;
    if (in_use == capacity)
        drop(oldest);
    i = free_next;
    free_next = records[i].hnext;
    struct record *r = &records[i];
    memset(r, 0, sizeof(*r));
    memcpy(r->key, key, 32);
    uint32_t b = bucket(key);
    r->hnext = index_heads[b];
    index_heads[b] = i;
    lru_push(i);
    in_use++;
    return r;
}

/* Forgets failures older than the window unless a ban holds. */
static void expire(struct record *r, const struct imf_throttle_params *p, uint64_t now)
{
    if (r->ban_until_ms > now)
        return;
    r->ban_until_ms = 0;
    if (r->fails > 0 && now - r->first_ms > p->window_ms) {
        r->fails = 0;
        r->nhash = 0;
        memset(r->hashes, 0, sizeof(r->hashes));
    }
}

/* The records of one attempt: address, (address, user), and user. */
struct keys {
    uint8_t k[3][32];
    uint32_t free_[3], ban[3];
    int n;
};

static void keys_of(const struct imf_throttle_params *p, const struct sockaddr *addr,
                    const char *user, size_t user_len, struct keys *out)
{
    uint8_t a[IMF_NETADDR_KEY_LEN];
    address_key(addr, a);
    out->n = 0;
    make_key(out->k[out->n], KIND_ADDRESS, a, NULL, 0);
    out->free_[out->n] = p->address_fail_free;
    out->ban[out->n++] = p->address_fail_ban;
    make_key(out->k[out->n], KIND_ADDRESS_USER, a, user, user_len);
    out->free_[out->n] = p->fail_free;
    out->ban[out->n++] = p->fail_ban;
    if (p->user_lockout && user_len > 0) {
        make_key(out->k[out->n], KIND_USER, a, user, user_len);
        out->free_[out->n] = p->fail_free;
        out->ban[out->n++] = p->fail_ban;
    }
}

enum imf_throttle_verdict imf_throttle_begin(const struct imf_throttle_params *p,
                                             const struct sockaddr *addr, const char *user,
                                             size_t user_len, uint64_t now_ms,
                                             uint64_t *out_delay_ms)
{
    struct keys ks;
    keys_of(p, addr, user, user_len, &ks);
    *out_delay_ms = 0;
    enum imf_throttle_verdict v = IMF_THROTTLE_PASS;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < ks.n; i++) {
        struct record *r = get(ks.k[i], true);
        if (r == NULL)
            continue;
        expire(r, p, now_ms);
        /* For a user's records, attempts still in progress count once the
         * record has failed: parallel sessions then get no more guesses
         * through than one. Before any failure they count only past
         * PARALLEL_MAX, so that a user's mail clients opening their
         * connections at once are never refused. The address record (i ==
         * 0) counts finished failures only (see PARALLEL_MAX). */
        uint32_t fails = r->fails;
        bool per_user = i > 0;
        if (r->ban_until_ms > now_ms || fails >= ks.ban[i] ||
            (per_user && fails > 0 && fails + r->pending >= ks.ban[i]) ||
            (per_user && r->pending >= PARALLEL_MAX))
            v = IMF_THROTTLE_BAN;
        if (r->fails >= ks.free_[i]) {
            uint32_t over = r->fails - ks.free_[i];
            uint64_t d = over >= 30 ? p->delay_max_ms : 1000ull << over;
            if (d > p->delay_max_ms)
                d = p->delay_max_ms;
            if (d > *out_delay_ms)
                *out_delay_ms = d;
        }
    }
    /* Looked up again: making one record may have evicted another. */
    for (int i = 0; v == IMF_THROTTLE_PASS && i < ks.n; i++) {
        struct record *r = get(ks.k[i], false);
        if (r != NULL && r->pending < UINT16_MAX)
            r->pending++;
    }
    pthread_mutex_unlock(&lock);
    return v;
}

bool imf_throttle_end(const struct imf_throttle_params *p, const struct sockaddr *addr,
                      const char *user, size_t user_len, uint64_t secret_hash, bool ok,
                      bool aborted, uint64_t now_ms)
{
    struct keys ks;
    keys_of(p, addr, user, user_len, &ks);
    pthread_mutex_lock(&lock);
    bool repeated = false;
    if (!ok && !aborted && secret_hash != 0) {
        struct record *pair = get(ks.k[1], false);
        uint32_t h = (uint32_t)(secret_hash >> 32) | 1u;
        for (int k = 0; pair != NULL && k < HASHES && k < pair->nhash; k++)
            repeated |= pair->hashes[k] == h;
        if (pair != NULL && !repeated) {
            memmove(pair->hashes + 1, pair->hashes, sizeof(pair->hashes[0]) * (HASHES - 1));
            pair->hashes[0] = h;
            if (pair->nhash < HASHES)
                pair->nhash++;
        }
    }
    for (int i = 0; i < ks.n; i++) {
        uint32_t idx = find(ks.k[i]);
        if (idx == NIL)
            continue;
        struct record *r = &records[idx];
        if (r->pending > 0)
            r->pending--;
        if (aborted)
            continue;
        if (ok) {
            if (i > 0 && r->pending == 0)
                drop(idx); /* the user's own success clears its records */
            continue;
        }
        if (repeated)
            continue;
        expire(r, p, now_ms);
        if (r->fails == 0)
            r->first_ms = now_ms;
        if (r->fails < UINT16_MAX)
            r->fails++;
        if (r->fails >= ks.ban[i])
            r->ban_until_ms = now_ms + p->ban_ms;
    }
    pthread_mutex_unlock(&lock);
    return !ok && !aborted && !repeated;
}

int imf_throttle_keys(const struct imf_throttle_params *p, const struct sockaddr *addr,
                      const char *user, size_t user_len, uint8_t out[3][IMF_THROTTLE_KEY_LEN])
{
    struct keys ks;
    keys_of(p, addr, user, user_len, &ks);
    memcpy(out, ks.k, sizeof(ks.k[0]) * (size_t)ks.n);
    return ks.n;
}

uint32_t imf_throttle_ban_threshold(const struct imf_throttle_params *p,
                                    const uint8_t key[IMF_THROTTLE_KEY_LEN])
{
    switch (key[0]) {
    case KIND_ADDRESS:
        return p->address_fail_ban;
    case KIND_ADDRESS_USER:
        return p->fail_ban;
    case KIND_USER:
        return p->user_lockout ? p->fail_ban : 0;
    default:
        return 0;
    }
}

void imf_throttle_merge(const struct imf_throttle_params *p,
                        const uint8_t key[IMF_THROTTLE_KEY_LEN], uint32_t count, uint64_t ttl_ms,
                        uint64_t now_ms)
{
    uint32_t ban = imf_throttle_ban_threshold(p, key);
    if (ban == 0)
        return;
    pthread_mutex_lock(&lock);
    if (count == 0) {
        uint32_t i = key[0] != KIND_ADDRESS ? find(key) : NIL;
        if (i != NIL && records[i].pending == 0)
            drop(i);
        pthread_mutex_unlock(&lock);
        return;
    }
    struct record *r = get(key, true);
    if (r != NULL) {
        expire(r, p, now_ms);
        if (count > r->fails) {
            r->fails = count > UINT16_MAX ? UINT16_MAX : (uint16_t)count;
            /* Forgotten here when the store forgets it. */
            uint64_t left = ttl_ms < p->window_ms ? ttl_ms : p->window_ms;
            r->first_ms = now_ms + left > p->window_ms ? now_ms + left - p->window_ms : 0;
        }
        if (count >= ban && now_ms + ttl_ms > r->ban_until_ms)
            r->ban_until_ms = now_ms + ttl_ms;
    }
    pthread_mutex_unlock(&lock);
}

void imf_throttle_stats(uint64_t now_ms, uint64_t *out_records, uint64_t *out_bans,
                        uint64_t *out_capacity)
{
    pthread_mutex_lock(&lock);
    uint64_t bans = 0;
    for (uint32_t i = oldest; i != NIL; i = records[i].newer)
        bans += records[i].ban_until_ms > now_ms;
    *out_records = in_use;
    *out_bans = bans;
    *out_capacity = capacity;
    pthread_mutex_unlock(&lock);
}
