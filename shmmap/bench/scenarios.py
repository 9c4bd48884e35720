"""The benchmark's scenarios: the same workload code for every peer, each
result with a correctness check. Values are always 1, so every full
iteration must see exactly n keys summing to n, however writers run."""
from __future__ import annotations

import multiprocessing as mp
import queue
import random
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

from .cpu import processes_cpu, summary, us_per
from .peers import Peer, Store

CTX = mp.get_context("spawn")
WORKER_START_TIMEOUT = 60.0


@dataclass
class Result:
    scenario: str
    system: str
    keys: int
    value: Optional[float]          # in unit; None when it failed or does not apply
    unit: str
    check: str = "ok"               # "ok", "n/a: why", or "FAILED: why"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.check == "ok"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class CheckFailed(Exception):
    pass


def full_iteration(store: Store, n: int) -> tuple[float, float]:
    """Iterates everything once; checks it saw n keys summing to n.
    Returns the seconds it took, and the CPU seconds this thread spent:
    the second leaves out time spent waiting for a core or a lock."""
    t, c = time.perf_counter(), time.thread_time()
    count = total = 0
    for _, v in store.items():
        count += 1
        total += v
    elapsed, cpu = time.perf_counter() - t, time.thread_time() - c
    if count != n or total != n:
        raise CheckFailed(f"iteration saw {count} keys summing to {total}, expected {n} and {n}")
    return elapsed, cpu


def check_keys(store: Store, n: int) -> None:
    keys = [k for k, _ in store.items()]
    if len(set(keys)) != len(keys):
        raise CheckFailed(f"{len(keys) - len(set(keys))} duplicate keys in one iteration")
    if set(keys) != set(range(n)):
        raise CheckFailed("iteration missed keys or saw foreign ones")


def _percentiles(samples: list[tuple[float, float]]) -> dict[str, float]:
    ordered = sorted(wall for wall, _ in samples)
    return {"p50_ms": round(statistics.median(ordered) * 1000, 3),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 3),
            "cpu_p50_ms": round(statistics.median(cpu for _, cpu in samples) * 1000, 3),
            "iterations": len(ordered)}


def iterate_idle(peer: Peer, n: int, duration: float) -> Result:
    store = peer.open()
    try:
        check_keys(store, n)
        samples: list[tuple[float, float]] = []
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline or len(samples) < 3:
            samples.append(full_iteration(store, n))
    finally:
        store.close()
    stats = _percentiles(samples)
    return Result("iterate idle", peer.name, n, stats["p50_ms"], "ms", extra=stats)


# -- the 50/50 load ---------------------------------------------------------------

def _load_loop(store: Store, n: int, write_ratio: float, seed: int, stop: Any) -> tuple[int, int]:
    rng = random.Random(seed)
    writes = gets = 0
    while not stop.is_set():
        for _ in range(64):
            k = rng.randrange(n)
            if rng.random() < write_ratio:
                store.set(k, 1)
                writes += 1
            else:
                store.get(k)
                gets += 1
    return writes, gets


def _load_process(peer_cls: type[Peer], spec: Any, n: int, write_ratio: float, seed: int,
                  ready: Any, stop: Any, out: Any) -> None:
    try:
        store = peer_cls.attach(spec)
        ready.put("ready")
        out.put(("ok", *_load_loop(store, n, write_ratio, seed, stop)))
        store.close()
    except Exception as exc:        # reported, not raised: the parent decides
        ready.put("ready")
        out.put(("error", repr(exc), 0))


def _iterate_process(peer_cls: type[Peer], spec: Any, n: int, ready: Any, stop: Any,
                     out: Any) -> None:
    """One more reader: iterates until stopped, checking each iteration."""
    try:
        store = peer_cls.attach(spec)
        ready.put("ready")
        count = 0
        while not stop.is_set():
            full_iteration(store, n)
            count += 1
        out.put(("ok", 0, 0))
        store.close()
    except Exception as exc:
        ready.put("ready")
        out.put(("error", repr(exc), 0))


def iterate_under_load(peer: Peer, n: int, duration: float, readers: int, writers: int,
                       write_ratio: float) -> Result:
    if not peer.shared:
        return Result("iterate under load", peer.name, n, None, "ms",
                      "n/a: nothing else can write to it")
    stop: Any = CTX.Event()
    out: Any = CTX.Queue()
    ready: Any = CTX.Queue()
    workers: list[Any] = []
    if peer.processes:
        for i in range(writers):
            p = CTX.Process(target=_load_process, args=(type(peer), peer.spec(), n, write_ratio,
                                                        i, ready, stop, out))
            p.start()
            workers.append(p)
        for _ in range(readers - 1):
            p = CTX.Process(target=_iterate_process, args=(type(peer), peer.spec(), n, ready,
                                                           stop, out))
            p.start()
            workers.append(p)
    else:                               # threads of this process
        tstop = threading.Event()
        stop = tstop
        tout: queue.Queue[tuple[Any, ...]] = queue.Queue()
        out = tout
        for i in range(writers):
            store_i = peer.open()
            th = threading.Thread(target=lambda s=store_i, i=i: tout.put(
                ("ok", *_load_loop(s, n, write_ratio, i, tstop))))
            th.start()
            workers.append(th)
            ready.put("ready")
    store = peer.open()
    samples: list[tuple[float, tuple[float, float]]] = []   # (when, (wall, cpu))
    error: Optional[str] = None
    try:
        for _ in workers:
            ready.get(timeout=WORKER_START_TIMEOUT)
        started = time.monotonic()
        while time.monotonic() - started < duration or len(samples) < 3:
            samples.append((time.monotonic() - started, full_iteration(store, n)))
    except CheckFailed as exc:
        error = str(exc)
    finally:
        stop.set()
        results = [out.get(timeout=WORKER_START_TIMEOUT) for _ in workers]
        for w in workers:
            w.join(WORKER_START_TIMEOUT)
        store.close()
    elapsed = samples[-1][0] + samples[-1][1][0] if samples else duration
    failures = [r[1] for r in results if r[0] != "ok"]
    if error is None and failures:
        error = f"a writer failed: {failures[0]}"
    stats: dict[str, Any] = _percentiles([s for _, s in samples]) if samples else {}
    stats["writes_per_s"] = round(sum(r[1] for r in results if r[0] == "ok") / elapsed)
    stats["gets_per_s"] = round(sum(r[2] for r in results if r[0] == "ok") / elapsed)
    stats["over_time"] = [(round(t, 3), round(s[0] * 1000, 3)) for t, s in samples]
    return Result("iterate under load", peer.name, n, stats.get("p50_ms"), "ms",
                  "ok" if error is None else f"FAILED: {error}", extra=stats)


# -- point operations ------------------------------------------------------------------

def _rate(fn: Callable[[int], None], duration: float, per_call: int = 1) -> tuple[float, int]:
    """Calls fn(i) for duration seconds; operations a second, and how many."""
    calls = 0
    started = time.perf_counter()
    while True:
        for _ in range(16):
            fn(calls)
            calls += 1
        if time.perf_counter() - started >= duration:
            return calls * per_call / (time.perf_counter() - started), calls * per_call


def gets(peer: Peer, n: int, duration: float) -> Result:
    store = peer.open()
    rng = random.Random(1)
    keys = [rng.randrange(n) for _ in range(1 << 16)]
    mask = len(keys) - 1
    try:
        wrong = [k for k in keys[:100] if store.get(k) != 1]
        if wrong:
            return Result("get", peer.name, n, None, "ns/op", f"FAILED: get({wrong[0]}) != 1")
        per_s, _ = _rate(lambda i: store.get(keys[i & mask]), duration)
    finally:
        store.close()
    return Result("get", peer.name, n, round(1e9 / per_s, 1), "ns/op")


def sets(peer: Peer, n: int, duration: float, batch: int) -> Result:
    """Writes from this process (its CPU time counted, and the servers')."""
    store = peer.open()
    rng = random.Random(2)
    keys = [rng.randrange(n) for _ in range(1 << 16)]
    mask = len(keys) - 1
    try:
        cpu, server = time.process_time(), processes_cpu(peer.server_pids())
        if batch == 1:
            per_s, writes = _rate(lambda i: store.set(keys[i & mask], 1), duration)
        else:
            chunk = {keys[i]: 1 for i in range(batch)}
            per_s, writes = _rate(lambda i: store.set_many(chunk), duration, len(chunk))
        cpu = time.process_time() - cpu
        server = processes_cpu(peer.server_pids()) - server
        full_iteration(store, n)        # still n keys summing to n
    finally:
        store.close()
    name = "set, synchronous" if batch == 1 else f"set, batches of {batch}"
    return Result(name, peer.name, n, round(per_s), "ops/s", extra={
        "cpu_us_per_write": us_per(cpu + server, writes),
        "server_cpu_us_per_write": us_per(server, writes),
        "summary": summary(cpu, server, writes)})


# -- adversarial patterns ---------------------------------------------------------------

def insert_then_iterate(peer: Peer, n: int, duration: float, first_only: bool) -> Result:
    """Insert a new key, then iterate (fully, or only the first item), in a
    loop: Go's sync.Map copies the whole map on each such insert."""
    store = peer.open()
    inserted = 0
    try:
        started = time.perf_counter()
        while time.perf_counter() - started < duration or inserted < 3:
            store.set(n + inserted, 1)
            inserted += 1
            if first_only:
                next(iter(store.items()))
            else:
                full_iteration(store, n + inserted)
        per_insert = (time.perf_counter() - started) / inserted
        for i in range(inserted):       # leave the map as it was found
            store.delete(n + i)
    finally:
        store.close()
    what = "insert + iterate first item" if first_only else "insert + iterate fully"
    return Result(what, peer.name, n, round(per_insert * 1e6, 2), "us/insert",
                  extra={"inserts": inserted})


def churn(peer: Peer, n: int, duration: float) -> Result:
    """Delete an existing key, insert a new one (Go's AdversarialDelete)."""
    store = peer.open()
    ops = 0
    try:
        started = time.perf_counter()
        while time.perf_counter() - started < duration or ops < 3:
            store.delete(ops)
            store.set(n + ops, 1)
            ops += 1
        per_op = (time.perf_counter() - started) / ops
        full_iteration(store, n)
    finally:
        store.close()
    return Result("delete + insert churn", peer.name, n, round(per_op * 1e6, 2), "us/op",
                  extra={"ops": ops})
