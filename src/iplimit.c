/* iplimit: see include/imapfront/iplimit.h. A chained hash table keyed by
 * the address bytes (an IPv6 address cut to its prefix); entries are freed
 * when their count drops to zero, so the table holds only IPs with sessions
 * open. */
#include "imapfront/iplimit.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "imapfront/netaddr.h"

#define BUCKETS 4096

struct entry {
    struct entry *next;
    uint8_t key[IMF_NETADDR_KEY_LEN]; /* family byte + 16 address bytes */
    uint32_t count;
};

static struct entry *buckets[BUCKETS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

/* Read under no lock: set once at start, before any worker runs. */
static _Atomic unsigned prefix_v6 = 64;

void imf_iplimit_set_prefix_v6(unsigned bits)
{
    if (bits < 32)
        bits = 32;
    if (bits > 128)
        bits = 128;
    atomic_store(&prefix_v6, bits);
}

unsigned imf_iplimit_prefix_v6(void)
{
    return atomic_load(&prefix_v6);
}

/* IPv4 whole, IPv6 by prefix_v6 (netaddr.h). */
static bool key_of(const struct sockaddr *addr, uint8_t key[IMF_NETADDR_KEY_LEN])
{
    return imf_netaddr_key(addr, atomic_load(&prefix_v6), key);
}

static size_t hash(const uint8_t key[IMF_NETADDR_KEY_LEN])
{
    /* FNV-1a: addresses are not chosen by an attacker beyond their own,
     * and a bucket collision costs only a short list walk. */
    uint32_t h = 2166136261u;
    for (int i = 0; i < IMF_NETADDR_KEY_LEN; i++)
        h = (h ^ key[i]) * 16777619u;
    return h % BUCKETS;
}

static struct entry **find(const uint8_t key[IMF_NETADDR_KEY_LEN])
{
    struct entry **pp = &buckets[hash(key)];
    while (*pp != NULL && memcmp((*pp)->key, key, IMF_NETADDR_KEY_LEN) != 0)
        pp = &(*pp)->next;
    return pp;
}

bool imf_iplimit_acquire(const struct sockaddr *addr, uint32_t max)
{
    uint8_t key[IMF_NETADDR_KEY_LEN];
    if (!key_of(addr, key))
        return true;
    bool ok = true;
    pthread_mutex_lock(&lock);
    struct entry **pp = find(key);
    if (*pp == NULL) {
        struct entry *e = calloc(1, sizeof(*e));
        if (e != NULL) {
            memcpy(e->key, key, IMF_NETADDR_KEY_LEN);
            *pp = e;
        }
    }
    if (*pp == NULL)
        ok = true; /* no memory to count with: do not refuse for that */
    else if (max != 0 && (*pp)->count >= max)
        ok = false;
    else
        (*pp)->count++;
    if (!ok && *pp != NULL && (*pp)->count == 0) {
        struct entry *e = *pp;
        *pp = e->next;
        free(e);
    }
    pthread_mutex_unlock(&lock);
    return ok;
}

void imf_iplimit_release(const struct sockaddr *addr)
{
    uint8_t key[IMF_NETADDR_KEY_LEN];
    if (!key_of(addr, key))
        return;
    pthread_mutex_lock(&lock);
    struct entry **pp = find(key);
    if (*pp != NULL && --(*pp)->count == 0) {
        struct entry *e = *pp;
        *pp = e->next;
        free(e);
    }
    pthread_mutex_unlock(&lock);
}

uint32_t imf_iplimit_count(const struct sockaddr *addr)
{
    uint8_t key[IMF_NETADDR_KEY_LEN];
    if (!key_of(addr, key))
        return 0;
    pthread_mutex_lock(&lock);
    struct entry **pp = find(key);
    uint32_t n = *pp != NULL ? (*pp)->count : 0;
    pthread_mutex_unlock(&lock);
    return n;
}
