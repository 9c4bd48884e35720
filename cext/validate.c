/*
 * validate.c -- checking a generation found in shared memory, as untrusted
 * bytes. gen_check_header is the O(1) check every reader makes when it maps
 * a generation; shm_gen_validate is the full O(size) check a daemon makes
 * before it adopts segments that a previous daemon left. Neither reads a
 * byte outside [base, base + size), whatever the bytes say.
 */
#include <string.h>
#include "internal.h"

#define ERR(...) shm_fail(err, errlen, SHM_ECORRUPT, __VA_ARGS__)
#define U(x) ((unsigned long long)(x))

/* Whether [off, off + n * unit) lies in [lo, hi), without overflow. */
static int span_ok(uint64_t off, uint64_t n, uint64_t unit, uint64_t lo,
                   uint64_t hi)
{
    return off >= lo && off <= hi && off % SHM_ALIGN == 0 &&
           n <= (hi - off) / unit;
}

int gen_check_header(const struct shm_gen_header *h, uint64_t size,
                     char *err, size_t errlen)
{
    if (size < sizeof *h)
        return ERR("segment of %llu bytes is smaller than a generation "
                   "header (%llu)", U(size), U(sizeof *h));
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

/* Checks one entry: its key, its hash, its place in the index, and every
 * record of its chain. used_hi is the end of the arena bytes in use. */
static int check_entry(struct shm_view *v, uint64_t i, uint64_t used_hi,
                       char *err, size_t errlen)
{
    const struct shm_entry *e = &v->entries[i];
    char why[200];

    if (!span_ok(e->key_off, e->key_len, 1, v->arena_lo, used_hi))
        return ERR("entry %llu: key at offset %llu runs past the arena",
                   U(i), U(e->key_off));
    const char *key = (const char *)v->base + e->key_off;
    if (shm_check_key(key, e->key_len, why, sizeof why) != SHM_OK)
        return ERR("entry %llu: %s", U(i), why);
    if (e->hash != shm_hash(v->seed0, v->seed1, key, e->key_len))
        return ERR("entry %llu: stored hash does not match its key", U(i));
    if (shm_find_entry(v, e->hash, key, e->key_len, 0) != (int64_t)i)
        return ERR("entry %llu: its index does not lead to it", U(i));
    uint64_t at = e->head, newer_seq = UINT64_MAX;
    while (at != SHM_NO_RECORD) {
        if (!span_ok(at, SHM_REC_HEADER, 1, v->arena_lo, used_hi))
            return ERR("entry %llu: record at %llu is outside the arena",
                       U(i), U(at));
        const struct shm_record *r = (const void *)(v->base + at);
        if (r->len > used_hi - at - SHM_REC_HEADER)
            return ERR("entry %llu: record at %llu runs past the arena",
                       U(i), U(at));
        if (r->flags & ~(uint32_t)SHM_REC_TOMBSTONE ||
            ((r->flags & SHM_REC_TOMBSTONE) && r->len != 0))
            return ERR("entry %llu: record at %llu has bad flags", U(i),
                       U(at));
        if (r->seq > newer_seq)
            return ERR("entry %llu: versions out of order at %llu", U(i),
                       U(at));
        if (!(r->flags & SHM_REC_TOMBSTONE) &&
            shm_check_value((const char *)v->base + at + SHM_REC_HEADER,
                            r->len, why, sizeof why) != SHM_OK)
            return ERR("entry %llu: record at %llu: %s", U(i), U(at), why);
        if (r->prev >= at && r->prev != SHM_NO_RECORD)
            return ERR("entry %llu: chain goes forward at %llu", U(i), U(at));
        newer_seq = r->seq;
        at = r->prev;
    }
    return SHM_OK;
}

/* Every non-empty slot names an entry of its own table whose hash it
 * carries. */
static int check_index(struct shm_view *v, const uint64_t *index,
                       uint64_t slots, uint64_t lo, uint64_t hi,
                       const char *name, char *err, size_t errlen)
{
    for (uint64_t s = 0; s < slots; s++) {
        uint64_t slot = index[s];
        if (slot == SHM_SLOT_EMPTY)
            continue;
        uint64_t e = slot_entry(slot);
        if (e < lo || e >= hi)
            return ERR("%s index slot %llu names entry %llu, outside "
                       "[%llu, %llu)", name, U(s), U(e), U(lo), U(hi));
        if (!slot_tag_matches(slot, v->entries[e].hash))
            return ERR("%s index slot %llu does not match entry %llu", name,
                       U(s), U(e));
    }
    return SHM_OK;
}

int shm_gen_validate(void *base, uint64_t size, char *err, size_t errlen)
{
    struct shm_view v;
    int rc = shm_view_open(&v, base, size, err, errlen);
    if (rc != SHM_OK)
        return rc;
    const struct shm_gen_header *h = v.hdr;
    if (h->dirty_count > h->dirty_cap)
        return ERR("dirty_count %llu is over its capacity %llu",
                   U(h->dirty_count), U(h->dirty_cap));
    if (h->arena_used > h->arena_cap)
        return ERR("arena_used %llu is over the arena's %llu bytes",
                   U(h->arena_used), U(h->arena_cap));
    if (h->committed_seq < h->base_seq)
        return ERR("committed_seq %llu is below base_seq %llu",
                   U(h->committed_seq), U(h->base_seq));
    if (h->superseded > 1)
        return ERR("superseded is %llu, not 0 or 1", U(h->superseded));
    uint64_t used_hi = v.arena_lo + h->arena_used;
    uint64_t end = v.read_count + h->dirty_count;
    rc = check_index(&v, v.read_index, v.read_mask + 1, 0, v.read_count,
                     "read", err, errlen);
    if (rc == SHM_OK)
        rc = check_index(&v, v.dirty_index, v.dirty_mask + 1, v.read_count,
                         v.read_count + v.dirty_cap, "dirty", err, errlen);
    for (uint64_t i = 0; rc == SHM_OK && i < end; i++)
        rc = check_entry(&v, i, used_hi, err, errlen);
    return rc;
}
