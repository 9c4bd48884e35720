/*
 * read.c -- what readers do: open a view on a mapped generation, look a key
 * up at a snapshot, export the entries visible at a snapshot.
 *
 * Readers never write the map and never wait. They may run on a PROT_READ
 * mapping of a segment that some other process fills, so every length and
 * offset they read is loaded once (view.c) and checked against the
 * geometry copied at shm_view_open: garbage gives "not found", never a
 * crash, and never a copy past the caller's buffer.
 */
#include <string.h>
#include "internal.h"

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

/* The packed result of a lookup: where the value's bytes start, and their
 * length when it fits SHM_FOUND_LEN_BITS. */
static int64_t found(const struct rec *r)
{
    uint64_t data = r->at + SHM_REC_HEADER;
    uint64_t len = r->len < SHM_FOUND_LEN_LONG ? r->len : SHM_FOUND_LEN_LONG;
    return (int64_t)((data << SHM_FOUND_LEN_BITS) | len);
}

int64_t shm_lookup_at(struct shm_view *v, const char *key, uint64_t len,
                      uint64_t snap)
{
    struct rec r;
    count(&v->counters->lookups);
    int64_t e = shm_find_entry(v, shm_hash(v->seed0, v->seed1, key, len),
                               key, len, 1);
    if (e < 0 || !shm_visible_entry(v, (uint64_t)e, snap, &r))
        return SHM_NOT_FOUND;
    return found(&r);
}

int64_t shm_lookup(struct shm_view *v, const char *key, uint64_t len)
{
    if (shm_superseded(v))
        return SHM_SUPERSEDED;
    /* The snapshot is loaded before any slot or count (see shm_snapshot). */
    return shm_lookup_at(v, key, len, shm_snapshot(v));
}

int64_t shm_lookup_int(struct shm_view *v, int64_t key)
{
    uint8_t buf[MP_INT_MAX];
    uint64_t len = (uint64_t)(mp_put_int(buf, key) - buf);
    return shm_lookup(v, (const char *)buf, len);
}

uint64_t shm_bench_lookup_ints(struct shm_view *v, int64_t first,
                               uint64_t n)
{
    uint64_t hits = 0;
    for (uint64_t i = 0; i < n; i++)
        hits += shm_lookup_int(v, first + (int64_t)i) >= 0;
    return hits;
}

int shm_export_batch(struct shm_view *v, struct shm_export *x)
{
    uint64_t end = shm_entry_end(v), kpos = MP_ARRAY32_HEADER, vpos = MP_ARRAY32_HEADER;
    uint64_t i, n = 0;
    if (x->keys_cap < MP_ARRAY32_HEADER || x->values_cap < MP_ARRAY32_HEADER)
        return SHM_EBUFSMALL;
    for (i = x->cursor; i < end && n < x->max_items; i++) {
        struct rec r;
        struct key_ref k;
        /* r.len and k.len are the one load of each length: the checks
         * below and the copies use these locals, whatever the segment
         * holds by the time the copies run. */
        if (!shm_visible_entry(v, i, x->snap, &r) ||
            !key_load(v, i, v->arena_hi, &k))
            continue;
        if (k.len > x->keys_cap - kpos || r.len > x->values_cap - vpos) {
            if (n == 0) {
                x->need = MP_ARRAY32_HEADER + (k.len > r.len ? k.len : r.len);
                return SHM_EBUFSMALL;
            }
            break;
        }
        memcpy(x->keys + kpos, v->base + k.off, k.len);
        memcpy(x->values + vpos, v->base + r.at + SHM_REC_HEADER, r.len);
        kpos += k.len;
        vpos += r.len;
        n++;
    }
    /* The counts, in front of the elements (MP_ARRAY32_HEADER bytes kept
     * for them). */
    mp_put_array32(x->keys, (uint32_t)n);
    mp_put_array32(x->values, (uint32_t)n);
    x->cursor = i;
    x->count = n;
    x->keys_len = kpos;
    x->values_len = vpos;
    count(&v->counters->iterations);
    return i >= end;                /* 1: the scan is complete */
}
