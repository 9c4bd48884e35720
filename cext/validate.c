/*
 * validate.c -- the full check a daemon makes before it adopts segments
 * that a previous daemon left, as untrusted bytes (the O(1) header check
 * every reader makes is view.c's). It never reads a byte outside
 * [base, base + size), whatever the bytes say, and it takes time linear in
 * the size in use: each arena byte belongs to at most one key or record
 * (a bitmap over the arena's SHM_ALIGN units marks them), so no chain is
 * walked twice, and no index run is longer than SHM_MAX_PROBE_RUN, so each
 * entry's lookup is bounded.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"

#define ERR(...) shm_fail(err, errlen, SHM_ECORRUPT, __VA_ARGS__)
#define U(x) ((unsigned long long)(x))
#define WORD_BITS (CHAR_BIT * sizeof(uint64_t))

/* What a validation knows: the view, the copy of the header's counters,
 * and which arena units are taken. */
struct check {
    struct shm_view v;
    uint64_t used_hi;               /* end of the arena bytes in use */
    uint64_t *taken;                /* one bit per SHM_ALIGN arena unit */
    char *err;
    size_t errlen;
};

/* Marks [at, at + n) of the arena as one object's; 0 if any unit of it is
 * already another's. The span is inside [arena_lo, used_hi). */
static int take_units(struct check *c, uint64_t at, uint64_t n)
{
    uint64_t first = (at - c->v.arena_lo) / SHM_ALIGN;
    uint64_t end = first + align_up(n, SHM_ALIGN) / SHM_ALIGN;
    for (uint64_t u = first; u < end; u++) {
        uint64_t bit = 1ULL << (u % WORD_BITS);
        if (c->taken[u / WORD_BITS] & bit)
            return 0;
        c->taken[u / WORD_BITS] |= bit;
    }
    return 1;
}

/* Checks entry i's key, its hash, and that the index leads to it. */
static int check_key_of(struct check *c, uint64_t i, struct key_ref *k)
{
    char *err = c->err, why[SHM_ERR_LEN];
    size_t errlen = c->errlen;
    if (!key_load(&c->v, i, c->used_hi, k) || k->off % SHM_ALIGN != 0)
        return ERR("entry %llu: key at offset %llu runs past the arena",
                   U(i), U(k->off));
    const char *key = (const char *)c->v.base + k->off;
    if (shm_check_key(key, k->len, why, sizeof why) != SHM_OK)
        return ERR("entry %llu: %s", U(i), why);
    if (k->hash != shm_hash(c->v.seed0, c->v.seed1, key, k->len))
        return ERR("entry %llu: stored hash does not match its key", U(i));
    if (shm_find_entry(&c->v, k->hash, key, k->len, 0) != (int64_t)i)
        return ERR("entry %llu: its index does not lead to it", U(i));
    if (!take_units(c, k->off, k->len))
        return ERR("entry %llu: key at %llu overlaps another key or "
                   "record", U(i), U(k->off));
    return SHM_OK;
}

/* Checks one entry: its key, and every record of its chain. */
static int check_entry(struct check *c, uint64_t i)
{
    char *err = c->err, why[SHM_ERR_LEN];
    size_t errlen = c->errlen;
    struct key_ref k;
    int rc = check_key_of(c, i, &k);
    if (rc != SHM_OK)
        return rc;
    uint64_t at = load64(&c->v.entries[i].head), newer_seq = UINT64_MAX;
    while (at != SHM_NO_RECORD) {
        struct rec r;
        if (at < c->v.arena_lo || at % SHM_ALIGN != 0 || at > c->used_hi ||
            c->used_hi - at < SHM_REC_HEADER)
            return ERR("entry %llu: record at %llu is outside the arena",
                       U(i), U(at));
        if (!rec_load(&c->v, at, c->used_hi, &r))
            return ERR("entry %llu: record at %llu runs past the arena",
                       U(i), U(at));
        if (r.flags >> SHM_REC_ENTRY_SHIFT != i ||
            ((r.flags & SHM_REC_TOMBSTONE) && r.len != 0))
            return ERR("entry %llu: record at %llu has bad flags", U(i),
                       U(at));
        if (r.seq > newer_seq)
            return ERR("entry %llu: versions out of order at %llu", U(i),
                       U(at));
        if (!take_units(c, at, SHM_REC_HEADER + (uint64_t)r.len))
            return ERR("entry %llu: record at %llu is reached twice or "
                       "overlaps a key", U(i), U(at));
        if (!(r.flags & SHM_REC_TOMBSTONE) &&
            shm_check_value((const char *)c->v.base + at + SHM_REC_HEADER,
                            r.len, why, sizeof why) != SHM_OK)
            return ERR("entry %llu: record at %llu: %s", U(i), U(at), why);
        if (r.prev >= at && r.prev != SHM_NO_RECORD)
            return ERR("entry %llu: chain goes forward at %llu", U(i), U(at));
        newer_seq = r.seq;
        at = r.prev;
    }
    return SHM_OK;
}

/* Every non-empty slot names an entry of its own table whose hash it
 * carries, and no run of used slots is longer than SHM_MAX_PROBE_RUN (a
 * run may wrap around the end of the index). */
static int check_index(struct check *c, const uint64_t *index,
                       uint64_t slots, uint64_t lo, uint64_t hi,
                       const char *name)
{
    char *err = c->err;
    size_t errlen = c->errlen;
    uint64_t run = 0, first_run = 0;
    for (uint64_t s = 0; s < slots; s++) {
        uint64_t slot = load64(&index[s]);
        if (slot == SHM_SLOT_EMPTY) {
            if (first_run == 0 && run == s)
                first_run = run;        /* the run that starts at slot 0 */
            run = 0;
            continue;
        }
        if (++run > SHM_MAX_PROBE_RUN)
            return ERR("%s index: more than %d used slots in a row at slot "
                       "%llu", name, SHM_MAX_PROBE_RUN, U(s));
        uint64_t e = slot_entry(slot);
        if (e < lo || e >= hi)
            return ERR("%s index slot %llu names entry %llu, outside "
                       "[%llu, %llu)", name, U(s), U(e), U(lo), U(hi));
        if (!slot_tag_matches(slot, load64(&c->v.entries[e].hash)))
            return ERR("%s index slot %llu does not match entry %llu", name,
                       U(s), U(e));
    }
    if (run == slots)
        return ERR("%s index has no empty slot", name);
    if (run + first_run > SHM_MAX_PROBE_RUN)
        return ERR("%s index: more than %d used slots in a row at its end",
                   name, SHM_MAX_PROBE_RUN);
    return SHM_OK;
}

/* The counters of the header copy h, against its geometry. */
static int check_counters(const struct shm_gen_header *h, char *err,
                          size_t errlen)
{
    if (h->dirty_count > h->dirty_cap)
        return ERR("dirty_count %llu is over its capacity %llu",
                   U(h->dirty_count), U(h->dirty_cap));
    if (h->arena_used > h->arena_cap)
        return ERR("arena_used %llu is over the arena's %llu bytes",
                   U(h->arena_used), U(h->arena_cap));
    if (h->committed_seq < h->base_seq)
        return ERR("committed_seq %llu is below base_seq %llu",
                   U(h->committed_seq), U(h->base_seq));
    if (h->committed_seq > SHM_MAX_SEQ)
        return ERR("committed_seq %llu is over the highest seq %llu",
                   U(h->committed_seq), U(SHM_MAX_SEQ));
    if (h->base_arena > h->committed_arena ||
        h->committed_arena > h->arena_used)
        return ERR("arena marks out of order: base %llu, committed %llu, "
                   "used %llu", U(h->base_arena), U(h->committed_arena),
                   U(h->arena_used));
    if (h->superseded > 1)
        return ERR("superseded is %llu, not 0 or 1", U(h->superseded));
    return SHM_OK;
}

static int check_body(struct check *c, uint64_t dirty_count)
{
    struct shm_view *v = &c->v;
    uint64_t end = v->read_count + dirty_count;
    int rc = check_index(c, v->read_index, v->read_mask + 1, 0,
                         v->read_count, "read");
    if (rc == SHM_OK)
        rc = check_index(c, v->dirty_index, v->dirty_mask + 1,
                         v->read_count, v->read_count + v->dirty_cap,
                         "dirty");
    for (uint64_t i = 0; rc == SHM_OK && i < end; i++)
        rc = check_entry(c, i);
    return rc;
}

int shm_gen_validate(void *base, uint64_t size, char *err, size_t errlen)
{
    struct shm_gen_header h;
    struct check c = { .err = err, .errlen = errlen };
    /* One copy of the header: the geometry and the counters checked here
     * are the ones used below, whatever the segment holds meanwhile. */
    int rc = gen_header_load(base, size, &h, err, errlen);
    if (rc == SHM_OK)
        rc = check_counters(&h, err, errlen);
    if (rc != SHM_OK)
        return rc;
    view_from_header(&c.v, base, size, &h);
    c.used_hi = c.v.arena_lo + h.arena_used;
    uint64_t units = align_up(h.arena_used, SHM_ALIGN) / SHM_ALIGN;
    c.taken = calloc(units / WORD_BITS + 1, sizeof *c.taken);
    if (c.taken == NULL)
        return shm_fail(err, errlen, SHM_ENOMEM, "no memory to validate "
                        "an arena of %llu bytes", U(h.arena_used));
    rc = check_body(&c, h.dirty_count);
    free(c.taken);
    return rc;
}
