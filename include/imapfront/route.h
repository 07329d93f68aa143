/* route: which backend pool a user goes to ([route], issue 14).
 *
 * The map file holds one "USER POOL" pair per line, separated by spaces or
 * tabs; '#' starts a comment where a field would start; blank lines are
 * fine. USER is an exact name or a "*@domain" pattern. A lookup tries the
 * exact name, then "*@" plus the part after the last '@', then [route]
 * default. With ignore_case, ASCII letters match without regard to case
 * (other bytes always match exactly).
 *
 * A loaded map is an immutable, reference-counted snapshot. It holds every
 * name in one buffer and an open-addressing hash table (seeded per
 * snapshot, sized at load): 8 bytes per slot, the next power of two at or
 * above twice the entries, so 16 to 32 bytes per entry plus the name's
 * bytes. A lookup allocates nothing.
 *
 * The process's current map (imf_route_start/reload/current) is swapped
 * under a mutex held only to take a reference: safe with readers on any
 * thread. Errors read "FILE:LINE: reason". */
#ifndef IMAPFRONT_ROUTE_H
#define IMAPFRONT_ROUTE_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "imapfront/config.h"

#define IMF_ROUTE_USER_MAX    255u       /* bytes of a user name or "*@domain" */
#define IMF_ROUTE_POOL_MAX    63u        /* bytes of a pool name */
#define IMF_ROUTE_FILE_MAX    (1u << 30) /* bytes of a map file */
#define IMF_ROUTE_ENTRIES_MAX (1u << 24) /* entries of a map file */

/* How a lookup found its pool. */
enum imf_route_match {
    IMF_ROUTE_NONE,    /* not in the map and no default */
    IMF_ROUTE_USER,    /* the exact name */
    IMF_ROUTE_DOMAIN,  /* "*@domain" */
    IMF_ROUTE_DEFAULT, /* [route] default */
    IMF_ROUTE_MATCH_COUNT
};
extern const char *const imf_route_match_names[IMF_ROUTE_MATCH_COUNT];

/* What a map is loaded with. All borrowed for the call only. */
struct imf_route_params {
    const char *path;         /* the map file; NULL = no map (default only) */
    const char *default_pool; /* NULL = no default */
    bool ignore_case;
    const char *const *pools; /* the pool names the caller knows */
    size_t pools_len;
};

struct imf_route;

/* Reads and checks the map at p->path. On success returns 0 and a snapshot
 * with one reference in *out_route; on failure returns a negative errno
 * code, leaves *out_route untouched and writes "FILE:LINE: reason" (or
 * "FILE: reason") into err. */
int imf_route_load(const struct imf_route_params *p, struct imf_route **out_route, char *err,
                   size_t err_len);

/* The same for text[0..len) (copied); name stands for the file in errors. */
int imf_route_parse(const char *name, const char *text, size_t len,
                    const struct imf_route_params *p, struct imf_route **out_route, char *err,
                    size_t err_len);

/* The parameters [route] of cfg gives, with the caller's pools. */
void imf_route_params_from_config(const struct imf_config *cfg, const char *const *pools,
                                  size_t pools_len, struct imf_route_params *out_params);

/* Reference counting; the last unref frees. Safe across threads; NULL is
 * fine for unref. */
struct imf_route *imf_route_ref(struct imf_route *r);
void imf_route_unref(struct imf_route *r);

/* The pool for user[0..user_len) (any bytes), or NULL. The string lives
 * as long as r. *out_match (may be NULL) says which rule matched. */
const char *imf_route_lookup(const struct imf_route *r, const char *user, size_t user_len,
                             enum imf_route_match *out_match);

/* Whether an entry of r or its default names pool. */
bool imf_route_pool_used(const struct imf_route *r, const char *pool);

/* Whether sessions under cfg can reach pool: without routing only the pool
 * default does; with routing, a pool the map r (NULL: none loaded) or
 * [route] default names. */
bool imf_route_reaches(const struct imf_config *cfg, const struct imf_route *r, const char *pool);

/* Entries of the map (exact names and patterns). */
size_t imf_route_count(const struct imf_route *r);

/* Bytes the snapshot holds (names, table, pools). */
size_t imf_route_memory(const struct imf_route *r);

/* The file the map came from, or NULL (no map). */
const char *imf_route_path(const struct imf_route *r);

/* Routing is configured when [route] has a map or a default. */
bool imf_route_configured(const struct imf_config *cfg);

/* The process's current map. imf_route_start loads it (0, or a negative
 * code with the error in err: fatal at start) and watches the file on
 * loop (the main thread's), reloading it when it changes; a file that
 * fails keeps the old map and logs "FILE:LINE: reason". imf_route_reload
 * loads it again with a new config (SIGHUP): 0, or a negative code after
 * logging the error, the old map staying. Both log "route map FILE: N
 * entries" on success. Called on loop's thread only. */
int imf_route_start(uv_loop_t *loop, const struct imf_config *cfg, const char *const *pools,
                    size_t pools_len, char *err, size_t err_len);
int imf_route_reload(const struct imf_config *cfg, const char *const *pools, size_t pools_len);

/* A reference to the current map (imf_route_unref it), or NULL when
 * routing is not configured. Any thread. */
struct imf_route *imf_route_current(void);

/* Stops watching and drops the current map. */
void imf_route_stop(void);

#endif
