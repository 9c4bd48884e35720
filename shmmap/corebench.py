"""The core's benchmark: lookups, export, decode and promotion of a map in
shared memory, each beside a local dict doing the same work in the same
run -- first without a daemon (one process writes and reads the map), then
through a real daemon and client (get, iteration, synchronous and batched
stores).

    python -m shmmap.corebench [--keys 100000,1000000] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable, Iterable

import msgpack

from ._core import ffi, lib
from .codec import encode_key, encode_value
from .generation import EXPORT_BATCH
from .progress import Progress
from .reader import MapReader
from .protocol import batch_blob
from .writer import MapWriter

REPEATS = 5
LOAD_CHUNK = 50_000
CLIENT_KEYS = 100_000
SYNC_WRITES = 20_000
TARGETS = {   # (dataset, row): (limit, how) -- from the issues
    ("int->int", "get from Python"): (10.0, "ratio"),
    ("int->int", "iterate: export + decode + loop"): (2.5, "ratio"),
    ("int->int", "promotion"): (500.0, "ms@1M"),
    ("client", "get"): (10.0, "ratio"),
    ("client", "for k, v in m.items()"): (2.5, "ratio"),
    ("client", "synchronous store"): (40_000.0, "rate"),
    ("client", "batched store (update)"): (500_000.0, "rate"),
}


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
        msgpack.unpackb(k, use_list=False)
        msgpack.unpackb(v, strict_map_key=False)


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
    from .service import Daemon
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
            if r["keys"] != 100_000:
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
    lines = [f"{'keys':>9}  {'dataset':<9}  {'measure':<40} {'shmmap':>10} {'dict':>10}  "
             f"{'ratio':>6}  unit"]
    for r in rows:
        local = "-" if r["dict"] is None else f"{r['dict']:.1f}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(f"{r['keys']:>9,}  {r['dataset']:<9}  {r['what']:<40} "
                     f"{r['shmmap']:>10.1f} {local:>10}  {ratio:>6}  {r['unit']}"
                     f"{'/op' if r['unit'] == 'ns' else ''}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m shmmap.corebench``: prints the table and verdicts."""
    p = argparse.ArgumentParser(prog="python -m shmmap.corebench", description=__doc__.split("\n\n")[0])
    p.add_argument("--keys", default="100000,1000000",
                   help="comma-separated map sizes (default 100000,1000000)")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = p.parse_args(argv)

    rows = []
    shown = Progress(tty_every=0, plain_every=0)      # each step: a few seconds
    for n in (int(x) for x in args.keys.split(",")):
        for label, (keys, value) in _datasets(n).items():
            rows += bench_dataset(n, label, keys, value, shown.update)
    rows += bench_client(shown.update)
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
