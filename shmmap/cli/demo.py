"""``shmmap demo``: the scenario shmmap exists for, live.

A daemon serves a fresh map of 100,000 keys. Writer processes run a mixed
load, half writes (atomic two-key transfers, so the values always sum to
the same total) and half point reads; reader processes iterate the whole
map continuously and check every iteration: the total, the key count, no
duplicate key. Progress is shown while it runs (see progress.py); at the end a summary,
and everything the demo created is removed.

Ctrl-C stops the demo cleanly: the worker processes ignore SIGINT (the
terminal sends it to the whole process group), the demo stops them, the
daemon and removes the map, and the command exits 130 with one line.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import random
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from ..client.map import connect
from ..launcher import Daemon
from .progress import Progress

START_VALUE = 100
REPORT_SECONDS = 1.0
STOP_SECONDS = 10.0        # a worker that has not exited by then is killed


@dataclass
class DemoResult:
    """What the workers reported so far."""
    iterations: list[float] = field(default_factory=list)   # seconds each
    checks_passed: int = 0
    checks_failed: int = 0
    writes: int = 0
    gets: int = 0
    errors: list[str] = field(default_factory=list)


def _worker_started() -> Any:
    """In a worker: SIGINT is the demo's to handle (the terminal sends it to
    every process of the group), and a worker whose demo died stops too.
    Returns a function that says whether to go on."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    return lambda stop: not stop.is_set() and os.getppid() == parent


def _reader(name: str, keys: int, stop: Any, out: Any) -> None:
    go_on = _worker_started()
    total = keys * START_VALUE
    last = time.monotonic()
    times, ok, bad = [], 0, 0
    try:            # connecting too: the daemon may be gone already (Ctrl-C)
        with connect(name) as m:
            while go_on(stop):
                t = time.perf_counter()
                seen, s = set(), 0
                for k, v in m.items():
                    seen.add(k)
                    s += v
                times.append(time.perf_counter() - t)
                if s == total and len(seen) == keys:
                    ok += 1
                else:
                    bad += 1
                    out.put(("error", f"iteration saw sum {s} over {len(seen)} keys"))
                if time.monotonic() - last >= REPORT_SECONDS:
                    out.put(("reader", times, ok, bad))
                    times, ok, bad, last = [], 0, 0, time.monotonic()
    except Exception as exc:   # reported, then the demo fails
        out.put(("error", f"reader: {exc!r}"))
    out.put(("reader", times, ok, bad))
    out.put(("done",))


def _writer(name: str, keys: int, index: int, writers: int, write_ratio: float,
            stop: Any, out: Any) -> None:
    go_on = _worker_started()
    rng = random.Random(index)
    own = range(index, keys, writers)      # keys only this writer changes
    writes = gets = 0
    last = time.monotonic()
    try:
        with connect(name) as m:
            while go_on(stop):
                if rng.random() < write_ratio:
                    a, b = rng.choice(own), rng.choice(own)
                    if a != b:
                        va, vb = m[a], m[b]
                        amount = rng.randint(0, va)
                        with m.batch() as batch:
                            batch[a] = va - amount
                            batch[b] = vb + amount
                    writes += 1
                else:
                    m.get(rng.randrange(keys))
                    gets += 1
                if time.monotonic() - last >= REPORT_SECONDS:
                    out.put(("writer", writes, gets))
                    writes = gets = 0
                    last = time.monotonic()
    except Exception as exc:
        out.put(("error", f"writer: {exc!r}"))
    out.put(("writer", writes, gets))
    out.put(("done",))


def _percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def run_demo(keys: int = 100_000, readers: int = 2, writers: int = 2, duration: float = 20.0,
             write_ratio: float = 0.5, name: str = "", progress: bool = True) -> dict[str, Any]:
    """Runs the demo; returns its summary (also what --json writes).
    KeyboardInterrupt (Ctrl-C) stops the workers and the daemon, removes the
    map, and is raised again."""
    name = name or f"demo-{os.getpid()}"
    ctx = mp.get_context("spawn")
    result = DemoResult()
    with Daemon(name) as daemon, daemon.connect() as m:
        m.update((k, START_VALUE) for k in range(keys))
        m.promote()
        stop, out = ctx.Event(), ctx.Queue()
        targets: list[tuple[Callable[..., None], tuple[Any, ...]]]
        targets = [(_reader, (name, keys, stop, out))] * readers
        targets += [(_writer, (name, keys, i, writers, write_ratio, stop, out))
                    for i in range(writers)]
        procs: list[Any] = []
        try:
            with _sigint_ignored():         # ignored from their first instruction on
                for target, args in targets:
                    procs.append(ctx.Process(target=target, args=args))
                    procs[-1].start()
            _collect(out, result, time.monotonic(), duration, m, progress, stop, len(procs))
        finally:
            with _sigint_ignored():         # a second Ctrl-C does not leave workers behind
                _stop_workers(procs, stop, out)
        stats = m.stats()
        final_sum = sum(m.values())
    elapsed = duration
    summary = {
        "keys": keys, "readers": readers, "writers": writers, "duration_s": duration,
        "write_ratio": write_ratio,
        "iterations": len(result.iterations),
        "iteration_p50_ms": round(_percentile(result.iterations, 50) * 1000, 2),
        "iteration_p99_ms": round(_percentile(result.iterations, 99) * 1000, 2),
        "writes_per_s": round(result.writes / elapsed),
        "gets_per_s": round(result.gets / elapsed),
        "promotions": stats["promotions"],
        "promotions_by_reason": stats["promotions_by_reason"],
        "bytes_copied": stats["bytes_copied"],
        "consistency_checks_passed": result.checks_passed,
        "consistency_checks_failed": result.checks_failed,
        "final_sum_ok": final_sum == keys * START_VALUE,
        "errors": result.errors,
    }
    return summary


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored for the block. A process spawned meanwhile inherits
    SIG_IGN across exec, and Python then installs no KeyboardInterrupt
    handler in it, so an early Ctrl-C cannot print a traceback from a worker
    still importing. (Only the main thread may set handlers.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _stop_workers(procs: list[Any], stop: Any, out: Any) -> None:
    """Tells the workers to stop and waits for them, reading what they still
    send (a worker cannot exit while its last messages fill the pipe); kills
    those still running after STOP_SECONDS."""
    stop.set()
    deadline = time.monotonic() + STOP_SECONDS
    while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
        try:
            out.get(timeout=0.05)
        except queue.Empty:
            pass
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join()


def _collect(out: Any, result: DemoResult, started: float, duration: float, m: Any,
             progress: bool, stop: Any, workers: int) -> None:
    # Redrawn every second on a terminal; in a log a line every tenth of the run.
    with Progress(enabled=progress, tty_every=REPORT_SECONDS,
                  plain_every=min(30.0, max(REPORT_SECONDS, duration / 10))) as shown:
        _collect_into(out, result, started, duration, m, shown, stop, workers)


def _collect_into(out: Any, result: DemoResult, started: float, duration: float, m: Any,
                  shown: Progress, stop: Any, workers: int) -> None:
    next_report = started + REPORT_SECONDS
    done = 0
    while done < workers:
        now = time.monotonic()
        if now - started >= duration:
            stop.set()
        try:
            msg = out.get(timeout=max(0.05, min(next_report, started + duration) - now))
        except queue.Empty:
            msg = None
        if msg is not None:
            kind = msg[0]
            if kind == "reader":
                result.iterations += msg[1]
                result.checks_passed += msg[2]
                result.checks_failed += msg[3]
            elif kind == "writer":
                result.writes += msg[1]
                result.gets += msg[2]
            elif kind == "error":
                result.errors.append(msg[1])
            else:
                done += 1
        if time.monotonic() >= next_report:
            next_report += REPORT_SECONDS
            t = min(time.monotonic() - started, duration)
            recent = result.iterations[-200:]
            p50 = f"{_percentile(recent, 50) * 1000:6.1f} ms" if recent else "     - ms"
            shown.update(
                f"[{t:5.1f}/{duration:.0f}s] iterations {len(result.iterations):5d} "
                f"(p50 {p50})  writes {result.writes:8d}  gets {result.gets:8d}  "
                f"checks ok {result.checks_passed:5d} failed {result.checks_failed}  "
                f"gen {m.refresh().gen}")


def format_summary(s: dict[str, Any]) -> str:
    """run_demo()'s summary as the lines the command prints."""
    lines = [
        f"shmmap demo: {s['keys']:,} keys, {s['readers']} iterating readers, {s['writers']} "
        f"writers at {s['write_ratio']:.0%} writes, {s['duration_s']:.0f} s",
        f"  full iterations     {s['iterations']:>10,}   p50 {s['iteration_p50_ms']} ms, "
        f"p99 {s['iteration_p99_ms']} ms",
        f"  writes/s            {s['writes_per_s']:>10,}   (atomic two-key transfers)",
        f"  gets/s              {s['gets_per_s']:>10,}",
        f"  promotions          {s['promotions']:>10,}   {s['promotions_by_reason']}",
        f"  bytes copied        {s['bytes_copied']:>10,}",
        f"  consistency checks  {s['consistency_checks_passed']:>10,} passed, "
        f"{s['consistency_checks_failed']} failed; final sum "
        f"{'correct' if s['final_sum_ok'] else 'WRONG'}",
    ]
    lines += [f"  error: {e}" for e in s["errors"]]
    return "\n".join(lines)
