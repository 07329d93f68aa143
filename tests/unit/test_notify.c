/* unit.notify: the sd_notify datagrams, received on sockets we bind. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "imapfront/notify.h"

/* What arrives on fd within a second, NUL-terminated in buf. */
static void receive(int fd, char *buf, size_t len)
{
    struct timeval tv = {1, 0};
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
    ssize_t n = recv(fd, buf, len - 1, 0);
    assert_true(n >= 0);
    buf[n] = '\0';
}

static void test_off_without_variable(void **state)
{
    (void)state;
    struct imf_notify n;
    unsetenv("NOTIFY_SOCKET");
    assert_int_equal(imf_notify_open(&n), 0);
    assert_false(imf_notify_enabled(&n));
    assert_int_equal(imf_notify_send(&n, "READY=1"), 0);
    imf_notify_close(&n);
    setenv("NOTIFY_SOCKET", "", 1);
    assert_int_equal(imf_notify_open(&n), 0);
    assert_false(imf_notify_enabled(&n));
}

static void test_malformed_variable(void **state)
{
    (void)state;
    struct imf_notify n;
    static const char *const bad[] = {"relative/path", "@", "x"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        setenv("NOTIFY_SOCKET", bad[i], 1);
        assert_int_equal(imf_notify_open(&n), -EINVAL);
        assert_false(imf_notify_enabled(&n));
    }
    char longer[200];
    memset(longer, 'a', sizeof(longer) - 1);
    longer[0] = '/';
    longer[sizeof(longer) - 1] = '\0';
    setenv("NOTIFY_SOCKET", longer, 1);
    assert_int_equal(imf_notify_open(&n), -EINVAL);
    unsetenv("NOTIFY_SOCKET");
}

static void test_path_socket(void **state)
{
    (void)state;
    char dir[] = "/tmp/imf-test-notify-XXXXXX";
    assert_non_null(mkdtemp(dir));
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/notify", dir);
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    setenv("NOTIFY_SOCKET", sa.sun_path, 1);

    struct imf_notify n;
    assert_int_equal(imf_notify_open(&n), 0);
    assert_true(imf_notify_enabled(&n));
    assert_int_equal(imf_notify_send(&n, "READY=1\nSTATUS=0 sessions open"), 0);
    char buf[256];
    receive(fd, buf, sizeof(buf));
    assert_string_equal(buf, "READY=1\nSTATUS=0 sessions open");
    imf_notify_close(&n);
    assert_false(imf_notify_enabled(&n));

    close(fd);
    unlink(sa.sun_path);
    rmdir(dir);
    unsetenv("NOTIFY_SOCKET");
}

static void test_abstract_socket(void **state)
{
    (void)state;
    char name[64];
    snprintf(name, sizeof(name), "@imf-test-notify-%ld", (long)getpid());
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(name);
    memcpy(sa.sun_path, name, len);
    sa.sun_path[0] = '\0';
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, offsetof(struct sockaddr_un, sun_path) + len),
                     0);
    setenv("NOTIFY_SOCKET", name, 1);

    struct imf_notify n;
    assert_int_equal(imf_notify_open(&n), 0);
    struct timespec before, after;
    clock_gettime(CLOCK_MONOTONIC, &before);
    char text[96];
    imf_notify_reloading_text(text, sizeof(text));
    clock_gettime(CLOCK_MONOTONIC, &after);
    assert_int_equal(imf_notify_send(&n, text), 0);
    char buf[256];
    receive(fd, buf, sizeof(buf));
    uint64_t usec = 0;
    assert_int_equal(sscanf(buf, "RELOADING=1\nMONOTONIC_USEC=%" SCNu64, &usec), 1);
    assert_true(usec >= (uint64_t)before.tv_sec * 1000000u + (uint64_t)before.tv_nsec / 1000u);
    assert_true(usec <= (uint64_t)after.tv_sec * 1000000u + (uint64_t)after.tv_nsec / 1000u);
    imf_notify_close(&n);
    close(fd);

    /* Nobody listens any more: an error code, not a crash or a block. */
    assert_int_equal(imf_notify_open(&n), 0);
    assert_true(imf_notify_send(&n, "STOPPING=1") < 0);
    imf_notify_close(&n);
    unsetenv("NOTIFY_SOCKET");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_off_without_variable),
        cmocka_unit_test(test_malformed_variable),
        cmocka_unit_test(test_path_socket),
        cmocka_unit_test(test_abstract_socket),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
