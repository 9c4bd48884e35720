/*
 * core.h -- the C core's API, as shmmap._core binds it: status codes, the
 * structs a caller owns (a view on a generation, an export's buffers, a
 * round of the daemon's loop, a spin budget), and the functions on them.
 * Private to this package: it changes with the package, while the bytes
 * other processes rely on are shmmap.h's.
 *
 * Return convention, as in LMDB: an int status is SHM_OK (0) or one code of
 * the status table below (shm_strerror names each). A function that takes
 * err/errlen also writes a message naming the fault there on failure (err
 * may be NULL). Functions returning int64_t return a non-negative result or
 * a negative code. Nothing a function reads from shared memory is trusted:
 * every length and offset is loaded once, checked, and used from that copy.
 */
#ifndef SHMMAP_CORE_H
#define SHMMAP_CORE_H

#include "shmmap.h"

/* CFFI-BEGIN */

/* ---- lookup results (packed into one int64, see shm_lookup) ------------ */
#define SHM_FOUND_LEN_BITS   24
#define SHM_FOUND_LEN_LONG   0xffffff  /* length did not fit: read the record */
#define SHM_NOT_FOUND        -1
#define SHM_SUPERSEDED       -2        /* map the current generation, retry */

/* ---- status codes (0 is success) --------------------------------------- */
#define SHM_OK               0
#define SHM_EINVAL           -10       /* malformed input (see err text) */
#define SHM_EKEY             -11       /* key not canonical or wrong type */
#define SHM_EVALUE           -12       /* value not well-formed msgpack */
#define SHM_ETOOBIG          -13       /* key or value over its limit */
#define SHM_ENOSPACE         -14       /* generation full: promote first */
#define SHM_EBUFSMALL        -15       /* caller's buffer too small */
#define SHM_ECORRUPT         -16       /* segment failed validation */
#define SHM_ELIMIT           -17       /* over the map's live-bytes limit */
#define SHM_ENOMEM           -18       /* the core could not allocate */
#define SHM_ECANCELED        -19       /* a build stopped by its cancel flag */
#define SHM_STATUS_MIN       -19       /* lowest code of this table */
#define SHM_ERR_LEN          256       /* bytes of an err buffer: room for
                                          any message the core writes */

/* ---- the structs a caller owns ----------------------------------------- */

/* How big each part of a new generation is. */
struct shm_geometry {
    uint64_t read_slots;
    uint64_t dirty_slots;
    uint64_t dirty_cap;
    uint64_t entry_cap;
    uint64_t arena_cap;
    uint64_t segment_size;
};

/* The writes applied to a generation since a build's snapshot: each blob
 * with its seq, in order, to be replayed into the generation being built.
 * Private memory of the daemon, malloc'd by the core; shm_replay_free. */
struct shm_replay {
    uint8_t *buf;                   /* records: seq, len, blob, padding */
    uint64_t used;
    uint64_t cap;
    uint64_t blobs;                 /* blobs logged */
    uint64_t bytes;                 /* their bytes */
};

/* A process's private handle on one mapped generation. Geometry is copied
 * from the header once it validated, so a reader never trusts a header word
 * again; every offset read from shared memory is checked against it. */
struct shm_view {
    uint8_t *base;
    uint64_t size;
    struct shm_gen_header *hdr;
    uint64_t seed0, seed1;
    uint64_t read_count;
    uint64_t read_mask, dirty_mask;
    uint64_t dirty_cap, entry_cap;
    uint64_t arena_lo, arena_hi;    /* [arena_off, segment_size) */
    uint64_t *read_index;
    uint64_t *dirty_index;
    struct shm_entry *entries;
    struct shm_reader_slot *counters; /* this reader's slot, or &own */
    struct shm_reader_slot own;
    /* Writer only. The writer's own counters: it stores them to the header
     * for readers and statistics but never loads them back, so nothing
     * written into the segment by another process can move its writes out
     * of bounds. shm_view_open takes them from the header once, clamped to
     * the geometry (a new generation's are 0; an adopted one validated). */
    uint64_t dirty_count;           /* dirty entries appended */
    uint64_t arena_used;            /* arena bytes taken */
    uint64_t live_count;            /* live keys and their bytes as of the */
    uint64_t live_bytes;            /*   writes applied (shm_commit publishes) */
    /* Writer only: limits shm_apply enforces (0 max_live_bytes: none). */
    uint64_t max_key;
    uint64_t max_value;
    uint64_t max_live_bytes;
    /* Writer only: the map header whose version word shm_commit and
     * shm_mark_superseded move on (NULL: none, as for readers), and the
     * last seq shm_commit published (a commit of the same seq changes
     * nothing a reader sees, so it leaves the version alone). */
    struct shm_map_header *map;
    uint64_t committed;
    /* Writer only: while a background build copies this generation, every
     * blob shm_apply applies is also logged here (NULL: none is). */
    struct shm_replay *replay;
};

/* One batch of an export: the caller owns both buffers. */
struct shm_export {
    uint64_t snap;                  /* the snapshot seq S */
    uint64_t cursor;                /* next entry to look at; in and out */
    uint64_t max_items;             /* stop after this many pairs */
    uint8_t *keys;                  /* out: msgpack array of keys */
    uint64_t keys_cap;
    uint64_t keys_len;
    uint8_t *values;                /* out: msgpack array of the values */
    uint64_t values_cap;
    uint64_t values_len;
    uint64_t count;                 /* out: pairs in this batch */
    uint64_t need;                  /* out, on SHM_EBUFSMALL: bytes wanted */
};

/* One batch of a delta scan (shm_delta_batch): the keys whose visible
 * value changed after seq from, as of seq snap, in one generation. The
 * caller owns the three buffers. */
struct shm_delta {
    uint64_t since;                 /* in: the snapshot the caller has */
    uint64_t snap;                  /* in: the snapshot it wants */
    uint64_t pos;                   /* in/out: arena offset where the scan
                                       resumes (shm_delta_start sets it) */
    uint64_t next_entry;            /* in/out: the entry whose key comes
                                       next in the arena */
    uint8_t *keys;                  /* out: msgpack array of stored keys */
    uint64_t keys_cap;
    uint64_t keys_len;
    uint8_t *values;                /* out: msgpack array of their values */
    uint64_t values_cap;
    uint64_t values_len;
    uint8_t *dead;                  /* out: msgpack array of deleted keys */
    uint64_t dead_cap;
    uint64_t dead_len;
    uint64_t count;                 /* out: pairs in keys/values */
    uint64_t dead_count;            /* out: keys in dead */
    uint64_t need;                  /* out, on SHM_EBUFSMALL: bytes wanted */
};

/* What shm_apply found in a batch blob. */
struct shm_apply_info {
    uint64_t validated;             /* in: 1 if this blob already passed an
                                       earlier shm_apply (that returned
                                       SHM_ENOSPACE), 0 for a new blob; out:
                                       1 once the blob is known valid */
    uint64_t items;                 /* operations in the blob */
    uint64_t new_keys_max;          /* stores: worst case of new entries */
    uint64_t arena_need;            /* worst case of arena bytes */
    uint64_t store_bytes;           /* keys and values the stores carry */
    uint64_t error_item;            /* on a validation error: its item */
};

/* ---- status and the map header ---------------------------------------- */

/* The fixed text of a status code ("unknown status" for others). */
const char *shm_strerror(int code);

/* The map header's atomic words. h points at a mapped map header. */
uint64_t shm_map_current_gen(struct shm_map_header *h);  /* acquire */
void     shm_map_publish_gen(struct shm_map_header *h, uint64_t gen);
uint64_t shm_map_daemon_pid(struct shm_map_header *h);   /* acquire */
uint64_t shm_map_version(struct shm_map_header *h);      /* acquire */
void     shm_map_bump_version(struct shm_map_header *h);  /* the daemon */
void     shm_map_set_daemon_pid(struct shm_map_header *h, uint64_t pid);

/* ---- reads: any process, on a PROT_READ mapping ---- */

/* Checks the header of the generation at base[0..size) (O(1)) and fills v
 * from a private copy of it. SHM_OK or SHM_ECORRUPT (with err). */
int      shm_view_open(struct shm_view *v, void *base, uint64_t size,
                       char *err, size_t errlen);
/* committed_seq, acquire-loaded: the snapshot a read then uses. */
uint64_t shm_snapshot(struct shm_view *v);
/* 1 if a newer generation is published (acquire), else 0. */
int      shm_superseded(struct shm_view *v);
/* Looks key (len bytes of canonical msgpack) up at the current snapshot.
 * Found: (value offset << SHM_FOUND_LEN_BITS) | min(value length,
 * SHM_FOUND_LEN_LONG); else SHM_NOT_FOUND, or SHM_SUPERSEDED when the
 * caller must map the current generation first. */
int64_t  shm_lookup(struct shm_view *v, const char *key, uint64_t len);
/* shm_lookup of an int key, encoded here as msgpack would. */
int64_t  shm_lookup_int(struct shm_view *v, int64_t key);
/* shm_lookup at snapshot snap, superseded or not. */
int64_t  shm_lookup_at(struct shm_view *v, const char *key, uint64_t len,
                       uint64_t snap);
/* Appends the pairs visible at x->snap from entry x->cursor on, at most
 * x->max_items, to x's buffers as two msgpack arrays; never writes past
 * keys_cap or values_cap. Returns 1 when the scan is complete, 0 when more
 * entries remain (x->cursor says where), or SHM_EBUFSMALL when not even
 * one pair fits (x->need: the buffer size that would take it). */
int      shm_export_batch(struct shm_view *v, struct shm_export *x);
/* Starts a delta scan of v: x->pos at the end of the build's part of the
 * arena, x->next_entry at the first dirty entry. Then
 * shm_delta_batch(v, x) with x->since = x->snap = the snapshot the caller
 * loaded at the build moves past what that snapshot holds. */
void     shm_delta_start(struct shm_view *v, struct shm_delta *x);
/* Appends to x's buffers each key whose visible record at x->snap was
 * committed after x->since (once, however often it changed), scanning the
 * arena from x->pos; the caller loaded x->snap (shm_snapshot) before the
 * first call. Returns 1 when every change up to x->snap is reported (x->pos
 * and x->next_entry then say where the next scan starts), 0 when a buffer
 * is full (call again with x as it is), SHM_EBUFSMALL when not even one
 * key fits (x->need), SHM_ECORRUPT when the arena is not what the daemon
 * writes. */
int      shm_delta_batch(struct shm_view *v, struct shm_delta *x);
/* The keyed hash of key bytes p[0..len) (SipHash-1-3). */
uint64_t shm_hash(uint64_t seed0, uint64_t seed1, const char *p, uint64_t len);

/* ---- validation of untrusted bytes ---- */

/* The full check a daemon makes before it adopts a generation: header,
 * indexes, entries, keys, chains and values, in time linear in the size
 * in use. SHM_OK, SHM_ECORRUPT (with err) or SHM_ENOMEM. */
int      shm_gen_validate(void *base, uint64_t size, char *err, size_t errlen);
/* One canonical msgpack key of the key types, exactly len bytes: SHM_OK or
 * SHM_EKEY (with err). */
int      shm_check_key(const char *p, uint64_t len, char *err, size_t errlen);
/* One well-formed msgpack object, exactly len bytes: SHM_OK or SHM_EVALUE
 * (with err). */
int      shm_check_value(const char *p, uint64_t len, char *err,
                         size_t errlen);

/* ---- writes: only the daemon, on a read-write mapping ---- */

/* Sizes a generation for live_keys keys of live_bytes arena bytes plus a
 * reserve. SHM_OK, or SHM_ETOOBIG past the layout's limits. */
int      shm_plan(struct shm_geometry *g, uint64_t live_keys,
                  uint64_t live_bytes, uint64_t reserve_keys,
                  uint64_t reserve_bytes);
/* Lays out an empty generation on a new zero-filled segment of
 * g->segment_size bytes. SHM_OK, or SHM_EINVAL if g is inconsistent. */
int      shm_gen_init(void *base, const struct shm_geometry *g, uint64_t gen,
                      uint64_t seed0, uint64_t seed1, uint64_t base_seq);
/* Validates the whole blob (unless info->validated), then applies every
 * item with seq, or none: SHM_OK; SHM_EINVAL, SHM_EKEY, SHM_EVALUE or
 * SHM_ETOOBIG for a bad item (err, info->error_item); SHM_ELIMIT over
 * max_live_bytes; SHM_ENOSPACE when the generation cannot take it
 * (promote with info's needs as reserve, call again with the same info);
 * SHM_EINVAL for seq 0 or above SHM_MAX_SEQ. SHM_ECORRUPT only if another
 * process wrote the segment meanwhile. With v->replay set, an applied blob
 * is also logged there (SHM_ENOMEM, nothing applied, if the log cannot
 * grow). */
int      shm_apply(struct shm_view *v, const char *blob, uint64_t len,
                   uint64_t seq, struct shm_apply_info *info, char *err,
                   size_t errlen);
/* Publishes live_count/live_bytes, then committed_seq = seq (release),
 * then, if seq is new and v->map is set, the map's next version. */
void     shm_commit(struct shm_view *v, uint64_t seq);
/* superseded = 1 (release): after current_gen names the newer one; then,
 * if v->map is set, the map's next version. */
void     shm_mark_superseded(struct shm_view *v);
/* Counts the live keys at snap and the arena bytes they take. SHM_OK, or
 * SHM_ECANCELED once *cancel is non-zero (cancel may be NULL). It reads v
 * as a reader does, so it may run in another thread while the daemon
 * appends to v (snap must be committed before it starts). */
int      shm_measure(struct shm_view *v, uint64_t snap, const uint64_t *cancel,
                     uint64_t *keys, uint64_t *bytes);
/* Copies the entries of src live at snap into the empty, unpublished dst
 * as its read table. The number copied, or SHM_EINVAL (dst not empty, other
 * seeds) or SHM_ENOSPACE (dst too small) or SHM_ECORRUPT, or SHM_ECANCELED
 * once *cancel is non-zero. Reads src as shm_measure does. */
int64_t  shm_build(struct shm_view *src, uint64_t snap, struct shm_view *dst,
                   const uint64_t *cancel);
/* Stores 1 in a cancel flag (relaxed) that a build in another thread
 * polls. */
void     shm_cancel(uint64_t *flag);
/* Applies the blobs of log from byte *cursor on (0: the first), at most
 * max_blobs, in order and each with its own seq, to dst (the built
 * generation, not yet published), advancing *cursor past each: the number
 * applied (0 once *cursor reaches log->used), or the status of the first
 * that failed (SHM_ENOSPACE: dst cannot take them). */
int64_t  shm_replay(struct shm_view *dst, const struct shm_replay *log,
                    uint64_t *cursor, uint64_t max_blobs, char *err,
                    size_t errlen);
/* Frees log's buffer and empties it. */
void     shm_replay_free(struct shm_replay *log);

/* ---- serving requests (serve.c): the daemon's hot path ----------------- */
/* shm_serve takes a connection's received bytes and serves the simplest
 * and most frequent request, [SHM_REQ_BATCH, id, bin], itself: it applies
 * the blob (shm_apply) and writes the reply [id, SHM_REPLY_OK, nil, seq].
 * Everything else it leaves to the caller at the byte where that request
 * starts, after finding where it ends. */
#define SHM_REPLY_MAX        21        /* bytes of the longest reply it
                                          writes: array header, int64 id,
                                          status, nil, uint64 seq */
/* shm_serve's stop reasons (struct shm_serve.stop) */
#define SHM_STOP_END         0         /* every byte consumed */
#define SHM_STOP_MORE        1         /* the object at pos is incomplete:
                                          keep the bytes from pos, call
                                          again when more arrived */
#define SHM_STOP_OBJECT      2         /* a complete object of next_len
                                          bytes at pos for the caller */
#define SHM_STOP_BAD         3         /* the bytes at pos never make a
                                          request (err says why) */
#define SHM_STOP_FULL        4         /* the reply buffer is full: take
                                          out[0..out_len), call again */

/* One connection's call of shm_serve. The caller owns it and its buffers;
 * the scan fields carry a partial scan from one call to the next (both 0
 * when the bytes at pos are new). */
struct shm_serve {
    struct shm_view *view;          /* in: the generation writes go to */
    uint64_t seq;                   /* in/out: the last seq applied */
    uint64_t max_request;           /* in: bytes one request may take */
    uint8_t *out;                   /* in: where replies are appended */
    uint64_t out_cap;
    uint64_t out_len;               /* in/out */
    uint64_t served;                /* out: requests this call served */
    uint64_t stop;                  /* out: SHM_STOP_* */
    uint64_t next_len;              /* out, SHM_STOP_OBJECT: its bytes */
    uint64_t scan_at;               /* in/out: bytes of the object at pos */
    uint64_t scan_pending;          /*   scanned, objects still to scan */
    struct shm_apply_info info;     /* shm_apply's, reused */
    char err[SHM_ERR_LEN];          /* SHM_STOP_BAD: why */
};

/* Serves the requests in in[pos..len) until one it leaves to the caller,
 * the end of the bytes, or a full reply buffer; returns the position it
 * stopped at (s->stop says why). Every write it applies gets the next seq;
 * none is visible before the caller's shm_commit. A request whose apply
 * fails in any way (a bad blob, SHM_ENOSPACE, the last seq) is left to the
 * caller as SHM_STOP_OBJECT, nothing of it applied. */
uint64_t shm_serve(struct shm_serve *s, const char *in, uint64_t len,
                   uint64_t pos);

/* ---- serving a round of events (serve.c) ----
 * The daemon's loop in C: one epoll_wait on the daemon's epoll, then for
 * each connection the caller marked fast (no bytes or replies of its own
 * queued), a receive and shm_serve on it. What it cannot finish -- the
 * listener, a connection not marked fast, any event but readable, bytes
 * shm_serve left, a full buffer -- it leaves to the caller as an event,
 * with the bytes it received and the replies it wrote for it. The caller
 * handles those, commits, and then calls shm_round_send, which sends the
 * replies of the connections it served whole. */
#define SHM_ROUND_EVENTS     256       /* epoll events one round takes */
#define SHM_ROUND_IN         1048576   /* receive buffer of a round */
#define SHM_ROUND_OUT        1048576   /* reply buffer of a round */
/* Values of struct shm_round.fast[fd] (0: not served in C) */
#define SHM_FAST_CONN        1         /* a connection served by the round */
#define SHM_FAST_DOORBELL    2         /* a channel's eventfd: drained */

/* An event left to the caller; in_* and out_* lie in the round's buffers. */
struct shm_round_event {
    int32_t fd;
    uint32_t events;                /* epoll's mask; 0 after shm_round_send */
    uint64_t in_at, in_len;         /* received, not served */
    uint64_t out_at, out_len;       /* replies written, not sent */
};

/* Replies to send to fd after the commit. */
struct shm_round_reply {
    int32_t fd;
    uint32_t reserved;
    uint64_t at, len;
};

struct shm_round {
    int32_t epfd;                   /* in: the daemon's epoll */
    int32_t fast_len;               /* in: entries of fast */
    uint8_t *fast;                  /* in: fast[fd] 1: served here */
    uint8_t *inbuf;                 /* in: SHM_ROUND_IN bytes */
    uint8_t *outbuf;                /* in: SHM_ROUND_OUT bytes */
    uint64_t in_used;
    uint64_t served;                /* out: requests served */
    uint64_t left_count;            /* out: events in left */
    uint64_t reply_count;
    struct shm_round_event left[SHM_ROUND_EVENTS];
    struct shm_round_reply replies[SHM_ROUND_EVENTS];
    /* The channels (see below), served after the connections. */
    struct shm_chan_end *chans;     /* in: the daemon's channel entries */
    uint64_t chan_len;              /* in: entries in use (the highest + 1) */
    uint32_t *chan_left;            /* in: room for chan_len indices */
    uint32_t *chan_answered;        /* in: room for chan_len indices */
    uint64_t chan_left_count;       /* out: requests left to the caller */
    uint64_t chan_answered_count;   /* replies shm_round_send publishes */
};

/* Waits up to timeout_ms for events on r->epfd and serves what it can
 * through s (whose reply buffer becomes r->outbuf), then the requests
 * posted on channels (those it cannot serve are left in r->chan_left).
 * Returns the number of events plus channel requests taken (0 on a
 * timeout or a signal) or -errno. Nothing it applied is visible before
 * the caller's shm_commit. */
int64_t  shm_round_serve(struct shm_round *r, struct shm_serve *s,
                         int timeout_ms);
/* Publishes the channels' replies, then sends the replies of the
 * connections shm_round_serve served whole (call it after the commit).
 * Each it could not send whole is left in r->left with its rest (events
 * 0); returns how many. */
int64_t  shm_round_send(struct shm_round *r);

/* ---- the daemon's loop in C (serve.c) ----
 * Round after round while each is served whole in C: a round's writes are
 * committed (shm_commit), then its replies published and sent, then the
 * next round waits -- polling for a while after a round that served
 * something (the next request of a busy client comes sooner than a
 * wake-up; between turns it peeks at the channels for SHM_PEEK_NS with no
 * system call), then asleep in epoll. It returns to the caller when a round
 * left something to it (s's writes of that round then not committed:
 * the caller handles what was left, commits and sends), when replies
 * could not all be sent, when the generation's room runs short, or at the
 * deadline. It times requests and rounds into the caller's histograms. */
#define SHM_LOOP_DEADLINE    0         /* the deadline passed */
#define SHM_LOOP_LEFT        1         /* r->left / r->chan_left hold work,
                                          the round not committed */
#define SHM_LOOP_UNSENT      2         /* committed; r->left holds replies
                                          not sent whole (events 0) */
#define SHM_LOOP_RUNWAY      3         /* committed; the room runs short */
#define SHM_LOOP_BUCKETS     32        /* most histogram buckets */

struct shm_loop {
    int64_t deadline_ns;            /* in: CLOCK_MONOTONIC, return by then */
    struct shm_spin *spin;          /* in: the polling after a round,
                                       adapted (kept from call to call) */
    uint64_t min_live;              /* in: the room is checked from this */
    uint64_t dirty_room;            /*   many live keys on: return when */
    uint64_t arena_room;            /*   no more than these are left */
    uint64_t nbounds;               /* in: bucket upper bounds, ns */
    int64_t bounds_ns[SHM_LOOP_BUCKETS];
    uint64_t request_counts[SHM_LOOP_BUCKETS + 1];  /* out, added to: */
    uint64_t commit_counts[SHM_LOOP_BUCKETS + 1];   /*   by bucket */
    uint64_t request_ns;            /* out, added to: sums, and counts */
    uint64_t commit_ns;
    uint64_t commits;
    uint64_t served;                /* requests served (all rounds) */
    uint64_t stop;                  /* out: SHM_LOOP_* */
};

/* Runs rounds (shm_round_serve) on r through s until one of the
 * SHM_LOOP_* reasons; returns the last round's shm_round_serve result
 * (-errno stops it too). */
int64_t  shm_serve_loop(struct shm_round *r, struct shm_serve *s,
                        struct shm_loop *L);

/* ---- waiting (wait.c) ---------------------------------------------------
 * A synchronous write waits for its acknowledgement. Polling finds it a
 * few microseconds after the daemon sent it when both run at once, while
 * a sleeper needs a wake-up; but when processes outnumber cores, polling
 * takes the core the daemon needs. shm_wait_recv polls for the budget of
 * the caller's struct shm_spin (adapted to how that paid lately),
 * yielding the core on each turn, then sleeps in poll(). */
#define SHM_WAIT_WON         1         /* the bytes came while it polled */
#define SHM_WAIT_SLEPT       2         /* it polled in vain, then slept */
#define SHM_WAIT_CONTENDED   3         /* a yield gave the core away for
                                          long: it stopped polling, slept */
#define SHM_WAIT_SLEPT_ONLY  4         /* no budget: it slept at once */

/* How long a waiter polls (yielding the core on each turn) before it
 * sleeps, adapted to what polling bought lately. Private to one process
 * and used by one thread at a time: a client's waits for replies, the
 * daemon's loop between rounds (protocol.Spin wraps it for Python).
 *
 * Polling pays when the peer runs on another core and answers within the
 * spin. When processes outnumber cores (shm_spin_runnable: the kernel's
 * count of runnable processes, not the 1-minute load average, which
 * answers too late: a 3 s benchmark barely moves it) it depends on who
 * polls and who crowds the cores:
 * - the daemon polls only if the crowd is mostly its own active clients
 *   (shm_daemon_polls): their waits are what its polling shortens, and a
 *   client that sees the daemon's beat move polls without yielding and
 *   writes again within its time slice (chan.c). Other processes in the
 *   crowd lose the core the daemon polls on. Measured here: a daemon that
 *   polled beside an iterating process cut its writer 3-8 fold, while
 *   polling among 8 writers raised them 25-50% over a daemon that sleeps
 *   after each round;
 * - a client does (in_crowds): each turn yields its core to the processes
 *   it would wait for anyway, and costs a sched_yield, where a sleep costs
 *   a futex wait, the daemon's futex wake and two context switches.
 *   Measured here, 8 writers wrote 20-50% more than with clients that
 *   slept at once when crowded;
 * - a wait that ended while polling doubles the budget, up to the limit;
 * - one that had to sleep sets it to cover the wait it saw (with half
 *   again as margin) if polling that long is within the limit -- so the
 *   budget follows the peer's answer times, however the peer itself
 *   waits -- else halves it;
 * - a yield that gave the core away for long (another process ran) ends
 *   the spin at once and halves the budget;
 * - with no budget left, one wait in SHM_SPIN_PROBE_EVERY polls a little. */
struct shm_spin {
    int64_t limit_ns;               /* the longest poll (0: never poll) */
    int64_t ns;                     /* the budget: 0, or SHM_SPIN_MIN_NS
                                       up to limit_ns */
    int64_t look_at_ns;             /* when runnable() next reads the
                                       count (CLOCK_MONOTONIC) */
    int64_t runnable;               /* what the count said last */
    uint32_t cores;                 /* the cores this process may run on */
    uint32_t waits;                 /* waits with no budget (the probe) */
    uint32_t in_crowds;             /* 1: polls while crowded too */
};

/* A budget of limit_ns, for a process that may run on `cores` cores;
 * in_crowds 1 for a client (see above). */
void     shm_spin_init(struct shm_spin *s, int64_t limit_ns, uint32_t cores,
                       uint32_t in_crowds);
/* Processes runnable on this host now (the 4th field of /proc/loadavg,
 * "running/total"; the caller is one of them), or 0 if it cannot be read. */
int64_t  shm_runnable(void);
/* Processes runnable on this host as last counted (shm_runnable, read
 * every SHM_SPIN_LOOK_NS). A process that polls is runnable: two that poll
 * each other on two cores are not crowded, and a third that iterates makes
 * them so. */
int64_t  shm_spin_runnable(struct shm_spin *s);
/* Whether runnable processes outnumber the cores. */
int      shm_spin_crowded(struct shm_spin *s);
/* Whether the daemon polls between rounds, with `runnable` processes on
 * `cores` and `active` clients (see struct shm_spin): when not crowded, or
 * when the processes beyond its clients and itself are at most
 * 1/SHM_FOREIGN_SHARE of its clients. */
int      shm_daemon_polls(int64_t runnable, int64_t cores, int64_t active);
/* Nanoseconds to poll for the next wait (0: sleep at once): none while
 * crowded, unless in_crowds. */
int64_t  shm_spin_budget(struct shm_spin *s);
/* A wait of ns ended, as how (SHM_WAIT_*) says: adapts the budget. */
void     shm_spin_waited(struct shm_spin *s, int64_t ns, int32_t how);
/* A poll that found its answer; one that had to sleep or was contended. */
void     shm_spin_won(struct shm_spin *s);
void     shm_spin_lost(struct shm_spin *s);
/* Gives the core away once (sched_yield); 0 if that took over
 * SHM_CONTENDED_NS: another process ran, polling does not pay now. */
int      shm_yield_core(void);

/* Receives from the non-blocking stream socket fd into buf[0..cap): polls
 * for as long as spin's budget says (none if spin is NULL), then sleeps in
 * poll() for up to timeout_ms, and adapts spin to how the wait went.
 * Returns the bytes received, 0 at the end of the stream, -ETIMEDOUT if
 * nothing came in time, or -errno (-EINTR: a signal came; call again). */
int64_t  shm_wait_recv(int fd, uint8_t *buf, uint64_t cap,
                       struct shm_spin *spin, int timeout_ms);

/* ---- request channels (chan.c; their memory is shmmap.h's) ------------- */
/* What becomes of a channel's request in a round (shm_chan_end.state). */
#define SHM_CHAN_IDLE        0         /* nothing taken */
#define SHM_CHAN_LEFT        1         /* taken, left to the caller */
#define SHM_CHAN_ANSWERED    2         /* its reply waits for the commit */

/* The daemon's side of a channel: private, so nothing in it is the
 * client's to change. An entry with chan NULL is free. */
struct shm_chan_end {
    struct shm_chan *chan;          /* the daemon's mapping */
    int32_t efd;                    /* the doorbell (an eventfd) */
    int32_t conn_fd;                /* its connection (the caller's, to
                                       name the client of a request) */
    uint32_t state;                 /* SHM_CHAN_* */
    uint32_t done;                  /* the ticket last answered */
    uint32_t ticket;                /* the ticket taken this round */
    int64_t taken_ns;               /* when a request was last taken
                                       (CLOCK_MONOTONIC): an active client
                                       (SHM_ACTIVE_NS) */
    uint64_t in_at, in_len;         /* LEFT: the request, in the round's
                                       inbuf */
    uint64_t reply_len;
    uint8_t  reply[SHM_CHAN_REPLY]; /* ANSWERED: the reply to publish */
};

/* Daemon: creates a channel into the free entry e (its memfd sealed, both
 * mapped, the doorbell made); *memfd is the descriptor to pass to the
 * client, which the caller closes once passed. SHM_OK or -errno. */
int      shm_chan_open(struct shm_chan_end *e, int32_t *memfd);
/* Daemon: unmaps e's channel, closes its doorbell, frees e. */
void     shm_chan_close(struct shm_chan_end *e);
/* Daemon: the reply (msgpack bytes) to e's request that the caller
 * served; published with the round's (shm_round_send). SHM_EBUFSMALL if
 * it is over SHM_CHAN_REPLY bytes. */
int      shm_chan_answer(struct shm_round *r, uint64_t index,
                         const char *reply, uint64_t len);
/* Client: maps the channel memfd the daemon passed (and checks it is
 * one: its size and seals); NULL with errno set if it is not. */
struct shm_chan *shm_chan_attach(int memfd);
void     shm_chan_detach(struct shm_chan *c);
/* Client: writes request[0..len) into the channel as ticket and rings the
 * doorbell efd if the daemon sleeps. SHM_OK, or -EMSGSIZE if it is over
 * SHM_CHAN_REQUEST bytes (nothing posted). */
int      shm_chan_post(struct shm_chan *c, int efd, const char *request,
                       uint64_t len, uint32_t ticket);
/* Client: waits for the reply to ticket: polls as spin says (none if
 * spin is NULL), then sleeps on the futex, looking at sockfd every SHM_CHAN_CHECK_NS.
 * Returns the reply's length (its bytes in c->reply), -ETIMEDOUT, -EINTR
 * (a signal: call again), -EPROTO (a reply length past the area), or
 * -EPIPE when sockfd became readable (the daemon closed the connection or
 * wrote on it: the caller reads it). */
int64_t  shm_chan_wait(struct shm_chan *c, int sockfd, uint32_t ticket,
                       struct shm_spin *spin, int timeout_ms);
/* Client: a synchronous write in one call: frames [SHM_REQ_BATCH, id,
 * blob] into the channel (shm_batch_frame), posts it as ticket and waits
 * (shm_chan_batch_wait). */
int64_t  shm_chan_batch(struct shm_chan *c, int efd, int sockfd, uint64_t id,
                        const char *blob, uint64_t len, uint32_t ticket,
                        struct shm_spin *spin, int timeout_ms);
/* Client: shm_chan_wait for the reply to the batch request id posted as
 * ticket: 0 when it is that request's acknowledgement, its length (> 0)
 * when it is anything else (an error reply, for the caller to read), or
 * shm_chan_wait's -errno (-EPROTO for an empty reply). */
int64_t  shm_chan_batch_wait(struct shm_chan *c, int sockfd, uint32_t ticket,
                             uint64_t id, struct shm_spin *spin,
                             int timeout_ms);

/* ---- a client's batch request (frame.c) -------------------------------- */
#define SHM_BATCH_HEADER     16        /* bytes a client's framing of a
                                          batch request puts before the
                                          blob (shm_batch_frame) */

/* A client's framing of a batch request, [SHM_REQ_BATCH, id, bin]: the id
 * a msgpack uint64 and the blob's length a bin32 header, so the header
 * takes SHM_BATCH_HEADER bytes whatever they hold. Writes it at out. */
void     shm_batch_frame(uint8_t *out, uint64_t id, uint64_t blob_len);
/* Whether reply[0..len) is exactly the acknowledgement shm_serve writes
 * to the request shm_batch_frame framed with id: [id, OK, nil, seq] with
 * the id's bytes as the request had them. (Anything else -- an error, a
 * late reply -- is for the caller to decode.) */
int      shm_batch_acked(uint64_t id, const uint8_t *reply, uint64_t len);

/* ---- not API: a hook for shmmap.corebench ------------------------------ */
/* Lookups of the int keys [first, first + count) from C, to time the
 * lookup without the binding's cost; the number found. */
uint64_t shm_bench_lookup_ints(struct shm_view *v, int64_t first,
                               uint64_t count);

/* CFFI-END */

#endif /* SHMMAP_CORE_H */
