"""The map operations the daemon serves: one handler per request op, each
validating its arguments and applying its write through the MapWriter.

A handler returns ``(result, seq)``: seq is the write's sequence number, 0
for a read. It raises InvalidRequestError, LimitError or MapFullError for
what the client asked wrong or the map cannot hold; anything else it raises
is a daemon bug, which dispatch reports as such."""
from __future__ import annotations

import os
from typing import Any, Callable, Optional

from .._core import ffi, lib
from ..shared import protocol
from ..shared.codec import decode_value
from ..shared.errors import InvalidRequestError
from ..shared.protocol import Op, delete_item, store_item
from .promotion import BackgroundPromoter
from .slots import ReaderSlots
from .transport import Connection, Later
from .writer import MapWriter

Result = tuple[Any, int]
# Replies the C hot path writes before Python takes them: about 3,000 at
# SHM_REPLY_MAX bytes each, more than one receive of small requests holds.
SERVE_OUT_BYTES = 64 * 1024
Handler = Callable[..., Result]


class MapOps:
    """Applies requests to the map; tracks whether a commit is due."""

    def __init__(self, writer: MapWriter, slots: ReaderSlots,
                 stats: Callable[[], dict[str, Any]], promoter: BackgroundPromoter) -> None:
        self.writer = writer
        self.slots = slots
        self._stats = stats
        self.promoter = promoter
        self.writes = 0
        self.uncommitted = False
        # The C hot path's state and reply buffer (see serve_bytes).
        self._serve = ffi.new("struct shm_serve *")
        self._out = ffi.new("uint8_t[]", SERVE_OUT_BYTES)
        self._out_bytes = ffi.buffer(self._out)
        self._serve.out = self._out
        self._serve.out_cap = SERVE_OUT_BYTES
        self._serve.max_request = protocol.MAX_REQUEST
        # The round's own (its replies wait in the round's buffer for the
        # commit while serve_bytes answers other requests of the round).
        self._round_serve = ffi.new("struct shm_serve *")
        self._round_serve.max_request = protocol.MAX_REQUEST

    def handlers(self) -> dict[int, tuple[Handler, int]]:
        """op -> (bound handler, number of arguments)."""
        return {
            Op.HELLO: (self.op_hello, 1),
            Op.BATCH: (self.op_batch, 1),
            Op.LOAD_OR_STORE: (self.op_load_or_store, 2),
            Op.LOAD_AND_DELETE: (self.op_load_and_delete, 1),
            Op.SWAP: (self.op_swap, 2),
            Op.COMPARE_AND_SWAP: (self.op_compare_and_swap, 3),
            Op.COMPARE_AND_DELETE: (self.op_compare_and_delete, 2),
            Op.CLEAR: (self.op_clear, 0),
            Op.PROMOTE: (self.op_promote, 0),
            Op.STATS: (self.op_stats, 0),
        }

    def commit(self) -> None:
        """Makes this round's writes visible (one release store)."""
        if self.uncommitted:
            self.writer.commit()
            self.uncommitted = False

    def serve_bytes(self, conn: Connection, buf: bytes | bytearray,
                    pos: int) -> tuple[int, int, Any, int]:
        """Serves the batch requests of buf from pos on in C (shm_serve):
        applies each, appending its reply to conn.out, up to the first
        request it leaves. Returns (where it stopped, why: a Stop, the
        length of the request it left or why the bytes are no request,
        how many it served). Its writes are visible after commit()."""
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
            writer.seq = s.seq
            self.writes += served
            self.uncommitted = True
        conn.scan_at, conn.scan_pending = s.scan_at, s.scan_pending
        if stop == lib.SHM_STOP_OBJECT:
            return pos, stop, s.next_len, served
        if stop == lib.SHM_STOP_BAD:
            return pos, stop, ffi.string(s.err).decode(errors="replace"), served
        return pos, stop, None, served

    def serve_round(self, round_: Any, timeout_ms: int) -> tuple[int, int]:
        """Waits for a round of events and serves in C what it can
        (shm_round_serve): (events, or -errno; requests served). Its
        writes are visible after commit()."""
        s, writer = self._round_serve, self.writer
        s.view = writer.generation.view
        s.seq = writer.seq
        events = lib.shm_round_serve(round_, s, timeout_ms)
        served = round_.served
        if served:
            writer.seq = s.seq
            self.writes += served
            self.uncommitted = True
        return events, served

    def serve_loop(self, round_: Any, loop: Any) -> tuple[int, int]:
        """Serves rounds in C until one needs Python (shm_serve_loop):
        (the last round's events or -errno, requests served in all). A
        round left to Python (SHM_LOOP_LEFT) is not committed yet: its
        writes are visible after commit()."""
        s, writer = self._round_serve, self.writer
        s.view = writer.generation.view
        s.seq = writer.seq
        served_before = loop.served
        events = lib.shm_serve_loop(round_, s, loop)
        served = loop.served - served_before
        if loop.stop == lib.SHM_LOOP_LEFT and round_.served:
            served += round_.served
            self.uncommitted = True
        if served:
            writer.seq = s.seq
            self.writes += served
        return events, served

    def _write(self, blob: bytes) -> int:
        seq = self.writer.apply(blob)
        self.writes += 1
        self.uncommitted = True
        return seq

    def _current(self, key: bytes, *values: bytes) -> Optional[bytes]:
        """Validates key and values; returns key's latest encoded value."""
        self.writer.check_key(key)
        for value in values:
            self.writer.check_value(value)
        return self.writer.lookup_raw(key)

    # -- the handlers ----------------------------------------------------------

    def op_hello(self, conn: Connection, version: Any) -> Result:
        if version != protocol.VERSION:
            raise InvalidRequestError(f"the client speaks protocol version {version!r}, the "
                                      f"daemon {protocol.VERSION}: run the same shmmap in both")
        if conn.slot < 0:
            conn.slot = self.slots.assign(conn.peer.pid)
        lim = self.writer.limits
        return {"pid": os.getpid(), "slot": conn.slot, "max_key": lim.max_key,
                "max_value": lim.max_value, "version": protocol.VERSION,
                "channel": True}, 0

    def op_batch(self, conn: Connection, blob: Any) -> Result:
        return None, self._write(_bin(blob, "batch"))

    def op_load_or_store(self, conn: Connection, key: Any, value: Any) -> Result:
        key, value = _bin(key, "key"), _bin(value, "value")
        current = self._current(key, value)
        if current is not None:
            return [True, current], 0
        return [False, value], self._write(store_item(key, value))

    def op_load_and_delete(self, conn: Connection, key: Any) -> Result:
        key = _bin(key, "key")
        current = self._current(key)
        if current is None:
            return [False, None], 0
        return [True, current], self._write(delete_item(key))

    def op_swap(self, conn: Connection, key: Any, value: Any) -> Result:
        key, value = _bin(key, "key"), _bin(value, "value")
        current = self._current(key, value)
        return [current is not None, current], self._write(store_item(key, value))

    def op_compare_and_swap(self, conn: Connection, key: Any, old: Any, new: Any) -> Result:
        key, old, new = _bin(key, "key"), _bin(old, "old value"), _bin(new, "new value")
        current = self._current(key, old, new)
        if current is None or not _same(current, old):
            return False, 0
        return True, self._write(store_item(key, new))

    def op_compare_and_delete(self, conn: Connection, key: Any, old: Any) -> Result:
        key, old = _bin(key, "key"), _bin(old, "old value")
        current = self._current(key, old)
        if current is None or not _same(current, old):
            return False, 0
        return True, self._write(delete_item(key))

    def op_clear(self, conn: Connection) -> Result:
        # Commits what came before it; cancels a build under way (it would
        # copy what the clear removes).
        seq = self.writer.clear()
        self.writes += 1
        self.uncommitted = False
        return None, seq

    def op_promote(self, conn: Connection) -> Result:
        # Built beside the map while writes go on (the build commits what
        # came before it); answered once published, with the generation
        # and seq (see promotion.py).
        later = Later()
        self.promoter.request(later)
        return later, 0

    def op_stats(self, conn: Connection) -> Result:
        return self._stats(), 0


def _bin(x: Any, what: str) -> bytes:
    if type(x) is not bytes:
        raise InvalidRequestError(f"{what} must be msgpack-encoded bytes, not {type(x).__name__}")
    return x


def _same(stored: bytes, given: bytes) -> bool:
    """Whether two encoded (and validated) values are equal as Python
    values (1 == 1.0, {1, 2} == {2, 1}). The daemon has no application's
    Ext types: their values decode as msgpack.ExtType and compare as their
    bytes."""
    return stored == given or bool(decode_value(stored) == decode_value(given))
