/* certwatch: see include/imapfront/certwatch.h. */
#include "imapfront/certwatch.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "imapfront/log.h"

/* One uv_fs_event: a file, or a directory with the entry names that
 * matter in it (NUL-separated in names, names_len bytes). */
struct watch {
    uv_fs_event_t handle;
    struct imf_certwatch *owner;
    struct watch *next;
    bool is_dir;
    char *path;
    char *names;
    size_t names_len;
};

struct imf_certwatch {
    uv_loop_t *loop;
    imf_certwatch_cb cb;
    void *arg;
    uv_timer_t settle;
    struct watch *watches;
    unsigned open_handles; /* watches and the timer not yet closed */
    bool pending;          /* an event seen, the callback not yet run */
    uint64_t first_ms;     /* loop time of the pending burst's first event */
    bool freeing;
    const char *subsys; /* log tag ("tls") */
    const char *what;   /* what the files are, for logs ("certificate file") */
};

static void release(struct imf_certwatch *w)
{
    if (--w->open_handles == 0 && w->freeing)
        free(w);
}

static void on_watch_closed(uv_handle_t *h)
{
    struct watch *wa = h->data;
    struct imf_certwatch *w = wa->owner;
    free(wa->path);
    free(wa->names);
    free(wa);
    release(w);
}

static void on_timer_closed(uv_handle_t *h)
{
    release(h->data);
}

static void on_settled(uv_timer_t *t)
{
    struct imf_certwatch *w = t->data;
    w->pending = false;
    w->cb(w->arg);
}

/* Does an event on entry name of directory watch wa concern us? A NULL
 * name (the kernel did not say) does; so do the names of the files and
 * Kubernetes' "..data" / "..2024_..." entries. */
static bool interesting(const struct watch *wa, const char *name)
{
    if (!wa->is_dir || name == NULL)
        return true;
    if (strncmp(name, "..", 2) == 0)
        return true;
    for (const char *p = wa->names; p < wa->names + wa->names_len; p += strlen(p) + 1)
        if (strcmp(p, name) == 0)
            return true;
    return false;
}

static void on_event(uv_fs_event_t *h, const char *name, int events, int status)
{
    struct watch *wa = h->data;
    struct imf_certwatch *w = wa->owner;
    (void)events;
    if (status < 0) {
        imf_warn(w->subsys, "watching %s failed: %s", wa->path, uv_strerror(status));
        return;
    }
    if (w->freeing || !interesting(wa, name))
        return;
    uint64_t now = uv_now(w->loop);
    if (!w->pending) {
        w->pending = true;
        w->first_ms = now;
        imf_info(w->subsys, "%s changed: %s%s%s; reloading once it settles", w->what, wa->path,
                 wa->is_dir && name != NULL ? "/" : "", wa->is_dir && name != NULL ? name : "");
    }
    /* Wait for quiet, but not for ever: a file rewritten every second
     * would otherwise never be loaded. */
    uint64_t deadline = w->first_ms + IMF_CERTWATCH_MAX_WAIT_MS;
    uint64_t delay = now >= deadline ? 0 : deadline - now;
    if (delay > IMF_CERTWATCH_SETTLE_MS)
        delay = IMF_CERTWATCH_SETTLE_MS;
    uv_timer_start(&w->settle, on_settled, delay, 0);
}

int imf_certwatch_new(uv_loop_t *loop, imf_certwatch_cb cb, void *arg, struct imf_certwatch **out_w)
{
    struct imf_certwatch *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return UV_ENOMEM;
    w->loop = loop;
    w->cb = cb;
    w->arg = arg;
    w->subsys = "tls";
    w->what = "certificate file";
    int rc = uv_timer_init(loop, &w->settle);
    if (rc != 0) {
        free(w);
        return rc;
    }
    w->settle.data = w;
    w->open_handles = 1;
    *out_w = w;
    return 0;
}

static void close_watches(struct imf_certwatch *w)
{
    struct watch *wa = w->watches;
    w->watches = NULL;
    while (wa != NULL) {
        struct watch *next = wa->next;
        uv_close((uv_handle_t *)&wa->handle, on_watch_closed);
        wa = next;
    }
}

/* The directory part of path ("." for a bare name). malloc'd. */
static char *dir_of(const char *path, const char **out_base)
{
    const char *slash = strrchr(path, '/');
    *out_base = slash != NULL ? slash + 1 : path;
    if (slash == NULL)
        return strdup(".");
    if (slash == path)
        return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

static struct watch *find(struct imf_certwatch *w, const char *path, bool is_dir)
{
    for (struct watch *wa = w->watches; wa != NULL; wa = wa->next)
        if (wa->is_dir == is_dir && strcmp(wa->path, path) == 0)
            return wa;
    return NULL;
}

/* Adds (or finds) the watch of path; for a directory adds name to its
 * names. Returns 1 when a watch was started, 0 when one was there, -1 on
 * failure (logged). */
static int add(struct imf_certwatch *w, const char *path, bool is_dir, const char *name)
{
    int started = 0;
    struct watch *wa = find(w, path, is_dir);
    if (wa == NULL) {
        wa = calloc(1, sizeof(*wa));
        if (wa == NULL || (wa->path = strdup(path)) == NULL) {
            free(wa);
            imf_warn(w->subsys, "cannot watch %s: out of memory", path);
            return -1;
        }
        wa->owner = w;
        wa->is_dir = is_dir;
        int rc = uv_fs_event_init(w->loop, &wa->handle);
        if (rc == 0) {
            wa->handle.data = wa;
            w->open_handles++;
            rc = uv_fs_event_start(&wa->handle, on_event, path, 0);
            if (rc != 0) {
                imf_warn(w->subsys, "cannot watch %s for changes: %s", path, uv_strerror(rc));
                uv_close((uv_handle_t *)&wa->handle, on_watch_closed);
                return -1;
            }
        } else {
            imf_warn(w->subsys, "cannot watch %s: %s", path, uv_strerror(rc));
            free(wa->path);
            free(wa);
            return -1;
        }
        wa->next = w->watches;
        w->watches = wa;
        started = 1;
    }
    if (name != NULL) {
        size_t n = strlen(name) + 1;
        char *grown = realloc(wa->names, wa->names_len + n);
        if (grown == NULL)
            return -1;
        memcpy(grown + wa->names_len, name, n);
        wa->names = grown;
        wa->names_len += n;
    }
    return started;
}

void imf_certwatch_set_label(struct imf_certwatch *w, const char *subsys, const char *what)
{
    w->subsys = subsys;
    w->what = what;
}

size_t imf_certwatch_update_files(struct imf_certwatch *w, const char *const *paths,
                                  size_t paths_len)
{
    close_watches(w);
    size_t started = 0;
    for (size_t i = 0; i < paths_len; i++) {
        const char *path = paths[i];
        if (path == NULL)
            continue;
        const char *base;
        char *dir = dir_of(path, &base);
        if (dir == NULL)
            continue;
        if (add(w, path, false, NULL) > 0)
            started++;
        if (add(w, dir, true, base) > 0)
            started++;
        free(dir);
    }
    return started;
}

size_t imf_certwatch_update(struct imf_certwatch *w, const struct imf_config *cfg)
{
    size_t files_len = 2 + 2 * cfg->certs_len;
    const char **paths = calloc(files_len, sizeof(*paths));
    if (paths == NULL) {
        imf_warn(w->subsys, "cannot watch the %ss: out of memory", w->what);
        close_watches(w);
        return 0;
    }
    paths[0] = cfg->certificate;
    paths[1] = cfg->private_key;
    for (size_t c = 0; c < cfg->certs_len; c++) {
        paths[2 + 2 * c] = cfg->certs[c].certificate;
        paths[3 + 2 * c] = cfg->certs[c].private_key;
    }
    size_t started = imf_certwatch_update_files(w, paths, files_len);
    free(paths);
    return started;
}

void imf_certwatch_free(struct imf_certwatch *w)
{
    if (w == NULL)
        return;
    w->freeing = true;
    close_watches(w);
    uv_close((uv_handle_t *)&w->settle, on_timer_closed);
}
