/*
 * mpack.h -- msgpack in the C core: the format bytes of the specification,
 * the checks of bytes that came from outside (mpack.c), and the few
 * encodings the core writes itself: an int key to look up, the array
 * header of an export, a write's reply, a client's batch request. Every
 * msgpack byte the core writes is written by a function here.
 *
 * The encoders are inline, since they sit on hot paths (an int key's
 * lookup, each write's reply) and each is a handful of stores. Each
 * writes at out, which the caller made big enough (the MP_*_MAX sizes),
 * and returns the byte after what it wrote.
 */
#ifndef SHMMAP_MPACK_H
#define SHMMAP_MPACK_H

#include <stddef.h>
#include <stdint.h>

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
#define MP_FIXARRAY_MAX     15
#define MP_INT_MAX          9       /* bytes of the longest int: uint64 */
#define MP_UINT64_LEN       9       /* bytes of an int in the uint64 form */
#define MP_ARRAY32_HEADER   5       /* bytes of an array32 header */
#define MP_BIN32_HEADER     5       /* bytes of a bin32 header */

/* ---- reading (mpack.c) --------------------------------------------------- */

/* Where a kind of msgpack object may stand: a map key (canonical, of the
 * key types), a value (any well-formed msgpack a client can decode), or a
 * map key inside a value (a scalar, so that it decodes to a hashable). */
enum mp_mode { MP_KEY, MP_VALUE, MP_MAPKEY };

/* Checks the msgpack object at p[0..len); on success stores its length in
 * *used. On failure writes a message to err and returns SHM_EKEY or
 * SHM_EVALUE (by mode). */
int mp_check(const uint8_t *p, uint64_t len, enum mp_mode mode,
             uint64_t *used, char *err, size_t errlen);

/* The length of the msgpack object at p[0..len) that mp_check accepted
 * before: structure only, no content checks. Still never reads past len:
 * SHM_EINVAL if the object does not fit. */
int mp_skip(const uint8_t *p, uint64_t len, uint64_t *used);

/* The header of one msgpack object at p[0..len): the bytes its format
 * byte and length field take (head), the bytes of body that follow (body:
 * a string's, a bin's, an ext's with its type byte, a number's), and the
 * objects it holds (children: an array's elements, a map's keys and
 * values). Structure only, no content checks. SHM_OK; SHM_EINVAL for the
 * byte msgpack never uses; SHM_EBUFSMALL when len ends inside the length
 * field. */
struct mp_head {
    uint64_t head, body, children;
};
int mp_head(const uint8_t *p, uint64_t len, struct mp_head *h);

/* Whether b is the format byte of a non-negative int. */
static inline int mp_is_uint(uint8_t b)
{
    return b <= MP_POSFIX_MAX || (b >= MP_UINT8 && b <= MP_UINT64);
}

/* Bytes the int whose format byte is b takes (b included), or 0 if b is
 * not an int's. */
static inline int mp_int_len(uint8_t b)
{
    if (b <= MP_POSFIX_MAX || b >= MP_NEGFIX_MIN)
        return 1;
    if (b >= MP_UINT8 && b <= MP_UINT64)
        return 1 + (1 << (b - MP_UINT8));
    if (b >= MP_INT8 && b <= MP_INT64)
        return 1 + (1 << (b - MP_INT8));
    return 0;
}

/* ---- writing ------------------------------------------------------------- */

/* v big-endian in width bytes: the body of a fixed-width form. */
static inline uint8_t *mp_put_be(uint8_t *out, uint64_t v, int width)
{
    for (int i = 0; i < width; i++)
        out[i] = (uint8_t)(v >> (8 * (width - 1 - i)));
    return out + width;
}

/* v in the canonical encoding msgpack-python's Packer writes: a fixint,
 * else the shortest unsigned form. At most MP_INT_MAX bytes. */
static inline uint8_t *mp_put_uint(uint8_t *out, uint64_t v)
{
    if (v <= MP_POSFIX_MAX) {
        *out = (uint8_t)v;
        return out + 1;
    }
    int form = v <= 0xff ? 0 : v <= 0xffff ? 1 : v <= 0xffffffff ? 2 : 3;
    *out = (uint8_t)(MP_UINT8 + form);
    return mp_put_be(out + 1, v, 1 << form);
}

/* k in the canonical encoding: unsigned forms for k >= 0 (mp_put_uint),
 * else a negative fixint or the shortest signed form. At most MP_INT_MAX
 * bytes. Keys are compared as bytes, so this must be the Packer's. */
static inline uint8_t *mp_put_int(uint8_t *out, int64_t k)
{
    if (k >= 0)
        return mp_put_uint(out, (uint64_t)k);
    if (k >= MP_NEGFIX_LOWEST) {
        *out = (uint8_t)(int8_t)k;
        return out + 1;
    }
    int form = k >= -0x80 ? 0 : k >= -0x8000 ? 1 : k >= -0x80000000LL ? 2 : 3;
    *out = (uint8_t)(MP_INT8 + form);
    return mp_put_be(out + 1, (uint64_t)k, 1 << form);
}

/* v in the uint64 form whatever its value: MP_UINT64_LEN bytes, so that a
 * header holding it has a fixed size. Not canonical: never for a key. */
static inline uint8_t *mp_put_uint64(uint8_t *out, uint64_t v)
{
    *out = MP_UINT64;
    return mp_put_be(out + 1, v, 8);
}

static inline uint8_t *mp_put_nil(uint8_t *out)
{
    *out = MP_NIL;
    return out + 1;
}

/* The header of an array of n <= MP_FIXARRAY_MAX elements. */
static inline uint8_t *mp_put_fixarray(uint8_t *out, uint32_t n)
{
    *out = (uint8_t)(MP_FIXARRAY | n);
    return out + 1;
}

/* The header of an array of n elements in the array32 form: its size is
 * fixed (MP_ARRAY32_HEADER), so it can be written once the count is known,
 * in front of elements already written. */
static inline uint8_t *mp_put_array32(uint8_t *out, uint32_t n)
{
    *out = MP_ARRAY32;
    return mp_put_be(out + 1, n, 4);
}

/* The header of a bin of n bytes in the bin32 form (MP_BIN32_HEADER). */
static inline uint8_t *mp_put_bin32(uint8_t *out, uint32_t n)
{
    *out = MP_BIN32;
    return mp_put_be(out + 1, n, 4);
}

#endif /* SHMMAP_MPACK_H */
