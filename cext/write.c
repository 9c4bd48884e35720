/*
 * write.c -- what the daemon, the map's one writer, does: size and lay out
 * a generation, apply a batch of stores and deletes, commit it, and build
 * the next generation from the live entries of the current one.
 *
 * The writer appends and then publishes: bytes first, then one release
 * store of the word that makes them reachable (a slot, dirty_count, a head,
 * committed_seq). Nothing a reader can reach is written again.
 */
#include <string.h>
#include "internal.h"

static uint64_t pow2_at_least(uint64_t n)
{
    uint64_t p = SHM_MIN_SLOTS;
    while (p < n)
        p <<= 1;
    return p;
}

/* Offsets of each part of a generation with geometry g. */
struct layout {
    uint64_t read_index, dirty_index, entries, arena, end;
};

static struct layout lay_out(const struct shm_geometry *g)
{
    struct layout l;
    l.read_index = align_up(sizeof(struct shm_gen_header), SHM_CACHE_LINE);
    l.dirty_index = l.read_index + g->read_slots * sizeof(uint64_t);
    l.entries = align_up(l.dirty_index + g->dirty_slots * sizeof(uint64_t),
                         SHM_CACHE_LINE);
    l.arena = align_up(l.entries + g->entry_cap * sizeof(struct shm_entry),
                       SHM_PAGE);
    l.end = l.arena + g->arena_cap;
    return l;
}

int shm_plan(struct shm_geometry *g, uint64_t live_keys, uint64_t live_bytes,
             uint64_t reserve_keys, uint64_t reserve_bytes)
{
    if (live_keys > SHM_MAX_ENTRIES / 4 || reserve_keys > SHM_MAX_ENTRIES / 4
        || live_bytes > SHM_MAX_SEGMENT || reserve_bytes > SHM_MAX_SEGMENT)
        return SHM_ETOOBIG;
    uint64_t dirty = live_keys * SHM_DIRTY_PER_LIVE;
    uint64_t spare = live_bytes * SHM_ARENA_PER_LIVE;
    g->dirty_cap = (dirty > SHM_MIN_DIRTY ? dirty : SHM_MIN_DIRTY) +
                   reserve_keys;
    g->read_slots = pow2_at_least(live_keys * SHM_LOAD_INVERSE);
    g->dirty_slots = pow2_at_least(g->dirty_cap * SHM_LOAD_INVERSE);
    g->entry_cap = live_keys + g->dirty_cap;
    g->arena_cap = align_up(live_bytes + reserve_bytes +
                            (spare > SHM_MIN_ARENA ? spare : SHM_MIN_ARENA),
                            SHM_PAGE);
    g->segment_size = lay_out(g).end;
    return g->segment_size <= SHM_MAX_SEGMENT ? SHM_OK : SHM_ETOOBIG;
}

int shm_gen_init(void *base, const struct shm_geometry *g, uint64_t gen,
                 uint64_t seed0, uint64_t seed1, uint64_t base_seq)
{
    /* base is a new segment: zero-filled, as ftruncate leaves it, so the
     * indexes start empty without touching (and paying for) their pages. */
    struct shm_gen_header *h = base;
    struct layout l = lay_out(g);
    if (l.end != g->segment_size)
        return SHM_EINVAL;
    h->magic = SHM_MAGIC_GEN;
    h->layout_version = SHM_LAYOUT_VERSION;
    h->header_size = sizeof *h;
    h->gen = gen;
    h->segment_size = g->segment_size;
    h->seed0 = seed0;
    h->seed1 = seed1;
    h->base_seq = base_seq;
    h->read_count = 0;
    h->dirty_cap = g->dirty_cap;
    h->read_slots = g->read_slots;
    h->dirty_slots = g->dirty_slots;
    h->entry_cap = g->entry_cap;
    h->arena_cap = g->arena_cap;
    h->read_index_off = l.read_index;
    h->dirty_index_off = l.dirty_index;
    h->entries_off = l.entries;
    h->arena_off = l.arena;
    /* Not yet published: plain stores; the publication (current_gen's
     * release store, and the reader's shm_open) orders them. */
    h->committed_seq = base_seq;
    return SHM_OK;
}

/* ---- applying a batch --------------------------------------------------- */

/* One item of a batch blob: op, key, and for a store the value. */
struct item {
    int op;
    const char *key;
    uint64_t key_len;
    const char *value;
    uint64_t value_len;
};

/* Reads the item at *pos; on error formats "item N: ..." into err. */
static int next_item(const struct shm_view *v, const char *blob,
                     uint64_t len, uint64_t *pos, uint64_t n,
                     struct item *it, char *err, size_t errlen)
{
    char why[200];
    const uint8_t *p = (const uint8_t *)blob;
    uint64_t at = *pos, used;
    int rc;

    it->op = p[at];
    if (it->op != SHM_OP_STORE && it->op != SHM_OP_DELETE)
        return shm_fail(err, errlen, SHM_EINVAL,
                        "item %llu: unknown operation byte 0x%02x",
                        (unsigned long long)n, it->op);
    at++;
    rc = mp_check(p + at, len - at, MP_KEY, &used, why, sizeof why);
    if (rc != SHM_OK)
        return shm_fail(err, errlen, rc, "item %llu: %s",
                        (unsigned long long)n, why);
    if (used > v->max_key)
        return shm_fail(err, errlen, SHM_ETOOBIG, "item %llu: key of %llu "
                        "bytes is over the limit of %llu bytes",
                        (unsigned long long)n, (unsigned long long)used,
                        (unsigned long long)v->max_key);
    it->key = blob + at;
    it->key_len = used;
    at += used;
    it->value = NULL;
    it->value_len = 0;
    if (it->op == SHM_OP_STORE) {
        rc = mp_check(p + at, len - at, MP_VALUE, &used, why, sizeof why);
        if (rc != SHM_OK)
            return shm_fail(err, errlen, rc, "item %llu: %s",
                            (unsigned long long)n, why);
        if (used > v->max_value)
            return shm_fail(err, errlen, SHM_ETOOBIG, "item %llu: value of "
                            "%llu bytes is over the limit of %llu bytes",
                            (unsigned long long)n, (unsigned long long)used,
                            (unsigned long long)v->max_value);
        it->value = blob + at;
        it->value_len = used;
        at += used;
    }
    *pos = at;
    return SHM_OK;
}

/* The writer's own words need no ordering to read: it wrote them. */
static uint64_t own(const uint64_t *word)
{
    return __atomic_load_n(word, __ATOMIC_RELAXED);
}

int shm_apply_check(struct shm_view *v, const char *blob, uint64_t len,
                    struct shm_apply_info *info, char *err, size_t errlen)
{
    struct item it;
    uint64_t pos = 0;
    memset(info, 0, sizeof *info);
    while (pos < len) {
        int rc = next_item(v, blob, len, &pos, info->items, &it, err, errlen);
        if (rc != SHM_OK) {
            info->error_item = info->items;
            return rc;
        }
        if (it.op == SHM_OP_STORE) {
            info->new_keys_max++;
            info->arena_need += arena_cost(it.key_len, it.value_len);
            info->store_bytes += it.key_len + it.value_len;
        } else {
            info->arena_need += SHM_REC_HEADER;
        }
        info->items++;
    }
    uint64_t free_entries = v->dirty_cap - own(&v->hdr->dirty_count);
    uint64_t free_arena = v->arena_hi - v->arena_lo - own(&v->hdr->arena_used);
    if (info->new_keys_max > free_entries || info->arena_need > free_arena)
        return shm_fail(err, errlen, SHM_ENOSPACE, "generation full: "
                        "promote before applying");
    return SHM_OK;
}

/* Takes n bytes from the arena; shm_apply_check made sure they are free. */
static uint64_t arena_take(struct shm_view *v, uint64_t n)
{
    uint64_t used = own(&v->hdr->arena_used);
    /* Release: statistics and adoption read it; a reader never needs it. */
    __atomic_store_n(&v->hdr->arena_used, used + n, __ATOMIC_RELEASE);
    return v->arena_lo + used;
}

/* Appends a dirty entry for key and publishes it. */
static uint64_t new_entry(struct shm_view *v, uint64_t hash,
                          const char *key, uint64_t len)
{
    uint64_t dirty = own(&v->hdr->dirty_count);
    uint64_t e = v->read_count + dirty;
    uint64_t key_off = arena_take(v, align_up(len, SHM_ALIGN));
    struct shm_entry *ent = &v->entries[e];

    memcpy(v->base + key_off, key, len);
    ent->hash = hash;
    ent->key_off = key_off;
    ent->key_len = (uint32_t)len;
    __atomic_store_n(&ent->head, SHM_NO_RECORD, __ATOMIC_RELAXED);
    for (uint64_t i = 0;; i++) {
        uint64_t *slot = &v->dirty_index[(hash + i) & v->dirty_mask];
        if (own(slot) == SHM_SLOT_EMPTY) {
            /* Release: the entry and its key bytes are complete before a
             * reader's acquire load of this slot can find them. */
            __atomic_store_n(slot, slot_make(hash, e), __ATOMIC_RELEASE);
            break;
        }
    }
    /* Release: pairs with entry_end()'s acquire in iteration, which then
     * sees this entry complete. */
    __atomic_store_n(&v->hdr->dirty_count, dirty + 1, __ATOMIC_RELEASE);
    return e;
}

/* Appends a version record to entry e and makes it the head. */
static void append_record(struct shm_view *v, uint64_t e, uint64_t seq,
                          const char *value, uint64_t len, uint32_t flags)
{
    struct shm_entry *ent = &v->entries[e];
    uint64_t at = arena_take(v, SHM_REC_HEADER + align_up(len, SHM_ALIGN));
    struct shm_record *r = (struct shm_record *)(v->base + at);

    r->seq = seq;
    r->prev = own(&ent->head);
    r->len = (uint32_t)len;
    r->flags = flags;
    memcpy(v->base + at + SHM_REC_HEADER, value, len);
    /* Release: the record (and, through prev, the chain) is complete
     * before a reader's acquire load of head reaches it. Readers with a
     * snapshot below seq skip it by its seq and take prev. */
    __atomic_store_n(&ent->head, at, __ATOMIC_RELEASE);
}

/* The live set after the writes applied so far; private to the writer
 * until shm_commit publishes it. */
static void count_live(struct shm_view *v, int64_t keys, int64_t bytes)
{
    v->live_count += (uint64_t)keys;
    v->live_bytes += (uint64_t)bytes;
}

static void apply_item(struct shm_view *v, const struct item *it,
                       uint64_t seq)
{
    uint64_t hash = shm_hash(v->seed0, v->seed1, it->key, it->key_len);
    int64_t e = shm_find_entry(v, hash, it->key, it->key_len, 0);
    const struct shm_record *old = NULL;
    uint64_t where;

    if (e >= 0)
        old = shm_visible_entry(v, (uint64_t)e, UINT64_MAX, &where);
    if (it->op == SHM_OP_DELETE) {
        if (old == NULL)
            return;                 /* absent: nothing to record */
        append_record(v, (uint64_t)e, seq, NULL, 0, SHM_REC_TOMBSTONE);
        count_live(v, -1, -(int64_t)(it->key_len + old->len));
        return;
    }
    if (e < 0)
        e = (int64_t)new_entry(v, hash, it->key, it->key_len);
    append_record(v, (uint64_t)e, seq, it->value, it->value_len, 0);
    if (old == NULL)
        count_live(v, 1, (int64_t)(it->key_len + it->value_len));
    else
        count_live(v, 0, (int64_t)it->value_len - (int64_t)old->len);
}

int shm_apply(struct shm_view *v, const char *blob, uint64_t len,
              uint64_t seq)
{
    struct item it;
    uint64_t pos = 0, n = 0;
    while (pos < len) {
        int rc = next_item(v, blob, len, &pos, n++, &it, NULL, 0);
        if (rc != SHM_OK)
            return rc;              /* shm_apply_check was skipped */
        apply_item(v, &it, seq);
    }
    return SHM_OK;
}

void shm_commit(struct shm_view *v, uint64_t seq)
{
    /* Relaxed: statistics, read on their own; ordered before the release
     * below for a reader that loads them after committed_seq. */
    __atomic_store_n(&v->hdr->live_count, v->live_count, __ATOMIC_RELAXED);
    __atomic_store_n(&v->hdr->live_bytes, v->live_bytes, __ATOMIC_RELAXED);
    /* Release: every record, head, entry, slot and count of the writes
     * with seq <= this value was stored before it; a reader's acquire load
     * in shm_snapshot makes them all visible. */
    __atomic_store_n(&v->hdr->committed_seq, seq, __ATOMIC_RELEASE);
}

void shm_mark_superseded(struct shm_view *v)
{
    /* Release: the daemon stored the map header's current_gen (release)
     * before this; a reader that acquire-loads 1 here and then loads
     * current_gen finds the newer generation. */
    __atomic_store_n(&v->hdr->superseded, 1, __ATOMIC_RELEASE);
}

/* ---- promotion ---------------------------------------------------------- */

int shm_measure(struct shm_view *v, uint64_t snap, uint64_t *keys,
                uint64_t *bytes)
{
    uint64_t end = v->read_count + own(&v->hdr->dirty_count), where;
    *keys = 0;
    *bytes = 0;
    if (end > v->read_count + v->dirty_cap)
        return SHM_ECORRUPT;
    for (uint64_t i = 0; i < end; i++) {
        const struct shm_record *r = shm_visible_entry(v, i, snap, &where);
        if (r == NULL)
            continue;
        (*keys)++;
        *bytes += arena_cost(v->entries[i].key_len, r->len);
    }
    return SHM_OK;
}

/* Copies one live entry into dst's read table at index n. */
static void copy_entry(struct shm_view *dst, uint64_t n,
                       const struct shm_view *src,
                       const struct shm_entry *from,
                       const struct shm_record *r, uint64_t where)
{
    struct shm_entry *to = &dst->entries[n];
    uint64_t key_off = arena_take(dst, align_up(from->key_len, SHM_ALIGN));
    uint64_t at = arena_take(dst, SHM_REC_HEADER + align_up(r->len,
                                                             SHM_ALIGN));
    struct shm_record *copy = (struct shm_record *)(dst->base + at);

    memcpy(dst->base + key_off, src->base + from->key_off, from->key_len);
    copy->seq = r->seq;
    copy->prev = SHM_NO_RECORD;
    copy->len = r->len;
    copy->flags = 0;
    memcpy(dst->base + at + SHM_REC_HEADER,
           src->base + where + SHM_REC_HEADER, r->len);
    to->hash = from->hash;
    to->key_off = key_off;
    to->key_len = from->key_len;
    to->head = at;
    /* Plain stores: dst is not published yet. */
    for (uint64_t i = 0;; i++) {
        uint64_t *slot = &dst->read_index[(from->hash + i) & dst->read_mask];
        if (*slot == SHM_SLOT_EMPTY) {
            *slot = slot_make(from->hash, n);
            break;
        }
    }
}

int64_t shm_build(struct shm_view *src, uint64_t snap, struct shm_view *dst)
{
    uint64_t end = src->read_count + own(&src->hdr->dirty_count);
    uint64_t n = 0, live_bytes = 0, where;
    uint64_t read_max = (dst->read_mask + 1) / SHM_LOAD_INVERSE;

    if (src->seed0 != dst->seed0 || src->seed1 != dst->seed1 ||
        dst->read_count != 0 || end > src->read_count + src->dirty_cap)
        return SHM_EINVAL;
    for (uint64_t i = 0; i < end; i++) {
        const struct shm_entry *e = &src->entries[i];
        const struct shm_record *r = shm_visible_entry(src, i, snap, &where);
        if (r == NULL || !shm_entry_key_ok(src, e))
            continue;
        uint64_t cost = arena_cost(e->key_len, r->len);
        if (n >= read_max || n >= dst->entry_cap ||
            cost > dst->arena_hi - dst->arena_lo - own(&dst->hdr->arena_used))
            return SHM_ENOSPACE;
        copy_entry(dst, n++, src, e, r, where);
        live_bytes += e->key_len + r->len;
    }
    uint64_t dirty_room = dst->entry_cap - n;
    uint64_t dirty_max = (dst->dirty_mask + 1) / SHM_LOAD_INVERSE;
    dst->read_count = dst->hdr->read_count = n;
    dst->dirty_cap = dst->hdr->dirty_cap =
        dirty_room < dirty_max ? dirty_room : dirty_max;
    dst->hdr->live_count = dst->live_count = n;
    dst->hdr->live_bytes = dst->live_bytes = live_bytes;
    dst->hdr->base_seq = snap;
    dst->hdr->committed_seq = snap;
    return (int64_t)n;
}
