/*
 * write.c -- what the daemon, the map's one writer, does: size and lay out
 * a generation, apply a batch of stores and deletes, commit it, and build
 * the next generation from the live entries of the current one.
 *
 * The writer appends and then publishes: bytes first, then one release
 * store of the word that makes them reachable (a slot, dirty_count, a head,
 * committed_seq). Nothing a reader can reach is written again.
 */
#include <stdlib.h>
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

/* The end of the msgpack object at p[at..len): validated by mp_check the
 * first time (mode, limit), only skipped by mp_skip once the blob is known
 * valid. */
static int object(const struct shm_view *v, const uint8_t *p, uint64_t len,
                  uint64_t at, int trusted, enum mp_mode mode, uint64_t n,
                  uint64_t *used, char *err, size_t errlen)
{
    char why[SHM_ERR_LEN];
    const char *what = mode == MP_KEY ? "key" : "value";
    uint64_t limit = mode == MP_KEY ? v->max_key : v->max_value;
    if (trusted) {
        if (mp_skip(p + at, len - at, used) == SHM_OK)
            return SHM_OK;
        return shm_fail(err, errlen, SHM_EINVAL, "item %llu: the blob "
                        "changed after it was validated",
                        (unsigned long long)n);
    }
    int rc = mp_check(p + at, len - at, mode, used, why, sizeof why);
    if (rc != SHM_OK)
        return shm_fail(err, errlen, rc, "item %llu: %s",
                        (unsigned long long)n, why);
    if (*used > limit)
        return shm_fail(err, errlen, SHM_ETOOBIG, "item %llu: encoded %s "
                        "of %llu bytes exceeds --max-%s %llu",
                        (unsigned long long)n, what,
                        (unsigned long long)*used, what,
                        (unsigned long long)limit);
    return SHM_OK;
}

/* Reads the item at *pos (item number n); on error formats "item N: ..."
 * into err. */
static int next_item(const struct shm_view *v, const char *blob,
                     uint64_t len, uint64_t *pos, uint64_t n, int trusted,
                     struct item *it, char *err, size_t errlen)
{
    const uint8_t *p = (const uint8_t *)blob;
    uint64_t at = *pos, used;
    int rc;

    it->op = p[at];
    if (it->op != SHM_OP_STORE && it->op != SHM_OP_DELETE)
        return shm_fail(err, errlen, SHM_EINVAL,
                        "item %llu: unknown operation byte 0x%02x",
                        (unsigned long long)n, it->op);
    at++;
    rc = object(v, p, len, at, trusted, MP_KEY, n, &used, err, errlen);
    if (rc != SHM_OK)
        return rc;
    it->key = blob + at;
    it->key_len = used;
    at += used;
    it->value = NULL;
    it->value_len = 0;
    if (it->op == SHM_OP_STORE) {
        rc = object(v, p, len, at, trusted, MP_VALUE, n, &used, err, errlen);
        if (rc != SHM_OK)
            return rc;
        it->value = blob + at;
        it->value_len = used;
        at += used;
    }
    *pos = at;
    return SHM_OK;
}

/* The first pass: validates every item (once per blob) and adds up what
 * the batch needs. */
static int survey(struct shm_view *v, const char *blob, uint64_t len,
                  struct shm_apply_info *info, char *err, size_t errlen)
{
    struct item it;
    uint64_t pos = 0, trusted = info->validated;
    memset(info, 0, sizeof *info);
    while (pos < len) {
        int rc = next_item(v, blob, len, &pos, info->items, (int)trusted,
                           &it, err, errlen);
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
    info->validated = 1;
    return SHM_OK;
}

/* Takes n bytes from the arena; survey made sure they are free. The
 * writer's own arena_used is the one it trusts; the header's copy is for
 * others. */
static uint64_t arena_take(struct shm_view *v, uint64_t n)
{
    uint64_t at = v->arena_lo + v->arena_used;
    v->arena_used += n;
    /* Release: statistics and adoption read it; a reader never needs it
     * and the writer never loads it back. */
    __atomic_store_n(&v->hdr->arena_used, v->arena_used, __ATOMIC_RELEASE);
    return at;
}

/* The empty slot of index (mask) where hash goes, or NULL if there is none
 * (only a segment written by another process has a full index). The index
 * is the writer's own: a relaxed load reads what it stored. */
static uint64_t *free_slot(uint64_t *index, uint64_t mask, uint64_t hash)
{
    for (uint64_t i = 0; i <= mask; i++) {
        uint64_t *slot = &index[(hash + i) & mask];
        if (__atomic_load_n(slot, __ATOMIC_RELAXED) == SHM_SLOT_EMPTY)
            return slot;
    }
    return NULL;
}

/* Appends a dirty entry for key and publishes it; its number, or -1. */
static int64_t new_entry(struct shm_view *v, uint64_t hash,
                         const char *key, uint64_t len)
{
    uint64_t e = v->read_count + v->dirty_count;
    uint64_t *slot = free_slot(v->dirty_index, v->dirty_mask, hash);
    if (slot == NULL)
        return -1;
    uint64_t key_off = arena_take(v, align_up(len, SHM_ALIGN));
    struct shm_entry *ent = &v->entries[e];

    memcpy(v->base + key_off, key, len);
    ent->hash = hash;
    ent->key_off = key_off;
    ent->key_len = (uint32_t)len;
    /* Relaxed: the entry is not reachable yet; the slot's release store
     * below publishes it. */
    __atomic_store_n(&ent->head, SHM_NO_RECORD, __ATOMIC_RELAXED);
    /* Release: the entry and its key bytes are complete before a reader's
     * acquire load of this slot can find them. */
    __atomic_store_n(slot, slot_make(hash, e), __ATOMIC_RELEASE);
    v->dirty_count++;
    /* Release: pairs with entry_end()'s acquire in iteration, which then
     * sees this entry complete. */
    __atomic_store_n(&v->hdr->dirty_count, v->dirty_count, __ATOMIC_RELEASE);
    return (int64_t)e;
}

/* Appends a version record to entry e and makes it the head. value may be
 * NULL when len is 0 (a tombstone). */
static void append_record(struct shm_view *v, uint64_t e, uint64_t seq,
                          const char *value, uint64_t len, uint32_t flags)
{
    struct shm_entry *ent = &v->entries[e];
    uint64_t at = arena_take(v, SHM_REC_HEADER + align_up(len, SHM_ALIGN));
    struct shm_record *r = (struct shm_record *)(v->base + at);

    r->seq = seq;
    /* Relaxed: the writer reads back its own last store of head. */
    r->prev = __atomic_load_n(&ent->head, __ATOMIC_RELAXED);
    r->len = (uint32_t)len;
    r->flags = flags | (uint32_t)(e << SHM_REC_ENTRY_SHIFT);
    if (len > 0)
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

static int apply_item(struct shm_view *v, const struct item *it,
                      uint64_t seq)
{
    uint64_t hash = shm_hash(v->seed0, v->seed1, it->key, it->key_len);
    int64_t e = shm_find_entry(v, hash, it->key, it->key_len, 0);
    struct rec old;
    int had = e >= 0 && shm_visible_entry(v, (uint64_t)e, UINT64_MAX, &old);

    if (it->op == SHM_OP_DELETE) {
        if (!had)
            return SHM_OK;          /* absent: nothing to record */
        append_record(v, (uint64_t)e, seq, NULL, 0, SHM_REC_TOMBSTONE);
        count_live(v, -1, -(int64_t)(it->key_len + old.len));
        return SHM_OK;
    }
    if (e < 0)
        e = new_entry(v, hash, it->key, it->key_len);
    if (e < 0)
        return SHM_ECORRUPT;
    append_record(v, (uint64_t)e, seq, it->value, it->value_len, 0);
    if (!had)
        count_live(v, 1, (int64_t)(it->key_len + it->value_len));
    else
        count_live(v, 0, (int64_t)it->value_len - (int64_t)old.len);
    return SHM_OK;
}

/* ---- the replay log of a background build ----------------------------- */

/* A logged blob: this header, its bytes, padding to SHM_ALIGN. */
struct replay_rec {
    uint64_t seq;
    uint64_t len;
};

static uint64_t replay_cost(uint64_t len)
{
    return sizeof(struct replay_rec) + align_up(len, SHM_ALIGN);
}

/* Makes room in log for a blob of len bytes: SHM_OK or SHM_ENOMEM. */
static int replay_reserve(struct shm_replay *log, uint64_t len)
{
    uint64_t need = replay_cost(len);
    if (need <= log->cap - log->used)
        return SHM_OK;
    if (need > SHM_MAX_SEGMENT || log->used > SHM_MAX_SEGMENT)
        return SHM_ENOMEM;          /* and the doubling cannot overflow */
    uint64_t cap = log->cap > SHM_REPLAY_MIN ? log->cap : SHM_REPLAY_MIN;
    while (cap - log->used < need)
        cap *= 2;
    uint8_t *buf = realloc(log->buf, cap);
    if (buf == NULL)
        return SHM_ENOMEM;
    log->buf = buf;
    log->cap = cap;
    return SHM_OK;
}

/* Appends a blob to log, which replay_reserve made room in. */
static void replay_append(struct shm_replay *log, uint64_t seq,
                          const char *blob, uint64_t len)
{
    struct replay_rec h = {seq, len};
    memcpy(log->buf + log->used, &h, sizeof h);
    memcpy(log->buf + log->used + sizeof h, blob, len);
    log->used += replay_cost(len);
    log->blobs++;
    log->bytes += len;
}

int64_t shm_replay(struct shm_view *dst, const struct shm_replay *log,
                   uint64_t *cursor, uint64_t max_blobs, char *err,
                   size_t errlen)
{
    struct shm_apply_info info;
    uint64_t at = *cursor, n = 0;
    /* The log is the daemon's private memory, written by replay_append
     * alone: its records are whole and in seq order, and *cursor is the
     * start of one (0 or where the last call stopped). */
    while (at < log->used && n < max_blobs) {
        struct replay_rec h;
        memcpy(&h, log->buf + at, sizeof h);
        info.validated = 1;         /* validated when first applied */
        int rc = shm_apply(dst, (const char *)log->buf + at + sizeof h,
                           h.len, h.seq, &info, err, errlen);
        if (rc != SHM_OK)
            return rc;
        at += replay_cost(h.len);
        *cursor = at;
        n++;
    }
    return (int64_t)n;
}

void shm_replay_free(struct shm_replay *log)
{
    free(log->buf);
    memset(log, 0, sizeof *log);
}

int shm_apply(struct shm_view *v, const char *blob, uint64_t len,
              uint64_t seq, struct shm_apply_info *info, char *err,
              size_t errlen)
{
    struct item it;
    uint64_t pos = 0, n = 0;
    if (seq == 0 || seq > SHM_MAX_SEQ)
        return shm_fail(err, errlen, SHM_EINVAL, "seq %llu is outside "
                        "[1, %llu]", (unsigned long long)seq,
                        (unsigned long long)SHM_MAX_SEQ);
    int rc = survey(v, blob, len, info, err, errlen);
    if (rc != SHM_OK)
        return rc;
    if (v->max_live_bytes != 0 && info->store_bytes != 0 &&
        (v->live_bytes > v->max_live_bytes ||
         info->store_bytes > v->max_live_bytes - v->live_bytes))
        return shm_fail(err, errlen, SHM_ELIMIT, "live bytes would exceed "
                        "the limit of %llu bytes",
                        (unsigned long long)v->max_live_bytes);
    /* The writer's own counters, never the header's (see shm_view). */
    if (info->new_keys_max > v->dirty_cap - v->dirty_count ||
        info->arena_need > v->arena_hi - v->arena_lo - v->arena_used)
        return shm_fail(err, errlen, SHM_ENOSPACE, "generation full: "
                        "promote before applying");
    /* Room in the replay log first, so that a blob is applied only if it
     * is also logged: the build it is for must see every write. */
    if (v->replay != NULL && replay_reserve(v->replay, len) != SHM_OK)
        return shm_fail(err, errlen, SHM_ENOMEM, "no memory to log a write "
                        "of %llu bytes for the promotion under way",
                        (unsigned long long)len);
    while (pos < len) {
        rc = next_item(v, blob, len, &pos, n++, 1, &it, err, errlen);
        if (rc == SHM_OK)
            rc = apply_item(v, &it, seq);
        if (rc != SHM_OK)
            return shm_fail(err, errlen, rc, "item %llu: %s",
                            (unsigned long long)n - 1, shm_strerror(rc));
    }
    if (v->replay != NULL)
        replay_append(v->replay, seq, blob, len);
    return SHM_OK;
}

void shm_commit(struct shm_view *v, uint64_t seq)
{
    /* Relaxed: statistics, read on their own; ordered before the release
     * below for a reader that loads them after committed_seq. */
    __atomic_store_n(&v->hdr->live_count, v->live_count, __ATOMIC_RELAXED);
    __atomic_store_n(&v->hdr->live_bytes, v->live_bytes, __ATOMIC_RELAXED);
    /* Release: every key and record appended so far is complete, and its
     * entry published, for a delta scan that acquire-loads this (it stops
     * at the first record past its snapshot, so records of a later commit
     * below this value are harmless). */
    __atomic_store_n(&v->hdr->committed_arena, v->arena_used,
                     __ATOMIC_RELEASE);
    /* Release: every record, head, entry, slot and count of the writes
     * with seq <= this value was stored before it; a reader's acquire load
     * in shm_snapshot makes them all visible. */
    __atomic_store_n(&v->hdr->committed_seq, seq, __ATOMIC_RELEASE);
    if (v->map != NULL && seq != v->committed)
        shm_map_bump_version(v->map);
    v->committed = seq;
}

void shm_mark_superseded(struct shm_view *v)
{
    /* Release: the daemon stored the map header's current_gen (release)
     * before this; a reader that acquire-loads 1 here and then loads
     * current_gen finds the newer generation. */
    __atomic_store_n(&v->hdr->superseded, 1, __ATOMIC_RELEASE);
    if (v->map != NULL)
        shm_map_bump_version(v->map);
}

/* ---- promotion ---------------------------------------------------------- */

/* A build may run in a thread of the daemon while the daemon's own thread
 * appends to src. It reads src exactly as a reader does at snapshot snap,
 * which the daemon committed before the build started (the thread's start
 * orders that commit before the build's first load):
 *  - the read table [0, read_count) never changes;
 *  - the dirty entries below built_end()'s acquire load of dirty_count are
 *    complete; entries appended later hold only records with seq > snap
 *    (a new entry's first record carries the write that created it), so
 *    stopping there misses nothing live at snap;
 *  - shm_visible_entry acquire-loads each head, which the daemon
 *    release-stores after the record is complete, and skips records newer
 *    than snap by their seq: the chain it walks never changes below them.
 * It never loads the view's writer counters (src->dirty_count and the
 * others), which the daemon's thread updates as it appends. */
static uint64_t built_end(const struct shm_view *src)
{
    /* Acquire: pairs with new_entry's release store of dirty_count, made
     * after the entry and its slot were complete. Clamped like a
     * reader's, so the scan stays inside the entries array. */
    uint64_t dirty = __atomic_load_n(&src->hdr->dirty_count,
                                     __ATOMIC_ACQUIRE);
    return src->read_count + (dirty < src->dirty_cap ? dirty
                                                     : src->dirty_cap);
}

/* Whether the daemon asked the build to stop; looked at every
 * SHM_CANCEL_EVERY entries. (No sched_yield here: on a busy machine each
 * one gives the core away for a whole time slice, which made a 10M-entry
 * build several times slower.) */
static int cancelled(const uint64_t *cancel, uint64_t i)
{
    /* Relaxed: the flag orders nothing (a cancelled build's output is
     * thrown away); being atomic, the load is made each time. */
    return cancel != NULL && i % SHM_CANCEL_EVERY == 0 &&
           __atomic_load_n(cancel, __ATOMIC_RELAXED) != 0;
}

void shm_cancel(uint64_t *flag)
{
    /* Relaxed: see cancelled(). */
    __atomic_store_n(flag, 1, __ATOMIC_RELAXED);
}

int shm_measure(struct shm_view *v, uint64_t snap, const uint64_t *cancel,
                uint64_t *keys, uint64_t *bytes)
{
    uint64_t end = built_end(v);
    *keys = 0;
    *bytes = 0;
    for (uint64_t i = 0; i < end; i++) {
        struct rec r;
        struct key_ref k;
        if (cancelled(cancel, i))
            return SHM_ECANCELED;
        if (!shm_visible_entry(v, i, snap, &r) ||
            !key_load(v, i, v->arena_hi, &k))
            continue;
        (*keys)++;
        *bytes += arena_cost(k.len, r.len);
    }
    return SHM_OK;
}

/* Copies one live entry (its key k and visible record r, each loaded once)
 * into dst's read table at index n. */
static int copy_entry(struct shm_view *dst, uint64_t n,
                      const struct shm_view *src, const struct key_ref *k,
                      const struct rec *r)
{
    /* Plain stores: dst is not published yet. */
    uint64_t *slot = free_slot(dst->read_index, dst->read_mask, k->hash);
    if (slot == NULL)
        return SHM_ENOSPACE;
    struct shm_entry *to = &dst->entries[n];
    uint64_t key_off = arena_take(dst, align_up(k->len, SHM_ALIGN));
    uint64_t at = arena_take(dst, SHM_REC_HEADER + align_up(r->len,
                                                             SHM_ALIGN));
    struct shm_record *copy = (struct shm_record *)(dst->base + at);

    memcpy(dst->base + key_off, src->base + k->off, k->len);
    copy->seq = r->seq;
    copy->prev = SHM_NO_RECORD;
    copy->len = r->len;
    copy->flags = (uint32_t)(n << SHM_REC_ENTRY_SHIFT);
    memcpy(dst->base + at + SHM_REC_HEADER,
           src->base + r->at + SHM_REC_HEADER, r->len);
    to->hash = k->hash;
    to->key_off = key_off;
    to->key_len = k->len;
    to->head = at;
    *slot = slot_make(k->hash, n);
    return SHM_OK;
}

int64_t shm_build(struct shm_view *src, uint64_t snap, struct shm_view *dst,
                  const uint64_t *cancel)
{
    uint64_t end = built_end(src);
    uint64_t n = 0, live_bytes = 0;
    uint64_t read_max = (dst->read_mask + 1) / SHM_LOAD_INVERSE;

    if (src->seed0 != dst->seed0 || src->seed1 != dst->seed1 ||
        dst->read_count != 0 || dst->dirty_count != 0)
        return SHM_EINVAL;
    for (uint64_t i = 0; i < end; i++) {
        struct rec r;
        struct key_ref k;
        if (cancelled(cancel, i))
            return SHM_ECANCELED;
        if (!shm_visible_entry(src, i, snap, &r) ||
            !key_load(src, i, src->arena_hi, &k))
            continue;
        uint64_t cost = arena_cost(k.len, r.len);
        if (n >= read_max || n >= dst->entry_cap ||
            cost > dst->arena_hi - dst->arena_lo - dst->arena_used)
            return SHM_ENOSPACE;
        int rc = copy_entry(dst, n, src, &k, &r);
        if (rc != SHM_OK)
            return rc;
        n++;
        live_bytes += k.len + r.len;
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
    /* Plain stores: dst is not published yet. */
    dst->hdr->base_arena = dst->arena_used;
    dst->hdr->committed_arena = dst->arena_used;
    return (int64_t)n;
}
