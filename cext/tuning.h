/*
 * tuning.h -- the C core's tuning: how big a new generation is, when the
 * daemon promotes, how long each side polls before it sleeps. None of it
 * is part of the format (shmmap.h): a process may choose other numbers
 * and still read every map and talk to every daemon. Each comment says
 * what its number trades.
 *
 * In the cffi section too (cext/build.py): the daemon and shmmap doctor
 * plan promotions with these numbers, and protocol.Spin reads the spin's.
 */
#ifndef SHMMAP_TUNING_H
#define SHMMAP_TUNING_H

/* CFFI-BEGIN */

/* ---- sizing a generation (shm_plan) ------------------------------------ */
#define SHM_LOAD_INVERSE     2         /* index slots per entry: load <= 1/2,
                                          which SHM_MAX_PROBE_RUN assumes */
#define SHM_MIN_DIRTY        1024      /* dirty entries a new generation takes
                                          at least, before it must promote */
#define SHM_DIRTY_PER_LIVE   1         /* ... and at least this many per live
                                          entry: promotion copies live
                                          entries, so growing dirty with them
                                          keeps inserts amortized O(1) */
#define SHM_MIN_ARENA        65536     /* arena bytes free after a build */
#define SHM_ARENA_PER_LIVE   1         /* free arena bytes per live byte */
#define SHM_MISSES_PER_LIVE  4         /* misses since the last promotion
                                          that cost about one promotion,
                                          per live entry (a miss costs one
                                          more probe, a promotion copies) */

/* ---- the limits a map gets unless its daemon is told otherwise --------- */
#define SHM_DEFAULT_MAX_KEY  65536
#define SHM_DEFAULT_MAX_VALUE 16777216

/* ---- promotion beside the live generation (shmmap/promotion.py) -------- */
#define SHM_PROMOTE_RUNWAY   4         /* the daemon starts building the next
                                          generation in the background once
                                          less than 1/RUNWAY of the dirty
                                          entries or arena bytes a generation
                                          started with is left: the rest is
                                          the room writes take while the
                                          build runs (a write that finds it
                                          gone waits for the build) */
#define SHM_BACKGROUND_MIN_LIVE 16384 /* ... once it holds this many live
                                          keys: a smaller map promotes when
                                          full, in the loop, in about as
                                          long as a write's round trip */
#define SHM_REPLAY_RESERVE   4         /* a background build sizes the next
                                          generation for live(S) plus at most
                                          1/RESERVE of the current one's room
                                          for the writes replayed into it */
#define SHM_CANCEL_EVERY     4096      /* entries a build copies between two
                                          looks at its cancel flag */
#define SHM_REPLAY_MIN       65536     /* first allocation of a replay log */

/* ---- polling before sleeping (struct shm_spin in core.h) --------------- */
#define SHM_CONTENDED_NS     50000     /* a yield this long: contended */
#define SHM_SPIN_MIN_NS      5000      /* a spin budget below this is none */
#define SHM_SPIN_PROBE_EVERY 64        /* with no budget, one wait in this
                                          many polls a little: to notice
                                          when polling pays again */
#define SHM_SPIN_LOOK_NS     100000000 /* how often runnable() reads the
                                          kernel's count of runnable
                                          processes (/proc/loadavg) */
#define SHM_ACTIVE_NS        1000000   /* a channel whose request the
                                          daemon took this recently is an
                                          active client's */
#define SHM_FOREIGN_SHARE    4         /* the daemon polls in crowds while
                                          other processes are at most one in
                                          this many of its active clients */
#define SHM_BEAT_STILL_NS    10000     /* a client stops following the
                                          daemon's beat when it stood still
                                          this long: several of the daemon's
                                          polling turns, so it lost its core */
#define SHM_PEEK_NS          2000      /* between polling turns, the daemon
                                          looks at the channels this long
                                          with no system call */
#define SHM_EPOLL_EVERY_NS   20000     /* ... and while posts keep it from
                                          epoll_wait, calls it this often
                                          anyway, for the sockets */
#define SHM_CHAN_CHECK_NS    20000000  /* a sleeping client looks at its
                                          socket this often: the daemon's
                                          death ends a wait this soon */

/* ---- the daemon's rounds (shm_round_serve) ----------------------------- */
#define SHM_ROUND_RECV       65536     /* bytes of one receive */

/* CFFI-END */

#endif /* SHMMAP_TUNING_H */
