/* runas: can the [proxy] user read the files a reload re-reads?
 *
 * With user = set, imapfront binds and reads everything as root, then
 * drops to that user; SIGHUP re-reads the config file and every certificate
 * and key as that user. A file only root can read makes every reload fail,
 * so start and `-t` check in advance. The check evaluates permission bits
 * for the user's uid and groups (primary and supplementary, from
 * getgrouplist): the file needs the read bit and every directory on its
 * path the search bit. access(2) would check the real uid (root) instead.
 * POSIX ACLs and capabilities are not looked at. */
#ifndef IMAPFRONT_RUNAS_H
#define IMAPFRONT_RUNAS_H

#include <stddef.h>
#include <sys/types.h>

#include "imapfront/config.h"

#define IMF_RUNAS_GROUPS_MAX 256

struct imf_runas {
    char name[64];
    uid_t uid;
    gid_t groups[IMF_RUNAS_GROUPS_MAX]; /* the primary group first */
    size_t groups_len;
};

/* Fills out with user's uid and groups. Returns 0, -ENOENT when there is
 * no such user, or another negative errno. */
int imf_runas_lookup(const char *user, struct imf_runas *out);

/* Whether u may open path for reading (following symlinks): 0, -EACCES
 * when some permission bit forbids it, or the negative errno of a stat
 * that failed (-ENOENT, ...). uid 0 may read anything. */
int imf_runas_can_read(const struct imf_runas *u, const char *path);

/* Calls report(arg, path, error) for each file a reload re-reads (the
 * config file itself, [tls] and every [certificate.NAME] certificate and
 * private_key, the [route] map) that u cannot read. Returns how many it reported. */
size_t imf_runas_check_config(const struct imf_config *cfg, const struct imf_runas *u,
                              void (*report)(void *arg, const char *path, int error), void *arg);

#endif
