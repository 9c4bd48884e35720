"""The command line's argument types, and the options of ``shmmap serve``,
which ``shmmap.Daemon`` takes as keyword arguments too: here, apart from
the commands, so that the launcher knows them without the daemon."""
from __future__ import annotations

import argparse
from typing import Callable

from ..shared import segments
from ..shared.config import LOG_FORMATS, Limits


def octal_mode(text: str) -> int:
    """A file mode in octal, as chmod takes it: 0660, 660 or 0o660."""
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode like 0660") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"{text!r}: a mode is 0 to 0777")
    return mode


def map_name(text: str) -> str:
    try:
        return segments.check_map_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_name(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", type=map_name, help="the map's name")


def counting(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"{n} is below {minimum}")
        return n
    return parse


positive = counting(1)
natural = counting(0)


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``shmmap serve``."""
    add_name(p)
    p.add_argument("--socket", help="Unix socket path (default: $XDG_RUNTIME_DIR/shmmap/"
                   "NAME.sock or <tmp>/shmmap-<uid>/NAME.sock)")
    p.add_argument("--mode", type=octal_mode, default=0o600,
                   help="permissions of the segments and socket, in octal (default 0600)")
    p.add_argument("--group", help="group (name or gid) to own segments and socket; its "
                   "members may connect")
    p.add_argument("--allow-uid", type=natural, action="append", default=[],
                   help="also accept clients of this uid (repeatable)")
    p.add_argument("--max-key", type=positive, default=Limits.max_key,
                   help="largest key, counted as its msgpack encoding: a str or bytes key "
                   f"takes up to 5 bytes more than its payload (default {Limits.max_key})")
    p.add_argument("--max-value", type=positive, default=Limits.max_value,
                   help="largest value, counted as its msgpack encoding: a str or bytes "
                   f"value takes up to 5 bytes more than its payload (default {Limits.max_value})")
    p.add_argument("--max-live-bytes", type=natural, default=0,
                   help="largest total of live keys and values (default 0: no limit)")
    p.add_argument("--max-connections", type=positive, default=1024,
                   help="most clients at once (default 1024); the daemon raises its open-file "
                   "limit to fit, or refuses to start if the hard limit is too low")
    p.add_argument("--fresh", action="store_true",
                   help="discard a dead daemon's map instead of adopting it")
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="log every event: client connects and disconnects (pid, uid), "
                   "promotions (reason, entries, bytes, ms), adoption, refusals, errors "
                   "(without -v: adoption, refusals and errors only)")
    p.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                   help="text (default; one line per event, for a terminal or journald) or "
                   "json (one object per line, with the event's fields, for log collectors)")
    p.add_argument("--upstream", metavar="URL",
                   help="serve the map as a near cache of Redis at URL (redis://[user:pass@]"
                   "HOST:PORT[/DB], rediss://..., unix://PATH): it holds every key under "
                   "the --prefix ranges, kept current by Redis' invalidations; writes go to "
                   "Redis first")
    p.add_argument("--prefix", action="append", default=[],
                   help="with --upstream: a range of Redis keys the map holds (repeatable)")
    p.add_argument("--decode", choices=("utf8", "json", "msgpack"),
                   help="with --upstream: decode Redis strings on load and encode values on "
                   "write (default: values are the strings' bytes)")
    p.add_argument("--metrics", metavar="HOST:PORT", type=metrics_address,
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (HOST defaults "
                   "to 127.0.0.1; PORT 0 picks a free port, shown by -v and in stats)")


def metrics_address(text: str) -> str:
    """--metrics HOST:PORT, checked by the daemon's own parser (imported
    here, when serve is given --metrics: no other command loads it)."""
    from ..server.metrics import parse_address
    try:
        parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def serve_options() -> frozenset[str]:
    """The options of ``serve`` as shmmap.Daemon takes them: long names with
    underscores (``max_connections``)."""
    p = argparse.ArgumentParser()
    add_serve_arguments(p)
    return frozenset(
        a.option_strings[-1][2:].replace("-", "_") for a in p._actions
        if a.option_strings and a.help != argparse.SUPPRESS and a.dest != "help")
