"""The ``shmmap`` command line: run a map's daemon, read and write it,
inspect and clean up maps, and run the demo, the soak and the benchmark."""
from __future__ import annotations

import argparse
import contextlib
import grp
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .. import __version__
from .._core import ffi, lib
from ..client.map import connect
from ..client.reader import MapReader
from ..launcher import cleanup
from ..shared import segments
from ..shared.codec import encode_key, encode_value
from ..shared.config import Limits
from ..shared.errors import (AccessDeniedError, CorruptSegmentError, DaemonRunningError,
                             MapNotFoundError, ShmmapError)
from ..shared.maplock import is_served
from . import jsontags, legacy, options
from .format import human_bytes

EPILOG = """\
commands:
  serve     run the daemon of a map: its one writer (Ctrl-C or SIGTERM stops it)
  get       print one value as JSON
  set       store one value given as JSON
  del       delete one key
  dump      print a snapshot of the whole map as JSON lines
  load      store the keys of a dump (a file or stdin): dump | load copies a map
  stats     the daemon's counters: misses, promotions, bytes copied, ...
  promote   make the daemon promote now
  ls        the maps on this host and whether their daemons live
  cleanup   remove the segments and socket a dead daemon left
  top       a live view of a running map: rates, promotions, latency
  trace     record what the daemon does into a trace Perfetto opens
  doctor    find what is wrong with a map and say what to do
  demo      a live demo: 100,000 keys, readers iterating under a 50/50 load
  soak      readers and writers for a long time, every iteration checked
  bench     shmmap against the alternatives, with a table, JSON and a plot

Run 'shmmap COMMAND --help' for a command's options.

keys and values:
  A key is a string unless given with --int-key (or -k int: decimal, 0x..,
  0o..) or --json-key (-k json: a JSON string, integer, {"$bytes": ...} or
  array; an array is a tuple key). VALUE is JSON. What JSON cannot say is
  written as a one-member object, on output (get, dump) and input (set,
  load, --json-key) alike:
    {"$bytes": "<base64>"}          bytes
    {"$float": "nan"}               NaN, "inf" or "-inf"
    {"$map": [[key, value], ...]}   a dict whose keys are not all strings (or
                                    whose one key is one of these tags)
    {"$ext": [code, "<base64>"]}    a msgpack extension type
  In a key every array is a tuple; in a value every array is a list. So
  what get and dump print reads back as the same Python keys and values
  (a msgpack float32 comes back as the same number in a float64).

output:
  Results go to stdout; stats, ls, promote, cleanup and load take --json,
  demo and soak --json FILE. Progress and errors go to stderr; progress is
  redrawn in place only on a terminal (elsewhere, plain lines now and then).

exit status:
  0 success, also when the reader of stdout stops early (`| head`); 1 an
  error (no such map or key, no daemon, bad JSON, a key of the wrong type),
  with "shmmap: <message>" on stderr; 2 a usage error; 130 interrupted
  (Ctrl-C: what the command started is stopped; demo and soak remove their
  map).

examples:
  shmmap serve orders &
  shmmap set orders user:1 '{"name": "Ada", "score": 3}'
  shmmap get orders user:1
  shmmap set orders --json-key '["eu", 7]' 42
  shmmap dump orders | head
  shmmap dump orders > orders.jsonl; shmmap load orders-copy orders.jsonl
  shmmap stats orders
  shmmap ls
"""


# -- keys and values on the command line ------------------------------------

KEY_TYPES = ("str", "int", "json")


def _add_key(p: argparse.ArgumentParser) -> None:
    p.add_argument("key", metavar="KEY",
                   help="the key (a string unless --int-key or --json-key; after '--' "
                   "if it starts with '-')")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--int-key", dest="key_type", action="store_const", const="int",
                      help="the key is an integer (decimal, 0x.., 0o.., 0b..)")
    kind.add_argument("--json-key", dest="key_type", action="store_const", const="json",
                      help='the key is JSON: a string, integer, {"$bytes": "<base64>"} or '
                      "array (a tuple key)")
    kind.add_argument("-k", "--key-type", choices=KEY_TYPES,
                      help="the key's type: str (the default), int or json")
    p.set_defaults(key_type="str")


def _key(args: argparse.Namespace) -> Any:
    if args.key_type == "int":
        try:
            return int(args.key, 0)
        except ValueError:
            raise ShmmapError(f"--int-key: {args.key!r} is not an integer") from None
    if args.key_type == "json":
        return _loads(args.key, "the key", key=True)
    return args.key


def _loads(text: str, what: str, key: bool = False) -> Any:
    try:
        return jsontags.loads(text, what, key)
    except jsontags.JSONFormError as exc:
        raise ShmmapError(str(exc)) from None


def _print_json(x: Any, **kw: Any) -> None:
    print(jsontags.dumps(x, **kw))


# -- commands -----------------------------------------------------------------

def _run_serve(args: argparse.Namespace) -> int:
    # The daemon's modules load here: no other command imports them.
    from ..server import logs
    from ..server.server import DaemonConfig, serve
    logs.configure(args.verbose, args.log_format)
    group = None
    if args.group is not None:
        try:
            group = int(args.group) if args.group.isdigit() else grp.getgrnam(args.group).gr_gid
        except KeyError:
            raise ShmmapError(f"--group: no group named {args.group!r}") from None
    upstream = None
    if args.upstream is not None:
        if not args.prefix:
            raise ShmmapError("--upstream needs at least one --prefix: the keys the map holds")
        from ..server.upstream.nearcache import UpstreamConfig
        upstream = UpstreamConfig(args.upstream, tuple(args.prefix), args.decode)
    elif args.prefix or args.decode:
        raise ShmmapError("--prefix and --decode go with --upstream")
    return serve(DaemonConfig(
        name=args.name, socket_path=args.socket, mode=args.mode, group=group,
        limits=Limits(max_key=args.max_key, max_value=args.max_value,
                      max_live_bytes=args.max_live_bytes),
        max_connections=args.max_connections, allow_uids=frozenset(args.allow_uid),
        fresh=args.fresh, ready_fd=args.ready_fd, metrics=args.metrics, upstream=upstream))


def _run_get(args: argparse.Namespace) -> int:
    reader = MapReader(args.name)       # a read needs no daemon
    try:
        missing = object()
        key = _key(args)
        value = reader.lookup(key, missing)
    finally:
        reader.close()
    if value is missing:
        print(f"shmmap: no key {key!r} in map {args.name!r}", file=sys.stderr)
        return 1
    _print_json(value)
    return 0


def _run_set(args: argparse.Namespace) -> int:
    key = _key(args)          # bad arguments are reported before connecting
    value = _loads(args.value, "the value")
    with connect(args.name) as m:
        m.store(key, value)
    return 0


def _run_del(args: argparse.Namespace) -> int:
    key = _key(args)
    with connect(args.name) as m:
        _, existed = m.load_and_delete(key)
    if not existed:
        print(f"shmmap: no key {key!r} in map {args.name!r}", file=sys.stderr)
        return 1
    return 0


DUMP_CHUNK = 1 << 16      # bytes of whole lines written at once
# JSON leaves these unescaped, but tools that split lines on Unicode line
# breaks (str.splitlines) would cut a record in two.
_LINE_BREAKS = {0x2028: "\\u2028", 0x2029: "\\u2029", 0x85: "\\u0085"}


def _run_dump(args: argparse.Namespace) -> int:
    """Writes whole lines only: each write to stdout ends with a newline, so
    a reader that stops early (`| head`) never gets half a line, and
    neither does one reading a dump cut short by an error."""
    reader = MapReader(args.name)
    out = sys.stdout.buffer
    chunk: list[bytes] = []
    size = 0
    try:
        for key, value in reader.items():
            line = (jsontags.dumps_pair(key, value).translate(_LINE_BREAKS)
                    + "\n").encode()
            chunk.append(line)
            size += len(line)
            if size >= DUMP_CHUNK:
                out.write(b"".join(chunk))
                out.flush()
                chunk, size = [], 0
        out.write(b"".join(chunk))
        out.flush()
    finally:
        reader.close()
    return 0


def read_dump(lines: Any) -> list[tuple[Any, Any]]:
    """The (key, value) pairs of a dump's lines, each checked (JSON, types,
    that msgpack can encode them); ShmmapError naming the first bad line."""
    pairs = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            pair = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ShmmapError(f"{where} is not valid JSON: {exc}") from None
        if not isinstance(pair, dict) or set(pair) != {"key", "value"}:
            raise ShmmapError(f'{where}: not a {{"key": ..., "value": ...}} object')
        try:
            key = jsontags.from_json(pair["key"], key=True)
            value = jsontags.from_json(pair["value"])
            encode_key(key)
            encode_value(value)
        except (jsontags.JSONFormError, TypeError) as exc:
            raise ShmmapError(f"{where}: {exc}") from None
        pairs.append((key, value))
    return pairs


def _run_load(args: argparse.Namespace) -> int:
    try:
        if args.file == "-":
            pairs = read_dump(sys.stdin.buffer.read().decode().split("\n"))
        else:
            with open(args.file, encoding="utf-8", newline="\n") as f:
                pairs = read_dump(f)
    except UnicodeDecodeError as exc:
        raise ShmmapError(f"{args.file}: not UTF-8 text: {exc}") from None
    except OSError as exc:
        raise ShmmapError(f"{args.file}: {exc.strerror}") from None
    with connect(args.name) as m:
        if args.clear:
            m.clear()
        m.update(pairs)
        keys = len(m)
    if args.json:
        _print_json({"stored": len(pairs), "keys": keys}, indent=2)
    else:
        print(f"stored {len(pairs):,} keys; map {args.name!r} has {keys:,} keys")
    return 0


def _run_stats(args: argparse.Namespace) -> int:
    with connect(args.name) as m:
        st = m.stats()
    if args.json:
        _print_json(st, indent=2)
    else:
        print(stats_table(st))
    return 0


_IDENTIFIERS = frozenset({"pid", "generation", "committed_seq"})   # no 1,000 separators


def _stat_rows(st: dict[str, Any], indent: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for key, value in st.items():
        if isinstance(value, dict):
            rows.append((indent + key, "-" if not value else ""))
            rows += _stat_rows(value, indent + "  ")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            rows.append((indent + key, str(value)))
        elif isinstance(value, float):
            rows.append((indent + key, f"{value:,.3f}".rstrip("0").rstrip(".")))
        elif key in _IDENTIFIERS:
            rows.append((indent + key, str(value)))
        else:
            text = f"{value:,}"
            if ("bytes" in key or key.startswith("arena")) and abs(value) >= 1024:
                text += f" ({human_bytes(value)})"
            rows.append((indent + key, text))
    return rows


def stats_table(st: dict[str, Any]) -> str:
    """The daemon's statistics as an aligned two-column table; numbers are
    right-aligned on their last digit, nested counters indented."""
    rows = _stat_rows(st)
    kw = max(len(k) for k, _ in rows)
    numeric = [v.split(" (")[0] for _, v in rows if v[:1].isdigit() or v[:1] == "-"]
    nw = max((len(v) for v in numeric), default=0)
    lines = []
    for key, value in rows:
        if value[:1].isdigit() or value[:1] == "-":
            num, _, rest = value.partition(" (")
            value = f"{num:>{nw}}" + (f" ({rest}" if rest else "")
        lines.append(f"{key:<{kw}}  {value}".rstrip())
    return "\n".join(lines)


def _run_promote(args: argparse.Namespace) -> int:
    with connect(args.name) as m:
        gen = m.promote()
    if args.json:
        _print_json({"generation": gen})
    else:
        print(f"generation {gen}")
    return 0


def map_status(name: str) -> dict[str, Any]:
    """What `shmmap ls` says of one map: its daemon (pid, alive or not),
    generation, live keys and socket. state is "live" (the daemon runs),
    "stale" (it died: the map is readable, writes wait for a new daemon),
    "denied" (this user may not read the map) or "broken"."""
    row: dict[str, Any] = {"name": name, "state": "stale", "daemon_pid": 0,
                           "daemon_alive": False}
    try:
        reader = MapReader(name)
    except (MapNotFoundError, CorruptSegmentError) as exc:
        row.update(state="broken", error=str(exc))
        return row
    except AccessDeniedError:
        row.update(state="denied", daemon_alive=None,
                   error="not readable by this user (see serve --mode, --group)")
        return row
    try:
        h = reader.header
        pid = int(lib.shm_map_daemon_pid(h))
        alive = is_served(name)
        row.update(state="live" if alive else "stale", daemon_pid=pid, daemon_alive=alive,
                   generation=reader.refresh().gen, live_keys=len(reader),
                   socket=ffi.string(h.socket_path).decode())
    finally:
        reader.close()
    return row


def _exists(name: str) -> bool:
    return (segments.SHM_DIR / segments.header_name(name)[1:]).exists()


def _table(header: Sequence[str], rows: list[list[Any]], right: Sequence[bool]) -> str:
    cells = [list(header)] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.rjust(w) if rj else c.ljust(w) for c, w, rj in zip(r, widths, right)).rstrip()
        for r in cells)


def _legacy_note() -> str:
    """How many layout-2 segments (an older shmmap's maps, which this one
    does not list) /dev/shm holds, and what removes them; "" if none."""
    found = legacy.find()
    if not found:
        return ""
    served = sum(s.served for s in found)
    return (f"\n{len(found)} segments of an older shmmap (layout {lib.SHM_LAYOUT_VERSION - 1}, "
            f"{legacy.PREFIX}*) are not listed, {served} of them served by its daemons: "
            "`shmmap cleanup --legacy` removes those not served")


def _run_ls(args: argparse.Namespace) -> int:
    rows = [map_status(n) for n in segments.map_names()]
    # A map removed since it was listed is not shown as broken.
    rows = [r for r in rows if r["state"] != "broken" or _exists(r["name"])]
    if args.json:
        _print_json(rows, indent=2)
        return 0
    alive = {True: "yes", False: "no", None: "?"}
    print((_table(
        ["NAME", "STATE", "PID", "ALIVE", "GEN", "KEYS", "SOCKET"],
        [[r["name"], r["state"], r["daemon_pid"] or None, alive[r["daemon_alive"]],
          r.get("generation"), f"{r['live_keys']:,}" if "live_keys" in r else None,
          r.get("socket", r.get("error", ""))] for r in rows],
        [False, False, True, False, True, True, False]) if rows else "no maps on this host")
          + _legacy_note())
    return 0


def _run_legacy_cleanup(args: argparse.Namespace) -> int:
    """Removes (or with --dry-run lists) the layout-2 segments no daemon
    serves, of the named maps or of all; those served are reported and
    left alone."""
    found, removed = legacy.remove(args.names, dry_run=args.dry_run)
    if args.json:
        _print_json({"segments": [{"segment": s.segment, "served": s.served} for s in found],
                     "removed": removed, "dry_run": args.dry_run}, indent=2)
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for seg in found:
        if seg.served:
            print(f"left {seg.segment}: served by an older shmmap's daemon (stop it first)")
    for path in removed:
        print(f"{verb} {path}")
    if not found:
        print(f"no segments of an older shmmap ({legacy.PREFIX}*) on this host")
    return 0


def _run_cleanup(args: argparse.Namespace) -> int:
    """Removes the named maps, or every stale or broken one. A map whose
    daemon lives, or that this user may not read, is left alone: named, it
    is an error; found by looking, it is only reported."""
    if args.legacy:
        return _run_legacy_cleanup(args)
    if args.dry_run:
        print("shmmap: --dry-run goes with --legacy", file=sys.stderr)
        return 2
    rows = [map_status(n) for n in (args.names or segments.map_names())]
    status = 0
    report = []
    for row in rows:
        name, state = row["name"], row["state"]
        if state == "broken" and not _exists(name) and not args.names:
            continue                                    # removed since it was listed
        if state in ("live", "denied"):
            why = ("has a live daemon; stop it first" if state == "live"
                   else "is not readable by this user: left alone")
            if args.names:
                print(f"shmmap: map {name!r} {why}", file=sys.stderr)
                status = 1
            elif state == "denied":
                print(f"shmmap: skipped map {name!r}: it {why}", file=sys.stderr)
            report.append({"name": name, "state": state, "removed": []})
            continue
        try:
            removed = cleanup(name, Path(row["socket"]) if row.get("socket") else None)
        except DaemonRunningError as exc:               # one started since we looked
            print(f"shmmap: {exc}; left alone", file=sys.stderr)
            status = 1
            report.append({"name": name, "state": "live", "removed": []})
            continue
        report.append({"name": name, "state": state, "removed": removed})
        if not args.json:
            for path in removed:
                print(f"removed {path}")
    if args.json:
        _print_json(report, indent=2)
    return status


def _run_top(args: argparse.Namespace) -> int:
    from .top import run
    return run(args.name, interval=args.interval, once=args.once, as_json=args.json,
               count=args.count)


def _run_trace(args: argparse.Namespace) -> int:
    from ..shared.tracing import MAX_EVENTS
    from . import trace
    from .progress import Progress
    out = Path(args.output)
    if not out.parent.is_dir():             # fails before recording, not after
        raise ShmmapError(f"--output {args.output}: no directory {str(out.parent)!r}")
    with Progress(plain_every=None) as progress:
        summary = trace.record(
            args.name, args.duration, out, slow_ms=args.slow_ms,
            client_files=trace.trace_files(args.client_events),
            progress=lambda left: progress.update(f"recording map {args.name!r}: "
                                                  f"{left:.0f} s left"))
    if args.json:
        _print_json(summary, indent=2)
    else:
        print(f"wrote {summary['output']}: {summary['daemon_events']:,} daemon events, "
              f"{summary['client_events']:,} client events"
              + (f", {summary['dropped']:,} dropped (the daemon keeps "
                 f"{MAX_EVENTS:,})" if summary["dropped"] else "")
              + "; open it in ui.perfetto.dev or chrome://tracing")
    return 0


def _run_doctor(args: argparse.Namespace) -> int:
    from .doctor import diagnose, render
    report = diagnose(args.name, args.interval)
    if args.json:
        _print_json(report.as_json(), indent=2)
    else:
        print(render(report))
    return 0 if report.healthy else 1


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import format_summary, run_demo
    # Opened first, so that a bad path fails before the run.
    with open(args.json, "w") if args.json else contextlib.nullcontext() as out:
        summary = run_demo(keys=args.keys, readers=args.readers, writers=args.writers,
                           duration=args.duration, write_ratio=args.write_ratio,
                           progress=not args.quiet)
        print(format_summary(summary))
        if out:
            json.dump(summary, out, indent=2)
    return 0 if _passed(summary) else 1


def _run_bench(args: argparse.Namespace) -> int:
    from .. import bench
    return bench.run(args)


def _passed(summary: dict[str, Any]) -> bool:
    return (not summary["errors"] and summary["consistency_checks_failed"] == 0
            and summary["final_sum_ok"])


# -- the parser ---------------------------------------------------------------

def _sub(sub: Any, name: str, run: Callable[[argparse.Namespace], int], help: str,
         description: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=description)
    p.set_defaults(run=run)
    return p


def _add_serve(sub: Any) -> None:
    p = _sub(sub, "serve", _run_serve, "run the daemon of a map (its one writer)",
             "Create map NAME in shared memory, or adopt the one a dead daemon left, and "
             "serve writes to it. SIGTERM or SIGINT stops it cleanly: it answers what it has "
             "read, removes the map's segments and socket, and exits 0. Any other end (a "
             "crash, kill -9, an error) leaves the map, with every acknowledged write, for "
             "the next 'shmmap serve NAME' to adopt. If a daemon already serves NAME, it "
             "refuses (exit 1) and touches nothing.")
    options.add_serve_arguments(p)


def _add_data_commands(sub: Any) -> None:
    p = _sub(sub, "get", _run_get, "print one value as JSON",
             "Print the value of KEY in map NAME as JSON (read from shared memory: no "
             "daemon needed). Exit 1 if the key is absent.")
    options.add_name(p)
    _add_key(p)
    p = _sub(sub, "set", _run_set, "store one value given as JSON",
             "Store VALUE (JSON) under KEY in map NAME.")
    options.add_name(p)
    _add_key(p)
    p.add_argument("value", metavar="VALUE", help='the value as JSON, e.g. 42, "text", [1, 2], {"a": 1}')
    p = _sub(sub, "del", _run_del, "delete one key",
             "Delete KEY from map NAME. Exit 1 if it was absent.")
    options.add_name(p)
    _add_key(p)
    p = _sub(sub, "dump", _run_dump, "print the map as JSON lines",
             'Print one consistent snapshot of map NAME, one {"key": ..., "value": ...} '
             "per line, in the tagged JSON of 'shmmap --help' ('keys and values'): "
             "'shmmap load' reads it back as the same keys and values. Reads shared "
             "memory: no daemon needed.")
    options.add_name(p)
    p = _sub(sub, "load", _run_load, "store the keys of a dump",
             "Store every key and value of FILE (what 'shmmap dump' prints: one "
             '{"key": ..., "value": ...} per line) in map NAME; other keys stay unless '
             "--clear. Every line is checked first: a bad line stores nothing. The keys "
             "are sent pipelined, not as one atomic batch.")
    options.add_name(p)
    p.add_argument("file", metavar="FILE", nargs="?", default="-",
                   help="the dump to read (default '-': stdin)")
    p.add_argument("--clear", action="store_true",
                   help="delete every key of the map first (so it becomes the dump's copy)")
    p.add_argument("--json", action="store_true", help="print the counts as JSON")


def _add_admin_commands(sub: Any) -> None:
    p = _sub(sub, "stats", _run_stats, "the daemon's counters",
             "Print map NAME's statistics: lookups and misses of all clients, promotions "
             "and why, compactions, bytes copied, the current generation's fill, older "
             "generations clients still map, connected clients.")
    options.add_name(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p = _sub(sub, "promote", _run_promote, "make the daemon promote now",
             "Ask map NAME's daemon to build the next generation now; print its number.")
    options.add_name(p)
    p.add_argument("--json", action="store_true", help='print {"generation": N}')
    p = _sub(sub, "ls", _run_ls, "the maps on this host",
             "List the maps in /dev/shm: whether their daemon lives (live; stale: it "
             "died), their generation, keys and socket. Maps of other users that this "
             "one may not read are listed as denied.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p = _sub(sub, "cleanup", _run_cleanup, "remove a dead daemon's segments",
             "Remove the segments and socket of the named maps, or of every stale or "
             "broken map. A map whose daemon lives, or that this user may not read, is "
             "left alone (an error if named).")
    p.add_argument("names", nargs="*", metavar="NAME", type=options.map_name,
                   help="maps to clean up (default: every map whose daemon is dead)")
    p.add_argument("--json", action="store_true",
                   help="print each map's state and what was removed as JSON")
    p.add_argument("--legacy", action="store_true",
                   help="instead, remove the segments an older shmmap (layout "
                        f"{lib.SHM_LAYOUT_VERSION - 1}, named {legacy.PREFIX}NAME...) left, and "
                        "their sockets (of the named maps, or all): all but those a live "
                        "daemon of it serves")
    p.add_argument("--dry-run", action="store_true",
                   help="with --legacy: list what would be removed, remove nothing")


def _seconds(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < x <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r}: seconds are more than 0, at most 3600")
    return x


def _add_watch_commands(sub: Any) -> None:
    p = _sub(sub, "top", _run_top, "a live view of a running map",
             "Show map NAME's daemon live, like top: writes, lookups and misses per second, "
             "promotions and how long the last took, live keys and bytes, clients, older "
             "generations clients still map, and the daemon's request latency (p50, p99, by "
             "operation) over each interval. Ctrl-C leaves it.")
    options.add_name(p)
    p.add_argument("--interval", type=_seconds, default=1.0,
                   help="seconds between frames (default 1)")
    p.add_argument("--once", action="store_true",
                   help="print one frame (after one interval) and exit")
    p.add_argument("--count", type=options.natural, default=0,
                   help="exit after this many frames (default 0: until Ctrl-C)")
    p.add_argument("--json", action="store_true", help="print each frame as one JSON object "
                   "per line")
    _add_trace(sub)
    p = _sub(sub, "doctor", _run_doctor, "find what is wrong with a map",
             "Look at map NAME and its daemon for --interval seconds and say, with the "
             "numbers, what is wrong and what to do: a daemon not running or not answering; "
             "superseded generations pinned by an iteration (which pid, how many bytes); a "
             "high miss rate and the promotion it will cause; promotions too frequent for "
             "the writes; /dev/shm too small for the next generation; logind's RemoveIPC=yes "
             "for the map's owner; a busy daemon waiting for a CPU more than it runs. Exit "
             "0 when it finds no problem (notes allowed), 1 when it does.")
    options.add_name(p)
    p.add_argument("--interval", type=_seconds, default=1.0,
                   help="seconds to watch the daemon's counters (default 1)")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")


def _add_trace(sub: Any) -> None:
    from ..shared.tracing import ENV
    from .trace import DEFAULT_SLOW_MS
    p = _sub(sub, "trace", _run_trace, "record what the daemon does, for Perfetto",
             "Record what map NAME's daemon does for --duration seconds into FILE, in Chrome's "
             "trace-event JSON that ui.perfetto.dev and chrome://tracing open: each round of "
             "the loop (a group commit) with its request count, each promotion with its "
             "reason, entries and bytes, client connects and disconnects, requests slower "
             f"than --slow-ms, and the map's key and client counts. Clients that set {ENV}="
             "EVENTS (or connect(name, trace=EVENTS)) append their iterations and waits for "
             "the daemon to EVENTS; those of the recording's time span are merged in, each "
             "process in its own lane.")
    options.add_name(p)
    p.add_argument("--duration", type=_seconds, default=5.0,
                   help="seconds to record (default 5)")
    p.add_argument("--output", "-o", metavar="FILE", required=True,
                   help="the trace file to write (JSON)")
    p.add_argument("--slow-ms", type=float, default=DEFAULT_SLOW_MS,
                   help=f"record requests that take longer (default {DEFAULT_SLOW_MS:g} ms)")
    p.add_argument("--client-events", metavar="EVENTS", action="append", default=[],
                   help=f"a file clients append events to (repeatable; default: ${ENV} "
                   "if set)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def _add_workload_commands(sub: Any) -> None:
    for name, run, help, desc, defaults in (
        ("demo", _run_demo, "a live demo of shmmap under load",
         "Start a daemon on a fresh map of --keys keys; writer processes run a mixed load "
         "(--write-ratio writes, the rest gets) while reader processes iterate the whole "
         "map continuously and check each iteration; print progress, then a summary; "
         "remove everything.", (100_000, 2, 2, 20.0)),
        ("soak", _run_demo, "run readers and writers for long, checking every iteration",
         "The demo's workload with 8 readers and 2 writers by default, for --duration "
         "seconds. Exit 1 if any check failed.", (100_000, 8, 2, 600.0)),
    ):
        p = _sub(sub, name, run, help, desc)
        keys, readers, writers, duration = defaults
        p.add_argument("--keys", type=int, default=keys, help=f"keys (default {keys:,})")
        p.add_argument("--readers", type=int, default=readers,
                       help=f"iterating reader processes (default {readers})")
        p.add_argument("--writers", type=int, default=writers,
                       help=f"writer processes (default {writers})")
        p.add_argument("--write-ratio", type=float, default=0.5,
                       help="share of the writers' operations that write (default 0.5)")
        p.add_argument("--duration", type=float, default=duration,
                       help=f"seconds (default {duration:g})")
        p.add_argument("--json", metavar="FILE", help="also write the summary as JSON")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    from ..bench import add_arguments as add_bench_arguments
    p = _sub(sub, "bench", _run_bench, "shmmap against the alternatives",
             "Run the same workloads on shmmap and on what users pick instead: a local "
             "dict (the floor), a dict under a lock shared by threads, Manager().dict(), "
             "and, when installed (pip install 'shmmap[bench]'), UltraDict, "
             "shared-memory-dict, LMDB on /dev/shm and Redis (which needs a redis-server "
             "binary); and Go's sync.Map in a Go process when a Go toolchain is installed. "
             "Rates come with the CPU time per write. Prints a table and PASS/MISS lines "
             "for the targets.")
    add_bench_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    """The ``shmmap`` argument parser: one subcommand per command, each
    with its help; ``args.run(args)`` runs the chosen one."""
    parser = argparse.ArgumentParser(
        prog="shmmap", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A key-value map shared by processes through POSIX shared memory: "
        "lock-free reads, snapshot iteration, writes through one daemon.")
    parser.add_argument("--version", action="version", version=f"shmmap {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_serve(sub)
    _add_data_commands(sub)
    _add_admin_commands(sub)
    _add_watch_commands(sub)
    _add_workload_commands(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs ``shmmap ARGV``; returns the exit status (see EPILOG): errors are
    one "shmmap: ..." line on stderr, never a traceback."""
    args = build_parser().parse_args(argv)
    try:
        status = int(args.run(args))
        sys.stdout.flush()              # a closed pipe is found here, not at exit
        return status
    except (ShmmapError, TypeError) as exc:
        print(f"shmmap: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:             # `shmmap dump m | head`: the reader has enough
        _discard_stdout()
        return 0
    except OSError as exc:              # a file named on the command line, say
        print(f"shmmap: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:           # what the command started is stopped by now
        print("shmmap: interrupted", file=sys.stderr)
        return 130


def _discard_stdout() -> None:
    """Points stdout at /dev/null, so that flushing what is still buffered
    at exit raises no second BrokenPipeError."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
