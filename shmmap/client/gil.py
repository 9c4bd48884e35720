"""How a client's waits treat the GIL when the process has other threads.

cffi releases the GIL around every C call, and so do a socket's send and
a blocking lock's acquire. A thread that released the GIL must win it
back, and while another thread runs Python, CPython hands it over only
when that one's switch interval ends (``sys.getswitchinterval()``, 5 ms),
or later if a third thread takes it first. A reply that comes in
microseconds then costs the waiter milliseconds: writer threads beside
busy reader threads made a few hundred writes a second where one alone
made tens of thousands, with most of their time spent waiting to get the
GIL back.

So beside other threads a wait for the daemon first runs through
``ctypes.PyDLL``, whose calls keep the GIL: it polls (yielding the core on
each turn, as every spin here does) and sleeps for up to HELD_WAIT_MS, and
only a wait that lasts longer goes on with the GIL released. A reply
usually comes while it polls. The cost to the other threads: they run no
Python meanwhile, for at most HELD_WAIT_MS per wait, a fifth of the
switch interval that releasing would cost the waiter; and the waiter
still gives the GIL up between two requests whenever another thread has
asked for it for a switch interval, as any thread running Python does.
A writer thus takes turns at the GIL like a thread that computes, instead
of queueing for a turn after every write. A process with no other thread
has nobody to hand the GIL to: it keeps the cheaper cffi calls.

The same holds for the map's own lock (ThreadLock): a writer thread that
slept on a plain lock wakes up owning it without the GIL, and every other
writer then waits behind it while it queues for the GIL.
"""
from __future__ import annotations

import ctypes
import errno
import os
import socket
import _thread
import threading
import time
from typing import TYPE_CHECKING

from .. import _core
from .._core import ffi, lib

if TYPE_CHECKING:
    from .._core import CData, struct_shm_chan, struct_shm_spin

HELD_WAIT_MS = 1
_LOCK_POLL_SECONDS = 50e-6      # how often a thread waiting for a ThreadLock looks again

_core_held = ctypes.PyDLL(_core.__file__)       # the same functions, the GIL kept
_chan_batch = _core_held.shm_chan_batch
_chan_batch.restype = ctypes.c_int64
_chan_batch.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_uint64,
                        ctypes.c_char_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p,
                        ctypes.c_int)
_wait_recv = _core_held.shm_wait_recv
_wait_recv.restype = ctypes.c_int64
_wait_recv.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_void_p,
                       ctypes.c_int)
_send = ctypes.PyDLL(None, use_errno=True).send
_send.restype = ctypes.c_ssize_t
_send.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int)
_SEND_FLAGS = socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT


# Whether other threads of this process may want the GIL: the number of
# threads started through _thread (as threading starts them) besides the
# main one, nonzero if there are any. A C call, with no Python frame: a
# seventh of the instructions of threading.active_count(), which takes a
# lock, on a path every write of a single-threaded process takes too.
other_threads = _thread._count


def address(p: CData | struct_shm_chan | struct_shm_spin) -> int:
    """A cffi pointer as ctypes takes it."""
    return int(ffi.cast("uintptr_t", p))


def chan_batch(chan: int, efd: int, sockfd: int, rid: int, blob: bytes, ticket: int,
               spin: struct_shm_spin) -> int:
    """shm_chan_batch on the channel at address chan, keeping the GIL, for
    at most HELD_WAIT_MS: -ETIMEDOUT if the reply did not come by then (the
    request stays posted; wait on with the GIL released)."""
    return _chan_batch(chan, efd, sockfd, rid, blob, len(blob), ticket, address(spin),
                       HELD_WAIT_MS)


def wait_recv(fd: int, buf: CData, cap: int, spin: struct_shm_spin | CData,
              timeout_ms: int) -> int:
    """shm_wait_recv: receives from the socket fd into buf[0..cap),
    polling as spin (a struct shm_spin) says, then sleeping: the bytes
    received, 0 at the end of the stream, or -errno. Beside other threads
    it keeps the GIL for the first HELD_WAIT_MS."""
    if timeout_ms > HELD_WAIT_MS and other_threads():
        got = _wait_recv(fd, address(buf), cap, address(spin), HELD_WAIT_MS)
        if got != -errno.ETIMEDOUT:
            return got
        timeout_ms -= HELD_WAIT_MS
        spin = ffi.NULL                 # it polled: sleep at once
    return lib.shm_wait_recv(fd, buf, cap, spin, timeout_ms)


def send(sock: socket.socket, data: bytes) -> int:
    """sock.send(data, MSG_NOSIGNAL) on a non-blocking socket: the bytes
    sent; BlockingIOError or another OSError. Beside other threads it keeps
    the GIL: a send to the daemon takes microseconds too."""
    if not other_threads():
        return sock.send(data, socket.MSG_NOSIGNAL)
    while True:
        sent = _send(sock.fileno(), data, len(data), _SEND_FLAGS)
        if sent >= 0:
            return sent
        err = ctypes.get_errno()
        if err != errno.EINTR:          # a signal: its handler runs once this returns
            raise OSError(err, os.strerror(err))    # BlockingIOError for EAGAIN


class ThreadLock:
    """A lock between the threads of one process that a thread takes only
    while it holds the GIL: a waiter sleeps with neither and looks again
    every _LOCK_POLL_SECONDS. A plain lock hands itself to a sleeping
    waiter, which must then win the GIL back before it can use the lock or
    let go of it: the lock's owner queues for the GIL behind busy threads
    while the other threads queue for the lock behind it. Here the thread
    that holds the GIL takes a free lock at once. A waiter is not served
    in turn; it takes the lock at the first look that finds it free.

    ``with lock:`` runs two Python calls; the hottest write takes it as
    ``if not lock.take(False): lock.wait()`` and ``lock.release()``, both
    C calls while the lock is free."""

    __slots__ = ("take", "release")

    def __init__(self) -> None:
        lock = threading.Lock()
        self.take = lock.acquire        # take(False): whether it took the lock
        self.release = lock.release

    def wait(self) -> None:
        """Takes the lock, which another thread holds now."""
        take = self.take
        while not take(False):
            time.sleep(_LOCK_POLL_SECONDS)

    def __enter__(self) -> None:
        if not self.take(False):
            self.wait()

    def __exit__(self, *exc: object) -> None:
        self.release()
