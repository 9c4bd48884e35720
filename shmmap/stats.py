"""The daemon's statistics: what ``m.stats()`` and ``shmmap stats`` report,
and one log line per promotion (reason, entries, bytes, milliseconds)."""
from __future__ import annotations

import logging
import os
import time
from typing import Any

from .dispatch import Dispatcher
from .ops import MapOps
from .slots import ReaderSlots
from .transport import Transport
from .writer import MapWriter

log = logging.getLogger("shmmap.daemon")


def reader_totals(slots: ReaderSlots, transport: Transport) -> dict[str, int]:
    """Readers' counters summed over connected and departed clients."""
    return slots.totals([c.slot for c in transport.connections.values() if c.slot >= 0])


class Statistics:
    """Gathers the counters of every piece of the daemon into one dict."""

    def __init__(self, name: str, writer: MapWriter, slots: ReaderSlots, transport: Transport,
                 dispatcher: Dispatcher, ops: MapOps) -> None:
        self.name = name
        self.writer = writer
        self.slots = slots
        self.transport = transport
        self.dispatcher = dispatcher
        self.ops = ops
        self.started = time.time()

    def snapshot(self) -> dict[str, Any]:
        h = self.writer.generation.header
        st = self.writer.stats
        readers = reader_totals(self.slots, self.transport)
        return {
            "name": self.name,
            "pid": os.getpid(),
            "socket": str(self.transport.path),
            "uptime_s": round(time.time() - self.started, 3),
            "generation": int(h.gen),
            "committed_seq": int(h.committed_seq),
            "live_keys": int(h.live_count),
            "live_bytes": int(h.live_bytes),
            "read_keys": int(h.read_count),
            "dirty_keys": int(h.dirty_count),
            "dirty_capacity": int(h.dirty_cap),
            "arena_used": int(h.arena_used),
            "arena_free": int(h.arena_cap) - int(h.arena_used),
            "segment_bytes": int(h.segment_size),
            "requests": self.dispatcher.requests,
            "writes": self.ops.writes,
            "errors": self.dispatcher.errors,
            "clients": len(self.transport.connections),
            "lookups": readers["lookups"],
            "misses": readers["misses"],
            "export_batches": readers["iterations"],
            "older_generations_mapped": readers["older_generations_mapped"],
            "promotions": st.promotions,
            "promotions_by_reason": dict(st.promotions_by_reason),
            "compactions": st.compactions,
            "bytes_copied": st.bytes_copied,
            "last_promotion_ms": round(st.last_promotion_ms, 3),
        }


class PromotionLog:
    """Logs the promotions the writer made since the last look: the writer
    promotes on its own (a full generation, adoption), so the daemon
    compares its counters once per loop round, which costs one int compare."""

    def __init__(self, writer: MapWriter) -> None:
        self.writer = writer
        self._seen = 0
        self._by_reason: dict[str, int] = {}
        self._bytes = 0

    def check(self) -> None:
        st = self.writer.stats
        if st.promotions == self._seen:
            return
        reasons = [r for r, n in st.promotions_by_reason.items() if n != self._by_reason.get(r, 0)]
        copied = st.bytes_copied - self._bytes
        h = self.writer.generation.header
        count = st.promotions - self._seen
        log.info("promoted (%s) to generation %d: %d entries, %d bytes copied, %.1f ms%s",
                 ",".join(reasons), int(h.gen), int(h.read_count), copied,
                 st.last_promotion_ms, f" ({count} promotions)" if count > 1 else "",
                 extra={"event": "promotion", "reason": ",".join(reasons),
                        "generation": int(h.gen), "entries": int(h.read_count),
                        "bytes": copied, "ms": round(st.last_promotion_ms, 3),
                        "promotions": count})
        self._seen = st.promotions
        self._by_reason = dict(st.promotions_by_reason)
        self._bytes = st.bytes_copied
