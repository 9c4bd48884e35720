/*
 * chan.c -- request channels: a client's synchronous write through shared
 * memory, with futex and eventfd wake-ups (see shmmap.h for the layout and
 * what each side may trust).
 *
 * Why the waits poll first: a sleeping peer needs a wake-up (a futex wake
 * or a doorbell, then a context switch: tens of microseconds on idle
 * cores), where one that polls answers in well under one; but when
 * processes outnumber the cores, polling takes the core the peer needs.
 * So each side polls for a budget that adapts to what polling bought
 * lately (struct shm_spin), yielding the core on every turn, and then
 * sleeps.
 *
 * One exception to the yielding: while the daemon polls it adds one to the
 * channel's beat at each turn, and a client whose beat moves polls without
 * yielding (follow_beat). The daemon is on another core then and takes the
 * request within a turn, so the client writes again within its own time
 * slice; a yield would hand its core to another process and cost a
 * context switch each way per write, which is where 8 writers on 2 cores
 * spent most of their time (measured: 25-50% more writes with the beat).
 * A beat that stands still for SHM_BEAT_STILL_NS means the daemon lost
 * its core, and the client yields again.
 *
 * The two wake-up handshakes are the same store-load pattern. The waiter
 * stores "I sleep" and then loads the word it waits for; the other side
 * stores that word and then loads "it sleeps". With both pairs seq_cst,
 * at least one side sees the other's store: the waiter finds the word
 * changed and does not sleep, or the other side sees it sleeping and
 * wakes it. Neither can miss the other, so no wake-up is lost.
 */
/* memfd_create, syscall and the F_SEAL_* flags are GNU/Linux. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "internal.h"

/* The size of a channel's memfd: whole pages. */
#define CHAN_BYTES  ((sizeof(struct shm_chan) + SHM_PAGE - 1) / SHM_PAGE * SHM_PAGE)
#define CHAN_SEALS  (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)

/* ---- the daemon's side ------------------------------------------------- */

int shm_chan_open(struct shm_chan_end *e, int32_t *memfd)
{
    int fd = memfd_create("shmmap-channel", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        return -errno;
    /* Sealed before it is mapped or passed: from here on nobody -- the
     * client included -- can shrink it under the daemon's mapping. */
    if (ftruncate(fd, CHAN_BYTES) != 0 ||
        fcntl(fd, F_ADD_SEALS, CHAN_SEALS) != 0) {
        int rc = -errno;
        close(fd);
        return rc;
    }
    void *p = mmap(NULL, CHAN_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        int rc = -errno;
        close(fd);
        return rc;
    }
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd < 0) {
        int rc = -errno;
        munmap(p, CHAN_BYTES);
        close(fd);
        return rc;
    }
    memset(e, 0, sizeof *e);
    e->chan = p;                    /* a new memfd reads as zeros: ticket 0
                                       is answered, nothing is posted */
    e->efd = efd;
    e->state = SHM_CHAN_IDLE;
    *memfd = fd;
    return SHM_OK;
}

void shm_chan_close(struct shm_chan_end *e)
{
    if (e->chan == NULL)
        return;
    munmap(e->chan, CHAN_BYTES);
    close(e->efd);
    memset(e, 0, sizeof *e);
    e->efd = -1;
}

int shm_chan_answer(struct shm_round *r, uint64_t index, const char *reply,
                    uint64_t len)
{
    struct shm_chan_end *e = &r->chans[index];
    if (len > SHM_CHAN_REPLY)
        return SHM_EBUFSMALL;
    memcpy(e->reply, reply, len);
    e->reply_len = len;
    e->state = SHM_CHAN_ANSWERED;
    r->chan_answered[r->chan_answered_count++] = (uint32_t)index;
    return SHM_OK;
}

/* ---- the client's side -------------------------------------------------- */

struct shm_chan *shm_chan_attach(int memfd)
{
    struct stat st;
    if (fstat(memfd, &st) != 0)
        return NULL;
    int seals = fcntl(memfd, F_GET_SEALS);
    if (seals < 0)
        return NULL;
    /* The daemon's memfd, as shm_chan_open made it, or not at all. */
    if ((uint64_t)st.st_size != CHAN_BYTES || (seals & CHAN_SEALS) != CHAN_SEALS) {
        errno = EPROTO;
        return NULL;
    }
    void *p = mmap(NULL, CHAN_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    return p == MAP_FAILED ? NULL : p;
}

void shm_chan_detach(struct shm_chan *c)
{
    if (c != NULL)
        munmap(c, CHAN_BYTES);
}

static void ring(int efd)
{
    uint64_t one = 1;
    /* EAGAIN only if the count were near 2^64: the daemon is awake. */
    ssize_t n = write(efd, &one, sizeof one);
    (void)n;
}

/* Posts the len bytes written into c->request as ticket; rings the
 * doorbell if the daemon sleeps. */
static void post(struct shm_chan *c, int efd, uint64_t len, uint32_t ticket)
{
    __atomic_store_n(&c->request_len, len, __ATOMIC_RELAXED);
    /* seq_cst: a release for the request's bytes and length above (the
     * daemon acquires posted before it copies them), and the store half of
     * the store-load pair with the daemon's daemon_sleeps (see the top). */
    __atomic_store_n(&c->posted, ticket, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&c->daemon_sleeps, __ATOMIC_SEQ_CST))
        ring(efd);
}

int shm_chan_post(struct shm_chan *c, int efd, const char *request,
                  uint64_t len, uint32_t ticket)
{
    if (len > SHM_CHAN_REQUEST)
        return -EMSGSIZE;
    memcpy(c->request, request, len);
    post(c, efd, len, ticket);
    return SHM_OK;
}

int64_t shm_chan_batch(struct shm_chan *c, int efd, int sockfd, uint64_t id,
                       const char *blob, uint64_t len, uint32_t ticket,
                       struct shm_spin *spin, int timeout_ms)
{
    if (len > SHM_CHAN_REQUEST - SHM_BATCH_HEADER)
        return -EMSGSIZE;
    /* Framed in place: the request's bytes are copied once. */
    shm_batch_frame(c->request, id, len);
    memcpy(c->request + SHM_BATCH_HEADER, blob, len);
    post(c, efd, SHM_BATCH_HEADER + len, ticket);
    return shm_chan_batch_wait(c, sockfd, ticket, id, spin, timeout_ms);
}

int64_t shm_chan_batch_wait(struct shm_chan *c, int sockfd, uint32_t ticket,
                            uint64_t id, struct shm_spin *spin, int timeout_ms)
{
    int64_t len = shm_chan_wait(c, sockfd, ticket, spin, timeout_ms);
    if (len == 0)
        return -EPROTO;             /* no reply is empty */
    if (len > 0 && shm_batch_acked(id, c->reply, (uint64_t)len))
        return 0;
    return len;
}

/* The reply's length once `done` is ticket (acquired), else -1. */
static int64_t answered(struct shm_chan *c, uint32_t ticket, int order)
{
    /* order is acquire or seq_cst: either way the daemon's seq_cst store
     * of done released the reply's bytes and reply_len. */
    if (__atomic_load_n(&c->done, order) != ticket)
        return -1;
    uint64_t len = __atomic_load_n(&c->reply_len, __ATOMIC_RELAXED);
    return len <= SHM_CHAN_REPLY ? (int64_t)len : -EPROTO;
}

/* Polls without yielding while the daemon's beat moves -- it polls on
 * another core and takes the request within one of its turns -- until the
 * reply came (its length), the beat stood still for SHM_BEAT_STILL_NS
 * (the daemon lost its core: yielding may give it back), the daemon
 * sleeps, or until passed (-1 then). *beat is the beat last seen. */
static int64_t follow_beat(struct shm_chan *c, uint32_t ticket, uint32_t *beat,
                           int64_t until)
{
    int64_t moved_at = shm_now_ns();
    for (;;) {
        int64_t len = answered(c, ticket, __ATOMIC_ACQUIRE);
        if (len != -1)
            return len;
        /* Relaxed: advisory, as struct shm_chan.beat says. */
        uint32_t now_beat = __atomic_load_n(&c->beat, __ATOMIC_RELAXED);
        int64_t now = shm_now_ns();
        if (now_beat != *beat) {
            *beat = now_beat;
            moved_at = now;
        } else if (now - moved_at >= SHM_BEAT_STILL_NS) {
            return -1;
        }
        if (now >= until || __atomic_load_n(&c->daemon_sleeps, __ATOMIC_RELAXED))
            return -1;
        shm_cpu_relax();
    }
}

/* Polls for the reply for up to spin_ns; -1 when the spin ended without
 * it (*how: SLEPT or CONTENDED). Between its yielding turns it follows the
 * daemon's beat while that moves: a client among more processes than
 * cores then writes again in its own time slice instead of handing the
 * core to another process at each write. */
static int64_t spin(struct shm_chan *c, uint32_t ticket, int64_t spin_ns,
                    int32_t *how)
{
    int64_t until = shm_now_ns() + spin_ns;
    uint32_t beat = __atomic_load_n(&c->beat, __ATOMIC_RELAXED);
    int follow = 1;                 /* first for SHM_BEAT_STILL_NS, then
                                       again once the beat moved */
    for (;;) {
        int64_t len = answered(c, ticket, __ATOMIC_ACQUIRE);
        if (len == -1 && (follow || __atomic_load_n(&c->beat, __ATOMIC_RELAXED) != beat)) {
            len = follow_beat(c, ticket, &beat, until);
            follow = 0;
        }
        if (len != -1) {
            *how = SHM_WAIT_WON;
            return len;
        }
        if (!shm_spin_turn(until, how))
            return -1;
    }
}

/* Whether the socket has something to read: the end of the stream (the
 * daemon died or dropped us) or bytes the caller must look at. */
static int socket_readable(int sockfd)
{
    struct pollfd p = {.fd = sockfd, .events = POLLIN};
    return poll(&p, 1, 0) > 0;
}

/* Sleeps on `done` while it is still `seen`, for up to ns. */
static int futex_sleep(struct shm_chan *c, uint32_t seen, int64_t ns)
{
    struct timespec t = {.tv_sec = ns / NS_PER_SEC, .tv_nsec = ns % NS_PER_SEC};
    /* Shared, not FUTEX_PRIVATE_FLAG: the daemon wakes it from its own
     * mapping of the same memfd page. */
    long rc = syscall(SYS_futex, &c->done, FUTEX_WAIT, seen, &t, NULL, 0);
    return rc == 0 ? 0 : errno;
}

static int64_t sleep_for_reply(struct shm_chan *c, int sockfd, uint32_t ticket,
                               int64_t deadline)
{
    for (;;) {
        /* seq_cst: the store half of the store-load pair with the daemon's
         * store of done and its load of client_sleeps (see the top). */
        __atomic_store_n(&c->client_sleeps, 1, __ATOMIC_SEQ_CST);
        uint32_t seen = __atomic_load_n(&c->done, __ATOMIC_SEQ_CST);
        int64_t len = answered(c, ticket, __ATOMIC_ACQUIRE);
        if (len != -1)
            return len;
        int64_t left = deadline - shm_now_ns();
        if (left <= 0)
            return -ETIMEDOUT;
        int rc = futex_sleep(c, seen, left < SHM_CHAN_CHECK_NS ? left : SHM_CHAN_CHECK_NS);
        if (rc == EINTR)
            return -EINTR;
        /* Woken, timed out or `done` moved (EAGAIN): look again. A slice
         * that ended with no reply also looks at the socket. */
        if (rc == ETIMEDOUT && answered(c, ticket, __ATOMIC_ACQUIRE) == -1 &&
            socket_readable(sockfd))
            return -EPIPE;
    }
}

int64_t shm_chan_wait(struct shm_chan *c, int sockfd, uint32_t ticket,
                      struct shm_spin *s, int timeout_ms)
{
    int64_t started = shm_now_ns();
    int64_t deadline = started + (int64_t)timeout_ms * NS_PER_MS;
    int64_t spin_ns = s != NULL ? shm_spin_budget(s) : 0;
    int32_t how = SHM_WAIT_SLEPT_ONLY;
    int64_t len = -1;
    if (spin_ns > 0)
        len = spin(c, ticket, spin_ns, &how);
    if (len == -1) {
        len = sleep_for_reply(c, sockfd, ticket, deadline);
        /* Relaxed: a stale 1 costs the daemon one needless wake, no more. */
        __atomic_store_n(&c->client_sleeps, 0, __ATOMIC_RELAXED);
    }
    if (s != NULL)
        shm_spin_waited(s, shm_now_ns() - started, how);
    return len;
}
