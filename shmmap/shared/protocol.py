"""The wire protocol between clients and the daemon.

A connection carries a stream of msgpack objects each way, so requests can
be pipelined. A request is an array ``[op, request_id, *args]``; keys and
values travel as ``bin``: the client's canonical msgpack encodings, which
the daemon validates and stores as they are. A reply is
``[request_id, OK, result, seq]`` (seq: the committed seq covering the
write, 0 for a read) or ``[request_id, error_code, message]``. After an
``E_PROTOCOL`` reply (bytes that are not a request) the daemon closes the
connection.
"""
from __future__ import annotations

import enum
import os
import socket
import struct
import tempfile
from pathlib import Path
from typing import Iterable, Optional

from .._core import ffi, lib

# 2: values carry tuples, sets, datetimes, dates, Decimals and UUIDs as
# shmmap's ext types (cext/shmmap.h, SHM_EXT_*), which a client of 1 would
# neither send nor read as they were meant.
VERSION = 2
MAX_REQUEST = 64 * 1024 * 1024  # bytes of one request; larger is a protocol error
# A round trip between two processes that sleep in the kernel costs about
# 30 us here, most of it waking the sleeper; a peer that polls without
# sleeping for a little while after it sent (client) or served (daemon)
# answers in a few microseconds. Both bound the spin, then sleep.
CLIENT_SPIN_SECONDS = 100e-6
DAEMON_SPIN_SECONDS = 50e-6
RECV_SIZE = 64 * 1024      # bytes per recv: below malloc's mmap threshold
READY = b"ready\n"           # what a daemon writes to its --ready-fd once it serves

# Upper bounds of the latency buckets of Op.TIMINGS' histograms, in seconds:
# 1-2-5 steps from 2 us (a request served within its round) to 10 s (a
# promotion of tens of millions of keys). Prometheus adds +Inf; `shmmap top`
# estimates quantiles between bounds.
BUCKET_BOUNDS: tuple[float, ...] = (
    2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3,
    0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class Spin:
    """How long a waiter polls (yielding the core on each turn) before it
    sleeps, adapted to what polling bought lately: a struct shm_spin,
    whose comment in cext/core.h gives the policy. The C waits take it
    (``c``) and adapt it themselves; Python's waits (the daemon's _poll
    path) use these methods."""

    MIN_SECONDS = lib.SHM_SPIN_MIN_NS / 1e9     # a budget below this is none
    PROBE_EVERY = lib.SHM_SPIN_PROBE_EVERY
    CORES = len(os.sched_getaffinity(0))    # the cores this process may run on

    __slots__ = ("c",)

    def __init__(self, limit: float, in_crowds: bool = False) -> None:
        """A budget of limit seconds; in_crowds for a client, which polls
        while processes outnumber cores too (see struct shm_spin)."""
        self.c = ffi.new("struct shm_spin *")
        lib.shm_spin_init(self.c, round(limit * 1e9), self.CORES, in_crowds)

    @property
    def seconds(self) -> float:
        """The budget now."""
        return self.c.ns / 1e9

    def budget(self) -> float:
        """Seconds to poll for the next wait."""
        return lib.shm_spin_budget(self.c) / 1e9

    def won(self) -> None:
        """The wait ended while polling."""
        lib.shm_spin_won(self.c)

    def lost(self) -> None:
        """The wait had to sleep, or a yield found the cores contended."""
        lib.shm_spin_lost(self.c)

    def yield_core(self) -> bool:
        """Gives the core away once (sched_yield); False if that took so
        long that spinning does not pay now (the spin should end)."""
        if lib.shm_yield_core():
            return True
        self.lost()
        return False


class Op(enum.IntEnum):
    """The first element of a request: which operation it asks for."""

    HELLO = 0             # [version]               -> {info}
    BATCH = lib.SHM_REQ_BATCH  # [blob]             -> None (seq); served in C
    LOAD_OR_STORE = 2     # [key, value]            -> [loaded, value]
    LOAD_AND_DELETE = 3   # [key]                   -> [loaded, value]
    SWAP = 4              # [key, value]            -> [loaded, previous]
    COMPARE_AND_SWAP = 5  # [key, old, new]         -> swapped
    COMPARE_AND_DELETE = 6  # [key, old]            -> deleted
    CLEAR = 7             # []                      -> None (seq)
    PROMOTE = 8           # []                      -> generation
    STATS = 9             # []                      -> {stats}
    TIMINGS = 10          # []                      -> {"stats": {stats}, histograms}
    TRACE = 11            # [seconds, slow_seconds] -> start recording; [0, 0] -> events
    CHANNEL = 12          # []                      -> {"bytes": n}, with the channel's
                          #   memfd and doorbell eventfd passed (see client/channel.py)


# Ops whose effect is the same if applied twice: a client may resend them
# after the daemon restarts. The others report "outcome unknown" instead.
IDEMPOTENT = frozenset({Op.HELLO, Op.BATCH, Op.CLEAR, Op.PROMOTE, Op.STATS, Op.TIMINGS,
                        Op.CHANNEL})
# Ops that change nothing: one that times out means the daemon does not
# answer (DaemonUnavailableError), not that a write's outcome is unknown.
READ_ONLY = frozenset({Op.HELLO, Op.STATS, Op.TIMINGS, Op.CHANNEL})

OK = lib.SHM_REPLY_OK


class Err(enum.IntEnum):
    """The error code of a reply that is not OK (errors.reply_error turns
    it into an exception)."""

    INVALID = 1           # a key, value or argument is malformed
    LIMIT = 2             # over a configured limit
    FULL = 3              # the map cannot grow
    PROTOCOL = 4          # not a request: the connection is closed
    UNKNOWN_OP = 5
    INTERNAL = 6
    DENIED = 7            # the peer's uid may not use this map
    UPSTREAM = 8          # the map's upstream (Redis) is unreachable: nothing was written
    UPSTREAM_UNKNOWN = 9  # the upstream went away with the write in flight


# ---- batch blobs: the argument of Op.BATCH -----------------------------------
# A blob is a concatenation of items, each an operation byte (SHM_OP_* from
# cext/shmmap.h) followed by msgpack objects: a store is op, key, value; a
# delete is op, key. The C core parses and validates it (shm_apply).
STORE = bytes([lib.SHM_OP_STORE])
DELETE = bytes([lib.SHM_OP_DELETE])


def store_item(key: bytes, value: bytes) -> bytes:
    """One store in a batch blob: op, encoded key, encoded value."""
    return STORE + key + value


def delete_item(key: bytes) -> bytes:
    """One delete in a batch blob: op, encoded key."""
    return DELETE + key


def batch_blob(ops: Iterable[tuple[bytes, Optional[bytes]]]) -> bytes:
    """A blob of (key, value) stores and (key, None) deletes."""
    return b"".join(STORE + k + v if v is not None else DELETE + k for k, v in ops)


# ---- the lean path: one batch request, and its acknowledgement ----------------
# A client's synchronous store frames its request without building a list,
# as the C core does in a channel (shm_batch_frame: the id a msgpack uint64,
# the blob a bin32). The daemon echoes the id's bytes as they came, so the
# acknowledgement [id, OK, nil, seq] is recognised by comparing bytes
# (shm_batch_acked).
# The socket's requests are framed here, with struct (a cffi call per
# request would cost four times as much in a pipeline); tests check that
# both framings give the same bytes.
_BATCH_REQUEST = struct.Struct(">BBBQBI")
BATCH_HEADER = lib.SHM_BATCH_HEADER
assert _BATCH_REQUEST.size == BATCH_HEADER
_FIXARRAY3, _UINT64, _BIN32 = 0x93, 0xcf, 0xc6


def batch_request(rid: int, blob: bytes) -> bytes:
    """The framed request [BATCH, rid, blob], as shm_batch_frame frames it."""
    return _BATCH_REQUEST.pack(_FIXARRAY3, Op.BATCH, _UINT64, rid, _BIN32, len(blob)) + blob


def is_batch_ack(rid: int, data: bytes) -> bool:
    """Whether data is exactly the daemon's OK to the request framed by
    batch_request with rid, and nothing more."""
    return bool(lib.shm_batch_acked(rid, data, len(data)))


def default_socket_dir() -> Path:
    """$XDG_RUNTIME_DIR/shmmap, else <tmp>/shmmap-<uid>."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "shmmap"
    return Path(tempfile.gettempdir()) / f"shmmap-{os.getuid()}"


def default_socket_path(name: str) -> Path:
    """Where map name's daemon listens unless told otherwise (--socket)."""
    return default_socket_dir() / f"{name}.sock"


def socket_in_use(path: Path) -> bool:
    """Whether a process listens on the Unix socket at path. The connect
    does not block: a full backlog means a listener too."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        probe.connect(str(path))
    except (BlockingIOError, InterruptedError):
        return True
    except OSError:         # refused (none listens), absent, not a socket
        return False
    finally:
        probe.close()
    return True
