/* libFuzzer: the lobby of a login-first session in a mini session
 * (tests/unit/lobby_driver.h). The first byte chooses the listener
 * (STARTTLS offered, require_tls, TLS already up), the second a cut point;
 * the rest is what the client sends. Invariants, for any input:
 *   - the transcript (answers, logins handed on, STARTTLS, close) is the
 *     same fed whole, cut at the chosen point, and one byte at a time;
 *   - a login handed on has a user and a password of at most
 *     IMF_BC_CRED_MAX octets, and the lobby holds no byte of them after
 *     imf_lobby_login_done() (checked by the driver);
 *   - with require_tls and no TLS, no login is ever handed on (after
 *     STARTTLS the driver reads nothing more). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lobby_driver.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define INPUT_MAX 2048

static struct drv a, b, c;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2 || size > INPUT_MAX + 2)
        return 0;
    bool starttls = data[0] & 1, require_tls = data[0] & 2, tls = data[0] & 4;
    size_t len = size - 2, cut = data[1] % (len + 1);
    const uint8_t *in = data + 2;
    drv_init(&a, starttls, require_tls, tls);
    drv_init(&b, starttls, require_tls, tls);
    drv_init(&c, starttls, require_tls, tls);
    feed(&a, in, len);
    feed(&b, in, cut);
    feed(&b, in + cut, len - cut);
    for (size_t i = 0; i < len; i++)
        feed(&c, in + i, 1);
    if (a.out_len != b.out_len || memcmp(a.out, b.out, a.out_len) != 0 || a.out_len != c.out_len ||
        memcmp(a.out, c.out, a.out_len) != 0)
        abort();
    if (require_tls && !tls && a.logins != 0)
        abort();
    imf_lobby_cleanup(&a.lb);
    imf_lobby_cleanup(&b.lb);
    imf_lobby_cleanup(&c.lb);
    return 0;
}
