"""Dispatch: a decoded request to its handler, and the handler's outcome to
a reply. The error codes say whose fault a failure is: the client's
(INVALID, LIMIT, UNKNOWN_OP, PROTOCOL), the map's (FULL), or the daemon's
(INTERNAL, logged with its traceback)."""
from __future__ import annotations

import logging
from time import perf_counter
from typing import Any

from .._core import lib
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


class Dispatcher:
    """Turns requests into handler calls and their outcomes into replies;
    counts both."""

    def __init__(self, handlers: dict[int, tuple[Handler, int]], ops: MapOps) -> None:
        """handlers: op -> (handler, arity); ops: the map, whose C hot path
        (serve_round, serve_bytes) serves batches and counts its writes."""
        self.handlers = handlers
        self.serve_fast = ops.serve_bytes
        self.serve_fast_round = ops.serve_round
        self.serve_fast_loop = ops.serve_loop
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

    def serve_round(self, round_: Any, timeout_ms: int) -> int:
        """The transport's ServeRound: a round of events, served in C as
        far as it goes (see shm_round_serve); the number of events."""
        started = perf_counter()
        events, served = self.serve_fast_round(round_, timeout_ms)
        if served:
            self.requests += served
            # A blocking wait in the round is not the requests' time: they
            # arrived when it ended, at the latest; so time from then.
            self.fast_round.append((served, perf_counter() if timeout_ms else started,
                                    _served_fds(round_)))
        return events

    def serve_loop(self, round_: Any, loop: Any) -> int:
        """The transport's ServeLoop: rounds served in C, each committed
        and answered, until one needs Python (see shm_serve_loop); the last
        round's events. The requests of a round left to Python are timed
        with it."""
        events, served = self.serve_fast_loop(round_, loop)
        self.requests += served
        if loop.stop == lib.SHM_LOOP_LEFT and round_.served:
            self.fast_round.append((round_.served, perf_counter(), _served_fds(round_)))
        return events

    def serve_bytes(self, conn: Connection, buf: bytes | bytearray,
                    pos: int) -> tuple[int, int, Any]:
        """The transport's ServeBytes: the C hot path first; the requests
        it leaves come back through handle()."""
        started = perf_counter()
        pos, stop, arg, served = self.serve_fast(conn, buf, pos)
        if served:
            self.requests += served
            self.fast_round.append((served, started, (conn.fd,)))
        return pos, stop, arg

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
