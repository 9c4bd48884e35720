"""The daemon's statistics: what ``m.stats()`` and ``shmmap stats`` report,
and one log line per promotion (reason, entries, bytes, milliseconds)."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
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
            "last_promotion": None if st.last_promotion is None else asdict(st.last_promotion),
            "promotion_building": self.writer.building is not None,
            "background_promotions": st.background_promotions,
            "builds_cancelled": st.builds_cancelled,
            "builds_failed": st.builds_failed,
            "writes_waited_for_build": st.writes_waited_for_build,
            "replay_fallbacks": st.replay_fallbacks,
        }


class PromotionLog:
    """Logs the promotions the writer made since the last look, one line
    each with its phases: the writer promotes on its own (a full
    generation, adoption) and the daemon finishes background builds, so
    the daemon compares one counter once per loop round."""

    def __init__(self, writer: MapWriter) -> None:
        self.writer = writer
        self._seen = 0

    def check(self) -> None:
        st = self.writer.stats
        if st.promotions == self._seen:
            return
        new = min(st.promotions - self._seen, len(st.recent_promotions))
        for rec in list(st.recent_promotions)[-new:]:
            phases = ", ".join(f"{k} {v:.1f}" for k, v in rec.phases_ms.items())
            log.info("promoted (%s) to generation %d%s: %d entries, %d bytes copied, %d writes "
                     "replayed, %.1f ms (%s ms)", rec.reason, rec.generation,
                     " in the background" if rec.background else "", rec.entries, rec.bytes,
                     rec.replayed, rec.ms, phases,
                     extra={"event": "promotion", "reason": rec.reason,
                            "generation": rec.generation, "entries": rec.entries,
                            "bytes": rec.bytes, "ms": rec.ms, "replayed": rec.replayed,
                            "background": rec.background, "phases_ms": dict(rec.phases_ms)})
        self._seen = st.promotions
