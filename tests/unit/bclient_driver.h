/* bclient_driver.h: runs one backend conversation (src/bclient.c) against a
 * server's whole output, delivered in chunks, for unit.bclient and
 * fuzz_bclient. No sockets: the server's bytes are all known up front (an
 * "eager" server that answers before it reads), and what the client sends
 * is collected.
 *
 * After every imf_bc_feed() the driver takes the output (as a session
 * would write it), records each result, and at each result other than
 * NONE performs the scenario's next action (a login or a command). The
 * record of a run -- results, their texts, the bytes sent -- must not
 * depend on where the server's output was cut.
 *
 * Header-only (static functions) so that the test and the harness share it.
 * Memory failures abort: these are tests. */
#ifndef IMAPFRONT_TESTS_BCLIENT_DRIVER_H
#define IMAPFRONT_TESTS_BCLIENT_DRIVER_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imapfront/bclient.h"

enum bd_act_kind {
    BD_NOTHING, /* leave the conversation as it is */
    BD_LOGIN,
    BD_COMMAND,
};

/* What the client does at a result (the i-th result other than NONE). */
struct bd_act {
    enum bd_act_kind kind;
    const char *a; /* user, or command name */
    size_t a_len;  /* user length (0: strlen) */
    const char *b; /* password, or command argument (may be NULL) */
    size_t b_len;  /* password length (0: strlen, when b is not NULL) */
};

#define BD_MAX_RESULTS 32
#define BD_TEXT        4096

struct bd_run {
    char results[BD_TEXT]; /* "ready,ok(text),no(text),..." */
    size_t results_len;
    uint8_t *sent; /* everything the client sent */
    size_t sent_len, sent_cap;
    unsigned count;            /* results other than NONE */
    int rc[BD_MAX_RESULTS];    /* what each action returned */
    size_t at[BD_MAX_RESULTS]; /* sent_len when each result came */
    enum imf_bc_result last;   /* the last result other than NONE */
    bool secret_left;          /* a check found the password in bc when it had no use for it */
};

static void bd_sent_add(struct bd_run *r, const uint8_t *p, size_t n)
{
    if (n == 0)
        return;
    if (n > r->sent_cap - r->sent_len) {
        size_t cap = r->sent_cap != 0 ? r->sent_cap : 256;
        while (cap - r->sent_len < n)
            cap *= 2;
        uint8_t *np = realloc(r->sent, cap);
        if (np == NULL)
            abort();
        r->sent = np;
        r->sent_cap = cap;
    }
    memcpy(r->sent + r->sent_len, p, n);
    r->sent_len += n;
}

static void bd_note(struct bd_run *r, const char *s)
{
    size_t n = strlen(s);
    if (n > sizeof(r->results) - 1 - r->results_len)
        n = sizeof(r->results) - 1 - r->results_len;
    memcpy(r->results + r->results_len, s, n);
    r->results_len += n;
    r->results[r->results_len] = '\0';
}

/* Takes the conversation's output, as a session writes it. */
static void bd_take(struct imf_bc *bc, struct bd_run *r)
{
    const uint8_t *p;
    size_t n = imf_bc_output(bc, &p);
    bd_sent_add(r, p, n);
    imf_bc_consumed(bc, n);
}

/* True when needle (n bytes, n > 0) occurs anywhere in the struct. */
static bool bd_struct_holds(const struct imf_bc *bc, const void *needle, size_t n)
{
    return n > 0 && memmem(bc, sizeof(*bc), needle, n) != NULL;
}

/* Nothing is owed to the server (no piece waits for a "+", no login for a
 * CAPABILITY answer) and the output is taken: the secret must be gone. */
static void bd_check_secret(const struct imf_bc *bc, struct bd_run *r, const char *secret)
{
    if (secret != NULL && bc->seg_next == bc->seg_count && !bc->login_queued &&
        bd_struct_holds(bc, secret, strlen(secret)))
        r->secret_left = true;
}

static void bd_on_result(struct imf_bc *bc, struct bd_run *r, enum imf_bc_result res,
                         const struct bd_act *acts, size_t nacts, const char *secret)
{
    char note[IMF_BC_TEXT + 64];
    const char *detail = res == IMF_BC_ERROR ? imf_bc_error(bc) : imf_bc_text(bc);
    snprintf(note, sizeof(note), "%s%s(%s)", r->count > 0 ? "," : "", imf_bc_result_names[res],
             res == IMF_BC_READY ? "" : detail);
    bd_note(r, note);
    r->last = res;
    bd_check_secret(bc, r, secret);
    if (r->count < BD_MAX_RESULTS)
        r->at[r->count] = r->sent_len;
    if (r->count < nacts && r->count < BD_MAX_RESULTS) {
        const struct bd_act *a = &acts[r->count];
        int rc = 0;
        if (a->kind == BD_LOGIN)
            rc = imf_bc_login(bc, a->a, a->a_len != 0 ? a->a_len : strlen(a->a), a->b,
                              a->b_len != 0 ? a->b_len : strlen(a->b));
        else if (a->kind == BD_COMMAND)
            rc = imf_bc_command(bc, a->a, a->b);
        r->rc[r->count] = rc;
    }
    r->count++;
    bd_take(bc, r);
    bd_check_secret(bc, r, secret);
}

/* Runs the conversation over s[0 .. n) cut before each offset in cuts
 * (ascending, each < n); cuts may be NULL with ncuts 0. bc is initialised
 * here with tag prefix "imf"; the caller may inspect it afterwards. secret,
 * when not NULL, is the password to look for in the struct. */
static void bd_run(struct imf_bc *bc, struct bd_run *r, const uint8_t *s, size_t n,
                   const size_t *cuts, size_t ncuts, const struct bd_act *acts, size_t nacts,
                   const char *secret)
{
    memset(r, 0, sizeof(*r));
    imf_bc_init(bc, "imf");
    size_t start = 0;
    for (size_t c = 0; c <= ncuts; c++) {
        size_t end = c < ncuts ? cuts[c] : n;
        if (end < start)
            end = start;
        /* Bounded: each pass consumes bytes or reports a result, and a
         * conversation reports at most one result per response line. */
        for (size_t guard = 0; guard < 2 * (end - start) + 8; guard++) {
            size_t used = 0;
            enum imf_bc_result res = imf_bc_feed(bc, s + start, end - start, &used);
            start += used;
            bd_take(bc, r);
            bd_check_secret(bc, r, secret);
            if (res == IMF_BC_NONE)
                break;
            bd_on_result(bc, r, res, acts, nacts, secret);
            if (res == IMF_BC_ERROR)
                return;
        }
    }
}

static void bd_free(struct bd_run *r)
{
    free(r->sent);
    memset(r, 0, sizeof(*r));
}

#endif
