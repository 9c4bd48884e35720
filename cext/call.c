/*
 * call.c -- a client's wait for the daemon's reply, without Python.
 *
 * The Python version of this loop raised and caught an exception per
 * failed receive and crossed into the interpreter on every turn of the
 * spin; here one C call does the whole wait with the GIL released (cffi
 * releases it), so other threads of the client run meanwhile.
 */
/* clock_gettime and poll: POSIX, which -std=c11 leaves out. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <time.h>
#include "internal.h"

int64_t shm_now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * NS_PER_SEC + t.tv_nsec;
}

int shm_yield_core(void)
{
    int64_t before = shm_now_ns();
    sched_yield();
    return shm_now_ns() - before <= SHM_CONTENDED_NS;
}

int shm_spin_turn(int64_t until, int32_t *how)
{
    if (shm_now_ns() >= until) {
        *how = SHM_WAIT_SLEPT;
        return 0;
    }
    if (!shm_yield_core()) {
        *how = SHM_WAIT_CONTENDED;
        return 0;
    }
    return 1;
}

/* One receive; -EAGAIN when nothing is there yet. */
static int64_t receive(int fd, uint8_t *buf, uint64_t cap)
{
    ssize_t got = recv(fd, buf, cap, MSG_DONTWAIT);
    return got >= 0 ? (int64_t)got : -(int64_t)errno;
}

static int is_again(int64_t rc)
{
    return rc == -EAGAIN || rc == -EWOULDBLOCK;
}

/* Polls for up to spin_ns: the bytes, or -EAGAIN when the spin ended
 * (*how: SHM_WAIT_SLEPT or SHM_WAIT_CONTENDED). */
static int64_t spin(int fd, uint8_t *buf, uint64_t cap, int64_t spin_ns,
                    int32_t *how)
{
    int64_t until = shm_now_ns() + spin_ns;
    for (;;) {
        int64_t rc = receive(fd, buf, cap);
        if (!is_again(rc)) {
            *how = SHM_WAIT_WON;
            return rc;
        }
        if (!shm_spin_turn(until, how))
            return -EAGAIN;
    }
}

int64_t shm_wait_recv(int fd, uint8_t *buf, uint64_t cap, int64_t spin_ns,
                      int timeout_ms, int32_t *how)
{
    *how = SHM_WAIT_SLEPT_ONLY;
    if (spin_ns > 0) {
        int64_t rc = spin(fd, buf, cap, spin_ns, how);
        if (!is_again(rc))
            return rc;
    }
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int64_t deadline = shm_now_ns() + (int64_t)timeout_ms * NS_PER_MS;
    for (;;) {
        int64_t left = deadline - shm_now_ns();
        if (left <= 0)
            return -ETIMEDOUT;
        /* Rounded up: a poll never ends before the deadline. */
        int n = poll(&p, 1, (int)((left + NS_PER_MS - 1) / NS_PER_MS));
        if (n < 0)
            return -(int64_t)errno;         /* -EINTR: the caller's turn */
        if (n == 0)
            continue;                       /* re-checks the deadline */
        int64_t rc = receive(fd, buf, cap);
        if (!is_again(rc))
            return rc;
    }
}
