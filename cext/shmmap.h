/*
 * shmmap.h -- the shared-memory layout of shmmap and the C core's API.
 *
 * This header is the single source of truth for the layout: the Python
 * package reads the section between the CFFI markers (constants become
 * `#define NAME ...` resolved by the compiler, structs and prototypes are
 * taken as they are), so no number of the layout is written twice.
 *
 * Three kinds of POSIX shared-memory segment make up a map NAME:
 *
 *   /shmmap:NAME          struct shm_map_header: who owns the map, its hash
 *                         seed, and which generation is current.
 *   /shmmap:NAME:g<gen>   one generation: struct shm_gen_header, then the
 *                         read index, the dirty index, the entries array and
 *                         the arena, at the offsets the header records.
 *   /shmmap:NAME:readers  SHM_MAX_READERS reader slots, one cache line each:
 *                         the only memory that clients write.
 *
 * A map's name never contains ':', so no segment of one map can carry the
 * name of another map's segment (map "X:readers" cannot exist).
 *
 * One process, the daemon, writes generations; any number of readers map
 * them PROT_READ. Within a generation nothing published is ever overwritten
 * except the words marked "atomic" below, each a naturally aligned 8-byte
 * word stored with release and loaded with acquire semantics. Every other
 * byte a reader can reach was written before a release store that the reader
 * acquire-loaded on its way there, so it is complete and never changes.
 *
 * Generation layout (offsets from the segment start, all 8-byte aligned):
 *
 *   +-----------------+  0
 *   | shm_gen_header  |
 *   +-----------------+  read_index_off
 *   | read index      |  read_slots words: slot = tag(hash) | (entry + 1)
 *   +-----------------+  dirty_index_off
 *   | dirty index     |  dirty_slots words, same encoding, insert-only
 *   +-----------------+  entries_off
 *   | entries         |  entry_cap x struct shm_entry; [0, read_count) is
 *   |                 |  the read table, the dirty table follows it
 *   +-----------------+  arena_off
 *   | arena           |  append-only: key bytes and shm_record versions
 *   +-----------------+  arena_off + arena_cap == segment_size
 */
#ifndef SHMMAP_H
#define SHMMAP_H

#include <stdint.h>
#include <stddef.h>

/* CFFI-BEGIN */

/* ---- identity ---------------------------------------------------------- */
#define SHM_MAGIC_MAP        0x50414d4d48530001  /* "SHMMAP" + kind 1 */
#define SHM_MAGIC_GEN        0x50414d4d48530002  /* "SHMMAP" + kind 2 */
#define SHM_MAGIC_READERS    0x50414d4d48530003  /* "SHMMAP" + kind 3 */
#define SHM_LAYOUT_VERSION   3         /* 2: map version word, record entry
                                          index, committed_arena, base_arena;
                                          3: segment names separated by a colon,
                                          which map names lack (see above) */
#define SHM_NAME_PREFIX      "/shmmap:"
#define SHM_GEN_INFIX        ":g"
#define SHM_READERS_SUFFIX   ":readers"
#define SHM_LEGACY_PREFIX    "/shmmap-"  /* layout 2's names: /shmmap-NAME,
                                            /shmmap-NAME-g<gen>, -readers */
#define SHM_NAME_MAX         200       /* bytes of a map's name */
#define SHM_SOCKET_PATH_MAX  108       /* sizeof(sockaddr_un.sun_path) */

/* ---- geometry ---------------------------------------------------------- */
#define SHM_ALIGN            8         /* every offset and record */
#define SHM_CACHE_LINE       64
#define SHM_PAGE             4096
#define SHM_MIN_SLOTS        16        /* smallest index, a power of two */
#define SHM_LOAD_INVERSE     2         /* index slots per entry: load <= 1/2 */
#define SHM_MIN_DIRTY        1024      /* dirty entries a new generation takes
                                          at least, before it must promote */
#define SHM_DIRTY_PER_LIVE   1         /* ... and at least this many per live
                                          entry: promotion copies live
                                          entries, so growing dirty with them
                                          keeps inserts amortized O(1) */
#define SHM_MIN_ARENA        65536     /* arena bytes free after a build */
#define SHM_ARENA_PER_LIVE   1         /* free arena bytes per live byte */
#define SHM_MISSES_PER_LIVE  4         /* misses since the last promotion
                                          that cost about one promotion,
                                          per live entry (a miss costs one
                                          more probe, a promotion copies) */
#define SHM_MAX_ENTRIES      0x7fffffff /* an entry index fits in 31 bits
                                          (a record's flags carry it) */
#define SHM_MAX_SEGMENT      0x8000000000 /* 512 GiB: offsets fit in 39 bits */
#define SHM_SLOT_EMPTY       0
#define SHM_SLOT_INDEX_MASK  0xffffffff /* low half: entry index + 1 */
#define SHM_SLOT_TAG_SHIFT   32         /* high half: high half of the hash */

/* ---- records ----------------------------------------------------------- */
#define SHM_REC_TOMBSTONE    1         /* shm_record.flags: a deletion */
#define SHM_REC_ENTRY_SHIFT  1         /* ... and above this bit, the index
                                          of the entry the record belongs to
                                          (how a delta scan finds its key) */
#define SHM_REC_HEADER       24        /* sizeof(struct shm_record) */
#define SHM_NO_RECORD        0         /* head/prev: end of the chain */

/* ---- limits ------------------------------------------------------------ */
#define SHM_MAX_DEPTH        32        /* nesting of a key or value */
#define SHM_DEFAULT_MAX_KEY  65536
#define SHM_DEFAULT_MAX_VALUE 16777216
#define SHM_MAX_READERS      1024      /* reader slots per map */
#define SHM_ERR_LEN          256       /* bytes of an err buffer: room for
                                          any message the core writes */
#define SHM_MAX_SEQ          0x7fffffffffffffff /* highest seq a map takes:
                                          int64-safe, and a billion writes
                                          a second last 292 years; adoption
                                          refuses a committed_seq above it */
#define SHM_MAX_PROBE_RUN    1024      /* longest run of used index slots a
                                          valid index has: at load <= 1/2
                                          with a keyed hash, a run this long
                                          has odds below 2^-250 (Chernoff),
                                          and it keeps validation linear */

/* ---- promotion beside the live generation (shmmap/promotion.py) -------- */
#define SHM_PROMOTE_RUNWAY   4         /* the daemon starts building the next
                                          generation in the background once
                                          less than 1/RUNWAY of the dirty
                                          entries or arena bytes a generation
                                          started with is left: the rest is
                                          the room writes take while the
                                          build runs (a write that finds it
                                          gone waits for the build) */
#define SHM_BACKGROUND_MIN_LIVE 16384 /* ... once it holds this many live
                                          keys: a smaller map promotes when
                                          full, in the loop, in about as
                                          long as a write's round trip */
#define SHM_REPLAY_RESERVE   4         /* a background build sizes the next
                                          generation for live(S) plus at most
                                          1/RESERVE of the current one's room
                                          for the writes replayed into it */
#define SHM_CANCEL_EVERY     4096      /* entries a build copies between two
                                          looks at its cancel flag */
#define SHM_REPLAY_MIN       65536     /* first allocation of a replay log */

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

/* ---- batch operations (the first msgpack object of each blob item) ----- */
#define SHM_OP_STORE         0         /* op, key, value */
#define SHM_OP_DELETE        1         /* op, key */

/* The map header: segment /shmmap:NAME. Written at creation; daemon_pid and
 * current_gen change later. */
struct shm_map_header {
    uint64_t magic;                 /* SHM_MAGIC_MAP */
    uint32_t layout_version;        /* SHM_LAYOUT_VERSION */
    uint32_t header_size;           /* sizeof(struct shm_map_header) */
    uint64_t seed0;                 /* SipHash key: random per map, so that */
    uint64_t seed1;                 /*   no client can pick colliding keys */
    uint64_t created_ns;            /* CLOCK_REALTIME at creation */
    /* atomic. The daemon release-stores its pid after it has validated or
     * created every segment and listens on socket_path; clients acquire-load
     * it to tell a live daemon (kill(pid, 0)) from a stale map. */
    uint64_t daemon_pid;
    /* atomic. Release-stored by the daemon after generation current_gen is
     * complete and before the previous one is marked superseded; readers
     * acquire-load it when their generation is superseded. A reader that then
     * finds the name already unlinked loads it again: a newer one exists. */
    uint64_t current_gen;
    /* atomic. Changes whenever what a reader sees may have changed: the
     * daemon release-stores a new value after each commit (after the
     * generation's committed_seq) and after each publication (after the
     * old generation is marked superseded). A client's cache compares it
     * with the value it last refreshed at: equal means that nothing was
     * committed or published since, so its decoded objects are current.
     * (The compare's plain load is enough: a refresh then acquire-loads
     * it again, before it loads anything else.) */
    uint64_t version;
    uint64_t reserved[8];
    char socket_path[SHM_SOCKET_PATH_MAX];  /* NUL-terminated */
    uint8_t pad[20];
};

/* A generation's header. Every field above committed_seq is written once by
 * shm_gen_init/shm_build before the generation is published (current_gen's
 * release store orders them before any reader's first access). */
struct shm_gen_header {
    uint64_t magic;                 /* SHM_MAGIC_GEN */
    uint32_t layout_version;
    uint32_t header_size;           /* sizeof(struct shm_gen_header) */
    uint64_t gen;                   /* its number; the name's suffix */
    uint64_t segment_size;
    uint64_t seed0;                 /* copy of the map's seed: a generation */
    uint64_t seed1;                 /*   is self-describing */
    uint64_t base_seq;              /* committed_seq when it was built */
    uint64_t read_count;            /* entries [0, read_count): read table */
    uint64_t dirty_cap;             /* dirty entries it can take */
    uint64_t read_slots;            /* power of two */
    uint64_t dirty_slots;           /* power of two, >= 2 * dirty_cap */
    uint64_t entry_cap;             /* >= read_count + dirty_cap */
    uint64_t arena_cap;
    uint64_t read_index_off;
    uint64_t dirty_index_off;
    uint64_t entries_off;
    uint64_t arena_off;
    uint64_t base_arena;            /* arena bytes the build took (the read
                                       table's keys and records): where a
                                       delta scan of this generation starts */
    uint64_t reserved0[6];          /* the atomics start a cache line */
    /* ---- atomics: one writer (the daemon), many readers ---- */
    /* Every record with seq <= committed_seq is complete and reachable. The
     * daemon release-stores it last in a commit, after the records, heads,
     * entries, slots, dirty_count and arena_used of that commit; a reader
     * acquire-loads it first, so all it then reaches for seq <= S is
     * complete. Records with seq > S may be reachable too: readers skip them
     * by seq, which is why heads can be published before the commit. */
    uint64_t committed_seq;
    /* Dirty entries published: release-stored after each new entry and its
     * slot are complete. Iteration scans [0, read_count + dirty_count). */
    uint64_t dirty_count;
    /* Arena bytes used; release-stored with each append. Statistics and
     * adoption only: readers never need it to stay in bounds. */
    uint64_t arena_used;
    /* Live keys and their bytes at committed_seq: stored by shm_commit
     * before committed_seq; statistics, read relaxed. */
    uint64_t live_count;
    uint64_t live_bytes;
    /* Release-stored to 1 after a newer generation is published in
     * current_gen; readers acquire-load it before each operation. */
    uint64_t superseded;
    /* Arena bytes in use at the last commit: release-stored by shm_commit
     * before committed_seq. Every key and record below arena_off + it is
     * complete, and its entry published, for a reader that acquire-loads
     * it (a delta scan stops there, or at the first record past its
     * snapshot, whichever comes first). */
    uint64_t committed_arena;
    uint64_t reserved1[1];
};

/* One key. key_off, key_len and hash never change once the entry is
 * published; head is atomic: release-stored after the record it points to is
 * complete, acquire-loaded by readers. */
struct shm_entry {
    uint64_t hash;
    uint64_t key_off;               /* segment offset of the key's msgpack */
    uint32_t key_len;
    uint32_t reserved;
    uint64_t head;                  /* newest shm_record, or SHM_NO_RECORD */
};

/* One version of a value, in the arena; value bytes follow the header.
 * Records are appended, so prev < the record's own offset: a chain is
 * strictly decreasing, which bounds every walk even over garbage. */
struct shm_record {
    uint64_t seq;
    uint64_t prev;                  /* older version, or SHM_NO_RECORD */
    uint32_t len;
    uint32_t flags;                 /* SHM_REC_TOMBSTONE | entry index <<
                                       SHM_REC_ENTRY_SHIFT */
};

/* One reader's cache line in /shmmap:NAME:readers. The client that owns it
 * writes it with relaxed stores; the daemon reads it as untrusted input. */
struct shm_reader_slot {
    uint64_t pid;                   /* 0: free */
    uint64_t gen;                   /* newest generation it has mapped */
    uint64_t lookups;
    uint64_t misses;                /* lookups that probed the dirty index */
    uint64_t iterations;            /* export batches */
    uint64_t mapped_gens;           /* generations it still holds mapped */
    uint64_t oldest_gen;            /* oldest of those */
    uint64_t reserved;
};

struct shm_readers_header {
    uint64_t magic;                 /* SHM_MAGIC_READERS */
    uint32_t layout_version;
    uint32_t slot_count;
    uint64_t reserved[6];
};

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

/* ---- the API -------------------------------------------------------------
 * Return convention, as in LMDB: an int status is SHM_OK (0) or one code of
 * the status table above (shm_strerror names each). A function that takes
 * err/errlen also writes a message naming the fault there on failure (err
 * may be NULL). Functions returning int64_t return a non-negative result or
 * a negative code. Nothing a function reads from shared memory is trusted:
 * every length and offset is loaded once, checked, and used from that copy.
 */

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
/* A connection carries msgpack requests [op, request_id, *args] (see
 * shmmap/protocol.py). shm_serve takes a connection's received bytes and
 * serves the simplest and most frequent request, [SHM_REQ_BATCH, id, bin],
 * itself: it applies the blob (shm_apply) and writes the reply
 * [id, SHM_REPLY_OK, nil, seq]. Everything else it leaves to the caller at
 * the byte where that request starts, after finding where it ends. */
#define SHM_REQ_BATCH        1         /* op of a batch: protocol Op.BATCH */
#define SHM_REPLY_OK         0         /* a reply's status: protocol OK */
#define SHM_REPLY_MAX        21        /* bytes of the longest reply it
                                          writes: array header, int64 id,
                                          status, nil, uint64 seq */
#define SHM_BATCH_HEADER     16        /* bytes a client's framing of a
                                          batch request puts before the
                                          blob (shm_batch_frame) */
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

/* A client's framing of a batch request, [SHM_REQ_BATCH, id, bin]: the id
 * a msgpack uint64 and the blob's length a bin32 header, so the header
 * takes SHM_BATCH_HEADER bytes whatever they hold. Writes it at out. */
void     shm_batch_frame(uint8_t *out, uint64_t id, uint64_t blob_len);
/* Whether reply[0..len) is exactly the acknowledgement shm_serve writes
 * to the request shm_batch_frame framed with id: [id, OK, nil, seq] with
 * the id's bytes as the request had them. (Anything else -- an error, a
 * late reply -- is for the caller to decode.) */
int      shm_batch_acked(uint64_t id, const uint8_t *reply, uint64_t len);

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
#define SHM_ROUND_RECV       65536     /* bytes of one receive */
#define SHM_ROUND_IN         1048576   /* receive buffer of a round */
#define SHM_ROUND_OUT        1048576   /* reply buffer of a round */

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

/* ---- a client's wait for a reply (call.c) ----
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
#define SHM_CONTENDED_NS     50000     /* a yield this long: contended */
#define SHM_SPIN_MIN_NS      5000      /* a spin budget below this is none */
#define SHM_SPIN_PROBE_EVERY 64        /* with no budget, one wait in this
                                          many polls a little: to notice
                                          when polling pays again */
#define SHM_SPIN_LOOK_NS     100000000 /* how often runnable() reads the
                                          kernel's count of runnable
                                          processes (/proc/loadavg) */
#define SHM_ACTIVE_NS        1000000   /* a channel whose request the
                                          daemon took this recently is an
                                          active client's */
#define SHM_FOREIGN_SHARE    4         /* the daemon polls in crowds while
                                          other processes are at most one in
                                          this many of its active clients */
#define SHM_BEAT_STILL_NS    10000     /* a client stops following the
                                          daemon's beat when it stood still
                                          this long: several of the daemon's
                                          polling turns, so it lost its core */
#define SHM_PEEK_NS          2000      /* between polling turns, the daemon
                                          looks at the channels this long
                                          with no system call */
#define SHM_EPOLL_EVERY_NS   20000     /* ... and while posts keep it from
                                          epoll_wait, calls it this often
                                          anyway, for the sockets */

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

/* ---- request channels (chan.c): a synchronous write without the socket ----
 * A channel is one client's request slot in shared memory: a memfd the
 * daemon creates per connection on request (Op.CHANNEL), sizes, seals
 * against shrinking and growing, and passes to the client with an eventfd
 * (its doorbell) over the socket (SCM_RIGHTS). Nothing is named in
 * /dev/shm, and only the two processes map it. The client writes one
 * request -- the same msgpack bytes it would send on the socket,
 * [BATCH, id, bin] -- and posts it; the daemon serves it in its round,
 * commits, writes the reply bytes and marks it done. Both sides poll a
 * little (the other may answer within microseconds) and then sleep: the
 * daemon in epoll, woken by the doorbell; the client on a futex on `done`.
 * Each side rings or wakes the other only when that one said it sleeps,
 * so a busy pair makes no system call at all.
 *
 * The client can write every byte of the channel at any time, so the
 * daemon trusts none of it: it loads each word once, copies the request
 * into private memory before it parses it, and never reads back what it
 * wrote itself (its own tickets are private, struct shm_chan_end). The
 * seals mean the client cannot shrink the memfd under the daemon's
 * mapping (a SIGBUS). A socket stays open beside the channel: connecting,
 * authorisation, every other request, and the end of either side. */
#define SHM_CHAN_REQUEST     65536     /* bytes one channel request may take */
#define SHM_CHAN_REPLY       4096      /* bytes of the reply area */
#define SHM_CHAN_CHECK_NS    20000000  /* a sleeping client looks at its
                                          socket this often: the daemon's
                                          death ends a wait this soon */
/* Values of struct shm_round.fast[fd] (0: not served in C) */
#define SHM_FAST_CONN        1         /* a connection served by the round */
#define SHM_FAST_DOORBELL    2         /* a channel's eventfd: drained */

/* The shared memory of one channel. Words the client writes and words the
 * daemon writes lie on separate cache lines (no false sharing while both
 * poll). Tickets are the client's count of requests: it posts ticket n,
 * the daemon answers with done = n; both compare by equality (they wrap). */
struct shm_chan {
    /* Written by the client. */
    uint32_t posted;                /* atomic: the ticket of the request in
                                       `request`; seq_cst store after the
                                       request's bytes and request_len */
    uint32_t client_sleeps;         /* atomic: 1 while the client sleeps,
                                       or is about to, on `done` */
    uint64_t request_len;           /* bytes of the request */
    uint8_t  client_pad[SHM_CACHE_LINE - 16];
    /* Written by the daemon. */
    uint32_t done;                  /* atomic, the client's futex word: the
                                       ticket answered; seq_cst store after
                                       the reply's bytes and reply_len */
    uint32_t daemon_sleeps;         /* atomic: 1 while the daemon sleeps, or
                                       is about to, in epoll */
    uint64_t reply_len;             /* bytes of the reply */
    uint32_t beat;                  /* atomic, relaxed, advisory: the
                                       daemon adds one at each polling turn,
                                       so a waiting client sees it is on a
                                       core (chan.c). Nothing relies on its
                                       value: a wrong one changes only how
                                       long a client polls before it yields */
    uint8_t  daemon_pad[SHM_CACHE_LINE - 20];
    uint8_t  request[SHM_CHAN_REQUEST];
    uint8_t  reply[SHM_CHAN_REPLY];
};

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

/* Benchmarks: lookups of the int keys [first, first + count) from C; the
 * number found. */
uint64_t shm_bench_lookup_ints(struct shm_view *v, int64_t first,
                               uint64_t count);

/* CFFI-END */

#endif /* SHMMAP_H */
