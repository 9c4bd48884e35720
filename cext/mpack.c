/*
 * mpack.c -- checking msgpack bytes that came from outside (the encoders,
 * inline, are mpack.h's).
 *
 * The daemon stores keys and values as the msgpack bytes clients send, and
 * every reader decodes them; so before anything is stored these checks make
 * sure that each is one well-formed object that msgpack-python and
 * shmmap's codec will decode (valid UTF-8, hashable map keys, well-formed
 * timestamps and payloads of shmmap's ext types, bounded nesting), and
 * that each key is in the one canonical encoding, because keys are
 * compared and hashed as bytes. A client runs the same checks before it
 * sends a value, so the two never disagree.
 *
 * The canonical encoding is the one msgpack-python's Packer (with
 * use_bin_type=True) emits: every length and integer in its shortest form,
 * non-negative integers in the unsigned formats.
 */
#include <string.h>
#include "internal.h"

#define MP_FIX_LEN_MASK     0x0f
#define MP_FIXSTR_LEN_MASK  0x1f
#define MP_FIXSTR_MAX       31
#define MP_TIMESTAMP_TYPE   (-1)
#define MP_NANOS_PER_SEC    1000000000ULL
#define MP_NANOS_SHIFT      34          /* 8-byte timestamp: ns << 34 | s */

struct mp {
    const uint8_t *p;
    uint64_t len;
    uint64_t pos;
    int code;                       /* SHM_EKEY or SHM_EVALUE */
    char *err;
    size_t errlen;
};

#define FAIL(c, ...) shm_fail((c)->err, (c)->errlen, (c)->code, __VA_ARGS__)

static int need(struct mp *c, uint64_t n)
{
    if (c->len - c->pos < n)
        return FAIL(c, "truncated msgpack at byte %llu: %llu more bytes "
                    "expected", (unsigned long long)c->pos,
                    (unsigned long long)n);
    return SHM_OK;
}

static uint64_t be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* Reads an n-byte big-endian length or integer after the format byte. */
static int take(struct mp *c, int n, uint64_t *out)
{
    int rc = need(c, (uint64_t)n);
    if (rc != SHM_OK)
        return rc;
    *out = be(c->p + c->pos, n);
    c->pos += (uint64_t)n;
    return SHM_OK;
}

/* The smallest length a form with a length field of width bytes is the
 * shortest encoding for: fix_count lengths fit the fix form (none for bin),
 * and arrays and maps have no 8-bit form. */
static uint64_t first_len(int width, uint64_t fix_count, int has_8bit)
{
    if (width == 4)
        return 0x10000;
    if (width == 2 && has_8bit)
        return 0x100;
    return fix_count;
}

/* Strict UTF-8, as Python decodes it: no overlong forms, no surrogates,
 * nothing above U+10FFFF. */
static int utf8_ok(const uint8_t *s, uint64_t n)
{
    uint64_t i = 0;
    while (i < n) {
        uint8_t b = s[i];
        int more;
        uint32_t cp;
        if (b < 0x80) { i++; continue; }
        if (b >= 0xc2 && b <= 0xdf) { more = 1; cp = b & 0x1f; }
        else if (b >= 0xe0 && b <= 0xef) { more = 2; cp = b & 0x0f; }
        else if (b >= 0xf0 && b <= 0xf4) { more = 3; cp = b & 0x07; }
        else return 0;
        if (n - i <= (uint64_t)more)
            return 0;
        for (int k = 1; k <= more; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((more == 2 && cp < 0x800) || (more == 3 && cp < 0x10000) ||
            cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += (uint64_t)more + 1;
    }
    return 1;
}

static int walk(struct mp *c, enum mp_mode mode, int depth);

static const char *const KEY_TYPES =
    "keys must be str, bytes, int or tuples of them";

static int not_canonical(struct mp *c, const char *what)
{
    return FAIL(c, "key is not in canonical msgpack form: %s at byte %llu "
                "is not in its shortest encoding", what,
                (unsigned long long)c->pos);
}

static int skip(struct mp *c, uint64_t n)
{
    int rc = need(c, n);
    if (rc == SHM_OK)
        c->pos += n;
    return rc;
}

static int str_body(struct mp *c, enum mp_mode mode, uint64_t n, int width)
{
    int rc = need(c, n);
    if (rc != SHM_OK)
        return rc;
    if (mode == MP_KEY && width > 0 && n < first_len(width, MP_FIXSTR_MAX + 1, 1))
        return not_canonical(c, "a string length");
    if (!utf8_ok(c->p + c->pos, n))
        return FAIL(c, "string at byte %llu is not valid UTF-8",
                    (unsigned long long)c->pos);
    c->pos += n;
    return SHM_OK;
}

static int bin_body(struct mp *c, enum mp_mode mode, uint64_t n, int width)
{
    if (mode == MP_KEY && n < first_len(width, 0, 1))
        return not_canonical(c, "a bytes length");
    return skip(c, n);
}

/* An array of count elements, written with a length field of width bytes
 * (0: the fixarray form). */
static int array_body(struct mp *c, enum mp_mode mode, int depth,
                      uint64_t count, int width)
{
    if (mode == MP_MAPKEY)
        return FAIL(c, "a map key or set element inside a value must be "
                    "hashable, not a list");
    if (mode == MP_KEY && width > 0 &&
        count < first_len(width, MP_FIXARRAY_MAX + 1, 0))
        return not_canonical(c, "an array length");
    if (count > c->len - c->pos)
        return FAIL(c, "truncated msgpack: array of %llu elements at byte "
                    "%llu", (unsigned long long)count,
                    (unsigned long long)c->pos);
    for (uint64_t i = 0; i < count; i++) {
        int rc = walk(c, mode, depth + 1);
        if (rc != SHM_OK)
            return rc;
    }
    return SHM_OK;
}

static int map_body(struct mp *c, enum mp_mode mode, int depth,
                    uint64_t count)
{
    if (mode != MP_VALUE)
        return mode == MP_KEY ? FAIL(c, "%s, not a dict", KEY_TYPES)
                              : FAIL(c, "a map key or set element inside a "
                                     "value must be hashable, not a dict");
    if (count > (c->len - c->pos) / 2)
        return FAIL(c, "truncated msgpack: map of %llu pairs at byte %llu",
                    (unsigned long long)count, (unsigned long long)c->pos);
    for (uint64_t i = 0; i < count; i++) {
        int rc = walk(c, MP_MAPKEY, depth + 1);
        if (rc == SHM_OK)
            rc = walk(c, MP_VALUE, depth + 1);
        if (rc != SHM_OK)
            return rc;
    }
    return SHM_OK;
}

/* The array that is the payload of a tuple or set ext, n bytes at c->pos:
 * its elements are checked in mode, one level deeper than the ext. */
static int ext_array(struct mp *c, uint64_t n, enum mp_mode mode, int depth,
                     const char *what)
{
    struct mp in = *c;
    uint64_t count;
    int rc;
    in.p += c->pos;
    in.len = n;
    in.pos = 1;
    uint8_t b = n > 0 ? in.p[0] : MP_NIL;
    if (b >= MP_FIXARRAY && b < MP_FIXSTR)
        count = b & MP_FIX_LEN_MASK;
    else if (b == MP_ARRAY16 || b == MP_ARRAY32) {
        if ((rc = take(&in, b == MP_ARRAY16 ? 2 : 4, &count)) != SHM_OK)
            return rc;
    } else
        return FAIL(c, "%s ext at byte %llu does not hold an array", what,
                    (unsigned long long)c->pos);
    if (count > in.len - in.pos)
        return FAIL(c, "truncated msgpack: %s of %llu elements at byte %llu",
                    what, (unsigned long long)count,
                    (unsigned long long)c->pos);
    for (uint64_t i = 0; i < count; i++)
        if ((rc = walk(&in, mode, depth + 1)) != SHM_OK)
            return rc;
    if (in.pos != n)
        return FAIL(c, "%s ext at byte %llu has %llu bytes after its array",
                    what, (unsigned long long)c->pos,
                    (unsigned long long)(n - in.pos));
    c->pos += n;
    return SHM_OK;
}

/* str(Decimal) of a quiet NaN, an infinity or a finite number: [-] then
 * NaN[digits], Infinity, or digits[.digits][E(+|-)digits] with an
 * exponent Decimal() takes. */
static int decimal_ok(const uint8_t *s, uint64_t n)
{
    uint64_t i = n > 0 && s[0] == '-', digits = 0, exp_digits = 0;
    if (n - i == 8 && memcmp(s + i, "Infinity", 8) == 0)
        return 1;
    if (n - i >= 3 && memcmp(s + i, "NaN", 3) == 0) {
        for (i += 3; i < n; i++)
            if (s[i] < '0' || s[i] > '9')
                return 0;
        return 1;
    }
    for (; i < n && s[i] >= '0' && s[i] <= '9'; i++)
        digits++;
    if (digits == 0)
        return 0;
    if (i < n && s[i] == '.') {
        for (digits = 0, i++; i < n && s[i] >= '0' && s[i] <= '9'; i++)
            digits++;
        if (digits == 0)
            return 0;
    }
    if (i == n)
        return 1;
    if (s[i] != 'E' || n - i < 3 || (s[i + 1] != '+' && s[i + 1] != '-'))
        return 0;
    for (i += 2; i < n && s[i] >= '0' && s[i] <= '9'; i++)
        exp_digits++;
    return i == n && exp_digits <= SHM_EXT_DECIMAL_EXP_DIGITS;
}

/* The payload of a datetime ext: see SHM_EXT_DATETIME. */
static int datetime_ok(const uint8_t *d, uint64_t n)
{
    if (n != 13 && n < 21)
        return 0;
    uint64_t ordinal = be(d, 4), us = be(d + 4, 8);
    if (ordinal < 1 || ordinal > SHM_MAX_ORDINAL || us >= SHM_US_PER_DAY ||
        d[12] > 1)
        return 0;
    if (n == 13)
        return 1;
    int64_t offset = (int64_t)be(d + 13, 8);
    return offset > -(int64_t)SHM_US_PER_DAY &&
           offset < (int64_t)SHM_US_PER_DAY && utf8_ok(d + 21, n - 21);
}

/* shmmap's own ext types (SHM_EXT_*): their payloads are what codec.py
 * decodes without an error, and in mode MP_MAPKEY only the hashable ones
 * (not a set) stand. */
static int own_ext(struct mp *c, enum mp_mode mode, int depth, int8_t type,
                   const uint8_t *d, uint64_t n)
{
    int ok;
    const char *what;
    switch (type) {
    case SHM_EXT_TUPLE:
        return ext_array(c, n, mode, depth, "tuple");
    case SHM_EXT_SET:
        if (mode == MP_MAPKEY)
            return FAIL(c, "a map key or set element inside a value must "
                        "be hashable, not a set");
        return ext_array(c, n, MP_MAPKEY, depth, "set");
    case SHM_EXT_FROZENSET:
        return ext_array(c, n, MP_MAPKEY, depth, "frozenset");
    case SHM_EXT_DATETIME:
        ok = datetime_ok(d, n);
        what = "a datetime";
        break;
    case SHM_EXT_DATE:
        ok = n == 4 && be(d, 4) >= 1 && be(d, 4) <= SHM_MAX_ORDINAL;
        what = "a date";
        break;
    case SHM_EXT_DECIMAL:
        ok = decimal_ok(d, n);
        what = "a Decimal shmmap stores (no signaling NaN, an exponent of "
               "at most 17 digits)";
        break;
    case SHM_EXT_UUID:
        ok = n == 16;
        what = "a UUID (16 bytes)";
        break;
    default:
        return FAIL(c, "ext type %d at byte %llu is reserved by shmmap",
                    type, (unsigned long long)c->pos);
    }
    if (!ok)
        return FAIL(c, "ext type %d at byte %llu is not %s",
                    type, (unsigned long long)c->pos, what);
    c->pos += n;
    return SHM_OK;
}

/* Ext types decode to ExtType (application types below
 * SHM_EXT_OWN_FIRST), to shmmap's types (own_ext), or to Timestamp for
 * type -1, which msgpack-python rejects unless it has one of the three
 * sizes of the spec and its nanoseconds are below one second; it rejects
 * the other negative (reserved) types outright. */
static int ext_body(struct mp *c, enum mp_mode mode, int depth, uint64_t n)
{
    int rc = need(c, n + 1);
    if (rc != SHM_OK)
        return rc;
    if (mode == MP_KEY)
        return FAIL(c, "%s, not an ext type", KEY_TYPES);
    int8_t type = (int8_t)c->p[c->pos++];
    const uint8_t *d = c->p + c->pos;
    if (type >= SHM_EXT_OWN_FIRST)
        return own_ext(c, mode, depth, type, d, n);
    if (type < 0 && type != MP_TIMESTAMP_TYPE)
        return FAIL(c, "ext type %d at byte %llu is reserved by msgpack",
                    type, (unsigned long long)c->pos);
    if (type == MP_TIMESTAMP_TYPE) {
        uint64_t nanos = 0;
        if (n == 8)
            nanos = be(d, 8) >> MP_NANOS_SHIFT;
        else if (n == 12)
            nanos = be(d, 4);
        else if (n != 4)
            return FAIL(c, "timestamp ext at byte %llu has %llu bytes, not "
                        "4, 8 or 12", (unsigned long long)c->pos,
                        (unsigned long long)n);
        if (nanos >= MP_NANOS_PER_SEC)
            return FAIL(c, "timestamp ext at byte %llu has %llu nanoseconds",
                        (unsigned long long)c->pos,
                        (unsigned long long)nanos);
    }
    c->pos += n;
    return SHM_OK;
}

/* Integers after their format byte b; width is 1 << (b - first form). */
static int uint_body(struct mp *c, enum mp_mode mode, int width)
{
    uint64_t v;
    int rc = take(c, width, &v);
    if (rc != SHM_OK || mode != MP_KEY)
        return rc;
    /* An unsigned form is shortest when the value does not fit the next
     * smaller one; below 128 that is the positive fixint. */
    uint64_t smaller = width == 1 ? MP_POSFIX_MAX
                                  : (1ULL << (8 * (width / 2))) - 1;
    return v > smaller ? SHM_OK : not_canonical(c, "an integer");
}

static int int_body(struct mp *c, enum mp_mode mode, int width)
{
    uint64_t raw;
    int rc = take(c, width, &raw);
    if (rc != SHM_OK || mode != MP_KEY)
        return rc;
    int shift = 64 - 8 * width;
    int64_t v = (int64_t)(raw << shift) >> shift;   /* sign-extend */
    /* msgpack-python writes non-negative integers unsigned, and a negative
     * one in the smallest signed form: below the next smaller form's
     * minimum, or below -32 for the 1-byte form. */
    int64_t lowest = width == 1 ? MP_NEGFIX_LOWEST
                                : -(int64_t)(1ULL << (8 * (width / 2) - 1));
    return v < lowest ? SHM_OK : not_canonical(c, "an integer");
}

static int scalar(struct mp *c, enum mp_mode mode, const char *what,
                  uint64_t n)
{
    if (mode == MP_KEY)
        return FAIL(c, "%s, not %s", KEY_TYPES, what);
    return skip(c, n);
}

static int walk(struct mp *c, enum mp_mode mode, int depth)
{
    uint64_t n;
    int rc;
    if (depth > SHM_MAX_DEPTH)
        return FAIL(c, "nested deeper than %d levels", SHM_MAX_DEPTH);
    if ((rc = need(c, 1)) != SHM_OK)
        return rc;
    uint8_t b = c->p[c->pos++];

    if (b <= MP_POSFIX_MAX || b >= MP_NEGFIX_MIN)
        return SHM_OK;
    if (b < MP_FIXARRAY)
        return map_body(c, mode, depth, b & MP_FIX_LEN_MASK);
    if (b < MP_FIXSTR)
        return array_body(c, mode, depth, b & MP_FIX_LEN_MASK, 0);
    if (b < MP_NIL)
        return str_body(c, mode, b & MP_FIXSTR_LEN_MASK, 0);

    switch (b) {
    case MP_NIL:
        return scalar(c, mode, "None", 0);
    case MP_FALSE:
    case MP_TRUE:
        return scalar(c, mode, "a bool", 0);
    case MP_FLOAT32:
    case MP_FLOAT64:
        return scalar(c, mode, "a float", b == MP_FLOAT32 ? 4 : 8);
    case MP_BIN8:
    case MP_BIN16:
    case MP_BIN32: {
        int width = 1 << (b - MP_BIN8);
        if ((rc = take(c, width, &n)) != SHM_OK)
            return rc;
        return bin_body(c, mode, n, width);
    }
    case MP_STR8:
    case MP_STR16:
    case MP_STR32: {
        int width = 1 << (b - MP_STR8);
        if ((rc = take(c, width, &n)) != SHM_OK)
            return rc;
        return str_body(c, mode, n, width);
    }
    case MP_EXT8:
    case MP_EXT16:
    case MP_EXT32:
        if ((rc = take(c, 1 << (b - MP_EXT8), &n)) != SHM_OK)
            return rc;
        return ext_body(c, mode, depth, n);
    case MP_UINT8:
    case MP_UINT16:
    case MP_UINT32:
    case MP_UINT64:
        return uint_body(c, mode, 1 << (b - MP_UINT8));
    case MP_INT8:
    case MP_INT16:
    case MP_INT32:
    case MP_INT64:
        return int_body(c, mode, 1 << (b - MP_INT8));
    case MP_ARRAY16:
    case MP_ARRAY32: {
        int width = b == MP_ARRAY16 ? 2 : 4;
        if ((rc = take(c, width, &n)) != SHM_OK)
            return rc;
        return array_body(c, mode, depth, n, width);
    }
    case MP_MAP16:
    case MP_MAP32:
        if ((rc = take(c, b == MP_MAP16 ? 2 : 4, &n)) != SHM_OK)
            return rc;
        return map_body(c, mode, depth, n);
    case MP_NEVER:
        return FAIL(c, "byte 0xc1 at %llu is never used in msgpack",
                    (unsigned long long)(c->pos - 1));
    default:                        /* the fixext forms */
        return ext_body(c, mode, depth, 1ULL << (b - MP_FIXEXT1));
    }
}

int mp_check(const uint8_t *p, uint64_t len, enum mp_mode mode,
             uint64_t *used, char *err, size_t errlen)
{
    struct mp c = { p, len, 0, mode == MP_KEY ? SHM_EKEY : SHM_EVALUE,
                    err, errlen };
    int rc = walk(&c, mode, 0);
    if (rc == SHM_OK)
        *used = c.pos;
    return rc;
}

static int check_whole(const char *p, uint64_t len, enum mp_mode mode,
                       const char *what, char *err, size_t errlen)
{
    uint64_t used = 0;
    int rc = mp_check((const uint8_t *)p, len, mode, &used, err, errlen);
    if (rc == SHM_OK && used != len)
        return shm_fail(err, errlen, mode == MP_KEY ? SHM_EKEY : SHM_EVALUE,
                        "%s has %llu bytes after its msgpack object", what,
                        (unsigned long long)(len - used));
    return rc;
}

int shm_check_key(const char *p, uint64_t len, char *err, size_t errlen)
{
    return check_whole(p, len, MP_KEY, "key", err, errlen);
}

int shm_check_value(const char *p, uint64_t len, char *err, size_t errlen)
{
    return check_whole(p, len, MP_VALUE, "value", err, errlen);
}

int mp_head(const uint8_t *p, uint64_t len, struct mp_head *h)
{
    int width = 0;
    uint8_t b = p[0];
    h->head = 1;
    h->body = h->children = 0;
    if (b <= MP_POSFIX_MAX || b >= MP_NEGFIX_MIN)
        return SHM_OK;
    if (b < MP_FIXARRAY)
        h->children = 2 * (uint64_t)(b & MP_FIX_LEN_MASK);
    else if (b < MP_FIXSTR)
        h->children = b & MP_FIX_LEN_MASK;
    else if (b < MP_NIL)
        h->body = b & MP_FIXSTR_LEN_MASK;
    else if (b >= MP_BIN8 && b <= MP_BIN32)
        width = 1 << (b - MP_BIN8);
    else if (b >= MP_STR8 && b <= MP_STR32)
        width = 1 << (b - MP_STR8);
    else if (b >= MP_EXT8 && b <= MP_EXT32)
        width = 1 << (b - MP_EXT8);
    else if (b == MP_FLOAT32 || b == MP_FLOAT64)
        h->body = b == MP_FLOAT32 ? 4 : 8;
    else if (b >= MP_UINT8 && b <= MP_UINT64)
        h->body = 1ULL << (b - MP_UINT8);
    else if (b >= MP_INT8 && b <= MP_INT64)
        h->body = 1ULL << (b - MP_INT8);
    else if (b >= MP_FIXEXT1 && b <= MP_FIXEXT16)
        h->body = 1 + (1ULL << (b - MP_FIXEXT1));       /* type, data */
    else if (b == MP_ARRAY16 || b == MP_ARRAY32 || b == MP_MAP16 ||
             b == MP_MAP32)
        width = b == MP_ARRAY16 || b == MP_MAP16 ? 2 : 4;
    else if (b == MP_NEVER)
        return SHM_EINVAL;
    /* nil, false, true: the format byte is all */
    if (width > 0) {
        if (len - 1 < (uint64_t)width)
            return SHM_EBUFSMALL;
        uint64_t n = be(p + 1, width);
        h->head += (uint64_t)width;
        if (b >= MP_ARRAY16)
            h->children = b <= MP_ARRAY32 ? n : 2 * n;
        else
            h->body = n + (b >= MP_EXT8 && b <= MP_EXT32);    /* + type */
    }
    return SHM_OK;
}

/* For shm_apply's second pass over a blob it validated: finds where each
 * object ends from its format byte, length field and element counts. */
int mp_skip(const uint8_t *p, uint64_t len, uint64_t *used)
{
    /* Objects still to skip: one, plus each array's elements and each
     * map's keys and values as their headers are read. No recursion, so
     * no depth to trust. */
    uint64_t pending = 1, pos = 0;
    while (pending > 0) {
        struct mp_head h;
        if (pos >= len || mp_head(p + pos, len - pos, &h) != SHM_OK)
            return SHM_EINVAL;
        pending--;
        pos += h.head;
        if (len - pos < h.body)
            return SHM_EINVAL;
        pos += h.body;
        if (h.children > len - pos)     /* each child takes a byte */
            return SHM_EINVAL;
        pending += h.children;
    }
    *used = pos;
    return SHM_OK;
}
