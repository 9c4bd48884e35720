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
import struct
import tempfile
import time
from pathlib import Path
from typing import Iterable, Optional

from ._core import lib

VERSION = 1
MAX_REQUEST = 64 * 1024 * 1024  # bytes of one request; larger is a protocol error
# A round trip between two processes that sleep in the kernel costs about
# 30 us here, most of it waking the sleeper; a peer that polls without
# sleeping for a little while after it sent (client) or served (daemon)
# answers in a few microseconds. Both bound the spin, then sleep.
CLIENT_SPIN_SECONDS = 100e-6
DAEMON_SPIN_SECONDS = 50e-6
RECV_SIZE = 64 * 1024      # bytes per recv: below malloc's mmap threshold


class Spin:
    """How long a waiter polls (yielding the core on each turn) before it
    sleeps, adapted to what polling bought lately.

    Polling pays when the peer runs on another core and answers within the
    spin; it costs when processes outnumber cores, because the peer needs
    this very core (PLATFORM-NOTES: on 2 cores with a third busy process a
    wake-up beats spinning; measured here, a daemon that spun under that
    load cut the writer beside an iterating process 3-8 fold). So: no spin
    while more processes are runnable than there are cores (crowded());
    otherwise a wait that ended while spinning doubles the budget (up to
    limit), one that had to sleep sets it to cover the wait it saw if that
    is within the limit (waited()), else halves it, and a yield that gave
    the core away for long (another process ran) ends the spin at once.
    With no budget left, one wait in PROBE_EVERY spins a little, to notice
    when polling pays again.
    """

    MIN_SECONDS = lib.SHM_SPIN_MIN_NS / 1e9     # a budget below this is none
    CONTENDED_SECONDS = lib.SHM_CONTENDED_NS / 1e9   # a yield this long: contended
    PROBE_EVERY = 64
    LOOK_SECONDS = 0.1          # how often crowded() looks at the kernel's count
    CORES = len(os.sched_getaffinity(0))

    __slots__ = ("limit", "seconds", "_waits", "_crowded_until", "_look_at")

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.seconds = limit
        self._waits = 0
        self._look_at = 0.0
        self._crowded_until = 0.0

    def crowded(self) -> bool:
        """Whether runnable processes outnumber cores: the kernel's count
        of them right now (/proc/loadavg), looked at every LOOK_SECONDS. A
        process that polls is runnable, so two that poll each other on two
        cores are not crowded, and a third that iterates makes them so.
        (The 1-minute load average answers too late: a 3 s benchmark
        barely moves it, and two processes that poll each other raise it
        to the number of cores within a minute.)"""
        now = time.monotonic()
        if now >= self._look_at:
            self._look_at = now + self.LOOK_SECONDS
            self._crowded_until = (now + self.LOOK_SECONDS
                                   if _runnable() > self.CORES else 0.0)
        return now < self._crowded_until

    def budget(self) -> float:
        """Seconds to poll for the next wait."""
        if not self.limit or self.crowded():
            return 0.0
        if self.seconds:
            return self.seconds
        self._waits += 1
        return self.MIN_SECONDS if self._waits % self.PROBE_EVERY == 0 else 0.0

    def won(self) -> None:
        """The wait ended while polling."""
        self.seconds = min(self.limit, max(self.seconds * 2, self.MIN_SECONDS))

    def waited(self, seconds: float, how: int) -> None:
        """A wait ended after seconds; how (SHM_WAIT_*) says whether it
        ended while polling. One that slept sets the budget to cover such
        a wait (with half again as margin) if polling that long is within
        the limit: so the budget follows the peer's answer times, however
        the peer itself waits (a peer that sleeps answers slower, and
        would make a halving-only budget give up)."""
        if how == lib.SHM_WAIT_WON:
            self.won()
        elif how == lib.SHM_WAIT_CONTENDED or seconds > self.limit:
            self.lost()
        else:
            self.seconds = min(self.limit, max(seconds * 1.5, self.MIN_SECONDS))

    def lost(self) -> None:
        """The wait had to sleep, or a yield found the cores contended."""
        half = self.seconds / 2
        self.seconds = half if half >= self.MIN_SECONDS else 0.0

    def yield_core(self) -> bool:
        """Gives the core away once (sched_yield); False if that took so
        long that spinning does not pay now (the spin should end)."""
        started = time.perf_counter()
        os.sched_yield()
        if time.perf_counter() - started > self.CONTENDED_SECONDS:
            self.lost()
            return False
        return True


def _runnable() -> int:
    """Processes runnable on this host now (the 4th field of /proc/loadavg,
    "running/total"; the caller is one of them)."""
    try:
        with open("/proc/loadavg", "rb") as f:
            return int(f.read().split()[3].split(b"/")[0])
    except (OSError, ValueError, IndexError):
        return 0


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
                          #   memfd and doorbell eventfd passed (see shmmap.channel)


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
# A client's synchronous store frames its request without building a list:
# [BATCH, id, blob] with the id as a msgpack uint64 and the blob as bin32.
# The daemon echoes the id's bytes as they came, so the acknowledgement
# [id, OK, nil, seq] is recognised by comparing bytes.
_BATCH_REQUEST = struct.Struct(">BBBQBI")
_FIXARRAY3, _FIXARRAY4, _UINT64, _BIN32, _NIL = 0x93, 0x94, 0xcf, 0xc6, 0xc0
_REQUEST_ID = slice(2, 11)      # the id's bytes in a framed request
_REQUEST_ID_VALUE = 3           # ... and where its value starts
_ACK_ID = slice(1, 10)          # the id's bytes in the acknowledgement
_ACK_STATUS = slice(10, 12)     # OK, nil
_ACK_SEQ = 12                   # the seq: a msgpack uint
_ACK_STATUS_BYTES = bytes([OK, _NIL])
# Bytes a msgpack uint takes, by its first byte.
_UINT_SIZE = {**{b: 1 for b in range(0x80)}, 0xcc: 2, 0xcd: 3, 0xce: 5, 0xcf: 9}


def batch_request(rid: int, blob: bytes) -> bytes:
    """The framed request [BATCH, rid, blob]."""
    return _BATCH_REQUEST.pack(_FIXARRAY3, Op.BATCH, _UINT64, rid, _BIN32, len(blob)) + blob


def batch_request_id(request: bytes) -> int:
    """The id of a request framed by batch_request."""
    return int.from_bytes(request[_REQUEST_ID_VALUE:_REQUEST_ID.stop], "big")


def is_batch_ack(request: bytes, data: bytes) -> bool:
    """Whether data is exactly the daemon's OK to the request framed by
    batch_request, and nothing more."""
    return (len(data) > _ACK_SEQ and data[0] == _FIXARRAY4
            and data[_ACK_ID] == request[_REQUEST_ID]
            and data[_ACK_STATUS] == _ACK_STATUS_BYTES
            and len(data) == _ACK_SEQ + _UINT_SIZE.get(data[_ACK_SEQ], 0))


def default_socket_dir() -> Path:
    """$XDG_RUNTIME_DIR/shmmap, else <tmp>/shmmap-<uid>."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "shmmap"
    return Path(tempfile.gettempdir()) / f"shmmap-{os.getuid()}"


def default_socket_path(name: str) -> Path:
    """Where map name's daemon listens unless told otherwise (--socket)."""
    return default_socket_dir() / f"{name}.sock"
