/*
 * delta.c -- what changed in a generation between two snapshots, for a
 * client that keeps decoded objects: the arena scanned from where its last
 * scan stopped, so a refresh costs the writes since, not the map.
 *
 * Past the build's part (base_arena), the arena holds, in the order the
 * daemon appended them, the key bytes of each new dirty entry (each
 * directly followed by its first record) and version records. A key is
 * recognised by its entry: dirty entries take their keys in entry order,
 * so the next key is the one of entry x->next_entry. Anything else is a
 * record, which names its entry (flags >> SHM_REC_ENTRY_SHIFT). Records are
 * appended in seq order, so the first record past the snapshot ends the
 * scan.
 *
 * A key is reported when the record the scan meets is the one visible at
 * the snapshot: so each changed key once, with its value as of the
 * snapshot, however often it changed in between -- a batch is reported
 * whole or not at all.
 */
#include <string.h>
#include "internal.h"

void shm_delta_start(struct shm_view *v, struct shm_delta *x)
{
    /* Relaxed: written once before the generation was published (the
     * reader's shm_open of it orders that); clamped, never trusted. */
    uint64_t base = load64(&v->hdr->base_arena);
    uint64_t room = v->arena_hi - v->arena_lo;
    x->pos = v->arena_lo + (base < room ? base : room);
    x->next_entry = v->read_count;
}

/* Appends n bytes at p to buf[*len..cap); 0 if they do not fit. */
static int put(uint8_t *buf, uint64_t cap, uint64_t *len, const uint8_t *p,
               uint64_t n)
{
    if (n > cap - *len)
        return 0;
    memcpy(buf + *len, p, n);
    *len += n;
    return 1;
}

/* Reports record r (the visible one at x->snap) of entry e, whose key is k:
 * its key and value, or for a tombstone its key among the dead. 0 if it
 * does not fit the buffers (nothing is then written). */
static int report(const struct shm_view *v, struct shm_delta *x,
                  const struct key_ref *k, const struct rec *r)
{
    const uint8_t *key = v->base + k->off;
    if (r->flags & SHM_REC_TOMBSTONE) {
        if (!put(x->dead, x->dead_cap, &x->dead_len, key, k->len))
            return 0;
        x->dead_count++;
        return 1;
    }
    if (k->len > x->keys_cap - x->keys_len ||
        r->len > x->values_cap - x->values_len)
        return 0;
    put(x->keys, x->keys_cap, &x->keys_len, key, k->len);
    put(x->values, x->values_cap, &x->values_len,
        v->base + r->at + SHM_REC_HEADER, r->len);
    x->count++;
    return 1;
}

/* The buffer size that would take key k and record r on their own. */
static uint64_t need_for(const struct key_ref *k, const struct rec *r)
{
    uint64_t n = k->len > r->len ? k->len : r->len;
    return MP_ARRAY32_HEADER + n;
}

int shm_delta_batch(struct shm_view *v, struct shm_delta *x)
{
    /* Acquire: pairs with shm_commit's release store. Every key and record
     * below it is complete and its entry published; the dirty_count loaded
     * next covers those entries. The caller loaded x->snap before, so
     * whatever was committed at or before it lies below. */
    uint64_t used = __atomic_load_n(&v->hdr->committed_arena,
                                    __ATOMIC_ACQUIRE);
    uint64_t room = v->arena_hi - v->arena_lo;
    uint64_t hi = v->arena_lo + (used < room ? used : room);
    uint64_t end = shm_entry_end(v);
    uint64_t pos = x->pos, e = x->next_entry;
    int done = 1;

    if (x->keys_cap < MP_ARRAY32_HEADER || x->values_cap < MP_ARRAY32_HEADER
        || x->dead_cap < MP_ARRAY32_HEADER)
        return SHM_EBUFSMALL;
    if (pos < v->arena_lo || pos % SHM_ALIGN != 0 || e < v->read_count)
        return SHM_ECORRUPT;
    x->keys_len = x->values_len = x->dead_len = MP_ARRAY32_HEADER;
    x->count = x->dead_count = 0;
    /* Each step moves pos forward by at least SHM_REC_HEADER: the scan
     * ends within (hi - pos) / SHM_REC_HEADER steps whatever the bytes. */
    while (pos < hi) {
        uint64_t unit = pos, unit_entry = e;
        struct key_ref k;
        struct rec r, seen;
        if (e < end && load64(&v->entries[e].key_off) == pos) {
            if (!key_load(v, e, hi, &k) || k.len == 0)
                return SHM_ECORRUPT;
            pos += align_up(k.len, SHM_ALIGN);
            e++;
        }
        if (!rec_load(v, pos, hi, &r))
            return SHM_ECORRUPT;
        if (r.seq > x->snap) {
            pos = unit;             /* this and what follows: a later scan */
            e = unit_entry;
            break;
        }
        if (r.seq > x->since) {
            uint64_t owner = r.flags >> SHM_REC_ENTRY_SHIFT;
            if (owner >= end)
                return SHM_ECORRUPT;
            /* Reported once: when this record is the one visible at snap
             * (a later record of the entry, also <= snap, would be). */
            seen.at = SHM_NO_RECORD;
            shm_visible_entry(v, owner, x->snap, &seen);
            if (seen.at == r.at) {
                if (!key_load(v, owner, v->arena_hi, &k))
                    return SHM_ECORRUPT;
                if (!report(v, x, &k, &r)) {
                    if (x->count + x->dead_count == 0) {
                        x->need = need_for(&k, &r);
                        return SHM_EBUFSMALL;
                    }
                    pos = unit;     /* this one in the next batch */
                    e = unit_entry;
                    done = 0;
                    break;
                }
            }
        }
        pos += SHM_REC_HEADER + align_up(r.len, SHM_ALIGN);
    }
    mp_put_array32(x->keys, (uint32_t)x->count);
    mp_put_array32(x->values, (uint32_t)x->count);
    mp_put_array32(x->dead, (uint32_t)x->dead_count);
    x->pos = pos;
    x->next_entry = e;
    return done;
}
