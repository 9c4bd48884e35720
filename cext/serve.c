/*
 * serve.c -- the daemon's request hot path: from a connection's received
 * bytes to applied writes and their replies, without Python.
 *
 * A synchronous write costs a round trip, and the daemon's share of it is
 * decoding the request, dispatching it and encoding the reply: in Python,
 * that share would be most of the trip. shm_serve does all of it in C for
 * [SHM_REQ_BATCH, id, bin], the request of every store, delete, batch and
 * update. It recognises such a request from its first few bytes (O(1): the
 * blob's length is in its header), so a pipeline of them costs one call.
 * Any other request it only measures: it finds where the object ends
 * (resumably, since the bytes of a large one arrive over many calls) and
 * hands it to the caller, which decodes it in Python, where the handlers
 * of every other request are. It never commits: the caller commits once
 * per round and sends the replies after that (a write is acknowledged
 * only once it is visible).
 */
/* syscall(SYS_futex): GNU/Linux. */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "internal.h"

#define MP_FIXARRAY_3       (MP_FIXARRAY | 3)     /* a batch request */

_Static_assert(SHM_REPLY_MAX == 1 + MP_INT_MAX + 1 + 1 + MP_INT_MAX,
               "a reply: array header, id, status, nil, seq");

/* The outcome of looking at the bytes of one request. */
enum look { LOOK_BATCH, LOOK_MORE, LOOK_OTHER };

/* A batch request at p[0..len): its id's bytes, and where its blob lies.
 * LOOK_MORE if the bytes so far start one but its header is cut short;
 * LOOK_OTHER if they are anything else (left to the scan). */
struct batch {
    uint64_t id_at, id_len;
    uint64_t blob_at, blob_len;
    uint64_t size;                  /* the whole request */
};

static enum look look_batch(const uint8_t *p, uint64_t len, struct batch *b)
{
    if (len < 3)
        return (len == 0 || p[0] == MP_FIXARRAY_3) &&
               (len < 2 || p[1] == SHM_REQ_BATCH) ? LOOK_MORE : LOOK_OTHER;
    if (p[0] != MP_FIXARRAY_3 || p[1] != SHM_REQ_BATCH)
        return LOOK_OTHER;
    int id_len = mp_int_len(p[2]);
    if (id_len == 0)
        return LOOK_OTHER;
    uint64_t at = 2 + (uint64_t)id_len;
    if (len <= at)
        return LOOK_MORE;
    struct mp_head h;
    if (p[at] < MP_BIN8 || p[at] > MP_BIN32)
        return LOOK_OTHER;
    if (mp_head(p + at, len - at, &h) != SHM_OK)
        return LOOK_MORE;                       /* its length is cut short */
    b->id_at = 2;
    b->id_len = (uint64_t)id_len;
    b->blob_len = h.body;
    b->blob_at = at + h.head;
    b->size = b->blob_at + b->blob_len;
    return LOOK_BATCH;
}

/* ---- finding where any other object ends ------------------------------- */

/* Scans the object at p[0..len) from where an earlier call stopped
 * (s->scan_at bytes in, s->scan_pending objects still to go; 0 and 0 for a
 * new object). Each object takes at least its format byte, so the scan is
 * linear in the bytes and needs no recursion; it stops before an object
 * whose header or body is not all there, and resumes at it. */
static void scan(struct shm_serve *s, const uint8_t *p, uint64_t len)
{
    uint64_t at = s->scan_at, pending = s->scan_pending ? s->scan_pending : 1;
    while (pending > 0 && at < len) {
        struct mp_head h;
        int rc = mp_head(p + at, len - at, &h);
        if (rc == SHM_EBUFSMALL)
            break;                              /* its length is cut short */
        if (rc != SHM_OK) {
            s->stop = SHM_STOP_BAD;
            shm_fail(s->err, sizeof s->err, SHM_EINVAL, "malformed msgpack: "
                     "byte 0x%02x at %llu is no msgpack format", p[at],
                     (unsigned long long)at);
            return;
        }
        /* Each child takes a byte: a request cannot hold more objects
         * than it may take bytes. Checked before anything is added, so no
         * sum overflows (all are below 2^34). */
        uint64_t size = h.head + h.body;
        if (size > s->max_request - at || h.children > s->max_request - at ||
            pending + h.children > s->max_request) {
            s->stop = SHM_STOP_BAD;
            shm_fail(s->err, sizeof s->err, SHM_ETOOBIG, "request over %llu "
                     "bytes", (unsigned long long)s->max_request);
            return;
        }
        if (len - at < size)
            break;                              /* its body is cut short */
        at += size;
        pending = pending - 1 + h.children;
    }
    if (pending > 0) {
        s->stop = SHM_STOP_MORE;
        s->scan_at = at;
        s->scan_pending = pending;
        return;
    }
    s->stop = SHM_STOP_OBJECT;
    s->next_len = at;
    s->scan_at = s->scan_pending = 0;
}

/* ---- serving a batch ----------------------------------------------------- */

/* Applies the batch b at p with the next seq and appends its reply; 0 if
 * the apply failed (nothing applied: the caller's path answers it). */
static int serve_batch(struct shm_serve *s, const uint8_t *p,
                       const struct batch *b)
{
    if (s->seq >= SHM_MAX_SEQ)
        return 0;
    s->info.validated = 0;                      /* a new blob */
    int rc = shm_apply(s->view, (const char *)p + b->blob_at, b->blob_len,
                       s->seq + 1, &s->info, s->err, sizeof s->err);
    if (rc != SHM_OK)
        return 0;
    s->seq++;
    /* [id, OK, nil, seq]: the id as the client encoded it (an int, which
     * look_batch checked), so the client matches it to its request. */
    uint8_t *start = s->out + s->out_len;
    uint8_t *out = mp_put_fixarray(start, 4);
    memcpy(out, p + b->id_at, b->id_len);
    out = mp_put_uint(out + b->id_len, SHM_REPLY_OK);
    out = mp_put_nil(out);
    out = mp_put_uint(out, s->seq);
    s->out_len += (uint64_t)(out - start);
    s->served++;
    return 1;
}

uint64_t shm_serve(struct shm_serve *s, const char *in, uint64_t len,
                   uint64_t pos)
{
    const uint8_t *p = (const uint8_t *)in;
    s->served = 0;
    s->next_len = 0;
    while (pos < len) {
        struct batch b;
        enum look look = s->scan_pending ? LOOK_OTHER
                                         : look_batch(p + pos, len - pos, &b);
        if (look == LOOK_BATCH && b.size <= s->max_request) {
            if (len - pos < b.size) {
                s->stop = SHM_STOP_MORE;
                return pos;
            }
            if (s->out_cap - s->out_len < SHM_REPLY_MAX) {
                s->stop = SHM_STOP_FULL;
                return pos;
            }
            if (!serve_batch(s, p + pos, &b)) {
                s->stop = SHM_STOP_OBJECT;
                s->next_len = b.size;
                return pos;
            }
            pos += b.size;
            continue;
        }
        if (look == LOOK_MORE) {
            s->stop = SHM_STOP_MORE;
            return pos;
        }
        scan(s, p + pos, len - pos);
        return pos;
    }
    s->stop = SHM_STOP_END;
    return pos;
}

/* ---- a round of events ----------------------------------------------------- */

static void leave(struct shm_round *r, int fd, uint32_t events,
                  uint64_t in_at, uint64_t in_len, uint64_t out_at,
                  uint64_t out_len)
{
    struct shm_round_event *e = &r->left[r->left_count++];
    e->fd = fd;
    e->events = events;
    e->in_at = in_at;
    e->in_len = in_len;
    e->out_at = out_at;
    e->out_len = out_len;
}

/* Receives from fast connection fd and serves it; 1 if it was served
 * whole (its replies queued for shm_round_send), 0 if it is left. */
static int serve_connection(struct shm_round *r, struct shm_serve *s,
                            int fd, uint32_t events)
{
    uint8_t *buf = r->inbuf + r->in_used;
    ssize_t got = recv(fd, buf, SHM_ROUND_RECV, MSG_DONTWAIT);
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK ||
                    errno == EINTR))
        return 1;                       /* nothing after all */
    if (got <= 0) {
        /* The end of the stream, or an error: the caller's receive meets
         * it again and drops the connection. */
        leave(r, fd, events, 0, 0, 0, 0);
        return 0;
    }
    uint64_t out0 = s->out_len;
    s->scan_at = s->scan_pending = 0;   /* a fast connection has no scan */
    uint64_t pos = shm_serve(s, (const char *)buf, (uint64_t)got, 0);
    r->served += s->served;
    if (s->stop == SHM_STOP_END) {
        if (s->out_len > out0) {
            struct shm_round_reply *rep = &r->replies[r->reply_count++];
            rep->fd = fd;
            rep->at = out0;
            rep->len = s->out_len - out0;
        }
        return 1;                       /* its bytes are no longer needed */
    }
    leave(r, fd, events, r->in_used + pos, (uint64_t)got - pos, out0,
          s->out_len - out0);
    r->in_used += (uint64_t)got;
    return 0;
}

/* ---- channels ---------------------------------------------------------- */

/* The ticket posted on e's channel if it is one not yet taken, else 0
 * (with *posted unset). */
static int posted_request(const struct shm_chan_end *e, uint32_t *posted,
                          int order)
{
    if (e->chan == NULL || e->state != SHM_CHAN_IDLE)
        return 0;
    /* Acquire (or seq_cst): pairs with the client's seq_cst store of
     * posted, which it made after the request's bytes and length. Loaded
     * once; compared with the daemon's own ticket, never with `done`. */
    uint32_t p = __atomic_load_n(&e->chan->posted, order);
    if (p == e->done)
        return 0;
    *posted = p;
    return 1;
}

/* Says to every channel's client whether the daemon sleeps. Before it
 * sleeps, the caller then looks for posted requests once more (see
 * chan.c's top: the store-load pair with the client's post). */
static void set_sleeping(struct shm_round *r, uint32_t sleeps)
{
    for (uint64_t i = 0; i < r->chan_len; i++)
        if (r->chans[i].chan != NULL)
            __atomic_store_n(&r->chans[i].chan->daemon_sleeps, sleeps,
                             __ATOMIC_SEQ_CST);
}

/* Whether a channel has a request not yet taken; order as in
 * posted_request (seq_cst before a sleep, see set_sleeping). */
static int any_posted(const struct shm_round *r, int order)
{
    uint32_t posted;
    for (uint64_t i = 0; i < r->chan_len; i++)
        if (posted_request(&r->chans[i], &posted, order))
            return 1;
    return 0;
}

/* Takes the request posted on channel i: copies it into the round's inbuf
 * (the client may write the channel meanwhile: what is parsed must not
 * change), then serves it if it is one batch request that applies, or
 * leaves it to the caller. 0 if there was no room to take it this round
 * (the next round does; the daemon does not sleep meanwhile). */
static int take_request(struct shm_round *r, struct shm_serve *s, uint64_t i,
                        uint32_t posted, int64_t now)
{
    struct shm_chan_end *e = &r->chans[i];
    /* Loaded once: the client may change it right after. */
    uint64_t len = __atomic_load_n(&e->chan->request_len, __ATOMIC_RELAXED);
    uint64_t copy = len <= SHM_CHAN_REQUEST ? len : 0;
    if (SHM_ROUND_IN - r->in_used < copy ||
        SHM_ROUND_OUT - s->out_len < SHM_REPLY_MAX)
        return 0;
    uint8_t *p = r->inbuf + r->in_used;
    memcpy(p, e->chan->request, copy);
    e->ticket = posted;
    e->taken_ns = now;
    e->in_at = r->in_used;
    e->in_len = len;                /* over SHM_CHAN_REQUEST: the caller
                                       answers that it is too big */
    r->in_used += copy;
    struct batch b;
    uint64_t out0 = s->out_len;
    if (len == copy && look_batch(p, len, &b) == LOOK_BATCH && b.size == len &&
        serve_batch(s, p, &b)) {
        e->reply_len = s->out_len - out0;
        memcpy(e->reply, s->out + out0, e->reply_len);
        s->out_len = out0;          /* the reply is the channel's */
        e->state = SHM_CHAN_ANSWERED;
        r->chan_answered[r->chan_answered_count++] = (uint32_t)i;
        r->served++;
    } else {
        e->state = SHM_CHAN_LEFT;
        r->chan_left[r->chan_left_count++] = (uint32_t)i;
    }
    return 1;
}

/* Takes every posted request; how many it took. */
static uint64_t serve_chans(struct shm_round *r, struct shm_serve *s)
{
    uint64_t taken = 0;
    uint32_t posted;
    int64_t now = r->chan_len ? shm_now_ns() : 0;
    for (uint64_t i = 0; i < r->chan_len; i++)
        if (posted_request(&r->chans[i], &posted, __ATOMIC_ACQUIRE))
            taken += (uint64_t)take_request(r, s, i, posted, now);
    return taken;
}

/* Channels whose request was taken within SHM_ACTIVE_NS before now. */
static int64_t active_clients(const struct shm_round *r, int64_t now)
{
    int64_t active = 0;
    for (uint64_t i = 0; i < r->chan_len; i++)
        if (r->chans[i].chan != NULL && now - r->chans[i].taken_ns < SHM_ACTIVE_NS)
            active++;
    return active;
}

/* One polling turn: every client that waits sees the daemon on a core. */
static void beat(struct shm_round *r)
{
    for (uint64_t i = 0; i < r->chan_len; i++) {
        struct shm_chan *c = r->chans[i].chan;
        /* Relaxed: advisory (struct shm_chan.beat); the daemon keeps no
         * copy, so what a client wrote there is only carried forward. */
        if (c != NULL)
            __atomic_store_n(&c->beat, __atomic_load_n(&c->beat, __ATOMIC_RELAXED) + 1,
                             __ATOMIC_RELAXED);
    }
}

/* Publishes the reply of channel entry e and wakes its client if it
 * sleeps. */
static void publish(struct shm_chan_end *e)
{
    struct shm_chan *c = e->chan;
    memcpy(c->reply, e->reply, e->reply_len);
    __atomic_store_n(&c->reply_len, e->reply_len, __ATOMIC_RELAXED);
    /* seq_cst: a release for the reply's bytes and length (the client
     * acquires done before it reads them), and the store half of the
     * store-load pair with the client's client_sleeps (chan.c's top). */
    __atomic_store_n(&c->done, e->ticket, __ATOMIC_SEQ_CST);
    e->done = e->ticket;
    e->state = SHM_CHAN_IDLE;
    if (__atomic_load_n(&c->client_sleeps, __ATOMIC_SEQ_CST))
        syscall(SYS_futex, &c->done, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

static void publish_chans(struct shm_round *r)
{
    for (uint64_t k = 0; k < r->chan_answered_count; k++) {
        struct shm_chan_end *e = &r->chans[r->chan_answered[k]];
        /* Closed since it was answered (its connection dropped): its
         * entry may be free or a new channel's. */
        if (e->chan != NULL && e->state == SHM_CHAN_ANSWERED)
            publish(e);
    }
    r->chan_answered_count = 0;
}

/* ---- a round ------------------------------------------------------------- */

/* Empties r and s's reply buffer for a new round. */
static void round_begin(struct shm_round *r, struct shm_serve *s)
{
    r->in_used = r->served = r->left_count = r->reply_count = 0;
    r->chan_left_count = 0;
    s->out = r->outbuf;
    s->out_cap = SHM_ROUND_OUT;
    s->out_len = 0;
}

/* A round of the channels alone, with no system call (see peek_posts). */
static int64_t round_serve_chans(struct shm_round *r, struct shm_serve *s)
{
    round_begin(r, s);
    return (int64_t)serve_chans(r, s);
}

int64_t shm_round_serve(struct shm_round *r, struct shm_serve *s,
                        int timeout_ms)
{
    struct epoll_event ev[SHM_ROUND_EVENTS];
    round_begin(r, s);
    int sleeping = timeout_ms != 0 && r->chan_len > 0;
    if (sleeping) {
        set_sleeping(r, 1);
        if (any_posted(r, __ATOMIC_SEQ_CST))
            timeout_ms = 0;
    }
    int n = epoll_wait(r->epfd, ev, SHM_ROUND_EVENTS, timeout_ms);
    if (sleeping)
        set_sleeping(r, 0);         /* awake: clients need not ring */
    if (n < 0)
        return errno == EINTR ? 0 : -errno;
    for (int i = 0; i < n; i++) {
        int fd = ev[i].data.fd;
        uint32_t events = ev[i].events;
        /* A doorbell is edge-triggered (EPOLLET): each ring is an event
         * with no read to reset it. Its count only grows, one per ring;
         * 2^64 rings are out of reach. The round serves every channel
         * anyway. */
        if (fd >= 0 && fd < r->fast_len && r->fast[fd] == SHM_FAST_DOORBELL)
            continue;
        /* Room for a whole receive, and for the replies of its requests
         * (each at least 4 bytes, each reply at most SHM_REPLY_MAX). */
        if (fd < 0 || fd >= r->fast_len || r->fast[fd] != SHM_FAST_CONN ||
            events != EPOLLIN || SHM_ROUND_IN - r->in_used < SHM_ROUND_RECV ||
            SHM_ROUND_OUT - s->out_len < SHM_ROUND_RECV / 4 * SHM_REPLY_MAX) {
            leave(r, fd, events, 0, 0, 0, 0);
            continue;
        }
        serve_connection(r, s, fd, events);
    }
    return n + (int64_t)serve_chans(r, s);
}

int64_t shm_round_send(struct shm_round *r)
{
    publish_chans(r);
    r->left_count = 0;
    for (uint64_t i = 0; i < r->reply_count; i++) {
        const struct shm_round_reply *rep = &r->replies[i];
        ssize_t sent = send(rep->fd, r->outbuf + rep->at, rep->len,
                            MSG_DONTWAIT | MSG_NOSIGNAL);
        if (sent == (ssize_t)rep->len)
            continue;
        /* A full socket buffer or an error: the caller queues the rest,
         * and its own send meets the error and drops the connection. */
        uint64_t done = sent > 0 ? (uint64_t)sent : 0;
        leave(r, rep->fd, 0, 0, 0, rep->at + done, rep->len - done);
    }
    r->reply_count = 0;
    return (int64_t)r->left_count;
}

/* ---- the loop ------------------------------------------------------------ */

static uint64_t bucket(const struct shm_loop *L, int64_t ns)
{
    uint64_t i = 0;
    while (i < L->nbounds && ns > L->bounds_ns[i])
        i++;
    return i;
}

/* Times a round that served `served` requests in ns: each request took
 * the round's time (group commit: they were answered together). */
static void observe_round(struct shm_loop *L, uint64_t served, int64_t ns)
{
    uint64_t b = bucket(L, ns);
    L->request_counts[b] += served;
    L->request_ns += (uint64_t)ns * served;
    L->commit_counts[b]++;
    L->commit_ns += (uint64_t)ns;
    L->commits++;
    L->served += served;
}

/* Whether the generation has no more room than the caller's thresholds:
 * the caller starts a background build then (writer.runway_short). */
static int runway_short(const struct shm_loop *L, const struct shm_view *v)
{
    return v->live_count >= L->min_live &&
           (v->dirty_cap - v->dirty_count <= L->dirty_room ||
            v->arena_hi - v->arena_lo - v->arena_used <= L->arena_room);
}

/* The next round's epoll timeout: 0 while the spin lasts, else until the
 * deadline (rounded up: a wait never ends before it). */
static int round_timeout(int64_t now, int64_t spin_until, int64_t deadline)
{
    if (now < spin_until)
        return 0;
    int64_t ms = (deadline - now + NS_PER_MS - 1) / NS_PER_MS;
    return ms > INT_MAX ? INT_MAX : (int)ms;
}

/* Looks at the channels' posted words, with no system call, until one
 * has a request or until passes: whether one has. Between two polling
 * turns this takes a post within a fraction of a microsecond, where the
 * turn's epoll_wait and sched_yield would take it a microsecond or more
 * later (measured: one writer 10% faster, 8 writers 9%). */
static int peek_posts(const struct shm_round *r, int64_t until)
{
    for (;;) {
        if (any_posted(r, __ATOMIC_ACQUIRE))
            return 1;
        if (shm_now_ns() >= until)
            return 0;
        shm_cpu_relax();
    }
}

/* Whether the daemon should not poll now: it may not (its limit is 0),
 * or the processes that crowd the cores are not mostly its clients
 * (shm_daemon_polls). */
static int polls_cost(const struct shm_round *r, struct shm_spin *spin,
                      int64_t now)
{
    return spin->limit_ns == 0 ||
           !shm_daemon_polls(shm_spin_runnable(spin), spin->cores,
                             active_clients(r, now));
}

int64_t shm_serve_loop(struct shm_round *r, struct shm_serve *s,
                       struct shm_loop *L)
{
    int64_t spin_until = 0, quiet_since = shm_now_ns(), epolled = 0;
    for (;;) {
        int64_t now = shm_now_ns();
        if (now >= L->deadline_ns) {
            L->stop = SHM_LOOP_DEADLINE;
            return 0;
        }
        int spinning = now < spin_until;
        /* While it polls, a post found by peeking is served without
         * epoll_wait -- but the sockets are looked at every
         * SHM_EPOLL_EVERY_NS all the same. */
        int64_t n;
        if (spinning && peek_posts(r, now + SHM_PEEK_NS) &&
            shm_now_ns() - epolled < SHM_EPOLL_EVERY_NS) {
            n = round_serve_chans(r, s);
        } else {
            epolled = shm_now_ns();
            n = shm_round_serve(r, s, round_timeout(epolled, spin_until,
                                                    L->deadline_ns));
        }
        if (n < 0)
            return n;
        int64_t started = shm_now_ns();
        if (r->left_count || r->chan_left_count) {
            L->stop = SHM_LOOP_LEFT;
            return n;
        }
        if (r->served) {
            shm_commit(s->view, s->seq);
            int64_t unsent = shm_round_send(r);
            observe_round(L, r->served, shm_now_ns() - started);
            if (unsent) {
                L->stop = SHM_LOOP_UNSENT;
                return n;
            }
            if (runway_short(L, s->view)) {
                L->stop = SHM_LOOP_RUNWAY;
                return n;
            }
        }
        if (n > 0) {
            /* The spin adapts to the gaps between a client's requests,
             * however the client itself waits (struct shm_spin). */
            shm_spin_waited(L->spin, started - quiet_since,
                            spinning ? SHM_WAIT_WON : SHM_WAIT_SLEPT);
            quiet_since = shm_now_ns();
            spin_until = polls_cost(r, L->spin, started)
                       ? 0 : quiet_since + L->spin->ns;
        }
        if (shm_now_ns() < spin_until) {
            beat(r);
            /* A yield that took long: the cores are contended, stop
             * polling. */
            if (!shm_yield_core()) {
                spin_until = 0;
                shm_spin_lost(L->spin);
            }
        }
    }
}
