/*
 * shmmap.h -- the format of shmmap: the bytes that every process mapping a
 * map, or talking to its daemon through a channel, must agree on, whatever
 * language it is written in.
 *
 * Two versions cover it. SHM_LAYOUT_VERSION, stored in every segment
 * header, names the layout of the /dev/shm segments below; a process
 * refuses a segment of another version. The requests and the channel are
 * versioned by the protocol version a client sends in its hello
 * (shmmap/protocol.py). Everything else of the C core -- its API, the
 * structs its caller owns, its tuning -- is private (core.h, tuning.h) and
 * may change without either.
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
 *
 * A key's hash, in its entry and its slots' tags, is SipHash-1-3 (hash.c)
 * of its msgpack bytes, keyed with the map's seed0 and seed1.
 *
 * The Python package reads the section between the CFFI markers (and the
 * same sections of tuning.h and core.h: cext/build.py), so no number of
 * the format is written twice.
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
#define SHM_MAX_READERS      1024      /* reader slots per map */
#define SHM_MAX_SEQ          0x7fffffffffffffff /* highest seq a map takes:
                                          int64-safe, and a billion writes
                                          a second last 292 years; adoption
                                          refuses a committed_seq above it */
#define SHM_MAX_PROBE_RUN    1024      /* longest run of used index slots a
                                          valid index has: at load <= 1/2
                                          with a keyed hash, a run this long
                                          has odds below 2^-250 (Chernoff),
                                          and it keeps validation linear */

/* ---- values: the ext types that carry Python's types ------------------- */
/* msgpack has no tuple, set, datetime, date, Decimal or UUID: shmmap gives
 * each an ext type of its own (shmmap/shared/codec.py writes and reads
 * them), and mpack.c checks each payload, so that every value a daemon
 * stores decodes in every reader. Codes SHM_EXT_OWN_FIRST..127 are shmmap's (those not
 * listed are refused); below them they are the application's (opaque). */
#define SHM_EXT_OWN_FIRST    100
#define SHM_EXT_TUPLE        100       /* payload: one array */
#define SHM_EXT_SET          101       /* one array of hashable elements */
#define SHM_EXT_FROZENSET    102       /* one array of hashable elements */
#define SHM_EXT_DATETIME     103       /* ordinal u32, microsecond of the day
                                          u64, fold u8; when aware also its
                                          UTC offset in microseconds i64 and
                                          then the zone's name, if it has
                                          one, in UTF-8 (big-endian) */
#define SHM_EXT_DATE         104       /* ordinal u32 (big-endian) */
#define SHM_EXT_DECIMAL      105       /* str(Decimal): ASCII, no sNaN */
#define SHM_EXT_UUID         106       /* its 16 bytes */
#define SHM_EXT_DECIMAL_EXP_DIGITS 17  /* digits of a Decimal's exponent:
                                          Decimal() takes anything below
                                          10^18 - 1 */
#define SHM_MAX_ORDINAL      3652059   /* date.max.toordinal() */
#define SHM_US_PER_DAY       86400000000ULL

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

/* ---- requests ----------------------------------------------------------
 * A connection carries msgpack requests [op, request_id, *args] and
 * replies [request_id, status, *results] (shmmap/protocol.py). The C core
 * knows only the most frequent: a batch, [SHM_REQ_BATCH, id, bin], whose
 * blob is a concatenation of items, each an op byte and then msgpack
 * objects, and its acknowledgement [id, SHM_REPLY_OK, nil, seq]. */
#define SHM_REQ_BATCH        1         /* op of a batch: protocol Op.BATCH */
#define SHM_REPLY_OK         0         /* a reply's status: protocol OK */
#define SHM_OP_STORE         0         /* blob item: op, key, value */
#define SHM_OP_DELETE        1         /* blob item: op, key */

/* ---- request channels: a synchronous write without the socket ----------
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
 * so a busy pair makes no system call at all (chan.c says how neither
 * misses the other's word).
 *
 * The client can write every byte of the channel at any time, so the
 * daemon trusts none of it: it loads each word once, copies the request
 * into private memory before it parses it, and never reads back what it
 * wrote itself (its own tickets are private, struct shm_chan_end in
 * core.h). The seals mean the client cannot shrink the memfd under the
 * daemon's mapping (a SIGBUS). The memfd is struct shm_chan rounded up
 * to whole SHM_PAGEs; a client refuses one of any other size or without
 * the seals. A socket stays open beside the channel: connecting,
 * authorisation, every other request, and the end of either side. */
#define SHM_CHAN_REQUEST     65536     /* bytes one channel request may take */
#define SHM_CHAN_REPLY       4096      /* bytes of the reply area */

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

/* CFFI-END */

#endif /* SHMMAP_H */
