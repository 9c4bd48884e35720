/*
 * maphdr.c -- the atomic words of the map header (/shmmap:NAME).
 */
#include "internal.h"

uint64_t shm_map_current_gen(struct shm_map_header *h)
{
    /* Acquire: pairs with shm_map_publish_gen; the generation it names
     * was complete before. (A reader then shm_opens it by name, a system
     * call, which orders the rest.) */
    return __atomic_load_n(&h->current_gen, __ATOMIC_ACQUIRE);
}

void shm_map_publish_gen(struct shm_map_header *h, uint64_t gen)
{
    /* Release: generation gen is built and its segment exists before any
     * reader can read its number here. */
    __atomic_store_n(&h->current_gen, gen, __ATOMIC_RELEASE);
}

uint64_t shm_map_daemon_pid(struct shm_map_header *h)
{
    /* Acquire: pairs with shm_map_set_daemon_pid. */
    return __atomic_load_n(&h->daemon_pid, __ATOMIC_ACQUIRE);
}

void shm_map_set_daemon_pid(struct shm_map_header *h, uint64_t pid)
{
    /* Release: the daemon stores its pid after every segment is ready and
     * its socket listens, so a client that sees the pid can connect. */
    __atomic_store_n(&h->daemon_pid, pid, __ATOMIC_RELEASE);
}

uint64_t shm_map_version(struct shm_map_header *h)
{
    /* Acquire: pairs with shm_map_bump_version; what the daemon committed
     * or published before it stored this value is visible after. */
    return __atomic_load_n(&h->version, __ATOMIC_ACQUIRE);
}

void shm_map_bump_version(struct shm_map_header *h)
{
    /* Relaxed load: the daemon is the only writer of this word, so it
     * reads back its own last store (a value forged by another process
     * only makes caches refresh once more). Release store: after the
     * commit's committed_seq or the old generation's superseded flag, so
     * a reader that loads the new value and then refreshes finds what
     * changed. */
    uint64_t next = __atomic_load_n(&h->version, __ATOMIC_RELAXED) + 1;
    __atomic_store_n(&h->version, next, __ATOMIC_RELEASE);
}
