/*
 * hash.c -- the keyed hash of an encoded key: SipHash-1-3 (Aumasson and
 * Bernstein), written from the paper's description. A 128-bit per-map
 * random key means a client cannot choose keys that collide in the index,
 * so collision flooding cannot degrade lookups; one compression round per
 * word and three finalisation rounds are the speed/strength trade-off
 * CPython and Rust make for hash tables.
 */
#include <string.h>
#include "internal.h"

#define SIP_C_ROUNDS 1
#define SIP_D_ROUNDS 3

/* The initialisation constants of the paper ("somepseudorandomlygenerated
 * bytes" in ASCII). */
#define SIP_INIT0 0x736f6d6570736575ULL
#define SIP_INIT1 0x646f72616e646f6dULL
#define SIP_INIT2 0x6c7967656e657261ULL
#define SIP_INIT3 0x7465646279746573ULL
#define SIP_FINAL 0xffULL

static inline uint64_t rotl(uint64_t x, int b)
{
    return (x << b) | (x >> (64 - b));
}

struct sip { uint64_t v0, v1, v2, v3; };

static inline void sip_round(struct sip *s)
{
    s->v0 += s->v1; s->v1 = rotl(s->v1, 13); s->v1 ^= s->v0;
    s->v0 = rotl(s->v0, 32);
    s->v2 += s->v3; s->v3 = rotl(s->v3, 16); s->v3 ^= s->v2;
    s->v0 += s->v3; s->v3 = rotl(s->v3, 21); s->v3 ^= s->v0;
    s->v2 += s->v1; s->v1 = rotl(s->v1, 17); s->v1 ^= s->v2;
    s->v2 = rotl(s->v2, 32);
}

static inline void sip_absorb(struct sip *s, uint64_t m)
{
    s->v3 ^= m;
    for (int i = 0; i < SIP_C_ROUNDS; i++)
        sip_round(s);
    s->v0 ^= m;
}

/* Little-endian load of n <= 8 bytes, whatever the host's byte order, so
 * that a map's hashes do not depend on the machine. */
static inline uint64_t load_le(const uint8_t *p, int n)
{
    uint64_t m = 0;
    for (int i = 0; i < n; i++)
        m |= (uint64_t)p[i] << (8 * i);
    return m;
}

uint64_t shm_hash(uint64_t seed0, uint64_t seed1, const char *key,
                  uint64_t len)
{
    const uint8_t *p = (const uint8_t *)key;
    struct sip s = {
        seed0 ^ SIP_INIT0, seed1 ^ SIP_INIT1,
        seed0 ^ SIP_INIT2, seed1 ^ SIP_INIT3,
    };
    uint64_t words = len / 8;

    for (uint64_t i = 0; i < words; i++)
        sip_absorb(&s, load_le(p + 8 * i, 8));
    /* The last block: the remaining bytes, and the length's low byte on
     * top, so that keys differing only in trailing zeros hash apart. */
    sip_absorb(&s, load_le(p + 8 * words, (int)(len % 8)) |
                   ((uint64_t)(len & 0xff) << 56));
    s.v2 ^= SIP_FINAL;
    for (int i = 0; i < SIP_D_ROUNDS; i++)
        sip_round(&s);
    return s.v0 ^ s.v1 ^ s.v2 ^ s.v3;
}
