/*
 * serve.c -- the daemon's request hot path: from a connection's received
 * bytes to applied writes and their replies, without Python.
 *
 * A synchronous write costs a round trip, and before this file most of it
 * was Python: decoding the request, dispatching it, encoding the reply.
 * shm_serve does all of that in C for [SHM_REQ_BATCH, id, bin], the request
 * of every store, delete, batch and update. It recognises such a request
 * from its first few bytes (O(1): the blob's length is in its header), so
 * a pipeline of them costs one call. Any other request it only measures:
 * it finds where the object ends (resumably, since the bytes of a large
 * one arrive over many calls) and hands it to the caller, which decodes it
 * in Python as before. It never commits: the caller commits once per round
 * and sends the replies after that (a write is acknowledged only once it
 * is visible).
 */
#include <errno.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include "internal.h"

#define MP_FIXARRAY_3       (MP_FIXARRAY | 3)
#define MP_FIXARRAY_4       (MP_FIXARRAY | 4)

/* Bytes the msgpack int at p takes (format byte included), or 0 if the
 * format byte b is not an int. */
static int int_size(uint8_t b)
{
    if (b <= MP_POSFIX_MAX || b >= MP_NEGFIX_MIN)
        return 1;
    if (b >= MP_UINT8 && b <= MP_UINT64)
        return 1 + (1 << (b - MP_UINT8));
    if (b >= MP_INT8 && b <= MP_INT64)
        return 1 + (1 << (b - MP_INT8));
    return 0;
}

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
    int id_len = int_size(p[2]);
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

/* Appends the msgpack uint v at out; the bytes it took. */
static uint64_t put_uint(uint8_t *out, uint64_t v)
{
    int width;
    if (v <= MP_POSFIX_MAX) {
        out[0] = (uint8_t)v;
        return 1;
    }
    if (v <= 0xff)
        width = 1, out[0] = MP_UINT8;
    else if (v <= 0xffff)
        width = 2, out[0] = MP_UINT16;
    else if (v <= 0xffffffff)
        width = 4, out[0] = MP_UINT32;
    else
        width = 8, out[0] = MP_UINT64;
    for (int i = 0; i < width; i++)
        out[1 + i] = (uint8_t)(v >> (8 * (width - 1 - i)));
    return 1 + (uint64_t)width;
}

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
    uint8_t *out = s->out + s->out_len;
    uint64_t n = 0;
    out[n++] = MP_FIXARRAY_4;
    memcpy(out + n, p + b->id_at, b->id_len);
    n += b->id_len;
    out[n++] = SHM_REPLY_OK;
    out[n++] = MP_NIL;
    n += put_uint(out + n, s->seq);
    s->out_len += n;
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

int64_t shm_round_serve(struct shm_round *r, struct shm_serve *s,
                        int timeout_ms)
{
    struct epoll_event ev[SHM_ROUND_EVENTS];
    r->in_used = r->served = r->left_count = r->reply_count = 0;
    s->out = r->outbuf;
    s->out_cap = SHM_ROUND_OUT;
    s->out_len = 0;
    int n = epoll_wait(r->epfd, ev, SHM_ROUND_EVENTS, timeout_ms);
    if (n < 0)
        return errno == EINTR ? 0 : -errno;
    for (int i = 0; i < n; i++) {
        int fd = ev[i].data.fd;
        uint32_t events = ev[i].events;
        /* Room for a whole receive, and for the replies of its requests
         * (each at least 4 bytes, each reply at most SHM_REPLY_MAX). */
        if (fd < 0 || fd >= r->fast_len || !r->fast[fd] ||
            events != EPOLLIN || SHM_ROUND_IN - r->in_used < SHM_ROUND_RECV ||
            SHM_ROUND_OUT - s->out_len < SHM_ROUND_RECV / 4 * SHM_REPLY_MAX) {
            leave(r, fd, events, 0, 0, 0, 0);
            continue;
        }
        serve_connection(r, s, fd, events);
    }
    return n;
}

int64_t shm_round_send(struct shm_round *r)
{
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
