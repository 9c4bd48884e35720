"""The write scenarios: a writer while another process iterates, several
writer processes at once, and write latency while the map is promoted.
Every rate comes with the CPU time each write cost: the writers' own, and
that of the peer's server processes (shmmap's daemon, Redis, the Manager)
over the same interval."""
from __future__ import annotations

import multiprocessing as mp
import queue
import random
import statistics
import threading
import time
from array import array
from typing import Any, Callable

from .cpu import own_cpu, processes_cpu, summary, us_per
from .peers import Peer, Store
from .scenarios import CTX, WORKER_START_TIMEOUT, CheckFailed, Result, check_keys, full_iteration

WRITE_BURST = 16        # writes between two looks at the stop flag
UNSTEADY_DRIFT = 1.25   # the metronome before and after this far apart: the
                        # machine's speed changed, the ratio is not to trust
METRONOME_PASSES = 5    # iterations of a local dict per metronome reading
TURNS = 5               # idle and loaded stretches, taken in turn
TURN_WAIT_SECONDS = 0.1 # a paused writer looks at the stop flag this often

Job = Callable[..., tuple[int, Any]]


# -- jobs: what each worker does between go and stop -------------------------------

def mixed_writes_in_turns(store: Store, stop: Any, n: int, seed: int, turn: Any
                          ) -> tuple[int, Any]:
    """While the event turn is set, as fast as it can: half overwrites of a
    random existing key, half new keys (n, n+1, ...); while it is not, it
    waits. Every value is 1, so a consistent view of the map holds some
    number of keys summing to that number. Its data is the seconds it
    wrote for."""
    rng = random.Random(seed)
    size, writes, writing = n, 0, 0.0
    while not stop.is_set():
        if not turn.wait(TURN_WAIT_SECONDS):
            continue
        started = time.perf_counter()
        while turn.is_set() and not stop.is_set():
            for _ in range(WRITE_BURST):
                if rng.random() < 0.5:
                    store.set(rng.randrange(size), 1)
                else:
                    store.set(size, 1)
                    size += 1
            writes += WRITE_BURST
        writing += time.perf_counter() - started
    return writes, writing


def overwrites(store: Store, stop: Any, n: int, seed: int) -> tuple[int, Any]:
    """Synchronous overwrites of random existing keys, as fast as it can."""
    rng = random.Random(seed)
    writes = 0
    while not stop.is_set():
        for _ in range(WRITE_BURST):
            store.set(rng.randrange(n), 1)
        writes += WRITE_BURST
    return writes, None


def timed_overwrites(store: Store, stop: Any, n: int, seed: int) -> tuple[int, Any]:
    """Overwrites, one at a time, each timed: (start, duration) in ns on the
    system-wide monotonic clock, so another process can match them with
    what it did meanwhile."""
    rng = random.Random(seed)
    starts, took = array("q"), array("q")
    clock = time.monotonic_ns
    while not stop.is_set():
        for _ in range(WRITE_BURST):
            key = rng.randrange(n)
            t = clock()
            store.set(key, 1)
            starts.append(t)
            took.append(clock() - t)
    return len(starts), (starts.tobytes(), took.tobytes())


def _run_job(store: Store, job: Job, args: tuple[Any, ...], go: Any, stop: Any, out: Any,
             cpu_clock: Callable[[], float]) -> None:
    go.wait()
    cpu, started = cpu_clock(), time.perf_counter()
    count, data = job(store, stop, *args)
    out.put(("ok", count, time.perf_counter() - started, cpu_clock() - cpu, data))


def _worker_process(peer_cls: type[Peer], spec: Any, job: Job, args: tuple[Any, ...],
                    ready: Any, go: Any, stop: Any, out: Any) -> None:
    try:
        store = peer_cls.attach(spec)
    except Exception as exc:            # reported, not raised: the parent decides
        ready.put(f"attach failed: {exc!r}")
        out.put(("error", f"attach failed: {exc!r}", 0.0, 0.0, None))
        return
    ready.put("ready")
    try:
        _run_job(store, job, args, go, stop, out, own_cpu)
    except Exception as exc:
        out.put(("error", repr(exc), 0.0, 0.0, None))
    finally:
        store.close()


class Workers:
    """k workers running one job each: processes attached to the peer, or
    threads of this process for peers that only share within one. Each gets
    ready, waits for go, runs until stop; finish() collects
    (count, seconds, cpu seconds, data) from each. With with_turn, each job
    gets the event turn after its args, cleared: it waits for the caller
    to set it (see mixed_writes_in_turns)."""

    def __init__(self, peer: Peer, job: Job, args: list[tuple[Any, ...]],
                 with_turn: bool = False) -> None:
        self.k = len(args)
        self.in_threads = not peer.processes
        self.go: Any
        self.stop: Any
        self.turn: Any
        self.ready: Any
        self.out: Any
        self.handles: list[Any] = []
        if self.in_threads:
            self.go, self.stop, self.turn = (threading.Event() for _ in range(3))
        else:
            self.go, self.stop, self.turn = (CTX.Event() for _ in range(3))
        if with_turn:
            args = [(*a, self.turn) for a in args]
        if self.in_threads:
            self.ready, self.out = queue.Queue(), queue.Queue()
            for a in args:
                th = threading.Thread(target=self._thread, args=(peer.open(), job, a),
                                      daemon=True)
                th.start()
                self.handles.append(th)
        else:
            self.ready, self.out = CTX.Queue(), CTX.Queue()
            for a in args:
                p = CTX.Process(target=_worker_process, args=(
                    type(peer), peer.spec(), job, a, self.ready, self.go, self.stop, self.out))
                p.start()
                self.handles.append(p)

    def _thread(self, store: Store, job: Job, args: tuple[Any, ...]) -> None:
        self.ready.put("ready")
        try:
            _run_job(store, job, args, self.go, self.stop, self.out, time.thread_time)
        except Exception as exc:
            self.out.put(("error", repr(exc), 0.0, 0.0, None))

    def start(self) -> None:
        """Waits until every worker is ready, then lets them all go."""
        for _ in range(self.k):
            said = self.ready.get(timeout=WORKER_START_TIMEOUT)
            if said != "ready":
                raise RuntimeError(f"a worker did not start: {said}")
        self.go.set()

    def finish(self) -> list[tuple[int, float, float, Any]]:
        """Stops the workers; their results. Raises if one failed."""
        self.stop.set()
        self.go.set()                   # never leave one waiting for go
        results: list[list[Any]] = []
        failures: list[list[Any]] = []
        try:
            for _ in range(self.k):
                status, *rest = self.out.get(timeout=WORKER_START_TIMEOUT)
                (results if status == "ok" else failures).append(rest)
        finally:
            for h in self.handles:
                h.join(WORKER_START_TIMEOUT)
                if isinstance(h, mp.process.BaseProcess) and h.is_alive():
                    h.kill()
                    h.join()
        if failures:
            raise RuntimeError(f"a writer failed: {failures[0][0]}")
        return [tuple(r) for r in results]


# -- a writer while another process iterates ---------------------------------------

def _iterate_for(store: Store, n: int, duration: float, growing: bool
                 ) -> list[tuple[float, float, int]]:
    """Full iterations for duration (at least 3); the wall and CPU seconds
    of each and the keys it saw. When the map grows meanwhile, each must
    see at least the keys the one before saw, every value 1."""
    samples: list[tuple[float, float, int]] = []
    seen = n
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline or len(samples) < 3:
        t, c = time.perf_counter(), time.thread_time()
        count = total = 0
        for _, v in store.items():
            count += 1
            total += v
        samples.append((time.perf_counter() - t, time.thread_time() - c, count))
        if total != count or count < seen or (count != n and not growing):
            raise CheckFailed(f"an iteration saw {count} keys summing to {total}, after one "
                              f"that saw {seen} (keys are only added, every value is 1)")
        seen = count
    return samples


def _ms_at(samples: list[tuple[float, float, int]], n: int, which: int) -> float:
    """The median time per key seen (which: 0 wall, 1 CPU seconds), as ms
    for n keys. Half the writer's writes add keys, so the map grows under load
    (by 1.5-2.5x in 3 s at 100k writes/s): an iteration's time per key is
    what compares with an idle one, not its whole time."""
    return statistics.median(s[which] / s[2] for s in samples) * n * 1e3


def _metronome(n: int) -> float:
    """The machine's speed now: the median seconds of one iteration of a
    local dict of n keys, which nothing else touches. These VMs switch
    between a fast and a slow phase (that iteration in 4.5 or 7.2 ms) for
    seconds at a time; an idle baseline taken in one and a load in the
    other would make a ratio of 0.6x or 1.8x out of nothing."""
    local = dict.fromkeys(range(n), 1)
    times = []
    for _ in range(METRONOME_PASSES):
        t = time.perf_counter()
        for _ in local.items():
            pass
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _drift(before: float, after: float) -> float:
    """How far apart two metronome readings are: the larger over the
    smaller."""
    return max(before, after) / min(before, after)


def _p(times: list[float], q: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _iterate_in_turns(store: Store, n: int, duration: float, turn: Any
                      ) -> tuple[list[tuple[float, float, int]], list[tuple[float, float, int]]]:
    """TURNS rounds of iterating idle (turn cleared, the writer paused), then
    while the writer writes (turn set): duration / 2 idle and duration
    loaded in all. Taken in turn, idle and loaded iterations see the same
    phases of the machine's speed, which on these VMs last seconds; one
    stretch of each, one after the other, compared a fast phase with a
    slow one as often as not."""
    idle: list[tuple[float, float, int]] = []
    loaded: list[tuple[float, float, int]] = []
    for i in range(TURNS):
        turn.clear()
        idle += _iterate_for(store, n, duration / 2 / TURNS, growing=i > 0)
        turn.set()
        loaded += _iterate_for(store, n, duration / TURNS, growing=True)
    return idle, loaded


def writer_under_iteration(peer: Peer, n: int, duration: float) -> list[Result]:
    """This process iterates the whole map in a loop while one writer (a
    process; a thread for thread-only peers) writes as fast as it can, half
    overwrites and half new keys, and idle, in turns (_iterate_in_turns).
    A metronome before and after (_metronome) shows whether the machine's
    speed changed meanwhile all the same."""
    it_name, w_name = "iteration under 1 writer", "writer under iteration"
    if not peer.shared:
        why = "n/a: nothing else can write to it"
        return [Result(it_name, peer.name, n, None, "ms", why),
                Result(w_name, peer.name, n, None, "writes/s", why)]
    store = peer.open()
    try:
        check_keys(store, n)
        tick = _metronome(n)
        workers = Workers(peer, mixed_writes_in_turns, [(n, 1)], with_turn=True)
        try:
            workers.start()
            server0 = processes_cpu(peer.server_pids())
            idle, loaded = _iterate_in_turns(store, n, duration, workers.turn)
        finally:
            (writes, _, cpu, seconds), = workers.finish()
            server = processes_cpu(peer.server_pids()) - server0
        drift = _drift(tick, _metronome(n))
    except (CheckFailed, RuntimeError) as exc:
        failed = f"FAILED: {exc}"
        return [Result(it_name, peer.name, n, None, "ms", failed),
                Result(w_name, peer.name, n, None, "writes/s", failed)]
    finally:
        store.close()
    idle_ms, load_ms = (_ms_at(s, n, 0) for s in (idle, loaded))
    idle_cpu, load_cpu = (_ms_at(s, n, 1) for s in (idle, loaded))
    ratio, cpu_ratio = load_ms / idle_ms, load_cpu / idle_cpu if idle_cpu else None
    keys_seen = round(statistics.median(c for _, _, c in loaded))
    iteration = Result(it_name, peer.name, n, round(load_ms, 3), "ms", extra={
        "p50_ms": round(load_ms, 3), "p99_ms": round(_p([w / c for w, _, c in loaded], 0.99) * n * 1e3, 3),
        "idle_p50_ms": round(idle_ms, 3), "under_load_vs_idle": round(ratio, 2),
        "cpu_p50_ms": round(load_cpu, 3), "idle_cpu_p50_ms": round(idle_cpu, 3),
        "cpu_under_load_vs_idle": None if cpu_ratio is None else round(cpu_ratio, 2),
        "keys_seen_p50": keys_seen, "turns": TURNS, "speed_drift": round(drift, 2),
        "whole_p50_ms": round(statistics.median(w for w, _, _ in loaded) * 1e3, 3),
        "iterations": len(loaded),
        "summary": f"per {n:,} keys; idle {idle_ms:.2f} ms, {ratio:.2f}x idle under load "
                   f"(median iteration {keys_seen:,} keys); CPU {cpu_ratio or 0:.2f}x idle's"
                   + (f"; UNSTEADY: the machine's speed moved {drift:.2f}x"
                      if drift > UNSTEADY_DRIFT else "")})
    rate = writes / seconds if seconds else 0.0
    writer = Result(w_name, peer.name, n, round(rate), "writes/s", extra={
        "writes": writes, "cpu_us_per_write": us_per(cpu + server, writes),
        "writer_cpu_us_per_write": us_per(cpu, writes),
        "server_cpu_us_per_write": us_per(server, writes),
        "summary": summary(cpu, server, writes)})
    return [iteration, writer]


# -- several writers at once ---------------------------------------------------------

def writers_together(peer: Peer, n: int, duration: float, counts: list[int]) -> list[Result]:
    """k writer processes at once, each overwriting random keys one
    synchronous write at a time, for k in counts: their total writes/s."""
    rows = []
    for k in counts:
        name = f"{k} writer{'s' if k > 1 else ''} together"
        if not (peer.processes and peer.multi_writer):
            why = peer.why_single_writer or ("shared by threads of one process only"
                                             if peer.shared else "nothing else can write to it")
            rows.append(Result(name, peer.name, n, None, "writes/s", f"n/a: {why}"))
            continue
        try:
            workers = Workers(peer, overwrites, [(n, seed) for seed in range(k)])
            try:
                workers.start()
                server0 = processes_cpu(peer.server_pids())
                time.sleep(duration)    # the measurement window
            finally:
                done = workers.finish()
                server = processes_cpu(peer.server_pids()) - server0
            store = peer.open()
            try:
                full_iteration(store, n)    # still n keys summing to n
            finally:
                store.close()
        except (CheckFailed, RuntimeError) as exc:
            rows.append(Result(name, peer.name, n, None, "writes/s", f"FAILED: {exc}"))
            continue
        writes = sum(d[0] for d in done)
        cpu = sum(d[2] for d in done)
        total = sum(d[0] / d[1] for d in done if d[1])
        rows.append(Result(name, peer.name, n, round(total), "writes/s", extra={
            "writers": k, "writes": writes, "per_writer": [round(d[0] / d[1]) for d in done],
            "cpu_us_per_write": us_per(cpu + server, writes),
            "server_cpu_us_per_write": us_per(server, writes),
            "summary": summary(cpu, server, writes)}))
    return rows


# -- write latency while the map is promoted ------------------------------------------

def _latency_stats(took_ns: list[int]) -> dict[str, float]:
    if not took_ns:
        return {"writes": 0}
    ordered = sorted(took_ns)
    return {"writes": len(ordered), "p50_us": round(statistics.median(ordered) / 1e3, 1),
            "p99_us": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] / 1e3, 1),
            "max_ms": round(ordered[-1] / 1e6, 3)}


def write_latency_during_promotion(peer: Peer, n: int, duration: float,
                                   promotions: int = 3) -> Result:
    """One client writes synchronously, each write timed, while another
    client asks the daemon for promotions of the n-entry map. Writes that
    overlap a promotion are compared with the promotion's duration."""
    name = "write latency during promotion"
    store = peer.open()
    promote = getattr(store, "promote", None)
    if promote is None:
        store.close()
        return Result(name, peer.name, n, None, "ms", "n/a: no promotion")
    windows: list[tuple[int, int]] = []
    try:
        workers = Workers(peer, timed_overwrites, [(n, 3)])
        try:
            workers.start()
            time.sleep(duration / 2)    # writes before any promotion: the baseline
            for _ in range(promotions):
                t = time.monotonic_ns()
                promote()
                windows.append((t, time.monotonic_ns()))
                time.sleep(duration / (2 * promotions))
        finally:
            (writes, seconds, cpu, (starts_b, took_b)), = workers.finish()
    except RuntimeError as exc:
        return Result(name, peer.name, n, None, "ms", f"FAILED: {exc}")
    finally:
        store.close()
    starts, took = array("q"), array("q")
    starts.frombytes(starts_b)
    took.frombytes(took_b)
    during: list[int] = []
    outside: list[int] = []
    for s, d in zip(starts, took):
        overlaps = any(s < end and s + d > begin for begin, end in windows)
        (during if overlaps else outside).append(d)
    promotion_ms = [round((end - begin) / 1e6, 2) for begin, end in windows]
    stats = _latency_stats(during)
    worst = stats.get("max_ms")
    longest = max(promotion_ms)
    extra: dict[str, Any] = {
        "during_promotion": stats, "outside_promotion": _latency_stats(outside),
        "promotion_ms": promotion_ms, "writes_per_s": round(writes / seconds) if seconds else 0,
        "cpu_us_per_write": us_per(cpu, writes),
        "max_vs_promotion": round(worst / longest, 2) if worst is not None and longest else None}
    extra["summary"] = (f"promotion {statistics.median(promotion_ms):.1f} ms; during it p50 "
                        f"{stats.get('p50_us')} us, p99 {stats.get('p99_us')} us over "
                        f"{stats['writes']} writes; outside p99 "
                        f"{extra['outside_promotion'].get('p99_us')} us")
    check = "ok" if stats["writes"] else "n/a: no write overlapped a promotion"
    return Result(name, peer.name, n, worst, "ms (max)", check, extra=extra)
