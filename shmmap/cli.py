"""The ``shmmap`` command line: run a map's daemon, read and write it,
inspect and clean up maps, and run the demo, the soak and the benchmark."""
from __future__ import annotations

import argparse
import base64
import grp
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import posix_ipc

from . import __version__, segments
from ._core import ffi, lib
from .client import connect
from .daemon import DaemonConfig, process_alive, serve
from .errors import CorruptSegmentError, MapNotFoundError, ShmmapError
from .reader import MapReader
from .service import cleanup
from .writer import Limits

EPILOG = """\
commands:
  serve     run the daemon of a map: its one writer (Ctrl-C or SIGTERM stops it)
  get       print one value as JSON
  set       store one value given as JSON
  del       delete one key
  dump      print a snapshot of the whole map as JSON lines
  stats     the daemon's counters: misses, promotions, bytes copied, ...
  promote   make the daemon promote now
  ls        the maps on this host and whether their daemons live
  cleanup   remove the segments and socket a dead daemon left
  demo      a live demo: 100,000 keys, readers iterating under a 50/50 load
  soak      readers and writers for a long time, every iteration checked
  bench     shmmap against the alternatives, with a table, JSON and a plot

Run 'shmmap COMMAND --help' for a command's options.

keys and values:
  A key is a string unless given with --int-key (or -k int: decimal, 0x..,
  0o..) or --json-key (-k json: a JSON string, integer, {"$bytes": ...} or
  array; an array is a tuple key). VALUE is JSON. On output (get, dump,
  stats --json, ls --json) tuples print as arrays and bytes as
  {"$bytes": "<base64>"}; the same object in a key or value given on the
  command line is bytes, so what dump prints can be set again.

exit status:
  0 success; 1 an error (no such map or key, no daemon, bad JSON, a key of
  the wrong type), with "shmmap: <message>" on stderr; 2 a usage error.

examples:
  shmmap serve orders &
  shmmap set orders user:1 '{"name": "Ada", "score": 3}'
  shmmap get orders user:1
  shmmap set orders --json-key '["eu", 7]' 42
  shmmap dump orders | head
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
        return _from_json(_json_arg(args.key, "key"), tuples=True)
    return args.key


def _from_json(x: Any, tuples: bool) -> Any:
    """A value decoded from JSON, with {"$bytes": "<base64>"} made bytes and,
    in a key (tuples=True), arrays made tuples."""
    if isinstance(x, list):
        items = [_from_json(i, tuples) for i in x]
        return tuple(items) if tuples else items
    if isinstance(x, dict):
        if len(x) == 1 and isinstance(x.get("$bytes"), str):
            try:
                return base64.b64decode(x["$bytes"], validate=True)
            except ValueError:
                raise ShmmapError(f"{x['$bytes']!r} is not valid base64") from None
        return {k: _from_json(v, tuples) for k, v in x.items()}
    return x


def _json_arg(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ShmmapError(f"the {what} is not valid JSON: {exc}") from None


def _jsonable(x: Any) -> Any:
    if isinstance(x, bytes):
        return {"$bytes": base64.b64encode(x).decode()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(i) for i in x]
    if isinstance(x, dict):
        return {str(k) if not isinstance(k, str) else k: _jsonable(v) for k, v in x.items()}
    return x


def _print_json(x: Any, **kw: Any) -> None:
    print(json.dumps(_jsonable(x), ensure_ascii=False, **kw))


# -- commands -----------------------------------------------------------------

def _run_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="shmmap %(levelname)s: %(message)s")
    group = None
    if args.group is not None:
        try:
            group = int(args.group) if args.group.isdigit() else grp.getgrnam(args.group).gr_gid
        except KeyError:
            raise ShmmapError(f"--group: no group named {args.group!r}") from None
    return serve(DaemonConfig(
        name=args.name, socket_path=args.socket, mode=args.mode, group=group,
        limits=Limits(max_key=args.max_key, max_value=args.max_value,
                      max_live_bytes=args.max_live_bytes),
        max_connections=args.max_connections, allow_uids=frozenset(args.allow_uid),
        fresh=args.fresh, ready_fd=args.ready_fd))


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
    value = _from_json(_json_arg(args.value, "value"), tuples=False)
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


def _run_dump(args: argparse.Namespace) -> int:
    reader = MapReader(args.name)
    try:
        for key, value in reader.items():
            _print_json({"key": key, "value": value})
    finally:
        reader.close()
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
                text += f" ({_human_bytes(value)})"
            rows.append((indent + key, text))
    return rows


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


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
        print(f"generation {m.promote()}")
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
    except posix_ipc.PermissionsError:
        row.update(state="denied", daemon_alive=None,
                   error="no permission to read this map (see serve --mode, --group)")
        return row
    try:
        h = reader.header
        pid = int(lib.shm_map_daemon_pid(h))
        alive = bool(pid) and process_alive(pid)
        row.update(state="live" if alive else "stale", daemon_pid=pid, daemon_alive=alive,
                   generation=reader.generation.gen, live_keys=len(reader),
                   socket=ffi.string(h.socket_path).decode())
    finally:
        reader.close()
    return row


def _exists(name: str) -> bool:
    return (segments.SHM_DIR / segments.header_name(name)[1:]).exists()


def _unreadable_map_names() -> list[str]:
    """Maps of other users that this one may not read: map_names() cannot
    tell their headers from other segments. Names that look like a
    generation or reader segment are left out (they are ambiguous)."""
    prefix = segments.PREFIX[1:]
    names = []
    for entry in segments.SHM_DIR.glob(prefix + "*"):
        name = entry.name[len(prefix):]
        if os.access(entry, os.R_OK) or name.endswith(segments.READERS_SUFFIX):
            continue
        head, infix, gen = name.rpartition(segments.GEN_INFIX)
        if infix and head and gen.isdigit():
            continue
        try:
            names.append(segments.check_map_name(name))
        except ValueError:
            continue
    return names


def _table(header: Sequence[str], rows: list[list[Any]], right: Sequence[bool]) -> str:
    cells = [list(header)] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.rjust(w) if rj else c.ljust(w) for c, w, rj in zip(r, widths, right)).rstrip()
        for r in cells)


def _run_ls(args: argparse.Namespace) -> int:
    rows = [map_status(n) for n in sorted(set(segments.map_names()) |
                                          set(_unreadable_map_names()))]
    # A map removed since it was listed is not shown as broken.
    rows = [r for r in rows if r["state"] != "broken" or _exists(r["name"])]
    if args.json:
        _print_json(rows, indent=2)
        return 0
    if not rows:
        print("no maps on this host")
        return 0
    alive = {True: "yes", False: "no", None: "?"}
    print(_table(
        ["NAME", "STATE", "PID", "ALIVE", "GEN", "KEYS", "SOCKET"],
        [[r["name"], r["state"], r["daemon_pid"] or None, alive[r["daemon_alive"]],
          r.get("generation"), f"{r['live_keys']:,}" if "live_keys" in r else None,
          r.get("socket", r.get("error", ""))] for r in rows],
        [False, False, True, False, True, True, False]))
    return 0


def _run_cleanup(args: argparse.Namespace) -> int:
    names = args.names or [r["name"] for r in map(map_status, segments.map_names())
                           if r["state"] != "live"]
    status = 0
    for name in names:
        state = map_status(name)["state"]
        if state in ("live", "denied"):
            print(f"shmmap: map {name!r} " + ("has a live daemon; stop it first" if state == "live"
                  else "belongs to another user: no permission"), file=sys.stderr)
            status = 1
            continue
        for path in cleanup(name, _socket_of(name)):
            print(f"removed {path}")
    return status


def _socket_of(name: str) -> Optional[Path]:
    row = map_status(name)
    return Path(row["socket"]) if row.get("socket") else None


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import format_summary, run_demo
    summary = run_demo(keys=args.keys, readers=args.readers, writers=args.writers,
                       duration=args.duration, write_ratio=args.write_ratio,
                       progress=not args.quiet)
    print(format_summary(summary))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0 if _passed(summary) else 1


def _run_bench(args: argparse.Namespace) -> int:
    from . import bench
    return bench.run(args)


def _passed(summary: dict[str, Any]) -> bool:
    return (not summary["errors"] and summary["consistency_checks_failed"] == 0
            and summary["final_sum_ok"])


# -- the parser ---------------------------------------------------------------

def _mode(text: str) -> int:
    """A file mode in octal, as chmod takes it: 0660, 660 or 0o660."""
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode like 0660") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"{text!r}: a mode is 0 to 0777")
    return mode


def _map_name(text: str) -> str:
    try:
        return segments.check_map_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _sub(sub: Any, name: str, run: Callable[[argparse.Namespace], int], help: str,
         description: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=description)
    p.set_defaults(run=run)
    return p


def _add_serve(sub: Any) -> None:
    p = _sub(sub, "serve", _run_serve, "run the daemon of a map (its one writer)",
             "Create map NAME in shared memory, or adopt the one a dead daemon left, and "
             "serve writes to it until SIGTERM or SIGINT; then remove its segments and "
             "socket.")
    p.add_argument("name", metavar="NAME", type=_map_name, help="the map's name")
    p.add_argument("--socket", help="Unix socket path (default: $XDG_RUNTIME_DIR/shmmap/"
                   "NAME.sock or <tmp>/shmmap-<uid>/NAME.sock)")
    p.add_argument("--mode", type=_mode, default=0o600,
                   help="permissions of the segments and socket, in octal (default 0600)")
    p.add_argument("--group", help="group (name or gid) to own segments and socket; its "
                   "members may connect")
    p.add_argument("--allow-uid", type=int, action="append", default=[],
                   help="also accept clients of this uid (repeatable)")
    p.add_argument("--max-key", type=int, default=Limits.max_key,
                   help=f"largest key in bytes (default {Limits.max_key})")
    p.add_argument("--max-value", type=int, default=Limits.max_value,
                   help=f"largest value in bytes (default {Limits.max_value})")
    p.add_argument("--max-live-bytes", type=int, default=0,
                   help="largest total of live keys and values (default 0: no limit)")
    p.add_argument("--max-connections", type=int, default=1024,
                   help="most clients at once (default 1024)")
    p.add_argument("--fresh", action="store_true",
                   help="discard a dead daemon's map instead of adopting it")
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="store_true", help="log connections and promotions")


def _add_data_commands(sub: Any) -> None:
    p = _sub(sub, "get", _run_get, "print one value as JSON",
             "Print the value of KEY in map NAME as JSON (read from shared memory: no "
             "daemon needed). Exit 1 if the key is absent.")
    p.add_argument("name", metavar="NAME", type=_map_name, help="the map's name")
    _add_key(p)
    p = _sub(sub, "set", _run_set, "store one value given as JSON",
             "Store VALUE (JSON) under KEY in map NAME.")
    p.add_argument("name", metavar="NAME", type=_map_name, help="the map's name")
    _add_key(p)
    p.add_argument("value", metavar="VALUE", help='the value as JSON, e.g. 42, "text", [1, 2], {"a": 1}')
    p = _sub(sub, "del", _run_del, "delete one key",
             "Delete KEY from map NAME. Exit 1 if it was absent.")
    p.add_argument("name", metavar="NAME", type=_map_name, help="the map's name")
    _add_key(p)
    p = _sub(sub, "dump", _run_dump, "print the map as JSON lines",
             'Print one consistent snapshot of map NAME, one {"key": ..., "value": ...} '
             "per line.")
    p.add_argument("name", metavar="NAME", type=_map_name, help="the map's name")


def _add_admin_commands(sub: Any) -> None:
    p = _sub(sub, "stats", _run_stats, "the daemon's counters",
             "Print map NAME's statistics: lookups and misses of all clients, promotions "
             "and why, compactions, bytes copied, the current generation's fill, older "
             "generations clients still map, connected clients.")
    p.add_argument("name", metavar="NAME", type=_map_name, help="the map's name")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p = _sub(sub, "promote", _run_promote, "make the daemon promote now",
             "Ask map NAME's daemon to build the next generation now.")
    p.add_argument("name", metavar="NAME", type=_map_name, help="the map's name")
    p = _sub(sub, "ls", _run_ls, "the maps on this host",
             "List the maps in /dev/shm: whether their daemon lives (stale: it died), "
             "their generation, keys and socket.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p = _sub(sub, "cleanup", _run_cleanup, "remove a dead daemon's segments",
             "Remove the segments and socket of the named maps, or of every stale map. "
             "A map whose daemon lives is left alone.")
    p.add_argument("names", nargs="*", metavar="NAME", type=_map_name,
                   help="maps to clean up (default: every map whose daemon is dead)")


def _add_load_commands(sub: Any) -> None:
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
    from .bench import add_arguments as add_bench_arguments
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
    parser = argparse.ArgumentParser(
        prog="shmmap", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A key-value map shared by processes through POSIX shared memory: "
        "lock-free reads, snapshot iteration, writes through one daemon.")
    parser.add_argument("--version", action="version", version=f"shmmap {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_serve(sub)
    _add_data_commands(sub)
    _add_admin_commands(sub)
    _add_load_commands(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (ShmmapError, TypeError) as exc:
        print(f"shmmap: {exc}", file=sys.stderr)
        return 1
    except posix_ipc.PermissionsError:
        name = getattr(args, "name", None) or ", ".join(getattr(args, "names", []))
        print(f"shmmap: map {name!r}: no permission to access its shared memory (the "
              "daemon's --mode and --group decide who may)", file=sys.stderr)
        return 1
    except BrokenPipeError:             # e.g. `shmmap dump m | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130
