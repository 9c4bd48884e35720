/*
 * internal.h -- helpers shared by the C core's files; not part of the API.
 */
#ifndef SHMMAP_INTERNAL_H
#define SHMMAP_INTERNAL_H

#include "shmmap.h"

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

/* Format bytes of the msgpack specification. */
enum {
    MP_POSFIX_MAX = 0x7f, MP_FIXMAP = 0x80, MP_FIXARRAY = 0x90,
    MP_FIXSTR = 0xa0, MP_NIL = 0xc0, MP_NEVER = 0xc1, MP_FALSE = 0xc2,
    MP_TRUE = 0xc3, MP_BIN8 = 0xc4, MP_BIN16 = 0xc5, MP_BIN32 = 0xc6,
    MP_EXT8 = 0xc7, MP_EXT16 = 0xc8, MP_EXT32 = 0xc9, MP_FLOAT32 = 0xca,
    MP_FLOAT64 = 0xcb, MP_UINT8 = 0xcc, MP_UINT16 = 0xcd, MP_UINT32 = 0xce,
    MP_UINT64 = 0xcf, MP_INT8 = 0xd0, MP_INT16 = 0xd1, MP_INT32 = 0xd2,
    MP_INT64 = 0xd3, MP_FIXEXT1 = 0xd4, MP_FIXEXT16 = 0xd8, MP_STR8 = 0xd9,
    MP_STR16 = 0xda, MP_STR32 = 0xdb, MP_ARRAY16 = 0xdc, MP_ARRAY32 = 0xdd,
    MP_MAP16 = 0xde, MP_MAP32 = 0xdf, MP_NEGFIX_MIN = 0xe0,
};
#define MP_NEGFIX_LOWEST    (-32)
#define MP_ARRAY32_HEADER   5


/* Where a kind of msgpack object may stand: a map key (canonical, of the
 * key types), a value (any well-formed msgpack a client can decode), or a
 * map key inside a value (a scalar, so that it decodes to a hashable). */
enum mp_mode { MP_KEY, MP_VALUE, MP_MAPKEY };

/* Checks the msgpack object at p[0..len); on success stores its length in
 * *used. On failure writes a message to err and returns SHM_EKEY or
 * SHM_EVALUE (by mode). */
int mp_check(const uint8_t *p, uint64_t len, enum mp_mode mode,
             uint64_t *used, char *err, size_t errlen);

/* Formats a message into err (which may be NULL) and returns code. */
int shm_fail(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Checks the fixed part of a generation header against size; fills v when
 * it is not NULL. */
int gen_check_header(const struct shm_gen_header *h, uint64_t size,
                     char *err, size_t errlen);

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

/* Shared between the reader and writer files (read.c). */
const struct shm_record *shm_visible_entry(const struct shm_view *v,
                                           uint64_t entry, uint64_t snap,
                                           uint64_t *where);
int shm_entry_key_ok(const struct shm_view *v, const struct shm_entry *e);
int64_t shm_find_entry(struct shm_view *v, uint64_t hash, const char *key,
                       uint64_t len, int count_miss);

#endif /* SHMMAP_INTERNAL_H */
