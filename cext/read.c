/*
 * read.c -- what readers do: open a view on a mapped generation, look a key
 * up at a snapshot, export the entries visible at a snapshot.
 *
 * Readers never write the map and never wait. They may run on a PROT_READ
 * mapping of a segment that some other process fills, so every offset they
 * read is checked against the geometry copied at shm_view_open: garbage
 * gives "not found", never a crash.
 */
#include <string.h>
#include "internal.h"

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

int shm_view_open(struct shm_view *v, void *base, uint64_t size,
                  char *err, size_t errlen)
{
    const struct shm_gen_header *h = base;
    int rc = gen_check_header(h, size, err, errlen);
    if (rc != SHM_OK)
        return rc;
    memset(v, 0, sizeof *v);
    v->base = base;
    v->size = size;
    v->hdr = base;
    v->seed0 = h->seed0;
    v->seed1 = h->seed1;
    v->read_count = h->read_count;
    v->read_mask = h->read_slots - 1;
    v->dirty_mask = h->dirty_slots - 1;
    v->dirty_cap = h->dirty_cap;
    v->entry_cap = h->entry_cap;
    v->arena_lo = h->arena_off;
    v->arena_hi = h->arena_off + h->arena_cap;
    v->read_index = (uint64_t *)(v->base + h->read_index_off);
    v->dirty_index = (uint64_t *)(v->base + h->dirty_index_off);
    v->entries = (struct shm_entry *)(v->base + h->entries_off);
    v->counters = &v->own;
    v->max_key = SHM_DEFAULT_MAX_KEY;
    v->max_value = SHM_DEFAULT_MAX_VALUE;
    v->live_count = h->live_count;
    v->live_bytes = h->live_bytes;
    return SHM_OK;
}

uint64_t shm_snapshot(struct shm_view *v)
{
    /* Acquire: pairs with the daemon's release store in shm_commit, so
     * every record with seq <= the result, and everything that leads to it
     * (heads, entries, slots, dirty_count), is visible after this load. */
    return __atomic_load_n(&v->hdr->committed_seq, __ATOMIC_ACQUIRE);
}

int shm_superseded(struct shm_view *v)
{
    /* Acquire: pairs with shm_mark_superseded's release store, which comes
     * after the map header's current_gen names the newer generation. */
    return __atomic_load_n(&v->hdr->superseded, __ATOMIC_ACQUIRE) != 0;
}

/* The record at offset at, if a whole header and its value lie inside the
 * arena; NULL otherwise. */
static const struct shm_record *record_at(const struct shm_view *v,
                                          uint64_t at)
{
    if (at < v->arena_lo || at % SHM_ALIGN != 0 ||
        at > v->arena_hi - SHM_REC_HEADER)
        return NULL;
    const struct shm_record *r = (const void *)(v->base + at);
    if (r->len > v->arena_hi - at - SHM_REC_HEADER)
        return NULL;
    return r;
}

/* The newest record of a chain with seq <= snap, or NULL. Records reached
 * through prev were complete before the head that leads to them was
 * published, so the acquire load of head covers the whole chain. */
static const struct shm_record *visible(const struct shm_view *v,
                                        uint64_t head, uint64_t snap,
                                        uint64_t *where)
{
    uint64_t at = head;
    while (at != SHM_NO_RECORD) {
        const struct shm_record *r = record_at(v, at);
        if (r == NULL)
            return NULL;
        if (r->seq <= snap) {
            *where = at;
            return r;
        }
        if (r->prev >= at)          /* a chain only goes back */
            return NULL;
        at = r->prev;
    }
    return NULL;
}

const struct shm_record *shm_visible_entry(const struct shm_view *v,
                                           uint64_t entry, uint64_t snap,
                                           uint64_t *where)
{
    /* Acquire: pairs with the release store of head in shm_apply, after
     * the record it names was written. */
    uint64_t head = __atomic_load_n(&v->entries[entry].head,
                                    __ATOMIC_ACQUIRE);
    const struct shm_record *r = visible(v, head, snap, where);
    return r != NULL && !(r->flags & SHM_REC_TOMBSTONE) ? r : NULL;
}

int shm_entry_key_ok(const struct shm_view *v, const struct shm_entry *e)
{
    return e->key_off >= v->arena_lo && e->key_off <= v->arena_hi &&
           e->key_len <= v->arena_hi - e->key_off;
}

/* Probes one index for key; returns the entry number or -1. Entries it can
 * name lie in [lo, hi). */
static int64_t probe(const struct shm_view *v, const uint64_t *index,
                     uint64_t mask, uint64_t lo, uint64_t hi, uint64_t hash,
                     const char *key, uint64_t len)
{
    for (uint64_t i = 0; i <= mask; i++) {
        /* Acquire: pairs with the release store that published the slot
         * after its entry was complete (shm_apply); slots of the read
         * index were complete before the generation was published. */
        uint64_t slot = __atomic_load_n(&index[(hash + i) & mask],
                                        __ATOMIC_ACQUIRE);
        if (slot == SHM_SLOT_EMPTY)
            return -1;
        if (!slot_tag_matches(slot, hash))
            continue;
        uint64_t e = slot_entry(slot);
        if (e < lo || e >= hi)
            return -1;              /* garbage: treat the key as absent */
        const struct shm_entry *ent = &v->entries[e];
        if (ent->hash == hash && ent->key_len == len &&
            shm_entry_key_ok(v, ent) &&
            memcmp(v->base + ent->key_off, key, len) == 0)
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

/* The packed result of a lookup: where the value's bytes start, and their
 * length when it fits SHM_FOUND_LEN_BITS. */
static int64_t found(uint64_t where, const struct shm_record *r)
{
    uint64_t data = where + SHM_REC_HEADER;
    uint64_t len = r->len < SHM_FOUND_LEN_LONG ? r->len : SHM_FOUND_LEN_LONG;
    return (int64_t)((data << SHM_FOUND_LEN_BITS) | len);
}

int64_t shm_lookup_at(struct shm_view *v, const char *key, uint64_t len,
                      uint64_t snap)
{
    uint64_t where = 0;
    count(&v->counters->lookups);
    int64_t e = shm_find_entry(v, shm_hash(v->seed0, v->seed1, key, len),
                               key, len, 1);
    if (e < 0)
        return SHM_NOT_FOUND;
    const struct shm_record *r = shm_visible_entry(v, (uint64_t)e, snap,
                                                   &where);
    return r != NULL ? found(where, r) : SHM_NOT_FOUND;
}

int64_t shm_lookup(struct shm_view *v, const char *key, uint64_t len)
{
    if (shm_superseded(v))
        return SHM_SUPERSEDED;
    /* The snapshot is loaded before any slot or count (see shm_snapshot). */
    return shm_lookup_at(v, key, len, shm_snapshot(v));
}

/* msgpack's canonical encoding of an int64, as the Python Packer writes it:
 * fixints, unsigned forms for non-negative values, else the smallest signed
 * form. Returns its length. */
static int encode_int(int64_t k, uint8_t *out)
{
    int width, form;
    if (k >= 0 && k <= MP_POSFIX_MAX) {
        out[0] = (uint8_t)k;
        return 1;
    }
    if (k < 0 && k >= MP_NEGFIX_LOWEST) {
        out[0] = (uint8_t)(int8_t)k;
        return 1;
    }
    if (k >= 0)
        form = k <= 0xff ? 0 : k <= 0xffff ? 1 : k <= 0xffffffffLL ? 2 : 3;
    else
        form = k >= -0x80 ? 0 : k >= -0x8000 ? 1 : k >= -0x80000000LL ? 2 : 3;
    width = 1 << form;
    out[0] = (uint8_t)((k >= 0 ? MP_UINT8 : MP_INT8) + form);
    for (int i = 0; i < width; i++)
        out[1 + i] = (uint8_t)((uint64_t)k >> (8 * (width - 1 - i)));
    return 1 + width;
}

int64_t shm_lookup_int(struct shm_view *v, int64_t key)
{
    uint8_t buf[9];
    return shm_lookup(v, (const char *)buf, (uint64_t)encode_int(key, buf));
}

uint64_t shm_bench_lookup_ints(struct shm_view *v, int64_t first,
                               uint64_t n)
{
    uint64_t hits = 0;
    for (uint64_t i = 0; i < n; i++)
        hits += shm_lookup_int(v, first + (int64_t)i) >= 0;
    return hits;
}

/* The array32 header each export buffer starts with; its count is written
 * once the batch is complete. */
static void put_array_header(uint8_t *buf, uint64_t count)
{
    buf[0] = MP_ARRAY32;
    for (int i = 0; i < 4; i++)
        buf[1 + i] = (uint8_t)(count >> (8 * (3 - i)));
}

/* How far the entries array reaches for a reader: the read table and the
 * published dirty entries. */
static uint64_t entry_end(const struct shm_view *v)
{
    /* Acquire: pairs with the release store of dirty_count after each new
     * entry, so the entries below it are complete. */
    uint64_t dirty = __atomic_load_n(&v->hdr->dirty_count, __ATOMIC_ACQUIRE);
    return v->read_count + (dirty < v->dirty_cap ? dirty : v->dirty_cap);
}

int shm_export_batch(struct shm_view *v, struct shm_export *x)
{
    uint64_t end = entry_end(v), kpos = MP_ARRAY32_HEADER, vpos = MP_ARRAY32_HEADER;
    uint64_t i, n = 0;
    if (x->keys_cap < MP_ARRAY32_HEADER || x->values_cap < MP_ARRAY32_HEADER)
        return SHM_EBUFSMALL;
    for (i = x->cursor; i < end && n < x->max_items; i++) {
        uint64_t where;
        const struct shm_entry *e = &v->entries[i];
        const struct shm_record *r = shm_visible_entry(v, i, x->snap, &where);
        if (r == NULL || !shm_entry_key_ok(v, e))
            continue;
        if (e->key_len > x->keys_cap - kpos ||
            r->len > x->values_cap - vpos) {
            if (n == 0) {
                uint64_t k = e->key_len, l = r->len;
                x->need = MP_ARRAY32_HEADER + (k > l ? k : l);
                return SHM_EBUFSMALL;
            }
            break;
        }
        memcpy(x->keys + kpos, v->base + e->key_off, e->key_len);
        memcpy(x->values + vpos, v->base + where + SHM_REC_HEADER, r->len);
        kpos += e->key_len;
        vpos += r->len;
        n++;
    }
    put_array_header(x->keys, n);
    put_array_header(x->values, n);
    x->cursor = i;
    x->count = n;
    x->keys_len = kpos;
    x->values_len = vpos;
    count(&v->counters->iterations);
    return i >= end;                /* 1: the scan is complete */
}
