"""The core's benchmark: lookups, export, decode and promotion of a map in
shared memory, each beside a local dict doing the same work in the same
run -- first without a daemon (one process writes and reads the map), then
through a real daemon and client (get, iteration, synchronous and batched
stores).

Last, what the reader's cache is for, from processes other than the writer:
iterating 100k int->int idle and under a 50/50 load process, gets through
a harness that calls them, and iterating str->dict values that changed
little since the last iteration -- each against a dict in that process.

    python -m shmmap.bench.corebench [--keys 100000,1000000] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import statistics
import sys
import time
from typing import Any, Callable, Iterable

from .._core import ffi, lib
from ..cli.progress import Progress
from ..client.map import connect
from ..client.reader import MapReader
from ..server.writer import MapWriter
from ..shared.codec import decode_key, decode_value, encode_key, encode_value
from ..shared.generation import EXPORT_BATCH
from ..shared.protocol import batch_blob

REPEATS = 5
LOAD_CHUNK = 50_000
CLIENT_KEYS = 100_000
SYNC_WRITES = 20_000
TARGETS = {   # (dataset, row): (limit, how) -- what the design promises
    ("int->int", "get from Python"): (10.0, "ratio"),
    ("int->int", "iterate: export + decode + loop"): (2.5, "ratio"),
    ("int->int", "promotion"): (500.0, "ms@1M"),
    ("client", "get"): (10.0, "ratio"),
    ("client", "for k, v in m.items()"): (2.5, "ratio"),
    ("client", "synchronous store"): (40_000.0, "rate"),
    ("client", "batched store (update)"): (500_000.0, "rate"),
    ("other process", "iterate int->int, idle"): (1.2, "ratio"),
    ("other process", "iterate int->int, 50/50 load"): (1.2, "ratio"),
    ("other process", "get through a harness, idle"): (2.0, "ratio"),
    ("other process", "iterate str->dict, 100 keys changed"): (1.5, "ratio"),
}
CROSS_KEYS = 100_000
CROSS_ROUNDS = 31         # iterations measured (medians are reported)
CROSS_GETS = 1 << 18      # calls through the get harness
CHANGED_PER_ROUND = 100   # str->dict keys the writer changes between iterations
_SPAWN = mp.get_context("spawn")


def _best(fn: Callable[[], float], repeats: int = REPEATS) -> float:
    return min(fn() for _ in range(repeats))


def _per_item(fn: Callable[[], Any], n: int) -> Callable[[], float]:
    def run() -> float:
        t = time.perf_counter_ns()
        fn()
        return (time.perf_counter_ns() - t) / n
    return run


def _datasets(n: int) -> dict[str, tuple[list[Any], Callable[[int], Any]]]:
    return {
        "int->int": (list(range(n)), lambda i: i),
        "str->dict": ([f"user:{i}" for i in range(n)],
                      lambda i: {"id": i, "name": f"n{i}", "score": i * 0.5}),
    }


def _load(w: MapWriter, keys: list[Any], value: Callable[[int], Any]) -> None:
    for start in range(0, len(keys), LOAD_CHUNK):
        chunk = range(start, min(start + LOAD_CHUNK, len(keys)))
        w.apply(batch_blob((encode_key(keys[i]), encode_value(value(i))) for i in chunk))
    w.commit()


def _loop_get(get: Callable[[Any], Any], keys: list[Any]) -> None:
    for k in keys:
        get(k)


def _loop_items(items: Callable[[], Iterable[tuple[Any, Any]]], is_int: bool) -> None:
    s = 0
    if is_int:
        for _, v in items():
            s += v
    else:
        for _, v in items():
            s += v["id"]


def _export_only(reader: MapReader) -> Callable[[], None]:
    gen, snap = reader.pin()

    def run() -> None:
        x = ffi.new("struct shm_export *")
        cap = 1 << 22
        kb, vb = ffi.new("uint8_t[]", cap), ffi.new("uint8_t[]", cap)
        x.keys, x.keys_cap, x.values, x.values_cap = kb, cap, vb, cap
        x.snap, x.max_items = snap, EXPORT_BATCH
        while lib.shm_export_batch(gen.view, x) == 0:
            pass
    return run


def _exported(reader: MapReader) -> list[tuple[bytes, bytes]]:
    gen, snap = reader.pin()
    x = ffi.new("struct shm_export *")
    cap = 1 << 22
    kb, vb = ffi.new("uint8_t[]", cap), ffi.new("uint8_t[]", cap)
    x.keys, x.keys_cap, x.values, x.values_cap = kb, cap, vb, cap
    x.snap, x.max_items = snap, EXPORT_BATCH
    out = []
    while True:
        rc = lib.shm_export_batch(gen.view, x)
        out.append((ffi.buffer(kb, x.keys_len)[:], ffi.buffer(vb, x.values_len)[:]))
        if rc == 1:
            return out


def _decode(batches: list[tuple[bytes, bytes]]) -> None:
    for k, v in batches:
        decode_key(k)
        decode_value(v)


def bench_dataset(n: int, label: str, keys: list[Any], value: Callable[[int], Any],
                  progress: Callable[[str], None]) -> list[dict[str, Any]]:
    """Rows for one map of n keys written and read in this process (no
    daemon): lookups before and after promotion, promotion, export and
    decode, each beside a dict doing the same work."""
    name = f"corebench-{os.getpid()}"
    w = MapWriter(name)
    rows: list[dict[str, Any]] = []

    def row(what: str, shm: float, local: float, unit: str = "ns") -> None:
        rows.append({"keys": n, "dataset": label, "what": what, "shmmap": round(shm, 1),
                     "dict": round(local, 1) if local else None, "unit": unit,
                     "ratio": round(shm / local, 2) if local else None})

    try:
        progress(f"{label} {n:,}: loading")
        _load(w, keys, value)
        local = {k: value(i) for i, k in enumerate(keys)}
        reader = MapReader(name)
        try:
            progress(f"{label} {n:,}: lookups in the dirty table")
            row("get from Python (keys in dirty table)",
                _best(_per_item(lambda: _loop_get(reader.lookup, keys), n), 2),
                _best(_per_item(lambda: _loop_get(local.get, keys), n), 2))
            progress(f"{label} {n:,}: promotion")
            t = time.perf_counter()
            w.promote()
            promote_ms = (time.perf_counter() - t) * 1000
            copy_ms = _best(lambda: _dict_copy_ms(local), 1)
            row("promotion", promote_ms, copy_ms, "ms")
            reader.refresh()
            progress(f"{label} {n:,}: lookups")
            if label == "int->int":
                view = reader.refresh().view
                row("C lookup (no Python)",
                    _best(_per_item(lambda: lib.shm_bench_lookup_ints(view, 0, n), n)), 0)
            row("get from Python", _best(_per_item(lambda: _loop_get(reader.lookup, keys), n)),
                _best(_per_item(lambda: _loop_get(local.get, keys), n)))
            progress(f"{label} {n:,}: export and decode")
            row("export (C only)", _best(_per_item(_export_only(reader), n)), 0)
            exported = _exported(reader)
            row("decode (msgpack)", _best(_per_item(lambda: _decode(exported), n)), 0)
            is_int = label == "int->int"
            row("iterate: export + decode + loop",
                _best(_per_item(lambda: _loop_items(reader.items, is_int), n)),
                _best(_per_item(lambda: _loop_items(local.items, is_int), n)))
        finally:
            reader.close()
    finally:
        w.close()
    return rows


def bench_client(progress: Callable[[str], None]) -> list[dict[str, Any]]:
    """Through a real daemon: one client process, 100k int keys."""
    from ..launcher import Daemon
    n, rows = CLIENT_KEYS, []
    keys = list(range(n))

    def row(what: str, shm: float, local: float, unit: str) -> None:
        rows.append({"keys": n, "dataset": "client", "what": what, "shmmap": round(shm, 1),
                     "dict": round(local, 1) if local else None, "unit": unit,
                     "ratio": round(shm / local, 2) if local else None})

    with Daemon(f"corebench-client-{os.getpid()}") as d, d.connect() as m:
        progress("client: batched stores")
        t = time.perf_counter()
        m.update((k, k) for k in keys)
        row("batched store (update)", n / (time.perf_counter() - t), 0, "/s")
        m.promote()
        local = {k: k for k in keys}
        progress("client: gets and iteration")
        row("get", _best(_per_item(lambda: _loop_get(m.get, keys), n)),
            _best(_per_item(lambda: _loop_get(local.get, keys), n)), "ns")
        row("for k, v in m.items()", _best(_per_item(lambda: _loop_items(m.items, True), n)),
            _best(_per_item(lambda: _loop_items(local.items, True), n)), "ns")
        progress("client: synchronous stores")
        t = time.perf_counter()
        for k in range(SYNC_WRITES):
            m[k] = -k
        row("synchronous store", SYNC_WRITES / (time.perf_counter() - t), 0, "/s")
    return rows


def _sum_values(pairs: Iterable[tuple[Any, Any]], field: Any = None) -> int:
    s = 0
    if field is None:
        for _, v in pairs:
            s += v
    else:
        for _, v in pairs:
            s += v[field]
    return s


def _harness_ns(get: Callable[[Any], Any], keys: list[Any]) -> float:
    """ns per call of get(keys[i & mask]) in a loop -- the harness of
    ``shmmap bench``'s get scenario."""
    mask = len(keys) - 1
    t = time.perf_counter_ns()
    for i in range(CROSS_GETS):
        get(keys[i & mask])
    return (time.perf_counter_ns() - t) / CROSS_GETS


def _cross_reader(name: str, kind: str, ask: Any, answer: Any) -> None:
    """In a process of its own: times iterating (or getting from) map name
    and a dict of the same content, alternately, one round per request."""
    n = CROSS_KEYS
    with connect(name) as m:
        field = "id" if kind == "str->dict" else None
        local = m.snapshot()            # also loads the cache
        answer.put("ready")
        while True:
            what = ask.get()
            if what == "stop":
                answer.put(m.stats()["cache"])
                return
            if what == "get":
                rng = random.Random(1)
                keys = [rng.randrange(n) for _ in range(1 << 16)]
                answer.put((min(_harness_ns(m.get, keys) for _ in range(3)),
                            min(_harness_ns(local.get, keys) for _ in range(3))))
                continue
            times = {}
            # Alternately first: neither side gets the warmer caches.
            for side in (("shm", "dict") if what == "iterate" else ("dict", "shm")):
                pairs = m.items() if side == "shm" else local.items()
                t = time.perf_counter()
                _sum_values(pairs, field)
                times[side] = time.perf_counter() - t
            answer.put((times["shm"], times["dict"]))


def _load_5050(name: str, stop: Any, ready: Any) -> None:
    """The 50/50 load of ``shmmap bench``: random keys, half of them set to
    1, half read, until stop is set."""
    rng = random.Random(2)
    with connect(name) as m:
        ready.put("ready")
        while not stop.is_set():
            for _ in range(64):
                k = rng.randrange(CROSS_KEYS)
                if rng.random() < 0.5:
                    m[k] = 1
                else:
                    m.get(k)


def _rounds(ask: Any, answer: Any, between: Callable[[], None] = lambda: None
            ) -> tuple[float, float]:
    shm, local = [], []
    for i in range(CROSS_ROUNDS):
        between()
        ask.put("iterate" if i % 2 else "iterate, dict first")
        a, b = answer.get(timeout=120)
        shm.append(a)
        local.append(b)
    return statistics.median(shm) * 1000, statistics.median(local) * 1000


def bench_other_process(progress: Callable[[str], None]) -> list[dict[str, Any]]:
    """The cache's goals: a reader process other than the writer's, against
    a dict in that process, idle and under a 50/50 load process."""
    from ..launcher import Daemon
    n, rows = CROSS_KEYS, []

    def row(what: str, shm: float, local: float, unit: str) -> None:
        rows.append({"keys": n, "dataset": "other process", "what": what,
                     "shmmap": round(shm, 3), "dict": round(local, 3), "unit": unit,
                     "ratio": round(shm / local, 2)})

    with Daemon(f"corebench-cross-{os.getpid()}") as d, d.connect() as m:
        m.update({k: 1 for k in range(n)})
        ask, answer = _SPAWN.Queue(), _SPAWN.Queue()
        reader = _SPAWN.Process(target=_cross_reader, args=(d.name, "int->int", ask, answer))
        reader.start()
        try:
            answer.get(timeout=120)
            progress("other process: iterate idle")
            row("iterate int->int, idle", *_rounds(ask, answer), "ms")
            progress("other process: gets")
            ask.put("get")
            shm_ns, dict_ns = answer.get(timeout=120)
            row("get through a harness, idle", shm_ns, dict_ns, "ns")
            progress("other process: iterate under a 50/50 load")
            stop, ready = _SPAWN.Event(), _SPAWN.Queue()
            load = _SPAWN.Process(target=_load_5050, args=(d.name, stop, ready))
            load.start()
            try:
                ready.get(timeout=120)
                row("iterate int->int, 50/50 load", *_rounds(ask, answer), "ms")
            finally:
                stop.set()
                load.join(60)
            ask.put("stop")
            stats = answer.get(timeout=120)
            progress(f"other process: cache {stats}")
        finally:
            reader.join(60)

    with Daemon(f"corebench-cross-str-{os.getpid()}") as d, d.connect() as m:
        keys = [f"user:{i}" for i in range(n)]
        m.update({k: {"id": 1, "name": k, "score": 0.5} for k in keys})
        ask, answer = _SPAWN.Queue(), _SPAWN.Queue()
        reader = _SPAWN.Process(target=_cross_reader, args=(d.name, "str->dict", ask, answer))
        reader.start()
        rng = random.Random(3)

        def change_a_few() -> None:
            m.update({rng.choice(keys): {"id": 1, "name": "changed", "score": 1.5}
                      for _ in range(CHANGED_PER_ROUND)})
        try:
            answer.get(timeout=120)
            progress("other process: iterate str->dict, a few keys changed")
            row("iterate str->dict, 100 keys changed", *_rounds(ask, answer, change_a_few), "ms")
            ask.put("stop")
            answer.get(timeout=120)
        finally:
            reader.join(60)
    return rows


def _dict_copy_ms(d: dict[Any, Any]) -> float:
    t = time.perf_counter()
    dict(d)
    return (time.perf_counter() - t) * 1000


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """A PASS or MISS line for each row that has a target in TARGETS."""
    out = []
    for r in rows:
        target = TARGETS.get((r["dataset"], r["what"]))
        if target is None:
            continue
        limit, how = target
        if how == "rate":
            ok, shown = r["shmmap"] >= limit, f"{r['shmmap']:,.0f}/s (target >= {limit:,.0f}/s)"
        elif how == "ratio":
            if r["keys"] != 100_000 or r["ratio"] is None:
                continue
            ok, shown = r["ratio"] <= limit, f"{r['ratio']}x (target <= {limit}x)"
        else:
            if r["keys"] != 1_000_000:
                continue
            ok, shown = r["shmmap"] <= limit, f"{r['shmmap']} ms (target <= {limit} ms)"
        out.append(f"{'PASS' if ok else 'MISS'}  {r['dataset']} {r['keys']:,} {r['what']}: {shown}")
    return out


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as an aligned text table."""
    lines = [f"{'keys':>9}  {'dataset':<13}  {'measure':<40} {'shmmap':>10} {'dict':>10}  "
             f"{'ratio':>6}  unit"]
    for r in rows:
        digits = 2 if r["unit"] == "ms" else 1
        local = "-" if r["dict"] is None else f"{r['dict']:.{digits}f}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(f"{r['keys']:>9,}  {r['dataset']:<13}  {r['what']:<40} "
                     f"{r['shmmap']:>10.{digits}f} {local:>10}  {ratio:>6}  {r['unit']}"
                     f"{'/op' if r['unit'] == 'ns' else ''}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m shmmap.bench.corebench``: prints the table and verdicts."""
    p = argparse.ArgumentParser(prog="python -m shmmap.bench.corebench", description=__doc__.split("\n\n")[0])
    p.add_argument("--keys", default="100000,1000000",
                   help="comma-separated map sizes (default 100000,1000000)")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    p.add_argument("--sections", default="core,client,other-process",
                   help="comma-separated parts to run: core (no daemon), client (one "
                        "process with a daemon), other-process (the cache's goals); "
                        "default all")
    args = p.parse_args(argv)
    sections = set(args.sections.split(","))
    unknown = sections - {"core", "client", "other-process"}
    if unknown:
        p.error(f"unknown sections: {', '.join(sorted(unknown))}")

    rows = []
    shown = Progress(tty_every=0, plain_every=0)      # each step: a few seconds
    if "core" in sections:
        for n in (int(x) for x in args.keys.split(",")):
            for label, (keys, value) in _datasets(n).items():
                rows += bench_dataset(n, label, keys, value, shown.update)
    if "client" in sections:
        rows += bench_client(shown.update)
    if "other-process" in sections:
        rows += bench_other_process(shown.update)
    shown.close(keep=False)
    print(format_table(rows))
    print()
    print("\n".join(verdicts(rows)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "verdicts": verdicts(rows)}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
