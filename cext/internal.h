/*
 * internal.h -- helpers shared by the C core's files; not part of the API.
 *
 * The headers: shmmap.h is the format (what other processes agree on),
 * core.h the API the binding calls, tuning.h the numbers chosen to tune
 * it, mpack.h msgpack's bytes. The files depend on each other in one
 * direction only:
 *   status.c  codes and messages        (everyone)
 *   mpack.c   msgpack checks            (validate.c, write.c, serve.c)
 *   hash.c    the keyed hash            (view.c, read.c, validate.c, write.c)
 *   view.c    opening a view, loading records and keys, finding entries
 *   read.c    lookups and export        (readers)
 *   delta.c   what changed since a seq  (readers' caches)
 *   validate.c  full validation         (uses view.c)
 *   write.c   the writer                (uses view.c)
 *   wait.c    waiting: the clock, the spin policy, a client's socket wait
 *   serve.c   the daemon's hot path and loop (uses write.c, wait.c)
 *   frame.c   a client's batch request and its acknowledgement
 *   chan.c    request channels          (uses wait.c, frame.c)
 */
#ifndef SHMMAP_INTERNAL_H
#define SHMMAP_INTERNAL_H

#include "core.h"
#include "mpack.h"
#include "tuning.h"

/* Static checks that the layout is what shmmap.h promises. */
_Static_assert(sizeof(struct shm_record) == SHM_REC_HEADER, "record header");
_Static_assert(sizeof(struct shm_entry) == 32, "entry is half a cache line");
_Static_assert(sizeof(struct shm_reader_slot) == SHM_CACHE_LINE,
               "reader slot is one cache line");
_Static_assert(sizeof(struct shm_gen_header) % SHM_CACHE_LINE == 0,
               "gen header fills whole cache lines");
_Static_assert(sizeof(struct shm_map_header) % SHM_CACHE_LINE == 0,
               "map header fills whole cache lines");
_Static_assert(sizeof(struct shm_readers_header) == SHM_CACHE_LINE,
               "readers header is one cache line");
_Static_assert(SHM_LOAD_INVERSE >= 2, "SHM_MAX_PROBE_RUN assumes load <= 1/2");

/* ---- waiting (wait.c): the clock and the polling turn that the client's
 * waits and the daemon's loop share ---------------------------------------- */
#define NS_PER_SEC          1000000000LL
#define NS_PER_MS           1000000LL

/* CLOCK_MONOTONIC, in ns (time.monotonic() in Python). */
int64_t shm_now_ns(void);
/* One turn of a poll that may last until `until`: 1 to look again (the
 * core given away meanwhile), or 0 with *how SHM_WAIT_SLEPT (the budget
 * ran out) or SHM_WAIT_CONTENDED (see shm_yield_core). */
int shm_spin_turn(int64_t until, int32_t *how);

/* Tells the core this is a busy-wait (a poll that does not yield): it
 * saves power and frees the sibling hyperthread for a moment. */
static inline void shm_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Formats a message into err (which may be NULL) and returns code.
 * (status.c) */
int shm_fail(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* ---- loading shared words ----------------------------------------------
 * Another process may change any word of a segment at any time (the daemon
 * appends; a corrupt or hostile writer may change anything). A plain load
 * lets the compiler load a word again where it is used, so a length checked
 * in one load could be another length by the copy that trusts it. These
 * load exactly once, into the local that is then checked and used. */

/* Relaxed: orders nothing (the acquire loads of committed_seq, slots,
 * heads and dirty_count do); being atomic, it is one load the compiler may
 * neither repeat nor split. */
static inline uint64_t load64(const uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

/* Relaxed, for the same reason as load64. */
static inline uint32_t load32(const uint32_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

/* Bumps a counter in the reader's slot. The slot has one writer process,
 * but threads of that process may race here: a relaxed load and store (not
 * an atomic add, which would cost a locked instruction per lookup) can lose
 * an increment under such a race and never tears the word. The daemon reads
 * these words relaxed: they are statistics, they order nothing. */
static inline void count(uint64_t *word)
{
    __atomic_store_n(word, __atomic_load_n(word, __ATOMIC_RELAXED) + 1,
                     __ATOMIC_RELAXED);
}

/* A record's header as loaded once, and where it is. */
struct rec {
    uint64_t at;                    /* segment offset of the record */
    uint64_t seq;
    uint64_t prev;
    uint32_t len;
    uint32_t flags;
};

/* An entry's key as loaded once. */
struct key_ref {
    uint64_t hash;
    uint64_t off;
    uint32_t len;
};

/* ---- views (view.c): used by read.c, validate.c and write.c ----------- */

/* Copies a generation header out of shared memory, one load per word, and
 * checks the copy against size. SHM_OK or SHM_ECORRUPT (with err). */
int gen_header_load(const void *base, uint64_t size,
                    struct shm_gen_header *copy, char *err, size_t errlen);

/* Fills v from a header copy that gen_header_load checked. */
void view_from_header(struct shm_view *v, void *base, uint64_t size,
                      const struct shm_gen_header *h);

/* Loads the record header at offset at into *r; 1 if a whole record and
 * its value lie in [v->arena_lo, hi), else 0. */
int rec_load(const struct shm_view *v, uint64_t at, uint64_t hi,
             struct rec *r);

/* Loads entry e's key into *k; 1 if the key lies in [v->arena_lo, hi). */
int key_load(const struct shm_view *v, uint64_t e, uint64_t hi,
             struct key_ref *k);

/* The newest record of entry e's chain with seq <= snap, if it holds a
 * value (not a tombstone): 1 and *r, else 0. */
int shm_visible_entry(const struct shm_view *v, uint64_t e, uint64_t snap,
                      struct rec *r);

/* The entry of key (hash, key[0..len)) in the read index, then the dirty
 * one (a miss, counted if count_miss), or -1. */
int64_t shm_find_entry(struct shm_view *v, uint64_t hash, const char *key,
                       uint64_t len, int count_miss);

/* How far the entries array reaches for a reader: the read table and the
 * published dirty entries. */
static inline uint64_t shm_entry_end(const struct shm_view *v)
{
    /* Acquire: pairs with the release store of dirty_count after each new
     * entry, so the entries below it are complete. */
    uint64_t dirty = __atomic_load_n(&v->hdr->dirty_count, __ATOMIC_ACQUIRE);
    return v->read_count + (dirty < v->dirty_cap ? dirty : v->dirty_cap);
}

static inline uint64_t align_up(uint64_t n, uint64_t a)
{
    return (n + a - 1) & ~(a - 1);
}

static inline int is_pow2(uint64_t n)
{
    return n != 0 && (n & (n - 1)) == 0;
}

static inline uint64_t slot_make(uint64_t hash, uint64_t entry)
{
    return (hash & ~(uint64_t)SHM_SLOT_INDEX_MASK) | (entry + 1);
}

static inline uint64_t slot_entry(uint64_t slot)
{
    return (slot & SHM_SLOT_INDEX_MASK) - 1;
}

static inline int slot_tag_matches(uint64_t slot, uint64_t hash)
{
    return (slot >> SHM_SLOT_TAG_SHIFT) == (hash >> SHM_SLOT_TAG_SHIFT);
}

/* Arena bytes a key and one value record take. */
static inline uint64_t arena_cost(uint64_t key_len, uint64_t value_len)
{
    return align_up(key_len, SHM_ALIGN) + SHM_REC_HEADER +
           align_up(value_len, SHM_ALIGN);
}

#endif /* SHMMAP_INTERNAL_H */
