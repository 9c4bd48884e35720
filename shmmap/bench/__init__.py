"""``shmmap bench``: shmmap beside what users would pick instead -- a local
dict (the floor), a dict under a lock shared by threads, a Manager dict,
UltraDict, shared-memory-dict, LMDB on /dev/shm, Redis, and (when a Go
toolchain is installed) Go's sync.Map in one Go process -- on the same
workloads: iteration idle and under a 50/50 load from other processes,
point gets, writes one at a time and batched, a writer while another
process iterates, several writers at once, writer threads beside reader
threads of one process, write latency during a promotion, iteration as
the map grows, and the adversarial patterns that make Go's sync.Map copy
the whole map. Rates come with the CPU time per write."""
from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from typing import Callable, Optional

from . import gopeer, scenarios, threads, writes
from .peers import PEERS, Peer
from .report import format_table, plot, plot_unavailable, verdicts
from .scenarios import Result

SCENARIOS = ["iterate-idle", "iterate-load", "get", "set", "set-batched", "iterate-write",
             "writers", "threads", "promotion", "scaling", "adversarial"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keys", type=int, default=100_000, help="keys in the map (default 100,000)")
    p.add_argument("--readers", type=int, default=1,
                   help="iterating processes under load; the first is measured (default 1)")
    p.add_argument("--writers", type=int, default=2,
                   help="processes (threads for dict + lock) running the load (default 2)")
    p.add_argument("--write-ratio", type=float, default=0.5,
                   help="share of writes in the load (default 0.5)")
    p.add_argument("--duration", type=float, default=3.0,
                   help="seconds per timed scenario and system (default 3)")
    p.add_argument("--value-size", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--systems", default="all",
                   help="comma-separated system names or prefixes (default: all installed)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma-separated, of: {', '.join(SCENARIOS)}")
    p.add_argument("--sizes", default="10000,100000,1000000",
                   help="key counts for 'scaling' and 'adversarial' (default 10k,100k,1M)")
    p.add_argument("--writer-counts", default="1,2,4,8",
                   help="writer processes at once for 'writers' (default 1,2,4,8)")
    p.add_argument("--thread-shapes", default="1x0,1x1,1x4,4x4",
                   help="writer x reader threads of one process for 'threads' "
                        "(default 1x0,1x1,1x4,4x4)")
    p.add_argument("--promotion-keys", type=int, default=1_000_000,
                   help="entries in the map that 'promotion' promotes (default 1,000,000)")
    p.add_argument("--json", metavar="FILE", help="write every result as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="draw iteration time against keys, "
                   "iteration latency over time under load, and the write scenarios "
                   "(needs matplotlib: pip install 'shmmap[bench]')")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes and durations: checks that everything runs")


def _wanted(spec: str) -> list[str]:
    return [s.strip().lower() for s in spec.split(",")] if spec != "all" else []


def _chosen(name: str, wanted: list[str]) -> bool:
    return not wanted or any(name.lower().startswith(w) for w in wanted)


def _select(spec: str) -> tuple[list[type[Peer]], list[str]]:
    wanted = _wanted(spec)
    chosen, skipped = [], []
    for cls in PEERS:
        if not _chosen(cls.name, wanted):
            continue
        if cls.available():
            chosen.append(cls)
        else:
            skipped.append(f"{cls.name}: skipped, {cls.why_missing}")
    return chosen, skipped


def _go_selected(args: argparse.Namespace) -> tuple[bool, list[str]]:
    """Whether the Go peer runs; else why not, when it was asked for."""
    if "iterate-write" not in args.scenarios.split(",") or not _chosen(gopeer.NAME,
                                                                       _wanted(args.systems)):
        return False, []
    why = gopeer.why_missing()
    return why is None, [] if why is None else [f"{gopeer.NAME}: skipped, {why}"]


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.results: list[Result] = []
        self.started = time.monotonic()

        self.tty = sys.stderr.isatty()

    def progress(self, msg: str) -> None:
        """One self-overwriting status line, on a terminal only."""
        if self.tty:
            sys.stderr.write(f"\r\033[K[{time.monotonic() - self.started:6.0f}s] {msg}")
            sys.stderr.flush()

    def with_peer(self, cls: type[Peer], n: int, label: str,
                  work: Callable[[Peer], list[Result]]) -> None:
        """Sets a peer up with n keys, runs work, tears it down; a failure
        anywhere becomes a FAILED result, never a lost row."""
        self.progress(f"{cls.name}: {label} ({n:,} keys)")
        peer = cls()
        try:
            peer.setup(n)
        except Exception as exc:
            self.results.append(Result(label, cls.name, n, None, "", f"FAILED: setup: {exc!r}"))
            peer.teardown()             # whatever part of the setup was made
            return
        try:
            self.results += work(peer)
        except Exception as exc:
            self.results.append(Result(label, cls.name, n, None, "", f"FAILED: {exc!r}"))
        finally:
            peer.teardown()

    def run(self, peers: list[type[Peer]], with_go: bool) -> None:
        a, wanted = self.args, set(self.args.scenarios.split(","))
        d, n = a.duration, a.keys
        counts = [int(c) for c in a.writer_counts.split(",")]
        sizes = [int(s) for s in a.sizes.split(",")]
        adversarial_sizes = sizes[1:] or sizes      # the smallest is only for scaling
        for cls in peers:
            def main_scenarios(peer: Peer) -> list[Result]:
                out = []
                if "iterate-idle" in wanted:
                    out.append(scenarios.iterate_idle(peer, n, d))
                if "iterate-load" in wanted:
                    out.append(scenarios.iterate_under_load(peer, n, d, a.readers, a.writers,
                                                            a.write_ratio))
                if "get" in wanted:
                    out.append(scenarios.gets(peer, n, d))
                if "set" in wanted:
                    out.append(scenarios.sets(peer, n, d, 1))
                if "set-batched" in wanted:
                    out.append(scenarios.sets(peer, n, d, 1000))
                return out
            self.with_peer(cls, n, "main scenarios", main_scenarios)
            if "iterate-write" in wanted:   # adds keys: a map of its own
                self.with_peer(cls, n, "writer under iteration",
                               partial(writes.writer_under_iteration, n=n, duration=d))
            if "writers" in wanted:
                self.with_peer(cls, n, "writers together",
                               partial(writes.writers_together, n=n, duration=d, counts=counts))
            if "threads" in wanted and cls.name in threads.SYSTEMS:
                self.with_peer(cls, n, "threads of one process",
                               partial(threads.threads_together, n=n, duration=d,
                                       shapes=threads.parse_shapes(a.thread_shapes)))
            if "promotion" in wanted and cls.name == "shmmap":
                self.with_peer(cls, a.promotion_keys, "write latency during promotion",
                               partial(_promotion, n=a.promotion_keys, d=d))
            for size in sizes:
                if "scaling" in wanted:
                    self.with_peer(cls, size, "iterate idle", partial(_scaling, n=size, d=d))
                if "adversarial" in wanted and size in adversarial_sizes:
                    self.with_peer(cls, size, "adversarial", partial(_adversarial, n=size, d=d))
        if with_go:
            self.progress(f"{gopeer.NAME}: build, then writer under iteration ({n:,} keys)")
            self.results += gopeer.run(n, d)
        if self.tty:
            sys.stderr.write("\r\033[K")


def _promotion(peer: Peer, n: int, d: float) -> list[Result]:
    return [writes.write_latency_during_promotion(peer, n, d)]


def _scaling(peer: Peer, n: int, d: float) -> list[Result]:
    r = scenarios.iterate_idle(peer, n, d / 2)
    r.scenario = "iteration vs keys"
    return [r]


def _adversarial(peer: Peer, n: int, d: float) -> list[Result]:
    return [scenarios.insert_then_iterate(peer, n, d, first_only=False),
            scenarios.insert_then_iterate(peer, n, d, first_only=True),
            scenarios.churn(peer, n, d)]


def run(args: argparse.Namespace) -> int:
    if args.plot and (why := plot_unavailable()):
        print(f"shmmap bench: {why}", file=sys.stderr)     # before minutes of work
        return 2
    unknown = set(args.scenarios.split(",")) - set(SCENARIOS)
    if unknown:
        print(f"shmmap bench: unknown scenario {', '.join(sorted(unknown))}; "
              f"choose from {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    if args.quick:
        args.keys, args.sizes, args.duration = 2000, "1000,2000,4000", min(args.duration, 0.3)
        args.writer_counts, args.promotion_keys = "1,2", min(args.promotion_keys, 20_000)
        args.thread_shapes = "1x1,2x2"
    try:
        threads.parse_shapes(args.thread_shapes)
    except ValueError as exc:
        print(f"shmmap bench: {exc}", file=sys.stderr)
        return 2
    peers, skipped = _select(args.systems)
    with_go, go_skipped = _go_selected(args)
    skipped += go_skipped
    for line in skipped:
        print(line, file=sys.stderr)
    if not peers and not with_go:
        print("shmmap bench: no system to run", file=sys.stderr)
        return 1
    runner = Runner(args)
    try:
        runner.run(peers, with_go)
    except KeyboardInterrupt:
        print("\ninterrupted: results so far", file=sys.stderr)
    results = runner.results
    print(format_table(results))
    print()
    for line in verdicts(results, args.keys):
        print(line)
    for line in skipped:
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"options": {k: v for k, v in vars(args).items() if k != "run"},
                       "skipped": skipped, "results": [r.as_dict() for r in results],
                       "verdicts": verdicts(results, args.keys)}, f, indent=2)
    if args.plot:
        plot(results, args.plot)
    failed = [r for r in results if r.system == "shmmap" and r.check.startswith("FAILED")]
    return 1 if failed else 0


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="shmmap bench", description=__doc__)
    add_arguments(p)
    return run(p.parse_args(argv))


__all__ = ["add_arguments", "main", "run"]
