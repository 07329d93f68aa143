/* runas: see include/imapfront/runas.h. */
#include "imapfront/runas.h"

#include <errno.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int imf_runas_lookup(const char *user, struct imf_runas *out)
{
    errno = 0;
    struct passwd *pw = getpwnam(user);
    if (pw == NULL)
        return errno != 0 ? -errno : -ENOENT;
    memset(out, 0, sizeof(*out));
    snprintf(out->name, sizeof(out->name), "%s", pw->pw_name);
    out->uid = pw->pw_uid;
    int n = IMF_RUNAS_GROUPS_MAX;
    if (getgrouplist(pw->pw_name, pw->pw_gid, out->groups, &n) < 0) {
        /* More groups than we keep: the first ones still count, and a
         * file readable only through a later one is reported (wrongly)
         * rather than missed. */
        n = IMF_RUNAS_GROUPS_MAX;
    }
    out->groups_len = (size_t)n;
    if (out->groups_len == 0) {
        out->groups[0] = pw->pw_gid;
        out->groups_len = 1;
    }
    return 0;
}

/* The permission class of st that applies to u: owner, else group (the
 * file's group among u's groups), else other; as the kernel does, the
 * first class that matches decides even when a later one would allow. */
static bool allowed(const struct imf_runas *u, const struct stat *st, mode_t owner_bit)
{
    if (st->st_uid == u->uid)
        return (st->st_mode & owner_bit) != 0;
    for (size_t i = 0; i < u->groups_len; i++)
        if (u->groups[i] == st->st_gid)
            return (st->st_mode & (owner_bit >> 3)) != 0;
    return (st->st_mode & (owner_bit >> 6)) != 0;
}

/* Every directory on path (as written, relative ones from the current
 * directory) must be searchable, the file itself readable. */
static int walk(const struct imf_runas *u, const char *path)
{
    char buf[PATH_MAX];
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof(buf))
        return -ENAMETOOLONG;
    memcpy(buf, path, len + 1);
    struct stat st;
    if (buf[0] != '/') {
        if (stat(".", &st) != 0)
            return -errno;
        if (!allowed(u, &st, S_IXUSR))
            return -EACCES;
    }
    for (size_t i = 1; i < len; i++) {
        if (buf[i] != '/')
            continue;
        buf[i] = '\0';
        int rc = stat(buf, &st);
        buf[i] = '/';
        if (rc != 0)
            return -errno;
        if (!allowed(u, &st, S_IXUSR))
            return -EACCES;
    }
    if (stat(buf, &st) != 0)
        return -errno;
    return allowed(u, &st, S_IRUSR) ? 0 : -EACCES;
}

int imf_runas_can_read(const struct imf_runas *u, const char *path)
{
    if (u->uid == 0)
        return 0;
    int rc = walk(u, path);
    if (rc != 0)
        return rc;
    /* A symlink on the way leads to other directories: their search bits
     * count too. */
    char *real = realpath(path, NULL);
    if (real == NULL)
        return -errno;
    rc = walk(u, real);
    free(real);
    return rc;
}

static size_t check_one(const struct imf_runas *u, const char *path,
                        void (*report)(void *, const char *, int), void *arg)
{
    if (path == NULL || path[0] == '\0')
        return 0;
    int rc = imf_runas_can_read(u, path);
    if (rc == 0)
        return 0;
    report(arg, path, rc);
    return 1;
}

size_t imf_runas_check_config(const struct imf_config *cfg, const struct imf_runas *u,
                              void (*report)(void *arg, const char *path, int error), void *arg)
{
    size_t n = check_one(u, cfg->path, report, arg);
    n += check_one(u, cfg->certificate, report, arg);
    n += check_one(u, cfg->private_key, report, arg);
    for (size_t i = 0; i < cfg->certs_len; i++) {
        n += check_one(u, cfg->certs[i].certificate, report, arg);
        n += check_one(u, cfg->certs[i].private_key, report, arg);
    }
    n += check_one(u, cfg->route_map, report, arg);
    return n;
}
