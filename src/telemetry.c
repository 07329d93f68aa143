/* telemetry: see include/imapfront/telemetry.h. */
#include "imapfront/telemetry.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

const char *const imf_tcmd_names[IMF_TCMD_COUNT] = {
    "OTHER", "APPEND", "AUTHENTICATE", "CAPABILITY", "COPY",   "EXPUNGE", "FETCH",  "IDLE",  "LIST",
    "LOGIN", "LOGOUT", "MOVE",         "NOOP",       "SEARCH", "SELECT",  "STATUS", "STORE",
};
static_assert(sizeof(imf_tcmd_names) / sizeof(imf_tcmd_names[0]) == IMF_TCMD_COUNT, "names");

const uint64_t imf_lat_bounds_us[IMF_LAT_BUCKETS] = {
    1000, 5000, 10000, 50000, 100000, 500000, 1000000, 5000000, 30000000, 300000000,
};

const char *const imf_anomaly_names[IMF_ANOMALY_COUNT] = {
    "unknown_tag",
    "bare_continuation",
    "fetch_literal_oversize",
    "client_literal_stall",
};
static_assert(sizeof(imf_anomaly_names) / sizeof(imf_anomaly_names[0]) == IMF_ANOMALY_COUNT,
              "anomaly names");

static void add(_Atomic uint64_t *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

enum imf_tcmd imf_telemetry_classify(const char *name)
{
    /* "UID FETCH" is a FETCH, "EXAMINE" a SELECT, "LSUB" a LIST... */
    static const struct {
        const char *name;
        enum imf_tcmd cmd;
    } map[] = {
        {"APPEND", IMF_TCMD_APPEND},
        {"AUTHENTICATE", IMF_TCMD_AUTHENTICATE},
        {"CAPABILITY", IMF_TCMD_CAPABILITY},
        {"COPY", IMF_TCMD_COPY},
        {"UID COPY", IMF_TCMD_COPY},
        {"EXPUNGE", IMF_TCMD_EXPUNGE},
        {"UID EXPUNGE", IMF_TCMD_EXPUNGE},
        {"FETCH", IMF_TCMD_FETCH},
        {"UID FETCH", IMF_TCMD_FETCH},
        {"IDLE", IMF_TCMD_IDLE},
        {"LIST", IMF_TCMD_LIST},
        {"LSUB", IMF_TCMD_LIST},
        {"LOGIN", IMF_TCMD_LOGIN},
        {"LOGOUT", IMF_TCMD_LOGOUT},
        {"MOVE", IMF_TCMD_MOVE},
        {"UID MOVE", IMF_TCMD_MOVE},
        {"NOOP", IMF_TCMD_NOOP},
        {"SEARCH", IMF_TCMD_SEARCH},
        {"UID SEARCH", IMF_TCMD_SEARCH},
        {"SELECT", IMF_TCMD_SELECT},
        {"EXAMINE", IMF_TCMD_SELECT},
        {"STATUS", IMF_TCMD_STATUS},
        {"STORE", IMF_TCMD_STORE},
        {"UID STORE", IMF_TCMD_STORE},
    };
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
        if (strcmp(name, map[i].name) == 0)
            return map[i].cmd;
    return IMF_TCMD_OTHER;
}

/* The largest count of the "<start.count>" partial ranges in a FETCH line;
 * sets *out_whole when a BODY[...] / BINARY[...] section has none. */
static uint64_t partial_max(const uint8_t *line, size_t len, bool *out_whole)
{
    uint64_t best = 0;
    *out_whole = false;
    for (size_t i = 0; i < len; i++) {
        if (line[i] != ']')
            continue;
        if (i + 1 >= len || line[i + 1] != '<') {
            *out_whole = true;
            continue;
        }
        size_t j = i + 2;
        while (j < len && line[j] >= '0' && line[j] <= '9')
            j++;
        if (j >= len || line[j] != '.') {
            *out_whole = true;
            continue;
        }
        uint64_t v = 0;
        size_t k = j + 1;
        while (k < len && line[k] >= '0' && line[k] <= '9' && v < UINT64_MAX / 10)
            v = v * 10 + (uint64_t)(line[k++] - '0');
        if (v > best)
            best = v;
    }
    /* FETCH of RFC822, RFC822.TEXT, BODY without brackets: whole parts. */
    for (size_t i = 0; i + 6 <= len; i++)
        if (memcmp(line + i, "RFC822", 6) == 0)
            *out_whole = true;
    return best;
}

/* Room for one more slot: a free one, or a doubled array. Returns the
 * free slot, or NULL when all IMF_TRACK_SLOTS are taken or growth failed. */
static struct imf_tracked *free_slot(struct imf_tracker **tp)
{
    struct imf_tracker *t = *tp;
    for (unsigned i = 0; i < t->cap; i++)
        if (!t->slots[i].used)
            return &t->slots[i];
    if (t->cap >= IMF_TRACK_SLOTS)
        return NULL;
    unsigned ncap = t->cap * 2;
    struct imf_tracker *n = realloc(t, sizeof(*t) + ncap * sizeof(t->slots[0]));
    if (n == NULL)
        return NULL;
    memset(&n->slots[n->cap], 0, (ncap - n->cap) * sizeof(n->slots[0]));
    struct imf_tracked *e = &n->slots[n->cap];
    n->cap = ncap;
    *tp = n;
    return e;
}

int imf_telemetry_sent(struct imf_tracker **tp, const char *tag, const char *name,
                       const uint8_t *line, size_t len, uint64_t now_us)
{
    if (*tp == NULL) {
        /* Most sessions have one command in flight at a time. */
        *tp = calloc(1, sizeof(**tp) + sizeof((*tp)->slots[0]));
        if (*tp == NULL)
            return -ENOMEM;
        (*tp)->cap = 1;
    }
    size_t tlen = strlen(tag);
    struct imf_tracked *e = tlen < sizeof(e->tag) ? free_slot(tp) : NULL;
    if (e == NULL) {
        (*tp)->untracked++;
        return 0;
    }
    memcpy(e->tag, tag, tlen + 1);
    e->cmd = (uint8_t)imf_telemetry_classify(name);
    e->used = true;
    e->start_us = now_us;
    e->partial_max = 0;
    e->fetch_whole = false;
    if (e->cmd == IMF_TCMD_FETCH)
        e->partial_max = partial_max(line, len, &e->fetch_whole);
    return 0;
}

/* Frees the tracker once nothing is in flight. */
static void release_if_empty(struct imf_tracker **tp)
{
    struct imf_tracker *t = *tp;
    if (t->untracked > 0)
        return;
    for (unsigned i = 0; i < t->cap; i++)
        if (t->slots[i].used)
            return;
    free(t);
    *tp = NULL;
}

bool imf_telemetry_tagged(struct imf_tracker **tp, struct imf_telemetry_stats *st, const char *tag,
                          uint64_t now_us)
{
    struct imf_tracker *t = *tp;
    for (unsigned i = 0; t != NULL && i < t->cap; i++) {
        struct imf_tracked *e = &t->slots[i];
        if (!e->used || strcmp(e->tag, tag) != 0)
            continue;
        uint64_t us = now_us > e->start_us ? now_us - e->start_us : 0;
        unsigned b = 0;
        while (b < IMF_LAT_BUCKETS && us > imf_lat_bounds_us[b])
            b++;
        add(&st->lat_buckets[e->cmd][b], 1);
        add(&st->lat_sum_us[e->cmd], us);
        e->used = false;
        release_if_empty(tp);
        return true;
    }
    if (t != NULL && t->untracked > 0) {
        /* One of the commands we could not track: assume it was that. */
        t->untracked--;
        release_if_empty(tp);
        return true;
    }
    add(&st->anomalies[IMF_ANOMALY_UNKNOWN_TAG], 1);
    return false;
}

bool imf_telemetry_response_literal(const struct imf_tracker *t, struct imf_telemetry_stats *st,
                                    uint64_t size)
{
    if (t == NULL)
        return false; /* nothing in flight asked for a range */
    uint64_t limit = 0;
    bool any_partial = false;
    for (unsigned i = 0; i < t->cap; i++) {
        const struct imf_tracked *e = &t->slots[i];
        if (!e->used || e->cmd != IMF_TCMD_FETCH)
            continue;
        if (e->fetch_whole || e->partial_max == 0)
            return false; /* a whole body may be any size */
        any_partial = true;
        if (e->partial_max > limit)
            limit = e->partial_max;
    }
    if (!any_partial || t->untracked > 0 || size <= limit)
        return false;
    add(&st->anomalies[IMF_ANOMALY_FETCH_OVERSIZE], 1);
    return true;
}

void imf_telemetry_free(struct imf_tracker **tp)
{
    free(*tp);
    *tp = NULL;
}
