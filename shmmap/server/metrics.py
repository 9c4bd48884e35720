"""Prometheus metrics of a running daemon: ``shmmap serve NAME --metrics
HOST:PORT`` serves ``/metrics`` in Prometheus' text format, written by
prometheus_client.

Every scrape reads the daemon's own counters, through the same snapshot as
``stats()``, taken by the daemon's loop between two rounds: the HTTP
thread asks, wakes the loop, and waits. So the values of one scrape are
those of one moment, nothing is read while the loop changes it, and a
scrape delays writes only by the snapshot (microseconds) and the
formatting of its text, in its own thread.
"""
from __future__ import annotations

import socket
import sys
import threading
from socketserver import ThreadingMixIn
from typing import Any, Callable, Iterable, Iterator, Optional
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.core import (CollectorRegistry, CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)

from ..shared.errors import ShmmapError

DEFAULT_HOST = "127.0.0.1"
# How long the HTTP thread may hold the GIL while the loop waits for it
# (Python's default is 5 ms). Formatting a scrape takes about 2 ms here; a
# loop woken meanwhile gets the GIL back within this, so a scrape delays a
# write by about this much at most. With one thread (no scrape running)
# nothing switches, so it costs nothing between scrapes.
GIL_SWITCH_SECONDS = 0.0002
SCRAPE_TIMEOUT = 5.0     # seconds a scrape waits for the loop (it answers within a round)
# Promotion reasons the writer uses: each is exported from the start, at 0,
# so that rate() works before the first promotion of its kind.
REASONS = ("adopted", "full", "misses", "requested")


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT, [IPv6]:PORT or PORT alone (on 127.0.0.1) -> (host, port).
    ValueError with a clear message otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host = DEFAULT_HOST
    host = host.strip("[]") or DEFAULT_HOST
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (a port is 0 to 65535; "
                         f"HOST defaults to {DEFAULT_HOST})")
    return host, int(port)


class LoopSnapshots:
    """Hands snapshot requests from HTTP threads to the daemon's loop.

    ``get()`` (any thread) queues a request, wakes the loop and waits;
    ``serve()`` (the loop, between rounds) takes one snapshot for every
    request queued. ``pending`` is set under the lock and read by the loop
    without it: the GIL orders the two, and the wake-up is written after
    it is set, so the round that the wake-up starts sees it."""

    def __init__(self, take: Callable[[], dict[str, Any]], wake: Callable[[], None]) -> None:
        self._take = take
        self._wake = wake
        self._lock = threading.Lock()
        self._waiting: list[_Waiter] = []
        self._closed = False
        self.pending = False

    def get(self, timeout: float = SCRAPE_TIMEOUT) -> dict[str, Any]:
        waiter = _Waiter()
        with self._lock:
            if self._closed:
                raise ShmmapError("the daemon is stopping")
            self._waiting.append(waiter)
            self.pending = True
            # Under the lock: once close() returns, nothing writes to the
            # wake-up pipe, which the daemon then closes.
            self._wake()
        if not waiter.done.wait(timeout):
            raise ShmmapError(f"the daemon's loop did not answer within {timeout:g} s")
        if waiter.result is None:
            raise ShmmapError("the daemon is stopping")
        return waiter.result

    def serve(self) -> None:
        with self._lock:
            waiting, self._waiting = self._waiting, []
            self.pending = False
        if waiting:
            snapshot = self._take()
            for waiter in waiting:
                waiter.result = snapshot
                waiter.done.set()

    def close(self) -> None:
        """Answers every waiting request with an error; refuses new ones."""
        with self._lock:
            self._closed = True
            waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.done.set()


class _Waiter:
    __slots__ = ("done", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Optional[dict[str, Any]] = None


class ShmmapCollector:
    """A prometheus_client collector that builds every metric from one
    snapshot of the daemon (Statistics.observed()) at scrape time."""

    def __init__(self, name: str, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.name = name
        self.snapshot = snapshot

    def describe(self) -> list[Metric]:
        return []           # nothing to check at registration: no scrape then

    def collect(self) -> Iterator[Metric]:
        return iter(families(self.name, self.snapshot()))


def families(name: str, observed: dict[str, Any]) -> list[Metric]:
    """The metric families of one snapshot, each labelled map=name."""
    st = observed["stats"]
    out: list[Metric] = []

    def counter(metric: str, doc: str, value: float) -> None:
        c = CounterMetricFamily(f"shmmap_{metric}", doc, labels=["map"])
        c.add_metric([name], value)
        out.append(c)

    def gauge(metric: str, doc: str, value: float) -> None:
        g = GaugeMetricFamily(f"shmmap_{metric}", doc, labels=["map"])
        g.add_metric([name], value)
        out.append(g)

    counter("writes", "Writes the daemon applied (a store, delete, batch, clear or "
            "conditional write that changed the map).", st["writes"])
    counter("requests", "Requests the daemon answered, reads and errors included.",
            st["requests"])
    counter("errors", "Requests answered with an error.", st["errors"])
    counter("lookups", "Lookups of every client, departed ones included.", st["lookups"])
    counter("misses", "Lookups that missed the read table and probed the dirty table.",
            st["misses"])
    counter("export_batches", "Batches of entries exported by iterations.",
            st["export_batches"])
    counter("bytes_copied", "Bytes copied into new generations by promotions.",
            st["bytes_copied"])
    counter("compactions", "Promotions that dropped dead versions.", st["compactions"])
    promotions = CounterMetricFamily("shmmap_promotions", "Promotions, by reason.",
                                     labels=["map", "reason"])
    by_reason = dict.fromkeys(REASONS, 0)
    by_reason.update(st["promotions_by_reason"])
    for reason, n in sorted(by_reason.items()):
        promotions.add_metric([name, reason], n)
    out.append(promotions)
    gauge("live_keys", "Keys in the map.", st["live_keys"])
    gauge("live_bytes", "Bytes of the live keys and values.", st["live_bytes"])
    gauge("dirty_keys", "Keys in the dirty table (a lookup of them is a miss).",
          st["dirty_keys"])
    gauge("clients", "Connected clients.", st["clients"])
    gauge("channels", "Connected clients with a request channel in shared memory.",
          st["channels"])
    gauge("older_generations_mapped", "Superseded generations that clients still map "
          "(an iteration keeps its generation until it ends).", st["older_generations_mapped"])
    gauge("generation", "The current generation's number.", st["generation"])
    gauge("committed_seq", "The last committed write's sequence number.", st["committed_seq"])
    gauge("segment_bytes", "Size of the current generation's segment in /dev/shm.",
          st["segment_bytes"])
    gauge("arena_used_bytes", "Arena bytes used in the current generation.", st["arena_used"])
    gauge("last_promotion_seconds", "Duration of the last promotion.",
          st["last_promotion_ms"] / 1000)
    gauge("uptime_seconds", "Seconds since the daemon started.", st["uptime_s"])
    bounds = observed["bucket_bounds"]
    requests = HistogramMetricFamily(
        "shmmap_request_duration_seconds", "Time from the start of a request's handling to "
        "its committed reply going to the socket, by operation.", labels=["map", "op"])
    for op, hist in observed["request_seconds"].items():
        requests.add_metric([name, op], _buckets(bounds, hist["counts"]), hist["sum"])
    out.append(requests)
    for metric, key, doc in (
            ("promotion_duration_seconds", "promotion_seconds", "Duration of promotions."),
            ("round_duration_seconds", "commit_seconds",
             "Rounds of the daemon's loop (a group commit): from the start of the first "
             "request to the round's replies going to the socket.")):
        h = HistogramMetricFamily(f"shmmap_{metric}", doc, labels=["map"])
        h.add_metric([name], _buckets(bounds, observed[key]["counts"]), observed[key]["sum"])
        out.append(h)
    counter("round_requests", "Requests answered by those rounds (divided by the rounds' "
            "count: requests per group commit).", observed["commit_requests"])
    if "upstream" in st:
        out += _upstream_families(name, st["upstream"], counter, gauge)
    return out


UPSTREAM_STATES = ("syncing", "live", "disconnected", "resyncing")


def _upstream_families(name: str, up: dict[str, Any], counter: Callable[[str, str, float], None],
                       gauge: Callable[[str, str, float], None]) -> list[Metric]:
    """A near cache's (serve --upstream): its state as one gauge per state
    (1 for the one it is in), its counters, and what its writes and
    changes wait."""
    states = GaugeMetricFamily("shmmap_upstream_state", "The near cache's state: 1 for the "
                               "one it is in (stale unless live).", labels=["map", "state"])
    for state in UPSTREAM_STATES:
        states.add_metric([name, state], float(up["state"] == state))
    skipped = GaugeMetricFamily("shmmap_upstream_skipped_keys", "Redis keys in the range the "
                                "map leaves out, by why (their type, or undecodable).",
                                labels=["map", "kind"])
    for kind, n in sorted(up["skipped_keys"].items()):
        skipped.add_metric([name, kind], n)
    gauge("upstream_last_sync_timestamp_seconds", "Unix time of the last update committed "
          "while live.", up["last_sync"])
    for key, doc in (("invalidations", "Invalidation pushes received from Redis."),
                     ("keys_refetched", "Keys fetched again after an invalidation or a write."),
                     ("resyncs", "Full loads of the range after the first."),
                     ("reconnects", "Connections to Redis made again after one was lost."),
                     ("writes", "Client writes made in Redis and the map."),
                     ("write_failures", "Client writes refused or lost on the way."),
                     ("commit_errors", "Updates from Redis the map's limits refused.")):
        counter(f"upstream_{key}", doc, up[key])
    gauge("upstream_write_seconds_mean", "Mean round trip of a write: through Redis and "
          "the commit.", up["write_ms"]["mean"] / 1000)
    gauge("upstream_write_seconds_max", "Longest round trip of a write.",
          up["write_ms"]["max"] / 1000)
    gauge("upstream_lag_seconds", "From the last change's arrival from Redis to its commit.",
          up["lag_ms"]["last"] / 1000)
    return [states, skipped]


def _buckets(bounds: list[float], counts: list[int]) -> list[tuple[str, float]]:
    """Cumulative (le, count) pairs, +Inf last, from per-bucket counts."""
    out: list[tuple[str, float]] = []
    total = 0
    for bound, n in zip(bounds + [float("inf")], counts):
        total += n
        out.append(("+Inf" if bound == float("inf") else repr(bound), total))
    return out


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True           # a slow scraper never holds up the daemon's exit


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass                        # no line per scrape in the daemon's log


def _answering_errors(app: Any) -> Any:
    """app, but a snapshot the daemon cannot give (stopping, not yet
    serving, its loop stuck) is a one-line 503, not a traceback in the log."""
    def wrapped(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        try:
            return app(environ, start_response)     # it starts the response last
        except ShmmapError as exc:
            start_response("503 Service Unavailable",
                           [("Content-Type", "text/plain; charset=utf-8")])
            return [f"shmmap: {exc}\n".encode()]
    return wrapped


class MetricsServer:
    """The HTTP endpoint: prometheus_client's WSGI app in a threading
    server of its own, with a registry that holds only this map's
    collector."""

    def __init__(self, address: str) -> None:
        """Binds address (HOST:PORT) now, so that a port in use fails the
        daemon's start; scrapes get a 503 until attach()."""
        host, port = parse_address(address)
        sys.setswitchinterval(GIL_SWITCH_SECONDS)
        self._collector = ShmmapCollector("", _not_attached)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self._collector)
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            server = type("MetricsHTTPServer", (_Server,), {"address_family": family})
            self._httpd: WSGIServer = make_server(host, port, _answering_errors(make_wsgi_app(registry)),
                                      server, handler_class=_Quiet)
        except OSError as exc:
            raise ShmmapError(f"--metrics {address}: cannot listen: {exc.strerror or exc}") \
                from None
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics",
                                        daemon=True)
        self._thread.start()
        bound: tuple[Any, ...] = tuple(self._httpd.server_address)
        host = str(bound[0])
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{bound[1]}/metrics"

    def attach(self, name: str, snapshots: LoopSnapshots) -> None:
        self._collector.name = name
        self._collector.snapshot = snapshots.get

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


def _not_attached() -> dict[str, Any]:
    raise ShmmapError("the daemon is not serving yet")
