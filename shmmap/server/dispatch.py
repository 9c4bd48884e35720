"""Dispatch: a request to its handler, and the handler's outcome to a
reply -- in C for the batch requests the hot path serves (cext/serve.c),
here for the others. The error codes say whose fault a failure is: the
client's (INVALID, LIMIT, UNKNOWN_OP, PROTOCOL), the map's (FULL), or the
daemon's (INTERNAL, logged with its traceback)."""
from __future__ import annotations

import logging
from time import perf_counter
from typing import Any

from .._core import ffi, lib
from ..shared import protocol
from ..shared.errors import (InvalidRequestError, LimitError, MapFullError, OutcomeUnknownError,
                             UpstreamUnavailableError)
from ..shared.protocol import Err, Op
from .handlers import Handler, MapOps
from .transport import BadRequest, Connection, Later

log = logging.getLogger("shmmap.daemon")

# What the client asked wrong or the map cannot hold, by exception class.
# Any other exception is a daemon bug (a TypeError included).
_CLIENT_ERRORS: dict[type[Exception], Err] = {
    InvalidRequestError: Err.INVALID,
    LimitError: Err.LIMIT,
    MapFullError: Err.FULL,
    UpstreamUnavailableError: Err.UPSTREAM,
    OutcomeUnknownError: Err.UPSTREAM_UNKNOWN,
}
_CLIENT_ERROR_TYPES = tuple(_CLIENT_ERRORS)
# Replies the C hot path writes before Python takes them: about 3,000 at
# SHM_REPLY_MAX bytes each, more than one receive of small requests holds.
SERVE_OUT_BYTES = 64 * 1024


class Dispatcher:
    """Turns requests into handler calls and their outcomes into replies;
    counts both. The batch requests it can, the C hot path serves
    (cext/serve.c) -- decoded, applied and answered there -- and the
    others come to handle()."""

    def __init__(self, handlers: dict[int, tuple[Handler, int]], ops: MapOps) -> None:
        """handlers: op -> (handler, arity); ops: the map, whose writer the
        C hot path writes through and which it tells what it applied."""
        self.handlers = handlers
        self.ops = ops
        self.writer = ops.writer
        self.requests = 0
        self.errors = 0
        # (op, when its handling started, connection) of each request of
        # this round: the daemon times them once their replies are sent
        # (stats.Timings).
        self.round: list[tuple[int, float, Connection]] = []
        # (how many, when they started, the fds of the connections they came
        # on) of the batches the C hot path served this round, timed the
        # same way.
        self.fast_round: list[tuple[int, float, tuple[int, ...]]] = []
        # The C hot path's state for bytes given (serve_bytes), and the
        # buffer it writes their replies to.
        self._serve = ffi.new("struct shm_serve *")
        self._out = ffi.new("uint8_t[]", SERVE_OUT_BYTES)
        self._out_bytes = ffi.buffer(self._out)
        self._serve.out = self._out
        self._serve.out_cap = SERVE_OUT_BYTES
        self._serve.max_request = protocol.MAX_REQUEST
        # The rounds' own: its replies wait in the round's buffer for the
        # commit while serve_bytes answers other requests of the round.
        self._round_serve = ffi.new("struct shm_serve *")
        self._round_serve.max_request = protocol.MAX_REQUEST

    def serve_round(self, round_: Any, timeout_ms: int) -> int:
        """The transport's ServeRound: waits for a round of events and
        serves in C what it can (shm_round_serve); the number of events,
        or -errno. Its writes are visible after the commit."""
        started = perf_counter()
        s, writer = self._round_serve, self.writer
        s.view = writer.generation.view
        s.seq = writer.seq
        events = lib.shm_round_serve(round_, s, timeout_ms)
        served = round_.served
        if served:
            self.ops.applied(served, s.seq)
            self.requests += served
            # A blocking wait in the round is not the requests' time: they
            # arrived when it ended, at the latest; so time from then.
            self.fast_round.append((served, perf_counter() if timeout_ms else started,
                                    _served_fds(round_)))
        return events

    def serve_loop(self, round_: Any, loop: Any) -> int:
        """The transport's ServeLoop: rounds served in C, each committed
        and answered, until one needs Python (shm_serve_loop); the last
        round's events or -errno. A round left to Python (SHM_LOOP_LEFT)
        is not committed yet, and its requests are timed with it."""
        s, writer = self._round_serve, self.writer
        s.view = writer.generation.view
        s.seq = writer.seq
        served_before = loop.served
        events = lib.shm_serve_loop(round_, s, loop)
        left = round_.served if loop.stop == lib.SHM_LOOP_LEFT else 0
        served = loop.served - served_before + left
        if served:
            self.ops.applied(served, s.seq, committed=not left)
            self.requests += served
        if left:
            self.fast_round.append((left, perf_counter(), _served_fds(round_)))
        return events

    def serve_bytes(self, conn: Connection, buf: bytes | bytearray,
                    pos: int) -> tuple[int, int, Any]:
        """The transport's ServeBytes: serves in C (shm_serve) the batch
        requests of buf from pos on, appending each reply to conn.out, up
        to the first request it leaves; (where it stopped, why: a Stop,
        the length of the request it left or why the bytes are no
        request). What it leaves comes back through handle(). Its writes
        are visible after the commit."""
        started = perf_counter()
        s, writer = self._serve, self.writer
        s.view = writer.generation.view
        s.seq = writer.seq
        s.scan_at = conn.scan_at
        s.scan_pending = conn.scan_pending
        # bytes go to C as they are; a bytearray needs a cdata on it, let
        # go at once (while it lives the bytearray cannot be resized).
        cbuf = buf if type(buf) is bytes else ffi.from_buffer(buf)
        served = 0
        try:
            while True:
                s.out_len = 0
                pos = lib.shm_serve(s, cbuf, len(buf), pos)
                if s.out_len:
                    conn.out += self._out_bytes[0:s.out_len]
                    served += s.served
                stop = s.stop
                if stop != lib.SHM_STOP_FULL:
                    break
        finally:
            if not isinstance(cbuf, bytes):
                ffi.release(cbuf)
        if served:
            self.ops.applied(served, s.seq)
            self.requests += served
            self.fast_round.append((served, started, (conn.fd,)))
        conn.scan_at, conn.scan_pending = s.scan_at, s.scan_pending
        if stop == lib.SHM_STOP_OBJECT:
            return pos, stop, s.next_len
        if stop == lib.SHM_STOP_BAD:
            return pos, stop, ffi.string(s.err).decode(errors="replace")
        return pos, stop, None

    def handle(self, conn: Connection, req: Any) -> list[Any] | Later:
        """The reply to req; BadRequest if req is not a request at all."""
        self.requests += 1
        if (not isinstance(req, list) or len(req) < 2 or type(req[0]) is not int
                or type(req[1]) is not int):
            self.errors += 1
            raise BadRequest("a request is an array [op, request_id, *args]")
        op, rid, args = req[0], req[1], req[2:]
        self.round.append((op, perf_counter(), conn))
        entry = self.handlers.get(op)
        if entry is None:
            return self._error(rid, Err.UNKNOWN_OP, f"unknown operation {op}")
        handler, arity = entry
        if len(args) != arity:
            return self._error(rid, Err.INVALID,
                               f"{Op(op).name} takes {arity} arguments, not {len(args)}")
        try:
            result, seq = handler(conn, *args)
        except _CLIENT_ERROR_TYPES as exc:
            return self._error(rid, _code_of(exc), str(exc))
        except Exception as exc:        # a daemon bug: say so, keep serving
            log.exception("request %s from pid %d failed: a daemon bug", Op(op).name,
                          conn.peer.pid, extra={"event": "error", "op": Op(op).name,
                                                "pid": conn.peer.pid})
            return self._error(rid, Err.INTERNAL,
                               f"daemon error in {Op(op).name}: {type(exc).__name__}: {exc}")
        if isinstance(result, Later):   # its handler answers it later
            result.rid = rid
            return result
        return [rid, protocol.OK, result, seq]

    def _error(self, rid: int, code: Err, message: str) -> list[Any]:
        self.errors += 1
        return [rid, code, message]


def _served_fds(round_: Any) -> tuple[int, ...]:
    """The connections whose requests a C round served: on their sockets
    and on their channels."""
    return (tuple(round_.replies[i].fd for i in range(round_.reply_count))
            + tuple(round_.chans[round_.chan_answered[i]].conn_fd
                    for i in range(round_.chan_answered_count)))


def _code_of(exc: Exception) -> Err:
    for cls, code in _CLIENT_ERRORS.items():
        if isinstance(exc, cls):
            return code
    raise AssertionError(f"no error code for {type(exc).__name__}")
