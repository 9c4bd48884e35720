/*
 * wait.c -- waiting without Python: the clock, the spin policy (how long
 * a waiter polls before it sleeps; see struct shm_spin), and a client's
 * wait for the daemon's reply on its socket.
 *
 * The socket wait is one C call, with the GIL released (cffi releases
 * it), so other threads of the client run meanwhile; and a turn of its
 * spin costs a receive and a yield, where in Python each turn would cross
 * into the interpreter and raise an exception for the receive that found
 * nothing. The policy is here too, so that a wait adapts it without a
 * call back into Python, and the daemon's loop (serve.c) follows the same
 * one.
 */
/* clock_gettime and poll: POSIX, which -std=c11 leaves out. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "internal.h"

/* Bytes of /proc/loadavg read: "0.00 0.00 0.00 running/total lastpid". */
#define LOADAVG_BYTES       128
#define LOADAVG_RUNNING     3       /* the field of running/total */

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

/* ---- the spin policy ----------------------------------------------------- */

int64_t shm_runnable(void)
{
    char buf[LOADAVG_BYTES];
    int fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    char *p = buf;
    for (int field = 0; field < LOADAVG_RUNNING; field++) {
        while (*p != '\0' && *p != ' ')
            p++;
        while (*p == ' ')
            p++;
    }
    return strtol(p, NULL, 10);
}

void shm_spin_init(struct shm_spin *s, int64_t limit_ns, uint32_t cores,
                   uint32_t in_crowds)
{
    *s = (struct shm_spin){.limit_ns = limit_ns, .ns = limit_ns, .cores = cores,
                           .in_crowds = in_crowds};
}

int64_t shm_spin_runnable(struct shm_spin *s)
{
    int64_t now = shm_now_ns();
    if (now >= s->look_at_ns) {
        s->look_at_ns = now + SHM_SPIN_LOOK_NS;
        s->runnable = shm_runnable();
    }
    return s->runnable;
}

int shm_spin_crowded(struct shm_spin *s)
{
    return shm_spin_runnable(s) > (int64_t)s->cores;
}

int shm_daemon_polls(int64_t runnable, int64_t cores, int64_t active)
{
    if (runnable <= cores)
        return 1;
    int64_t foreign = runnable - active - 1;    /* 1: the daemon */
    return foreign * SHM_FOREIGN_SHARE <= active;
}

int64_t shm_spin_budget(struct shm_spin *s)
{
    if (s->limit_ns == 0 || (!s->in_crowds && shm_spin_crowded(s)))
        return 0;
    if (s->ns)
        return s->ns;
    return ++s->waits % SHM_SPIN_PROBE_EVERY == 0 ? SHM_SPIN_MIN_NS : 0;
}

/* The budget ns, kept within [SHM_SPIN_MIN_NS, limit]. */
static void set_budget(struct shm_spin *s, int64_t ns)
{
    ns = ns > SHM_SPIN_MIN_NS ? ns : SHM_SPIN_MIN_NS;
    s->ns = ns < s->limit_ns ? ns : s->limit_ns;
}

void shm_spin_won(struct shm_spin *s)
{
    set_budget(s, s->ns * 2);
}

void shm_spin_lost(struct shm_spin *s)
{
    s->ns = s->ns / 2 >= SHM_SPIN_MIN_NS ? s->ns / 2 : 0;
}

void shm_spin_waited(struct shm_spin *s, int64_t ns, int32_t how)
{
    if (how == SHM_WAIT_WON)
        shm_spin_won(s);
    else if (how == SHM_WAIT_CONTENDED || ns > s->limit_ns)
        shm_spin_lost(s);
    else
        set_budget(s, ns + ns / 2);
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

/* Sleeps in poll() until fd has bytes, then receives them; -ETIMEDOUT
 * at the deadline. */
static int64_t sleep_recv(int fd, uint8_t *buf, uint64_t cap, int64_t deadline)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
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

int64_t shm_wait_recv(int fd, uint8_t *buf, uint64_t cap,
                      struct shm_spin *s, int timeout_ms)
{
    int64_t started = shm_now_ns();
    int64_t spin_ns = s != NULL ? shm_spin_budget(s) : 0;
    int32_t how = SHM_WAIT_SLEPT_ONLY;
    int64_t rc = spin_ns > 0 ? spin(fd, buf, cap, spin_ns, &how) : -EAGAIN;
    if (is_again(rc))
        rc = sleep_recv(fd, buf, cap, started + (int64_t)timeout_ms * NS_PER_MS);
    if (s != NULL)
        shm_spin_waited(s, shm_now_ns() - started, how);
    return rc;
}
