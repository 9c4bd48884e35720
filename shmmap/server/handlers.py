"""The map operations the daemon serves: one handler per request op, each
validating its arguments and applying its write through the MapWriter.

A handler returns ``(result, seq)``: seq is the write's sequence number, 0
for a read. It raises InvalidRequestError, LimitError or MapFullError for
what the client asked wrong or the map cannot hold; anything else it raises
is a daemon bug, which dispatch reports as such."""
from __future__ import annotations

import os
from typing import Any, Callable, Optional

from ..shared import protocol
from ..shared.codec import decode_value
from ..shared.errors import InvalidRequestError
from ..shared.protocol import Op, delete_item, store_item
from .promotion import BackgroundPromoter
from .slots import ReaderSlots
from .transport import Connection, Later
from .writer import MapWriter

Result = tuple[Any, int]
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

    def applied(self, writes: int, seq: int, *, committed: bool = False) -> None:
        """Counts the writes the C hot path applied (see Dispatcher), the
        last of them with seq. Unless the C loop committed them, they are
        visible after commit()."""
        self.writer.seq = seq
        self.writes += writes
        if not committed:
            self.uncommitted = True

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
