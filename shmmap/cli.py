"""The ``shmmap`` command line."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from . import __version__
from .daemon import DaemonConfig, serve
from .errors import ShmmapError
from .writer import Limits


def _int_auto(text: str) -> int:
    return int(text, 0)


def _add_serve(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("serve", help="run the daemon of a map (its one writer)",
                       description="Create map NAME in shared memory and serve writes to it "
                       "until SIGTERM or SIGINT; then remove its segments and socket.")
    p.add_argument("name", help="the map's name")
    p.add_argument("--socket", help="Unix socket path (default: $XDG_RUNTIME_DIR/shmmap/NAME.sock "
                   "or <tmp>/shmmap-<uid>/NAME.sock)")
    p.add_argument("--mode", type=_int_auto, default=0o600,
                   help="permissions of the segments and socket (default 0o600)")
    p.add_argument("--max-key", type=int, default=Limits.max_key, help="largest key in bytes")
    p.add_argument("--max-value", type=int, default=Limits.max_value,
                   help="largest value in bytes")
    p.add_argument("--max-live-bytes", type=int, default=0,
                   help="largest total of live keys and values (0: no limit)")
    p.add_argument("--max-connections", type=int, default=1024, help="most clients at once")
    p.add_argument("--allow-uid", type=int, action="append", default=[],
                   help="also accept clients of this uid (repeatable)")
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="store_true", help="log each connection")
    p.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="shmmap %(levelname)s: %(message)s")
    return serve(DaemonConfig(
        name=args.name, socket_path=args.socket, mode=args.mode,
        limits=Limits(max_key=args.max_key, max_value=args.max_value,
                      max_live_bytes=args.max_live_bytes),
        max_connections=args.max_connections, allow_uids=frozenset(args.allow_uid),
        ready_fd=args.ready_fd))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shmmap", description="A key-value map shared by processes through POSIX shared "
        "memory: lock-free reads, snapshot iteration, writes through one daemon.")
    parser.add_argument("--version", action="version", version=f"shmmap {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_serve(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ShmmapError as exc:
        print(f"shmmap: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
