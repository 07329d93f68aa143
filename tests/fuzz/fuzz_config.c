/* libFuzzer: the configuration parser on arbitrary INI text. Invariants:
 * success or an error message of the form "NAME:LINE: ..." / "NAME: ...";
 * on success the snapshot is self-consistent (at least one listener, one
 * server, limits within their documented bounds); nothing leaks (ASan's
 * leak checker runs at exit). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "imapfront/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 8192)
        return 0;
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';
    struct imf_config *cfg = NULL;
    char err[512];
    err[0] = '\0';
    int rc = imf_config_parse("f.ini", text, &cfg, err, sizeof(err));
    if (rc == 0) {
        if (cfg == NULL || cfg->listeners_len == 0 ||
            imf_config_pool(cfg, IMF_POOL_DEFAULT) == NULL || cfg->buffer_limit < 16 * 1024 ||
            cfg->max_line_length > cfg->buffer_limit || cfg->certificate == NULL)
            abort();
        /* Every pool has servers, within bounds. */
        for (size_t p = 0; p < cfg->pools_len; p++)
            if (cfg->pools[p].servers_len == 0 || cfg->pools[p].servers_len > 64)
                abort();
        imf_config_unref(cfg);
    } else {
        if (cfg != NULL || strncmp(err, "f.ini", 5) != 0 || (err[5] != ':'))
            abort();
    }
    free(text);
    return 0;
}
