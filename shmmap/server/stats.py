"""The daemon's statistics: what ``m.stats()`` and ``shmmap stats`` report,
and one log line per promotion (reason, entries, bytes, milliseconds)."""
from __future__ import annotations

import logging
import os
import time
from bisect import bisect_left
from dataclasses import asdict
from typing import Any, Callable, Optional

from .._core import ffi, lib
from ..shared.protocol import BUCKET_BOUNDS, Op
from .dispatch import Dispatcher
from .handlers import MapOps
from .slots import ReaderSlots
from .transport import Transport
from .writer import MapWriter

log = logging.getLogger("shmmap.daemon")


def _slots_in_use(transport: Transport) -> list[int]:
    return [c.slot for c in transport.connections.values() if c.slot >= 0]


def reader_totals(slots: ReaderSlots, transport: Transport) -> dict[str, int]:
    """Readers' counters summed over connected and departed clients."""
    return slots.totals(_slots_in_use(transport))


class Statistics:
    """Gathers the counters of every piece of the daemon into one dict."""

    def __init__(self, name: str, writer: MapWriter, slots: ReaderSlots, transport: Transport,
                 dispatcher: Dispatcher, ops: MapOps, timings: Timings) -> None:
        self.name = name
        self.timings = timings
        self.metrics_url = ""             # where --metrics serves, if it does
        self.upstream: Optional[Callable[[], dict[str, Any]]] = None   # a near cache's stats
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
            "channels": self.transport.channels,
            "lookups": readers["lookups"],
            "misses": readers["misses"],
            "export_batches": readers["iterations"],
            "older_generations_mapped": self.slots.older_generations(
                _slots_in_use(self.transport), int(h.gen), self.writer.superseded_at),
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
            **({"metrics_url": self.metrics_url} if self.metrics_url else {}),
            **({"upstream": self.upstream()} if self.upstream is not None else {}),
        }

    def observed(self) -> dict[str, Any]:
        """snapshot() and the timing histograms, at one moment: what
        ``shmmap top`` and the Prometheus metrics show."""
        return {"stats": self.snapshot(), **self.timings.snapshot()}

    def op_timings(self, conn: Any) -> tuple[dict[str, Any], int]:
        """The handler of Op.TIMINGS."""
        return self.observed(), 0


class PromotionLog:
    """Logs the promotions the writer made since the last look, one line
    each with its phases: the writer promotes on its own (a full
    generation, adoption) and the daemon finishes background builds, so
    the daemon compares one counter once per loop round."""

    def __init__(self, writer: MapWriter, timings: Timings) -> None:
        self.writer = writer
        self.timings = timings
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
            self.timings.observe_promotion(rec.ms / 1000)
        self._seen = st.promotions


# -- timings: histograms the daemon keeps ------------------------------------

class Histogram:
    """Counts of observations per bucket (the last one is +Inf) and their
    sum: what a Prometheus histogram exports, kept without locks by the one
    thread that observes (the daemon's loop)."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKET_BOUNDS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKET_BOUNDS, seconds)] += 1
        self.sum += seconds

    def snapshot(self) -> dict[str, Any]:
        """{"counts": per bucket (not cumulative), "sum": seconds}."""
        return {"counts": list(self.counts), "sum": self.sum}


class Timings:
    """How long the daemon takes: each request by operation, each round's
    commit, each promotion. The loop calls the observe_* methods; these
    are the one interface a request path (Python or C) reports through.

    A request's duration runs from the moment the daemon starts handling it
    to the moment its reply, committed, is handed to the socket: what a
    client waits for inside the daemon, group commit included."""

    def __init__(self) -> None:
        self.requests: dict[int, Histogram] = {}     # by op
        self.commits = Histogram()
        self.commit_requests = 0          # requests acknowledged by those commits
        self.promotions = Histogram()
        # Set while `shmmap trace` records (recorder.Recorder): also told of
        # each round and each request slower than its threshold.
        self.recorder: Optional[Any] = None

    def observe_request(self, op: int, seconds: float, conn: Any = None) -> None:
        """One request of op took seconds; conn (a transport.Connection)
        names its client in a trace."""
        hist = self.requests.get(op)
        if hist is None:
            hist = self.requests[op] = Histogram()
        # Histogram.observe inlined: this runs once per request.
        hist.counts[bisect_left(BUCKET_BOUNDS, seconds)] += 1
        hist.sum += seconds
        if self.recorder is not None:
            self.recorder.request(op, seconds, conn)

    def observe_requests(self, op: int, seconds: float, count: int, conns: list[Any]) -> None:
        """count requests of op took seconds each: those the C hot path
        served in one go, from the connections conns (None for one gone
        since); a trace gets one slow-request event per connection."""
        hist = self.requests.get(op)
        if hist is None:
            hist = self.requests[op] = Histogram()
        hist.counts[bisect_left(BUCKET_BOUNDS, seconds)] += count
        hist.sum += seconds * count
        if self.recorder is not None:
            for conn in conns or [None]:
                self.recorder.request(op, seconds, conn)

    def new_loop(self) -> Any:
        """A struct shm_loop for the C loop (Transport.serve), which times
        requests and rounds into it with these buckets; observe_loop takes
        them from it."""
        loop = ffi.new("struct shm_loop *")
        if len(BUCKET_BOUNDS) > lib.SHM_LOOP_BUCKETS:
            raise AssertionError("more latency buckets than struct shm_loop holds")
        loop.nbounds = len(BUCKET_BOUNDS)
        for i, bound in enumerate(BUCKET_BOUNDS):
            loop.bounds_ns[i] = round(bound * 1e9)
        return loop

    def observe_loop(self, loop: Any) -> None:
        """Takes the batch requests and rounds the C loop timed, and zeroes
        its counts (the C loop serves only batches, and only while no
        trace records: a trace wants each request's client)."""
        if not loop.commits:
            return
        n = len(BUCKET_BOUNDS) + 1
        hist = self.requests.get(Op.BATCH)
        if hist is None:
            hist = self.requests[Op.BATCH] = Histogram()
        for i in range(n):
            hist.counts[i] += loop.request_counts[i]
            self.commits.counts[i] += loop.commit_counts[i]
            loop.request_counts[i] = loop.commit_counts[i] = 0
        hist.sum += loop.request_ns / 1e9
        self.commits.sum += loop.commit_ns / 1e9
        self.commit_requests += loop.served
        loop.request_ns = loop.commit_ns = loop.commits = loop.served = 0

    def observe_commit(self, requests: int, seconds: float) -> None:
        self.commits.observe(seconds)
        self.commit_requests += requests
        if self.recorder is not None:
            self.recorder.commit(requests, seconds)

    def observe_promotion(self, seconds: float) -> None:
        self.promotions.observe(seconds)

    def snapshot(self) -> dict[str, Any]:
        return {
            "bucket_bounds": list(BUCKET_BOUNDS),
            "request_seconds": {_op_name(op): h.snapshot()
                                for op, h in sorted(self.requests.items())},
            "commit_seconds": self.commits.snapshot(),
            "commit_requests": self.commit_requests,
            "promotion_seconds": self.promotions.snapshot(),
        }


def _op_name(op: int) -> str:
    try:
        return Op(op).name
    except ValueError:
        return "UNKNOWN"
