/* certwatch: notices when the certificate and key files of the config
 * change on disk, so that they are reloaded without a SIGHUP.
 *
 * Each file is watched (an in-place write) and so is its directory (a
 * rename into place, as certbot does, or the swap of the "..data" symlink
 * through which a Kubernetes Secret volume publishes its files). Events
 * come in bursts while a pair of files is being replaced: the callback
 * runs once the burst has settled (no event for IMF_CERTWATCH_SETTLE_MS),
 * and at most IMF_CERTWATCH_MAX_WAIT_MS after its first event even if the
 * files keep changing. Runs on one uv loop (the main thread's). The route
 * map (route.c) is watched the same way, through imf_certwatch_update_files. */
#ifndef IMAPFRONT_CERTWATCH_H
#define IMAPFRONT_CERTWATCH_H

#include <uv.h>

#include "imapfront/config.h"

#define IMF_CERTWATCH_SETTLE_MS   1000
#define IMF_CERTWATCH_MAX_WAIT_MS 10000

struct imf_certwatch;

/* Called on the loop's thread when watched files changed and settled. */
typedef void (*imf_certwatch_cb)(void *arg);

/* A watcher on loop with nothing watched yet. Returns 0 or a negative uv
 * error; *out_w is owned by the caller (imf_certwatch_free). */
int imf_certwatch_new(uv_loop_t *loop, imf_certwatch_cb cb, void *arg,
                      struct imf_certwatch **out_w);

/* Watches the files cfg names ([tls] and every [certificate.NAME]) and
 * their directories, instead of what was watched before (call again after
 * each reload: a file replaced by a rename is a new inode). A file or
 * directory that cannot be watched is logged and skipped. Returns the
 * number of watches started (files and directories, each counted once);
 * 0 means nothing is watched. cfg is borrowed for the call only. */
size_t imf_certwatch_update(struct imf_certwatch *w, const struct imf_config *cfg);

/* The same for any files: watches paths[0..paths_len) (NULL entries are
 * skipped) and their directories instead of what was watched before.
 * Borrowed for the call only. */
size_t imf_certwatch_update_files(struct imf_certwatch *w, const char *const *paths,
                                  size_t paths_len);

/* Log tag and what the files are called in logs; "tls" and "certificate
 * file" unless set. Both must outlive w (string literals). */
void imf_certwatch_set_label(struct imf_certwatch *w, const char *subsys, const char *what);

/* Stops everything; the memory goes once the loop has run the handles'
 * close callbacks. NULL is fine. */
void imf_certwatch_free(struct imf_certwatch *w);

#endif
