/*
 * maphdr.c -- the atomic words of the map header (/shmmap-NAME).
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
