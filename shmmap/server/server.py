"""The daemon: the one writer of a map. It owns the segments, applies the
requests clients send over its Unix socket one at a time in arrival order,
commits each round of them at once (group commit), acknowledges them, and
promotes when the map fills or readers' misses pay for it.

Its pieces each do one job: ``transport`` (socket, SO_PEERCRED, epoll),
``dispatch`` (request -> handler -> reply, and the C hot path),
``handlers`` (the map operations), ``stats`` (counters and promotion log
lines). This module wires them and
owns the two ways a daemon ends:

- the **stop path**: SIGTERM, SIGINT or stop(). The daemon answers what it
  has read, then removes the map's segments and socket, and exits 0;
- the **crash path**: any exception. It logs it and exits 1, removing
  nothing: the next ``shmmap serve NAME`` adopts the map with every
  acknowledged write.
"""
from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

from .._core import lib
from ..shared import maplock, protocol, segments
from ..shared.config import Limits
from ..shared.errors import DaemonRunningError, LimitError, ShmmapError
from ..shared.protocol import Op
from .dispatch import Dispatcher
from .handlers import MapOps
from .metrics import LoopSnapshots, MetricsServer
from .promotion import BackgroundPromoter
from .recorder import Recorder
from .slots import ReaderSlots
from .stats import PromotionLog, Statistics, Timings, reader_totals
from .transport import Connection, Peer, Transport, leave_requests
from .writer import MapWriter

if TYPE_CHECKING:
    from .upstream.nearcache import NearCache, UpstreamConfig

log = logging.getLogger("shmmap.daemon")

MISS_CHECK_SECONDS = 0.1     # how often readers' miss counts are summed
# Descriptors the daemon holds per client: its socket and its channel's
# doorbell; and besides: stdio, the listener, epoll, the wake-up pipe, one
# per mapped segment (mmap keeps a dup), and a channel's memfd until passed.
FDS_PER_CLIENT = 2
FDS_BESIDES_CLIENTS = 64


@dataclass
class DaemonConfig:
    """Everything ``shmmap serve`` can be told."""

    name: str
    socket_path: Optional[str] = None
    mode: int = 0o600
    group: Optional[int] = None   # gid the segments and socket belong to
    limits: Limits = field(default_factory=Limits)
    max_connections: int = 1024
    allow_uids: frozenset[int] = frozenset()
    fresh: bool = False           # discard a dead daemon's segments instead of adopting
    ready_fd: Optional[int] = None
    metrics: Optional[str] = None  # HOST:PORT to serve Prometheus metrics on
    upstream: Optional[UpstreamConfig] = None  # the map is a near cache of Redis


class Server:
    """Serves one map: run() until stop() or SIGTERM/SIGINT."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.name = segments.check_map_name(config.name)
        self.socket_path = Path(config.socket_path or protocol.default_socket_path(self.name))
        self.stopping = False
        self.snapshots: Optional[LoopSnapshots] = None    # metrics scrapes, while serving
        # Bound before the map is touched: a port in use refuses the start.
        self.metrics = MetricsServer(config.metrics) if config.metrics else None
        try:
            self.writer, self.adopted, self._lock = self._open_map()
        except BaseException:
            self._close_metrics()
            raise
        slots: Optional[ReaderSlots] = None
        try:
            slots = ReaderSlots(self.name, config.mode, config.group)
            self.slots = slots
            # Its wake-up is the loop's once run() has one (see run).
            self.promoter = BackgroundPromoter(self.writer, lambda: None)
            self.ops = MapOps(self.writer, slots, self.stats, self.promoter)
            self.dispatcher = Dispatcher(self.ops.handlers(), self.ops)
            self.nearcache = self._near_cache(config.upstream)
            # A near cache's every write goes to Redis first: no request
            # is served in C, which would apply it to the map alone.
            self.transport = Transport(
                self.socket_path, mode=config.mode, group=config.group,
                max_connections=config.max_connections, authorize=self._authorize,
                serve_round=self.dispatcher.serve_round, serve_loop=self.dispatcher.serve_loop,
                serve_bytes=(self.dispatcher.serve_bytes if self.nearcache is None
                             else leave_requests),
                on_request=self.dispatcher.handle, on_drop=self._release_slot,
                fast=self.nearcache is None)
        except BaseException:
            # Nothing was served yet. A map created just now holds nothing:
            # remove it. An adopted one stays for the next daemon.
            if slots is not None:
                slots.close()
            self.writer.close(remove=not self.adopted)
            os.close(self._lock)
            self._close_metrics()
            raise
        self._observe(slots)
        self._misses_at_promotion = 0

    def _near_cache(self, config: Optional[UpstreamConfig]) -> Optional[NearCache]:
        """With --upstream, what serves the map from Redis (its writes
        instead of the map's own); redis-py is loaded only then."""
        if config is None:
            return None
        try:
            from .upstream.nearcache import NearCache
        except ImportError as exc:
            raise ShmmapError(f"--upstream needs redis-py ({exc}): pip install "
                              "'shmmap[upstream]'") from None
        near = NearCache(self.name, config, self.writer)
        self.dispatcher.handlers.update(near.handlers(self.dispatcher.handlers[Op.HELLO][0]))
        return near

    def _observe(self, slots: ReaderSlots) -> None:
        """Statistics, timings, the trace recorder and their requests."""
        self.timings = Timings()
        self._c_loop = self.timings.new_loop()      # the C loop's (see _loop)
        self.statistics = Statistics(self.name, self.writer, slots, self.transport,
                                     self.dispatcher, self.ops, self.timings)
        self.promotions = PromotionLog(self.writer, self.timings)
        self.recorder = Recorder(self.timings, self._trace_counters)
        self.dispatcher.handlers[Op.TIMINGS] = (self.statistics.op_timings, 0)
        self.dispatcher.handlers[Op.TRACE] = (self.recorder.op_trace, 2)
        self.dispatcher.handlers[Op.CHANNEL] = (self._op_channel, 0)
        if self.metrics is not None:
            self.statistics.metrics_url = self.metrics.url
        if self.nearcache is not None:
            self.statistics.upstream = self.nearcache.snapshot

    def _trace_counters(self) -> dict[str, int]:
        h = self.writer.generation.header
        return {"live_keys": int(h.live_count), "dirty_keys": int(h.dirty_count),
                "clients": len(self.transport.connections)}

    def _close_metrics(self) -> None:
        if self.snapshots is not None:
            self.snapshots.close()
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None

    def _open_map(self) -> tuple[MapWriter, bool, int]:
        """The map, created or adopted; whether it was adopted; and the
        descriptor that holds the map's lock from here on (see maplock.claim)."""
        options: dict[str, Any] = dict(mode=self.config.mode, group=self.config.group,
                                       limits=self.config.limits,
                                       socket_path=str(self.socket_path))
        with maplock.shm_dir_locked():
            lock = maplock.claim(self.name)
            if lock is not None and self.config.fresh:
                for seg in segments.map_segments(self.name):
                    log.warning("--fresh: removing %s", seg,
                                extra={"event": "fresh", "segment": seg})
                    segments.unlink(seg)
                os.close(lock)
                lock = None
            if lock is None:
                writer = MapWriter(self.name, **options)
                lock = maplock.claim(self.name)
                if lock is None:
                    writer.close(remove=False)
                    raise DaemonRunningError(f"map {self.name!r} was removed while this "
                                             "daemon created it")
                return writer, False, lock
        # Ours alone now: adopting (seconds for a big map) keeps no other
        # daemon waiting for /dev/shm's lock.
        try:
            writer = MapWriter.adopt(self.name, **options)
        except BaseException:
            os.close(lock)
            raise
        g = writer.generation.header
        log.warning("adopted map %r at seq %d (generation %d, %d keys)", self.name,
                    writer.seq, int(g.gen), int(g.live_count),
                    extra={"event": "adopt", "seq": writer.seq, "generation": int(g.gen),
                           "keys": int(g.live_count)})
        return writer, True, lock

    def _authorize(self, peer: Peer) -> Optional[str]:
        """Peers are authorised by uid (pids are reused): the daemon's own,
        root, those of --allow-uid, and members of --group by their gid.
        None admits; otherwise, why not."""
        c = self.config
        if (peer.uid in (os.getuid(), 0) or peer.uid in c.allow_uids
                or (c.group is not None and peer.gid == c.group)):
            return None
        return f"uid {peer.uid} may not use map {self.name!r}"

    def _op_channel(self, conn: Connection) -> tuple[dict[str, int], int]:
        """Makes conn's channel; its descriptors go with the reply."""
        try:
            return {"bytes": self.transport.open_channel(conn)}, 0
        except (OSError, ValueError) as exc:
            raise LimitError(f"no channel: {exc}") from None

    def _release_slot(self, conn: Connection) -> None:
        if conn.slot >= 0:
            self.slots.release(conn.slot)
        self.recorder.forget(conn)

    def stats(self) -> dict[str, Any]:
        return self.statistics.snapshot()

    def stop(self) -> None:
        """Asks the loop to end by the stop path (safe in a signal handler)."""
        self.stopping = True

    # -- running -------------------------------------------------------------

    def run(self) -> int:
        """Serves until stopped, then removes the map and returns 0. An
        exception propagates and removes nothing (see serve())."""
        with _stop_signals(self) as wake:
            self.promoter.wake = wake
            try:        # the metrics and the promotion thread go before the wake-up pipe they use
                if self.metrics is not None:
                    self.snapshots = LoopSnapshots(self.statistics.observed, wake)
                    self.metrics.attach(self.name, self.snapshots)
                if self.nearcache is not None:
                    self.nearcache.start(wake)
                lib.shm_map_set_daemon_pid(self.writer.header, os.getpid())
                _announce(self.config.ready_fd, protocol.READY)
                log.info("serving map %r on %s", self.name, self.socket_path,
                         extra={"event": "serving", "socket": str(self.socket_path)})
                if self.metrics is not None:
                    log.info("serving metrics on %s", self.metrics.url,
                             extra={"event": "metrics", "url": self.metrics.url})
                self._loop()
            finally:
                # The stop path and the crash path alike: the build's thread
                # lets go of g (which stays current and whole); only the
                # unpublished g+1 is removed.
                self.promoter.stop()
                if self.nearcache is not None:
                    self.nearcache.stop()
                self._close_metrics()
        self._remove()
        return 0

    def _loop(self) -> None:
        next_miss_check = time.monotonic() + MISS_CHECK_SECONDS
        busy_until = 0.0
        spin = protocol.Spin(protocol.DAEMON_SPIN_SECONDS)
        self.promotions.check()                 # adoption's promotion
        while not self.stopping:
            if not self._serve_in_c(next_miss_check, spin):
                busy_until = self._poll(spin, busy_until)
            # A background build that is done is replayed and published
            # before this round's replies go out (see promotion.py).
            self.promoter.check()
            if self.nearcache is not None:
                self.nearcache.check()
            self._commit_round()
            if time.monotonic() >= next_miss_check:
                self._promote_for_misses()
                next_miss_check = time.monotonic() + MISS_CHECK_SECONDS
            self.promotions.check()
            if self.snapshots is not None and self.snapshots.pending:
                self.snapshots.serve()          # a metrics scrape waits for this
        self._commit_round()                    # answer what was read

    def _serve_in_c(self, deadline: float, spin: protocol.Spin) -> bool:
        """Serves rounds in C -- each committed, published and sent there,
        with no Python per request -- until one needs Python or deadline
        passes (Transport.serve). Not while a build runs (the loop replays
        and publishes it), nor while a trace records (it wants each
        request's client), nor for a near cache (its writes go to Redis
        first): False then, and _poll serves a round."""
        if (self.promoter.building or self.timings.recorder is not None
                or self.nearcache is not None):
            return False
        self.transport.serve(self._c_loop, deadline, spin, self.promoter.runway_watch())
        self.timings.observe_loop(self._c_loop)
        return True

    def _poll(self, spin: protocol.Spin, busy_until: float) -> float:
        """One round served by poll(); returns until when to spin next.

        Right after serving, it polls without sleeping for a moment: the
        next request of a synchronous client may come sooner than a
        wake-up from epoll would (protocol.Spin: for as long as that pays
        lately). It gives the core away on each turn: when processes
        outnumber cores, the client whose request it waits for may need
        this very core to send it (on 2 cores with a third busy process, a
        spin that never yields cut writes 5-fold). No spin while
        a promotion is built: the build's thread takes a core, and a loop
        that yields it may wait for the scheduler's tick to get it back
        (p99 3 ms); one that sleeps in epoll is woken by the request and
        preempts the build."""
        spinning = busy_until > 0.0 and time.perf_counter() < busy_until
        if busy_until > 0.0 and not spinning:
            spin.lost()                     # the spin ran out: sleep
            busy_until = 0.0
        if spinning and (self.promoter.building or not spin.yield_core()):
            spinning, busy_until = False, 0.0
        if self.transport.poll(0 if spinning else MISS_CHECK_SECONDS):
            if spinning:
                spin.won()
            budget = spin.budget()
            busy_until = time.perf_counter() + budget if budget else 0.0
        return busy_until

    def _commit_round(self) -> None:
        """Commits this round's writes with one release store, then sends
        every reply: no write is acknowledged before it is visible. Then
        times the round's requests (stats.Timings)."""
        served, fast = self.dispatcher.round, self.dispatcher.fast_round
        self.ops.commit()
        self.transport.flush()
        if served or fast:
            end = time.perf_counter()
            for op, started, conn in served:
                self.timings.observe_request(op, end - started, conn)
            for count, started, fds in fast:   # the C hot path's batches
                conns = [self.transport.connections.get(fd) for fd in fds]
                self.timings.observe_requests(Op.BATCH, end - started, count, conns)
            first = min([s for _, s, _ in served[:1]] + [s for _, s, _ in fast[:1]])
            self.timings.observe_commit(len(served) + sum(c for c, _, _ in fast), end - first)
            served.clear()
            fast.clear()

    def _promote_for_misses(self) -> None:
        misses = reader_totals(self.slots, self.transport)["misses"]
        if not self.writer.should_promote_for_misses(misses - self._misses_at_promotion):
            return
        # Counted before trying: a failed promotion is not retried until
        # readers have missed as much again. A failure is logged when the
        # build finishes; the map stays as it is (dirty lookups cost readers
        # a second probe) and writes that fit go on.
        self._misses_at_promotion = misses
        self.promoter.start("misses")

    def _remove(self) -> None:
        """The end of the stop path: close, and remove the map and socket."""
        self.transport.close(unlink=True)
        self.slots.close()
        self.writer.close(remove=True)
        os.close(self._lock)        # after the removal: the next daemon starts afresh
        log.info("stopped; map %r removed", self.name, extra={"event": "stopped"})


@contextlib.contextmanager
def _stop_signals(server: Server) -> Iterator[Any]:
    """SIGTERM and SIGINT stop server by the stop path; a wake-up pipe makes
    its poll return at once. Restores the previous handlers on leaving.
    Yields a function that wakes the loop from another thread."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    old_wakeup = signal.set_wakeup_fd(wake_w)
    old_handlers = {s: signal.signal(s, lambda *_: server.stop())
                    for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.transport.watch_wakeup(wake_r)
        yield lambda: _wake(wake_w)
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        signal.set_wakeup_fd(old_wakeup)
        os.close(wake_r)
        os.close(wake_w)


def _wake(fd: int) -> None:
    try:
        os.write(fd, b"\0")
    except BlockingIOError:
        pass                    # the pipe is full: the loop wakes anyway


def _announce(fd: Optional[int], message: bytes) -> None:
    """Tells whoever started the daemon (shmmap.Daemon) how its start went."""
    if fd is None:
        return
    try:
        written = os.write(fd, message)
        if written != len(message):
            log.error("--ready-fd took %d of %d bytes", written, len(message))
    except OSError as exc:
        log.error("cannot write to --ready-fd %d: %s", fd, exc)
    finally:
        os.close(fd)


def start_failure(exc: BaseException) -> bytes:
    """What a daemon that could not start writes to --ready-fd: one line
    naming the exception's class, then its message."""
    return f"error {type(exc).__name__}\n{exc}\n".encode(errors="replace")


def raise_fd_limit(max_connections: int) -> int:
    """Raises the soft RLIMIT_NOFILE to what max_connections needs (up to
    the hard limit); LimitError if the hard limit is too low. Returns the
    soft limit in force."""
    need = max_connections * FDS_PER_CLIENT + FDS_BESIDES_CLIENTS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return soft
    if hard != resource.RLIM_INFINITY and hard < need:
        raise LimitError(
            f"--max-connections {max_connections} needs {need} file descriptors, but this "
            f"process may open at most {hard} (its hard RLIMIT_NOFILE): lower "
            f"--max-connections to {max((hard - FDS_BESIDES_CLIENTS) // FDS_PER_CLIENT, 0)} "
            "or raise the limit "
            "(LimitNOFILE= in the systemd unit, ulimit -Hn in a shell)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    log.info("raised the open-file limit from %d to %d for --max-connections %d", soft, need,
             max_connections, extra={"event": "fd_limit", "soft": need, "hard": hard})
    return need


def serve(config: DaemonConfig) -> int:
    """Runs the daemon of config.name. Returns 0 after a clean stop (the map
    removed), 1 after a failure (the map left for the next daemon to adopt).
    Raises, and tells --ready-fd why, if it cannot start."""
    try:
        raise_fd_limit(config.max_connections)
        server = Server(config)
    except BaseException as exc:
        _announce(config.ready_fd, start_failure(exc))
        raise
    try:
        return server.run()
    except Exception:
        # The crash path: nothing is removed. Every acknowledged write is in
        # the segments, which the next `shmmap serve` validates and adopts.
        log.critical("daemon failed; map %r is left for the next `shmmap serve %s` to adopt",
                     server.name, server.name, exc_info=True,
                     extra={"event": "crash"})
        return 1
