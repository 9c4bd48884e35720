/*
 * view.c -- a process's view on one mapped generation: opening it (the O(1)
 * header check every reader makes), and loading records and keys out of
 * shared memory, each word once, checked against the view's private
 * geometry. Garbage gives "not found", never a read outside the segment.
 */
#include <string.h>
#include "internal.h"

#define ERR(...) shm_fail(err, errlen, SHM_ECORRUPT, __VA_ARGS__)
#define U(x) ((unsigned long long)(x))

_Static_assert(sizeof(struct shm_gen_header) % sizeof(uint64_t) == 0,
               "the gen header is copied a word at a time");

/* Whether [off, off + n * unit) lies in [lo, hi), without overflow. */
static int span_ok(uint64_t off, uint64_t n, uint64_t unit, uint64_t lo,
                   uint64_t hi)
{
    return off >= lo && off <= hi && off % SHM_ALIGN == 0 &&
           n <= (hi - off) / unit;
}

/* The checks of a header copy h against the segment's size. */
static int check_header(const struct shm_gen_header *h, uint64_t size,
                        char *err, size_t errlen)
{
    if (h->magic != SHM_MAGIC_GEN)
        return ERR("bad magic 0x%016llx: not a shmmap generation",
                   U(h->magic));
    if (h->layout_version != SHM_LAYOUT_VERSION)
        return ERR("layout version %u, this shmmap reads %d",
                   h->layout_version, SHM_LAYOUT_VERSION);
    if (h->header_size != sizeof *h)
        return ERR("header size %u, expected %llu", h->header_size,
                   U(sizeof *h));
    if (h->segment_size > size)
        return ERR("header says %llu bytes, the segment has %llu",
                   U(h->segment_size), U(size));
    if (!is_pow2(h->read_slots) || !is_pow2(h->dirty_slots) ||
        h->read_slots < SHM_MIN_SLOTS || h->dirty_slots < SHM_MIN_SLOTS)
        return ERR("index sizes %llu and %llu are not powers of two >= %d",
                   U(h->read_slots), U(h->dirty_slots), SHM_MIN_SLOTS);
    if (h->entry_cap > SHM_MAX_ENTRIES || h->read_count >= h->read_slots ||
        h->dirty_cap >= h->dirty_slots ||
        h->read_count + h->dirty_cap > h->entry_cap)
        return ERR("entry counts do not fit: read %llu in %llu slots, dirty "
                   "%llu in %llu slots, %llu entries", U(h->read_count),
                   U(h->read_slots), U(h->dirty_cap), U(h->dirty_slots),
                   U(h->entry_cap));
    uint64_t end = h->segment_size;
    if (!span_ok(h->read_index_off, h->read_slots, sizeof(uint64_t),
                 sizeof *h, end) ||
        !span_ok(h->dirty_index_off, h->dirty_slots, sizeof(uint64_t),
                 h->read_index_off + h->read_slots * sizeof(uint64_t), end) ||
        !span_ok(h->entries_off, h->entry_cap, sizeof(struct shm_entry),
                 h->dirty_index_off + h->dirty_slots * sizeof(uint64_t),
                 end) ||
        !span_ok(h->arena_off, h->arena_cap, 1,
                 h->entries_off + h->entry_cap * sizeof(struct shm_entry),
                 end))
        return ERR("the parts of the segment overlap or run past its end");
    return SHM_OK;
}

int gen_header_load(const void *base, uint64_t size,
                    struct shm_gen_header *copy, char *err, size_t errlen)
{
    if (size < sizeof *copy)
        return ERR("segment of %llu bytes is smaller than a generation "
                   "header (%llu)", U(size), U(sizeof *copy));
    const uint64_t *from = base;
    for (size_t i = 0; i < sizeof *copy / sizeof(uint64_t); i++) {
        uint64_t word = load64(&from[i]);
        memcpy((uint8_t *)copy + i * sizeof word, &word, sizeof word);
    }
    return check_header(copy, size, err, errlen);
}

static uint64_t at_most(uint64_t n, uint64_t limit)
{
    return n < limit ? n : limit;
}

void view_from_header(struct shm_view *v, void *base, uint64_t size,
                      const struct shm_gen_header *hc)
{
    const struct shm_gen_header h = *hc;
    memset(v, 0, sizeof *v);
    v->base = base;
    v->size = size;
    v->hdr = base;
    v->seed0 = h.seed0;
    v->seed1 = h.seed1;
    v->read_count = h.read_count;
    v->read_mask = h.read_slots - 1;
    v->dirty_mask = h.dirty_slots - 1;
    v->dirty_cap = h.dirty_cap;
    v->entry_cap = h.entry_cap;
    v->arena_lo = h.arena_off;
    v->arena_hi = h.arena_off + h.arena_cap;
    v->read_index = (uint64_t *)(v->base + h.read_index_off);
    v->dirty_index = (uint64_t *)(v->base + h.dirty_index_off);
    v->entries = (struct shm_entry *)(v->base + h.entries_off);
    v->counters = &v->own;
    /* The writer's counters start from this one copy, clamped so that
     * even a header changed after validation cannot place a write outside
     * its part; the writer never loads them again. */
    v->dirty_count = at_most(h.dirty_count, h.dirty_cap);
    v->arena_used = at_most(h.arena_used, h.arena_cap);
    v->live_count = h.live_count;
    v->live_bytes = h.live_bytes;
    v->committed = h.committed_seq;
    v->max_key = SHM_DEFAULT_MAX_KEY;
    v->max_value = SHM_DEFAULT_MAX_VALUE;
}

int shm_view_open(struct shm_view *v, void *base, uint64_t size,
                  char *err, size_t errlen)
{
    struct shm_gen_header h;
    int rc = gen_header_load(base, size, &h, err, errlen);
    if (rc == SHM_OK)
        view_from_header(v, base, size, &h);
    return rc;
}

int rec_load(const struct shm_view *v, uint64_t at, uint64_t hi,
             struct rec *r)
{
    if (at < v->arena_lo || at % SHM_ALIGN != 0 || hi < SHM_REC_HEADER ||
        at > hi - SHM_REC_HEADER)
        return 0;
    const struct shm_record *p = (const void *)(v->base + at);
    r->at = at;
    r->seq = load64(&p->seq);
    r->prev = load64(&p->prev);
    r->len = load32(&p->len);
    r->flags = load32(&p->flags);
    return r->len <= hi - at - SHM_REC_HEADER;
}

int key_load(const struct shm_view *v, uint64_t e, uint64_t hi,
             struct key_ref *k)
{
    const struct shm_entry *p = &v->entries[e];
    k->hash = load64(&p->hash);
    k->off = load64(&p->key_off);
    k->len = load32(&p->key_len);
    return k->off >= v->arena_lo && k->off <= hi && k->len <= hi - k->off;
}

int shm_visible_entry(const struct shm_view *v, uint64_t e, uint64_t snap,
                      struct rec *r)
{
    /* Acquire: pairs with the release store of head in write.c's
     * append_record, after the record it names was written. Records
     * reached through prev were complete before that head was published,
     * so this one load covers the whole chain. */
    uint64_t at = __atomic_load_n(&v->entries[e].head, __ATOMIC_ACQUIRE);
    /* A chain goes strictly back (prev < at), so this ends within
     * arena / SHM_ALIGN steps whatever the bytes say. */
    while (at != SHM_NO_RECORD) {
        if (!rec_load(v, at, v->arena_hi, r))
            return 0;
        if (r->seq <= snap)
            return !(r->flags & SHM_REC_TOMBSTONE);
        if (r->prev >= at)
            return 0;
        at = r->prev;
    }
    return 0;
}

/* Probes one index for key; returns the entry number or -1. Entries it can
 * name lie in [lo, hi). At most one pass over the index. */
static int64_t probe(const struct shm_view *v, const uint64_t *index,
                     uint64_t mask, uint64_t lo, uint64_t hi, uint64_t hash,
                     const char *key, uint64_t len)
{
    for (uint64_t i = 0; i <= mask; i++) {
        /* Acquire: pairs with the release store that published the slot
         * after its entry was complete (write.c's new_entry); slots of the
         * read index were complete before the generation was published. */
        uint64_t slot = __atomic_load_n(&index[(hash + i) & mask],
                                        __ATOMIC_ACQUIRE);
        if (slot == SHM_SLOT_EMPTY)
            return -1;
        if (!slot_tag_matches(slot, hash))
            continue;
        uint64_t e = slot_entry(slot);
        struct key_ref k;
        if (e < lo || e >= hi)
            return -1;              /* garbage: treat the key as absent */
        if (key_load(v, e, v->arena_hi, &k) && k.hash == hash &&
            k.len == len && memcmp(v->base + k.off, key, len) == 0)
            return (int64_t)e;
    }
    return -1;
}

int64_t shm_find_entry(struct shm_view *v, uint64_t hash, const char *key,
                       uint64_t len, int count_miss)
{
    int64_t e = probe(v, v->read_index, v->read_mask, 0, v->read_count,
                      hash, key, len);
    if (e >= 0 || v->dirty_cap == 0)
        return e;
    if (count_miss)
        count(&v->counters->misses);
    return probe(v, v->dirty_index, v->dirty_mask, v->read_count,
                 v->read_count + v->dirty_cap, hash, key, len);
}
