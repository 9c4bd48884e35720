/*
 * race_lengths.c -- a reader exports and looks up while another thread
 * keeps changing the lengths it reads (record len, entry key_len) in the
 * same writable memory, as a hostile or corrupt writer could. The reader's
 * buffers sit in front of guard bytes: whatever the lengths say, an export
 * must never write past its buffer's capacity.
 *
 * Built by tests/test_core_race.py against the core's sources:
 *   cc -std=c11 -O2 -pthread -Icext tests/c/race_lengths.c cext/<each>.c
 * Usage: race_lengths ROUNDS. Exit 0: no byte past a buffer was touched;
 * 1: an overflow (the message says how far); 2: setup failed.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core.h"
#include "mpack.h"

#define KEYS        8           /* int keys 0..KEYS-1, fixints */
#define VALUE_LEN   10          /* bin8 of 8 bytes */
#define SMALL_CAP   64          /* each export buffer's capacity */
#define GUARD       8192        /* guard bytes after each buffer */
#define GUARD_BYTE  0xab
#define BIG_LEN     4000        /* a length that still fits the arena */

struct race {
    struct shm_view view;
    volatile int stop;          /* set by the main thread when done */
};

/* One store of key k: op, fixint key, bin8 value of 8 bytes. */
static size_t put_store(uint8_t *p, int k)
{
    p[0] = SHM_OP_STORE;
    p[1] = (uint8_t)k;
    p[2] = MP_BIN8;
    p[3] = VALUE_LEN - 2;
    memset(p + 4, 'v', VALUE_LEN - 2);
    return 2 + VALUE_LEN;
}

/* Flips every head record's len and every entry's key_len between its true
 * value and BIG_LEN, with relaxed atomic stores (another process's plain
 * stores, as the reader sees them). */
static void *flipper(void *arg)
{
    struct race *r = arg;
    struct shm_view *v = &r->view;
    uint64_t n = v->read_count + __atomic_load_n(&v->hdr->dirty_count,
                                                 __ATOMIC_ACQUIRE);
    for (uint64_t round = 0; !__atomic_load_n(&r->stop, __ATOMIC_RELAXED);
         round++) {
        for (uint64_t e = 0; e < n; e++) {
            struct shm_entry *ent = &v->entries[e];
            struct shm_record *rec = (void *)(v->base + ent->head);
            uint32_t len = round % 2 ? BIG_LEN : VALUE_LEN;
            uint32_t key_len = round % 2 ? BIG_LEN : 1;
            __atomic_store_n(&rec->len, len, __ATOMIC_RELAXED);
            __atomic_store_n(&ent->key_len, key_len, __ATOMIC_RELAXED);
        }
    }
    return NULL;
}

/* Bytes past the buffer's capacity that are no longer guard bytes. */
static size_t overrun(const uint8_t *buf)
{
    size_t last = 0;
    for (size_t i = 0; i < GUARD; i++)
        if (buf[SMALL_CAP + i] != GUARD_BYTE)
            last = i + 1;
    return last;
}

int main(int argc, char **argv)
{
    long rounds = argc > 1 ? atol(argv[1]) : 100000;
    struct shm_geometry g;
    struct race r = { .stop = 0 };
    struct shm_apply_info info = { 0 };
    uint8_t blob[KEYS * (2 + VALUE_LEN)];
    size_t len = 0;
    char err[SHM_ERR_LEN] = "";

    if (shm_plan(&g, 0, 0, KEYS, sizeof blob) != SHM_OK)
        return 2;
    void *base = aligned_alloc(SHM_PAGE, g.segment_size);
    if (base == NULL)
        return 2;
    memset(base, 0, g.segment_size);
    for (int k = 0; k < KEYS; k++)
        len += put_store(blob + len, k);
    if (shm_gen_init(base, &g, 1, 1, 2, 0) != SHM_OK ||
        shm_view_open(&r.view, base, g.segment_size, err, sizeof err) ||
        shm_apply(&r.view, (const char *)blob, len, 1, &info, err,
                  sizeof err) != SHM_OK) {
        fprintf(stderr, "setup: %s\n", err);
        return 2;
    }
    shm_commit(&r.view, 1);

    uint8_t *keys = malloc(SMALL_CAP + GUARD);
    uint8_t *values = malloc(SMALL_CAP + GUARD);
    pthread_t t;
    memset(keys, GUARD_BYTE, SMALL_CAP + GUARD);
    memset(values, GUARD_BYTE, SMALL_CAP + GUARD);
    if (keys == NULL || values == NULL ||
        pthread_create(&t, NULL, flipper, &r) != 0)
        return 2;

    size_t worst = 0;
    long exported = 0, found = 0;
    for (long i = 0; i < rounds && worst == 0; i++) {
        struct shm_export x = {
            .snap = shm_snapshot(&r.view), .max_items = KEYS,
            .keys = keys, .keys_cap = SMALL_CAP,
            .values = values, .values_cap = SMALL_CAP,
        };
        int rc;
        do {
            rc = shm_export_batch(&r.view, &x);
            exported += rc >= 0 ? (long)x.count : 0;
            if (rc >= 0 && (x.keys_len > SMALL_CAP || x.values_len > SMALL_CAP))
                worst = x.keys_len > x.values_len ? x.keys_len : x.values_len;
        } while (rc == 0 && worst == 0);
        for (int k = 0; k < KEYS; k++)
            found += shm_lookup_int(&r.view, k) >= 0;
        size_t over = overrun(keys), vover = overrun(values);
        if (over > worst || vover > worst)
            worst = over > vover ? over : vover;
    }
    __atomic_store_n(&r.stop, 1, __ATOMIC_RELAXED);
    pthread_join(t, NULL);
    printf("rounds %ld exported %ld found %ld overrun %zu\n", rounds, exported,
           found, worst);
    if (worst > 0) {
        fprintf(stderr, "export wrote %zu bytes past a %d-byte buffer\n",
                worst, SMALL_CAP);
        return 1;
    }
    free(keys);
    free(values);
    free(base);
    return 0;
}
