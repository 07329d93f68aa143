/* store: see include/imapfront/store.h. hiredis 0.14 has no timeouts of
 * its own on an async context, so a timer watches the connection: a
 * connect or a reply that takes longer than REPLY_TIMEOUT_MS drops it. */
#include "imapfront/store.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "imapfront/log.h"

#define REPLY_TIMEOUT_MS 1000
#define WATCH_MS         250
#define BACKOFF_MIN_MS   100
#define BACKOFF_MAX_MS   2000
#define OUTSTANDING_MAX  1000  /* replies awaited; past it the table counts alone */
#define REPLY_ARRAY_MAX  16    /* elements of any array the store may send us */
#define REPLY_STRING_MAX 65536 /* bytes of a string in a reply to a command */
/* ... and in a message on the channel: larger than any announcement, so
 * that a stray big one is read and ignored rather than costing the link. */
#define MESSAGE_STRING_MAX (2u << 20)
#define KEY_PREFIX         "imapfront:login:"
#define KEY_NAME_LEN       (sizeof(KEY_PREFIX) - 1 + 2 * IMF_THROTTLE_KEY_LEN)

/* One script does the three operations, so that a count, its expiry and
 * its announcement change together. KEYS: the records. ARGV: operation,
 * window, ban time (ms), channel, then each key's ban threshold. Replies
 * {count, ms left} per key. A key's expiry is set by its first failure
 * (the window) and lengthened to the ban time once it reaches its ban. */
static const char script[] =
    "local op, win, ban, ch = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]\n"
    "local out = {}\n"
    "for i, k in ipairs(KEYS) do\n"
    "  local n, ttl = 0, 0\n"
    "  if op == 'fail' then\n"
    "    n = redis.call('INCR', k)\n"
    "    if n < 1 then n = redis.call('INCRBY', k, 1 - n) end\n"
    "    ttl = redis.call('PTTL', k)\n"
    "    if ttl < 0 then ttl = win; redis.call('PEXPIRE', k, ttl) end\n"
    "    if n >= tonumber(ARGV[4 + i]) and ttl < ban then\n"
    "      ttl = ban; redis.call('PEXPIRE', k, ttl)\n"
    "    end\n"
    "    redis.call('PUBLISH', ch, k .. ' ' .. n .. ' ' .. ttl)\n"
    "  elseif op == 'clear' then\n"
    "    redis.call('DEL', k)\n"
    "    redis.call('PUBLISH', ch, k .. ' 0 0')\n"
    "  else\n"
    "    n = tonumber(redis.call('GET', k) or '0')\n"
    "    ttl = redis.call('PTTL', k)\n"
    "  end\n"
    "  out[i] = {n, ttl}\n"
    "end\n"
    "return out\n";

enum store_state {
    STORE_OFF,        /* no store configured */
    STORE_WAITING,    /* down: the timer will connect */
    STORE_CONNECTING, /* connections opened, not all ready */
    STORE_UP,
    STORE_STATE_COUNT
};

static const char *const state_names[STORE_STATE_COUNT] = {"off", "waiting", "connecting", "up"};
static_assert(sizeof(state_names) / sizeof(state_names[0]) == STORE_STATE_COUNT, "state names");

struct store_conn {
    redisAsyncContext *ac; /* NULL when closed; ac->data points to the store */
    bool ready;            /* connected (and, the subscriber, subscribed) */
    bool subscriber;       /* replies come unasked (messages) */
    uint64_t sent;         /* commands sent on ac */
    uint64_t replies;      /* replies begun on ac */
};

struct imf_store {
    uv_loop_t *loop;
    uv_timer_t timer; /* backoff while waiting; the watchdog otherwise */
    bool subscribe;
    bool closing;
    enum store_state state;
    struct store_conn cmd, sub;
    bool counted_down; /* counted in down_workers */
    bool counted_set;  /* counted in set_workers */
    uint64_t backoff_ms;
    uint64_t since_ms;    /* connect began, or the oldest awaited reply was sent */
    unsigned outstanding; /* replies awaited on cmd */
    char *target;         /* host/port/db/unix/password, to see a change */
    char *label;          /* the store as configured, for logs (no password) */
    char host[64];
    const char *unix_path; /* into label */
    uint16_t port;
    uint32_t db;
    char *password;
    char channel[48];
    struct imf_throttle_params params;
};

/* What /metrics shows, over all workers of the process. */
static _Atomic unsigned set_workers, down_workers;
static _Atomic uint64_t errors_total;
static _Atomic bool announced_down; /* "unreachable" logged, "again" not yet */
static _Atomic bool ever_up;

static void start_connect(struct imf_store *st);
static void on_timer(uv_timer_t *t);

/* The throttle's clock: monotonic milliseconds, alike in every worker. */
static uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000;
}

/* Every change of state goes through here. */
static void set_state(struct imf_store *st, enum store_state to)
{
    if (st->state != to)
        imf_debug("store", "%s: %s -> %s", st->label != NULL ? st->label : "-",
                  state_names[st->state], state_names[to]);
    st->state = to;
}

static void count_down(struct imf_store *st, bool down)
{
    if (st->counted_down == down)
        return;
    st->counted_down = down;
    if (down)
        atomic_fetch_add(&down_workers, 1);
    else
        atomic_fetch_sub(&down_workers, 1);
}

/* Closes a connection. hiredis calls back (with no reply) what was still
 * awaited; those callbacks see ac->data NULL and only free their own. */
static void conn_drop(struct store_conn *c)
{
    if (c->ac != NULL) {
        c->ac->data = NULL;
        redisAsyncFree(c->ac);
    }
    c->ac = NULL;
    c->ready = false;
}

/* Gives up on the connections: the table counts alone until a retry
 * (after the backoff) succeeds. reason is static text. Logged once while
 * the store stays unreachable, for the whole process. */
static void store_down(struct imf_store *st, const char *reason)
{
    conn_drop(&st->cmd);
    conn_drop(&st->sub);
    st->outstanding = 0;
    atomic_fetch_add(&errors_total, 1);
    count_down(st, true);
    if (!atomic_exchange(&announced_down, true))
        imf_log_kv(IMF_LOG_WARN, "store",
                   "login store unreachable: failed logins are counted by this process alone",
                   "store", st->label, "reason", reason, NULL);
    if (st->closing)
        return;
    set_state(st, STORE_WAITING);
    uv_timer_start(&st->timer, on_timer, st->backoff_ms, 0);
    st->backoff_ms = st->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : st->backoff_ms * 2;
}

static void maybe_up(struct imf_store *st)
{
    if (st->state != STORE_CONNECTING || !st->cmd.ready || (st->subscribe && !st->sub.ready))
        return;
    set_state(st, STORE_UP);
    st->backoff_ms = BACKOFF_MIN_MS;
    count_down(st, false);
    if (atomic_load(&down_workers) == 0 && atomic_exchange(&announced_down, false))
        imf_log_kv(IMF_LOG_INFO, "store", "login store reachable again: failed logins are shared",
                   "store", st->label, NULL);
    else if (!atomic_exchange(&ever_up, true))
        imf_log_kv(IMF_LOG_INFO, "store", "login store connected: failed logins are shared",
                   "store", st->label, NULL);
}

static void on_timer(uv_timer_t *t)
{
    struct imf_store *st = t->data;
    uint64_t now = uv_now(st->loop);
    switch (st->state) {
    case STORE_WAITING:
        start_connect(st);
        return;
    case STORE_CONNECTING:
        if (now - st->since_ms >= REPLY_TIMEOUT_MS) {
            store_down(st, "connect timed out");
            return;
        }
        break;
    case STORE_UP:
        if (st->outstanding > 0 && now - st->since_ms >= REPLY_TIMEOUT_MS) {
            store_down(st, "no reply in time");
            return;
        }
        break;
    default:
        return;
    }
    uv_timer_start(&st->timer, on_timer, WATCH_MS, 0);
}

static struct imf_store *store_of(const redisAsyncContext *ac)
{
    return ac->data;
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct imf_store *st = store_of(ac);
    if (st == NULL)
        return;
    struct store_conn *c = ac == st->cmd.ac ? &st->cmd : &st->sub;
    if (status != REDIS_OK) {
        ((redisAsyncContext *)ac)->data = NULL; /* hiredis frees it after this callback */
        c->ac = NULL;
        store_down(st, "connect failed");
        return;
    }
    /* Ready only when Redis answers: a stopped server's kernel still
     * completes the TCP handshake. */
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct imf_store *st = store_of(ac);
    if (st == NULL)
        return;
    ((redisAsyncContext *)ac)->data = NULL; /* freed by hiredis after this callback */
    if (ac == st->cmd.ac)
        st->cmd.ac = NULL;
    else
        st->sub.ac = NULL;
    store_down(st, "connection lost");
}

/* The command connection's first answer. */
static void on_pong(redisAsyncContext *ac, void *r, void *privdata)
{
    struct imf_store *st = store_of(ac);
    const redisReply *reply = r;
    if (st == NULL || reply == NULL || reply->type == REDIS_REPLY_ERROR)
        return; /* an error: AUTH or SELECT failed too, and said so */
    st->cmd.ready = true;
    maybe_up(st);
}

/* AUTH and SELECT: an error reply means the store cannot be used. */
static void on_setup_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    struct imf_store *st = store_of(ac);
    const redisReply *reply = r;
    if (st == NULL || reply == NULL)
        return;
    if (reply->type == REDIS_REPLY_ERROR)
        store_down(st, "AUTH or SELECT refused");
}

/* Reads digits at *p up to the byte end into *out, which must not exceed
 * max; advances *p past end. */
static bool parse_decimal(const char **p, char end, uint64_t max, uint64_t *out)
{
    const char *s = *p;
    uint64_t v = 0;
    if (*s < '0' || *s > '9')
        return false;
    for (; *s >= '0' && *s <= '9'; s++) {
        v = v * 10 + (uint64_t)(*s - '0');
        if (v > max)
            return false;
    }
    if (*s != end)
        return false;
    *p = s + (end != '\0');
    *out = v;
    return true;
}

/* Merges an announcement "KEYNAME COUNT TTL" from a replica (or this one). */
static void merge_announcement(struct imf_store *st, const char *text, size_t len)
{
    uint8_t key[IMF_THROTTLE_KEY_LEN];
    char buf[KEY_NAME_LEN + 48];
    if (len >= sizeof(buf) || len < KEY_NAME_LEN + 4)
        return;
    memcpy(buf, text, len);
    buf[len] = '\0';
    if (memcmp(buf, KEY_PREFIX, sizeof(KEY_PREFIX) - 1) != 0)
        return;
    const char *hex = buf + sizeof(KEY_PREFIX) - 1;
    for (size_t i = 0; i < IMF_THROTTLE_KEY_LEN; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1)
            return;
        key[i] = (uint8_t)v;
    }
    const char *p = buf + KEY_NAME_LEN;
    uint64_t count, ttl;
    if (*p++ != ' ' || !parse_decimal(&p, ' ', UINT32_MAX, &count) ||
        !parse_decimal(&p, '\0', UINT32_MAX, &ttl))
        return; /* not what a replica announces: a negative or huge count is not a count */
    imf_throttle_merge(&st->params, key, (uint32_t)count, ttl, now_ms());
}

static void on_message(redisAsyncContext *ac, void *r, void *privdata)
{
    struct imf_store *st = store_of(ac);
    const redisReply *reply = r;
    if (st == NULL || reply == NULL || reply->type != REDIS_REPLY_ARRAY || reply->elements < 3)
        return;
    const redisReply *kind = reply->element[0], *data = reply->element[2];
    if (kind->type != REDIS_REPLY_STRING)
        return;
    if (strcmp(kind->str, "subscribe") == 0) {
        st->sub.ready = true;
        maybe_up(st);
    } else if (strcmp(kind->str, "message") == 0 && data->type == REDIS_REPLY_STRING) {
        merge_announcement(st, data->str, data->len);
    }
}

/* What the store sends is read under limits, so that a server that is not
 * Redis (or a hostile one) cannot exhaust memory or trip hiredis: an array
 * or a string longer than any reply the proxy asks for, or a reply on the
 * command connection that no command asked for (hiredis 0.14 asserts on
 * it), makes the reader fail, and hiredis drops the connection. The
 * objects themselves are hiredis's own (its default functions, wrapped). */
static redisReplyObjectFunctions guarded;
static const redisReplyObjectFunctions *plain;
static pthread_once_t guarded_once = PTHREAD_ONCE_INIT;

static bool reply_allowed(const redisReadTask *task)
{
    struct store_conn *c = task->privdata;
    if (task->parent != NULL || c == NULL)
        return true;
    c->replies++;
    return c->subscriber || c->replies <= c->sent;
}

static void *guard_string(const redisReadTask *task, char *str, size_t len)
{
    const struct store_conn *c = task->privdata;
    size_t max = c != NULL && c->subscriber ? MESSAGE_STRING_MAX : REPLY_STRING_MAX;
    if (len > max || !reply_allowed(task))
        return NULL;
    return plain->createString(task, str, len);
}

static void *guard_array(const redisReadTask *task, int elements)
{
    if (elements > REPLY_ARRAY_MAX || !reply_allowed(task))
        return NULL;
    return plain->createArray(task, elements);
}

static void *guard_integer(const redisReadTask *task, long long value)
{
    return reply_allowed(task) ? plain->createInteger(task, value) : NULL;
}

static void *guard_nil(const redisReadTask *task)
{
    return reply_allowed(task) ? plain->createNil(task) : NULL;
}

static void guard_init(void)
{
    redisReader *r = redisReaderCreate();
    if (r == NULL)
        return;
    static redisReplyObjectFunctions copy;
    copy = *r->fn;
    plain = &copy;
    redisReaderFree(r);
    guarded = (redisReplyObjectFunctions){.createString = guard_string,
                                          .createArray = guard_array,
                                          .createInteger = guard_integer,
                                          .createNil = guard_nil,
                                          .freeObject = copy.freeObject};
}

/* Puts c's reader under the limits; false when it cannot be. */
static bool guard_reader(struct store_conn *c)
{
    pthread_once(&guarded_once, guard_init);
    if (plain == NULL)
        return false;
    redisReader *r = c->ac->c.reader;
    r->fn = &guarded;
    r->privdata = c;
    return true;
}

/* Sends a command on c, counted so that its reply is expected. */
static int send_command(struct store_conn *c, redisCallbackFn *fn, void *privdata, const char *fmt,
                        ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = redisvAsyncCommand(c->ac, fn, privdata, fmt, ap);
    va_end(ap);
    if (rc == REDIS_OK)
        c->sent++;
    return rc;
}

static struct store_conn *conn_open(struct imf_store *st, struct store_conn *c)
{
    redisAsyncContext *ac = st->unix_path != NULL ? redisAsyncConnectUnix(st->unix_path)
                                                  : redisAsyncConnect(st->host, st->port);
    if (ac == NULL)
        return NULL;
    if (ac->err != 0 || redisLibuvAttach(ac, st->loop) != REDIS_OK) {
        redisAsyncFree(ac);
        return NULL;
    }
    ac->data = st;
    c->ac = ac;
    c->ready = false;
    c->subscriber = c == &st->sub;
    c->sent = c->replies = 0;
    if (!guard_reader(c)) {
        c->ac = NULL;
        ac->data = NULL;
        redisAsyncFree(ac);
        return NULL;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    if (st->password != NULL)
        send_command(c, on_setup_reply, NULL, "AUTH %s", st->password);
    return c;
}

static void start_connect(struct imf_store *st)
{
    set_state(st, STORE_CONNECTING);
    st->since_ms = uv_now(st->loop);
    st->outstanding = 0;
    if (conn_open(st, &st->cmd) == NULL || (st->subscribe && conn_open(st, &st->sub) == NULL)) {
        store_down(st, "cannot open a connection");
        return;
    }
    if (st->db != 0)
        send_command(&st->cmd, on_setup_reply, NULL, "SELECT %u", (unsigned)st->db);
    send_command(&st->cmd, on_pong, NULL, "PING");
    if (st->subscribe)
        send_command(&st->sub, on_message, NULL, "SUBSCRIBE %s", st->channel);
    uv_timer_start(&st->timer, on_timer, WATCH_MS, 0);
}

struct imf_store *imf_store_new(uv_loop_t *loop, bool subscribe)
{
    struct imf_store *st = calloc(1, sizeof(*st));
    if (st == NULL)
        return NULL;
    st->loop = loop;
    st->subscribe = subscribe;
    st->backoff_ms = BACKOFF_MIN_MS;
    uv_timer_init(loop, &st->timer);
    st->timer.data = st;
    return st;
}

static void forget_target(struct imf_store *st)
{
    free(st->target);
    free(st->label);
    free(st->password);
    st->target = st->label = st->password = NULL;
    st->unix_path = NULL;
}

void imf_store_configure(struct imf_store *st, const struct imf_config *cfg)
{
    if (st == NULL)
        return;
    imf_throttle_params_from(cfg, &st->params);
    char target[1200] = "";
    if (cfg->login_store != NULL)
        snprintf(target, sizeof(target), "%s|%s|%u|%u|%s", cfg->login_store, cfg->login_store_host,
                 (unsigned)cfg->login_store_port, (unsigned)cfg->login_store_db,
                 cfg->login_store_password != NULL ? cfg->login_store_password : "");
    if ((st->target == NULL && target[0] == '\0') ||
        (st->target != NULL && strcmp(st->target, target) == 0))
        return;
    bool had = st->target != NULL;
    conn_drop(&st->cmd);
    conn_drop(&st->sub);
    uv_timer_stop(&st->timer);
    forget_target(st);
    if (target[0] == '\0') {
        set_state(st, STORE_OFF);
        count_down(st, false);
        if (st->counted_set)
            atomic_fetch_sub(&set_workers, 1);
        st->counted_set = false;
        return;
    }
    st->target = strdup(target);
    st->label = strdup(cfg->login_store);
    st->password = cfg->login_store_password != NULL ? strdup(cfg->login_store_password) : NULL;
    if (st->target == NULL || st->label == NULL ||
        (cfg->login_store_password != NULL && st->password == NULL)) {
        forget_target(st);
        set_state(st, STORE_OFF);
        imf_error("store", "out of memory: the login store stays off in this worker");
        return;
    }
    if (cfg->login_store_unix != NULL)
        st->unix_path = st->label + (cfg->login_store_unix - cfg->login_store);
    snprintf(st->host, sizeof(st->host), "%s", cfg->login_store_host);
    st->port = cfg->login_store_port;
    st->db = cfg->login_store_db;
    snprintf(st->channel, sizeof(st->channel), "imapfront:login:%u", (unsigned)st->db);
    if (!st->counted_set)
        atomic_fetch_add(&set_workers, 1);
    st->counted_set = true;
    count_down(st, true); /* until connected */
    st->backoff_ms = BACKOFF_MIN_MS;
    set_state(st, STORE_WAITING);
    if (had)
        imf_info("store", "login store changed: reconnecting to %s", st->label);
    /* Connected from the loop, so that a worker not yet running only
     * arms a timer here. */
    uv_timer_start(&st->timer, on_timer, 0, 0);
}

/* What a script's reply says of each key, merged into the table. */
struct call {
    int n;
    bool merge;
    uint8_t keys[3][IMF_THROTTLE_KEY_LEN];
};

static void on_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    struct call *call = privdata;
    struct imf_store *st = store_of(ac);
    const redisReply *reply = r;
    if (st != NULL && reply != NULL) {
        if (st->outstanding > 0)
            st->outstanding--;
        st->since_ms = uv_now(st->loop); /* the next awaited reply is younger */
        if (reply->type == REDIS_REPLY_ERROR) {
            atomic_fetch_add(&errors_total, 1);
            imf_debug("store", "script refused: %s", reply->str);
        } else if (call->merge && reply->type == REDIS_REPLY_ARRAY &&
                   reply->elements == (size_t)call->n) {
            uint64_t now = now_ms();
            for (int i = 0; i < call->n; i++) {
                const redisReply *e = reply->element[i];
                if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
                    e->element[0]->type != REDIS_REPLY_INTEGER ||
                    e->element[1]->type != REDIS_REPLY_INTEGER)
                    continue;
                long long count = e->element[0]->integer, ttl = e->element[1]->integer;
                if (count > 0 && ttl > 0)
                    imf_throttle_merge(&st->params, call->keys[i],
                                       count > UINT32_MAX ? UINT32_MAX : (uint32_t)count,
                                       (uint64_t)ttl, now);
            }
        }
    }
    free(call);
}

static void run(struct imf_store *st, const char *op, const uint8_t (*keys)[IMF_THROTTLE_KEY_LEN],
                int n, bool merge)
{
    if (st == NULL || st->state != STORE_UP || n <= 0 || n > 3 ||
        st->outstanding >= OUTSTANDING_MAX)
        return;
    struct call *call = malloc(sizeof(*call));
    if (call == NULL)
        return;
    call->n = n;
    call->merge = merge;
    memcpy(call->keys, keys, sizeof(keys[0]) * (size_t)n);
    char names[3][KEY_NAME_LEN + 1], nums[3 + 3][24];
    const char *argv[2 + 3 + 4 + 3];
    int argc = 0;
    argv[argc++] = "EVAL";
    argv[argc++] = script;
    snprintf(nums[0], sizeof(nums[0]), "%d", n);
    argv[argc++] = nums[0];
    for (int i = 0; i < n; i++) {
        int len = snprintf(names[i], sizeof(names[i]), "%s", KEY_PREFIX);
        for (size_t k = 0; k < IMF_THROTTLE_KEY_LEN; k++)
            len += snprintf(names[i] + len, sizeof(names[i]) - (size_t)len, "%02x", keys[i][k]);
        argv[argc++] = names[i];
    }
    argv[argc++] = op;
    snprintf(nums[1], sizeof(nums[1]), "%" PRIu64, st->params.window_ms);
    argv[argc++] = nums[1];
    snprintf(nums[2], sizeof(nums[2]), "%" PRIu64, st->params.ban_ms);
    argv[argc++] = nums[2];
    argv[argc++] = st->channel;
    for (int i = 0; i < n; i++) {
        snprintf(nums[3 + i], sizeof(nums[3 + i]), "%" PRIu32,
                 imf_throttle_ban_threshold(&st->params, keys[i]));
        argv[argc++] = nums[3 + i];
    }
    if (redisAsyncCommandArgv(st->cmd.ac, on_reply, call, argc, argv, NULL) != REDIS_OK) {
        free(call);
        return;
    }
    st->cmd.sent++;
    if (st->outstanding++ == 0)
        st->since_ms = uv_now(st->loop);
}

void imf_store_read(struct imf_store *st, const uint8_t (*keys)[IMF_THROTTLE_KEY_LEN], int n)
{
    run(st, "read", keys, n, true);
}

void imf_store_failed(struct imf_store *st, const uint8_t (*keys)[IMF_THROTTLE_KEY_LEN], int n)
{
    run(st, "fail", keys, n, true);
}

void imf_store_cleared(struct imf_store *st, const uint8_t (*keys)[IMF_THROTTLE_KEY_LEN], int n)
{
    run(st, "clear", keys, n, false);
}

static void on_timer_closed(uv_handle_t *h)
{
    struct imf_store *st = h->data;
    forget_target(st);
    free(st);
}

void imf_store_close(struct imf_store *st)
{
    if (st == NULL || st->closing)
        return;
    st->closing = true;
    conn_drop(&st->cmd);
    conn_drop(&st->sub);
    count_down(st, false);
    if (st->counted_set)
        atomic_fetch_sub(&set_workers, 1);
    st->counted_set = false;
    uv_close((uv_handle_t *)&st->timer, on_timer_closed);
}

void imf_store_stats(bool *out_configured, bool *out_up, uint64_t *out_errors)
{
    *out_configured = atomic_load(&set_workers) > 0;
    *out_up = *out_configured && atomic_load(&down_workers) == 0;
    *out_errors = atomic_load(&errors_total);
}
