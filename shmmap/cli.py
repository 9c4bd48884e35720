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

Run 'shmmap COMMAND --help' for a command's options. Keys are strings
unless given with --int-key or --json-key; values are JSON. Bytes print as
{"$bytes": "<base64>"}.
"""


# -- keys and values on the command line ------------------------------------

def _add_key(p: argparse.ArgumentParser) -> None:
    p.add_argument("key", help="the key (a string unless --int-key or --json-key)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--int-key", action="store_true", help="the key is an integer")
    kind.add_argument("--json-key", action="store_true",
                      help="the key is JSON: a string, integer or array (a tuple key)")


def _key(args: argparse.Namespace) -> Any:
    if args.int_key:
        try:
            return int(args.key, 0)
        except ValueError:
            raise ShmmapError(f"--int-key: {args.key!r} is not an integer") from None
    if args.json_key:
        return _tuples(_json_arg(args.key, "key"))
    return args.key


def _tuples(x: Any) -> Any:
    return tuple(_tuples(i) for i in x) if isinstance(x, list) else x


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
        value = reader.lookup(_key(args), missing)
    finally:
        reader.close()
    if value is missing:
        print(f"shmmap: no key {args.key!r} in map {args.name!r}", file=sys.stderr)
        return 1
    _print_json(value)
    return 0


def _run_set(args: argparse.Namespace) -> int:
    with connect(args.name) as m:
        m.store(_key(args), _json_arg(args.value, "value"))
    return 0


def _run_del(args: argparse.Namespace) -> int:
    with connect(args.name) as m:
        _, existed = m.load_and_delete(_key(args))
    if not existed:
        print(f"shmmap: no key {args.key!r} in map {args.name!r}", file=sys.stderr)
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
        width = max(len(k) for k in st)
        for key, value in st.items():
            print(f"{key:<{width}}  {value}")
    return 0


def _run_promote(args: argparse.Namespace) -> int:
    with connect(args.name) as m:
        print(f"generation {m.promote()}")
    return 0


def map_status(name: str) -> dict[str, Any]:
    """What `shmmap ls` says of one map: its daemon, live or not, and fill."""
    row: dict[str, Any] = {"name": name, "daemon_pid": 0, "state": "stale"}
    try:
        reader = MapReader(name)
    except (MapNotFoundError, CorruptSegmentError) as exc:
        row.update(state="broken", error=str(exc))
        return row
    try:
        h = reader.header
        pid = int(lib.shm_map_daemon_pid(h))
        row.update(daemon_pid=pid, socket=ffi.string(h.socket_path).decode(),
                   generation=reader.generation.gen, live_keys=len(reader),
                   state="live" if pid and process_alive(pid) else "stale")
    finally:
        reader.close()
    return row


def _run_ls(args: argparse.Namespace) -> int:
    rows = [map_status(n) for n in segments.map_names()]
    if args.json:
        _print_json(rows, indent=2)
        return 0
    if not rows:
        print("no maps on this host")
        return 0
    print(f"{'NAME':<24} {'STATE':<6} {'PID':>7} {'GEN':>5} {'KEYS':>10}  SOCKET")
    for r in rows:
        print(f"{r['name']:<24} {r['state']:<6} {r['daemon_pid']:>7} {r.get('generation', '-'):>5} "
              f"{r.get('live_keys', '-'):>10}  {r.get('socket', r.get('error', ''))}")
    return 0


def _run_cleanup(args: argparse.Namespace) -> int:
    names = args.names or [r["name"] for r in map(map_status, segments.map_names())
                           if r["state"] != "live"]
    status = 0
    for name in names:
        if map_status(name)["state"] == "live":
            print(f"shmmap: map {name!r} has a live daemon; stop it first", file=sys.stderr)
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


def _passed(summary: dict[str, Any]) -> bool:
    return (not summary["errors"] and summary["consistency_checks_failed"] == 0
            and summary["final_sum_ok"])


# -- the parser ---------------------------------------------------------------

def _int_auto(text: str) -> int:
    return int(text, 0)


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
    p.add_argument("name", help="the map's name")
    p.add_argument("--socket", help="Unix socket path (default: $XDG_RUNTIME_DIR/shmmap/"
                   "NAME.sock or <tmp>/shmmap-<uid>/NAME.sock)")
    p.add_argument("--mode", type=_int_auto, default=0o600,
                   help="permissions of the segments and socket (default 0o600)")
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
    p.add_argument("name")
    _add_key(p)
    p = _sub(sub, "set", _run_set, "store one value given as JSON",
             "Store VALUE (JSON) under KEY in map NAME.")
    p.add_argument("name")
    _add_key(p)
    p.add_argument("value", help='the value as JSON, e.g. 42, "text", [1, 2], {"a": 1}')
    p = _sub(sub, "del", _run_del, "delete one key",
             "Delete KEY from map NAME. Exit 1 if it was absent.")
    p.add_argument("name")
    _add_key(p)
    p = _sub(sub, "dump", _run_dump, "print the map as JSON lines",
             'Print one consistent snapshot of map NAME, one {"key": ..., "value": ...} '
             "per line.")
    p.add_argument("name")


def _add_admin_commands(sub: Any) -> None:
    p = _sub(sub, "stats", _run_stats, "the daemon's counters",
             "Print map NAME's statistics: lookups and misses of all clients, promotions "
             "and why, compactions, bytes copied, the current generation's fill, older "
             "generations clients still map, connected clients.")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p = _sub(sub, "promote", _run_promote, "make the daemon promote now",
             "Ask map NAME's daemon to build the next generation now.")
    p.add_argument("name")
    p = _sub(sub, "ls", _run_ls, "the maps on this host",
             "List the maps in /dev/shm: whether their daemon lives (stale: it died), "
             "their generation, keys and socket.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p = _sub(sub, "cleanup", _run_cleanup, "remove a dead daemon's segments",
             "Remove the segments and socket of the named maps, or of every stale map. "
             "A map whose daemon lives is left alone.")
    p.add_argument("names", nargs="*", metavar="NAME")


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
    except BrokenPipeError:             # e.g. `shmmap dump m | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130
