"""The command line and the example clients, run as a user runs them
(`python -m shmmap ...`, `python clients/...`), against real daemons."""
from __future__ import annotations

import base64
import datetime
import decimal
import importlib
import json
import math
import multiprocessing as mp
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path
from typing import Any, Iterator

import msgpack
import pytest

import shmmap
from shmmap.cli.main import build_parser, main
from shmmap.cli.progress import Progress
from shmmap.shared import segments
from shmmap.shared.codec import encode_key, encode_value

from conftest import remove_map, unique_map_name

COMMANDS = ["serve", "get", "set", "del", "dump", "load", "stats", "promote", "ls", "cleanup",
            "top", "trace", "doctor", "demo", "soak", "bench"]
CLIENTS = Path(__file__).resolve().parent.parent / "clients"


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "shmmap", *args], capture_output=True,
                          text=True, timeout=120, check=False)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def fails(*args: str, status: int = 1) -> str:
    """Runs a command that must fail: nothing on stdout, one 'shmmap: '
    message (or a usage) on stderr, exit status; returns stderr."""
    done = cli(*args, check=False)
    assert done.returncode == status, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    if status == 1:
        assert done.stderr.startswith("shmmap: ") and done.stderr.count("\n") == 1
    else:
        assert "usage: shmmap" in done.stderr
    return done.stderr


def ls_row(name: str) -> dict[str, object]:
    rows = [r for r in json.loads(cli("ls", "--json").stdout) if r["name"] == name]
    assert len(rows) == 1
    return rows[0]


def test_help_explains_every_command() -> None:
    top = cli("--help").stdout
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(COMMANDS)                # type: ignore[arg-type]
    helps = {a.dest: a.help for a in sub._get_subactions()}      # type: ignore[attr-defined]
    for command, parser in sub.choices.items():                  # type: ignore[union-attr]
        assert helps[command] and parser.description, command
        for action in parser._actions:
            assert action.help, (command, action.dest)          # every option explained
    for command in COMMANDS:
        assert f"\n  {command} " in top.split("commands:")[1]        # in the epilog
        assert "usage: shmmap " + command in cli(command, "--help").stdout
    for topic in ("--int-key", "--json-key", '{"$bytes": "<base64>"}', "exit status"):
        assert topic in top
    assert "--int-key" in cli("get", "--help").stdout


def test_set_get_del_dump_stats_promote_ls(map_name: str) -> None:
    with shmmap.Daemon(map_name) as d:
        cli("set", map_name, "a", '{"x": [1, 2]}')
        cli("set", map_name, "--int-key", "7", '"seven"')
        cli("set", map_name, "-k", "int", "0x10", "16")
        cli("set", map_name, "--json-key", '["t", 1]', "3.5")
        cli("set", map_name, "--", "-dash", "null")
        assert json.loads(cli("get", map_name, "a").stdout) == {"x": [1, 2]}
        assert json.loads(cli("get", map_name, "--int-key", "7").stdout) == "seven"
        assert json.loads(cli("get", map_name, "-k", "json", "16").stdout) == 16
        assert json.loads(cli("get", map_name, "--json-key", '["t", 1]').stdout) == 3.5
        assert cli("get", map_name, "--", "-dash").stdout == "null\n"
        with d.connect() as m:          # as Python sees what the CLI wrote
            assert m[7] == "seven" and m[("t", 1)] == 3.5 and "7" not in m
        lines = [json.loads(x) for x in cli("dump", map_name).stdout.splitlines()]
        assert {"key": ["t", 1], "value": 3.5} in lines and len(lines) == 5

        cli("del", map_name, "a")
        assert "no key 'a'" in fails("get", map_name, "a")
        assert "no key 'a'" in fails("del", map_name, "a")
        assert "no key 8" in fails("get", map_name, "--int-key", "8")

        assert cli("promote", map_name).stdout.startswith("generation ")
        stats = json.loads(cli("stats", map_name, "--json").stdout)
        assert stats["live_keys"] == 4 and stats["promotions"] >= 1
        assert stats["name"] == map_name and stats["pid"] == d.pid
        table = cli("stats", map_name).stdout.splitlines()
        cells = {ln.split()[0]: ln.split()[1] for ln in table if len(ln.split()) >= 2}
        assert cells["live_keys"] == "4" and cells["pid"] == str(d.pid)
        assert any(ln.startswith("promotions_by_reason") for ln in table)
        ends = {len(ln.rstrip()) for ln in table
                if ln.split()[0] in ("live_keys", "requests", "writes", "clients")}
        assert len(ends) == 1                           # numbers end in one column

        row = ls_row(map_name)
        assert row["state"] == "live" and row["daemon_alive"] is True
        assert row["daemon_pid"] == d.pid and row["live_keys"] == 4
        assert row["generation"] == stats["generation"] and row["socket"] == stats["socket"]
        line = [ln for ln in cli("ls").stdout.splitlines() if ln.split()[0] == map_name]
        assert line and line[0].split()[1:4] == ["live", str(d.pid), "yes"]
        assert cli("ls").stdout.splitlines()[0].split()[:3] == ["NAME", "STATE", "PID"]


def test_bytes_and_tuples_as_json(map_name: str) -> None:
    with shmmap.Daemon(map_name) as d:
        with d.connect() as m:
            m[b"\x00raw"] = {"blob": b"\xff\x00", "t": (1, b"x")}
            m[("a", b"b", 3)] = [b"v"]
        lines = cli("dump", map_name).stdout.splitlines()
        b64 = base64.b64encode(b"\x00raw").decode()
        assert {"key": {"$bytes": b64}, "value": {
            "blob": {"$bytes": base64.b64encode(b"\xff\x00").decode()},
            "t": {"$tuple": [1, {"$bytes": "eA=="}]}}} in map(json.loads, lines)
        got = json.loads(cli("get", map_name, "--json-key", '["a", {"$bytes": "Yg=="}, 3]').stdout)
        assert got == [{"$bytes": "dg=="}]
        # What dump prints can be set again, into the same map or another.
        for line in lines:
            pair = json.loads(line)
            cli("set", map_name, "--json-key", json.dumps(pair["key"]), json.dumps(pair["value"]))
        with d.connect() as m:
            assert m.snapshot() == {b"\x00raw": {"blob": b"\xff\x00", "t": (1, b"x")},
                                    ("a", b"b", 3): [b"v"]}


def test_errors_go_to_stderr_with_a_nonzero_exit(map_name: str) -> None:
    for command in (["get", map_name, "k"], ["set", map_name, "k", "1"], ["del", map_name, "k"],
                    ["dump", map_name], ["stats", map_name], ["promote", map_name]):
        assert fails(*command).startswith(f"shmmap: no map named {map_name!r}")
    with shmmap.Daemon(map_name):
        assert "not valid JSON" in fails("set", map_name, "k", "{bad")
        assert "not valid JSON" in fails("set", map_name, "--json-key", "[1,", "1")
        assert "not valid JSON" in fails("get", map_name, "--json-key", "nope")
        assert "not an integer" in fails("set", map_name, "--int-key", "x1", "1")
        assert "keys must be" in fails("set", map_name, "--json-key", "1.5", "1")
        assert "keys must be" in fails("get", map_name, "--json-key", '{"a": 1}')
        assert "64 bits" in fails("set", map_name, "--int-key", str(2 ** 64), "1")
        assert "base64" in fails("set", map_name, "k", '{"$bytes": "%%"}')
        assert "cannot be encoded" in fails("set", map_name, "k", str(2 ** 70))
        assert cli("dump", map_name).stdout == ""                  # nothing was written
    assert "No such file or directory" in fails("demo", "--json", "/no/such/dir/out.json")
    assert "No such file or directory" in fails("load", map_name, "/no/such/dump.jsonl")
    fails("get", map_name, status=2)                               # usage errors
    fails("set", map_name, "k", status=2)
    fails("get", "no/such name", "k", status=2)
    fails("get", map_name, "k", "--int-key", "--json-key", status=2)
    fails("frobnicate", status=2)


def test_serve_mode_is_octal() -> None:
    parse = build_parser().parse_args
    for text in ("0660", "660", "0o660"):
        assert parse(["serve", "m", "--mode", text]).mode == 0o660
    assert parse(["serve", "m"]).mode == 0o600
    for bad in ("0x1b0", "888", "01777"):
        with pytest.raises(SystemExit):
            parse(["serve", "m", "--mode", bad])


def test_stale_map_is_listed_adopted_or_cleaned_up(map_name: str) -> None:
    daemons: list[shmmap.Daemon] = []

    def crash() -> None:
        d = shmmap.Daemon(map_name)
        daemons.append(d)
        d.start()
        os.kill(d.pid, signal.SIGKILL)
        d.process.wait()                                   # type: ignore[union-attr]

    try:
        with shmmap.Daemon(map_name) as first, first.connect() as m:
            m["kept"] = 1
            os.kill(first.pid, signal.SIGKILL)
            first.process.wait()                           # type: ignore[union-attr]
            row = ls_row(map_name)
            assert row["state"] == "stale" and row["daemon_alive"] is False
            assert cli("get", map_name, "kept").stdout == "1\n"     # reads need no daemon
            assert "no daemon answers" in fails("set", map_name, "k", "1")
            assert "no daemon answers" in fails("stats", map_name)
            with shmmap.Daemon(map_name) as again, again.connect() as m2:
                assert m2["kept"] == 1                               # adopted by default
            crash()                                        # ... and --fresh starts empty
            with shmmap.Daemon(map_name, fresh=True) as fresh, fresh.connect() as m3:
                assert len(m3) == 0
            crash()
            out = cli("cleanup", map_name).stdout
            assert "removed " + segments.header_name(map_name) in out
            assert segments.map_segments(map_name) == []
            assert map_name not in [r["name"] for r in json.loads(cli("ls", "--json").stdout)]
    finally:
        for d in daemons:
            d.stop()


def test_cleanup_leaves_a_live_map_alone(map_name: str) -> None:
    with shmmap.Daemon(map_name), shmmap.connect(map_name) as m:
        assert "live daemon" in fails("cleanup", map_name)
        m["still"] = "here"
        assert m["still"] == "here"


@pytest.mark.parametrize("command", ["demo", "soak"])
def test_demo_and_soak_run_end_to_end(command: str, tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    done = cli(command, "--keys", "2000", "--readers", "2", "--writers", "1",
               "--duration", "1.5", "--json", str(out), "-q")
    assert "consistency checks" in done.stdout
    summary = json.loads(out.read_text())
    assert summary["consistency_checks_failed"] == 0 and summary["iterations"] > 0
    assert summary["final_sum_ok"] and summary["writes_per_s"] > 0


def run_client(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, str(CLIENTS / script), *args], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done


def test_quickstart_client_runs(map_name: str) -> None:
    out = run_client("quickstart.py", map_name).stdout
    assert "compare_and_swap: True" in out and "1001 keys" in out
    assert segments.map_segments(map_name) == []


def test_asyncio_example_runs_with_its_own_daemon_or_a_running_one(map_name: str) -> None:
    out = run_client("aio_example.py", map_name).stdout
    assert "views: {'/': 200, '/about': 200, '/shop': 200}" in out and "1000 items" in out
    assert segments.map_segments(map_name) == []        # its own daemon removed the map
    with shmmap.Daemon(map_name) as d:
        out = run_client("aio_example.py", map_name).stdout
        assert "the write after a cancelled one: ('shop', True)" in out
        with d.connect() as m:
            assert m["/shop"] == 200            # it wrote to the daemon that was there
    assert segments.map_segments(map_name) == []


def test_writer_and_readers_clients_run_against_a_daemon(map_name: str) -> None:
    with shmmap.Daemon(map_name) as d:
        out = run_client("writer.py", map_name, "--keys", "5000", "--batch", "50",
                         "--duration", "0.5").stdout
        assert "writes/s in batches of 50" in out
        with d.connect() as m:
            keys = len(m)
        assert 0 < keys <= 5000 and f"the map has {keys:,} keys" in out
        writer = subprocess.Popen(
            [sys.executable, str(CLIENTS / "writer.py"), map_name, "--keys", "5000",
             "--rate", "20000", "--duration", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out = run_client("readers.py", map_name, "--processes", "2", "--duration", "0.5",
                             "--gets", "100").stdout
        finally:
            w_out, w_err = writer.communicate(timeout=60)
        assert writer.returncode == 0, w_err
        finals = [ln for ln in out.splitlines() if " scans of " in ln]
        assert len(finals) == 2 and all("gets" in ln for ln in finals)
        assert "writes/s" in w_out
    done = subprocess.run([sys.executable, str(CLIENTS / "readers.py"), map_name],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1 and "no map named" in done.stderr


# -- Ctrl-C, closed pipes, progress -------------------------------------------

@pytest.mark.parametrize("command, progress_lines", [("demo", 1), ("soak", 2)])
def test_ctrl_c_stops_a_long_command_with_one_line(command: str, progress_lines: int) -> None:
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it:
    the workers say nothing, the command prints one line, exits 130 and
    leaves nothing behind."""
    p = subprocess.Popen([sys.executable, "-m", "shmmap", command, "--keys", "2000",
                          "--readers", "2", "--writers", "2", "--duration", "60"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    name = f"demo-{p.pid}"
    try:
        shown = [p.stderr.readline() for _ in range(progress_lines)]     # type: ignore[union-attr]
        assert all(line.startswith("[") for line in shown), shown       # it is running
        assert not any("\r" in line or "\033" in line for line in shown)  # not a terminal
        os.killpg(p.pid, signal.SIGINT)
        out, err = p.communicate(timeout=60)
        assert (p.returncode, out, err) == (130, "", "shmmap: interrupted\n")
        assert segments.map_segments(name) == []
        with pytest.raises(ProcessLookupError):      # no worker outlives the command
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                os.killpg(p.pid, 0)
                time.sleep(0.05)
    finally:
        if p.poll() is None or _group_alive(p.pid):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        remove_map(name)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_dump_into_a_pipe_closed_early_exits_quietly(map_name: str) -> None:
    with shmmap.Daemon(map_name) as d, d.connect() as m:
        m.update((i, {"pad": "x" * 200, "i": i}) for i in range(20_000))   # > 4 MB of JSON
        done = subprocess.run(
            ["bash", "-c", f'set -o pipefail; "{sys.executable}" -m shmmap dump {map_name} '
             '| head -2'], capture_output=True, text=True, timeout=120, check=False)
        assert (done.returncode, done.stderr) == (0, "")
        lines = done.stdout.splitlines()
        assert len(lines) == 2 and all(json.loads(ln)["value"]["pad"] for ln in lines)
        done = subprocess.run(                           # small output: found at the flush
            ["bash", "-c", f'set -o pipefail; "{sys.executable}" -m shmmap ls | head -0'],
            capture_output=True, text=True, timeout=120, check=False)
        assert (done.returncode, done.stderr) == (0, "")


def test_progress_is_redrawn_on_a_terminal_only() -> None:
    master, slave = pty.openpty()
    try:
        with open(slave, "w", closefd=False) as tty, Progress(tty, tty_every=0) as shown:
            shown.update("one")
            shown.update("two")
        drawn = ""
        while not drawn.endswith("\n"):                # a pty hands writes over in pieces
            assert select.select([master], [], [], 10)[0], f"only {drawn!r} arrived"
            drawn += os.read(master, 1024).decode()
        assert drawn.startswith("\r\033[Kone\r\033[Ktwo") and drawn.endswith("\n")
    finally:
        os.close(master)
        os.close(slave)
    with tempfile.TemporaryFile("w+") as log:
        with Progress(log, plain_every=3600) as shown:
            shown.update("first")
            shown.update("too soon")                    # plain lines are occasional
        shown = Progress(log, enabled=False)
        shown.update("quiet")
        log.seek(0)
        assert log.read() == "first\n"


# -- lossless dump and load ---------------------------------------------------

AWKWARD_KEYS: list[Any] = [
    "", "plain", "ünïcode ☃", "line\nbreak", "\u2028", "-dash", '{"$bytes": "AA=="}',
    b"", b"\x00\xff raw", "0", "7",
    0, 7, -1, 2 ** 63 - 1, -(2 ** 63), 2 ** 64 - 1,
    (), ("t", 1), (b"b", ("nested", -5)), ("7",),
]
AWKWARD_VALUES: list[Any] = [
    None, True, False, 0, -(2 ** 63), 2 ** 64 - 1, 1.5, -0.0, 1e308, 5e-324,
    math.nan, math.inf, -math.inf, "", "text\n\t\"quoted\"", b"", b"\x00\xff",
    [], [1, [2, [3]]], {}, {"a": {"b": [b"c", None]}},
    {1: "int key", b"k": "bytes key", None: 0, 2.5: "float key", False: "bool key"},
    {"$bytes": "AA=="}, {"$float": "nan"}, {"$map": []}, {"$bytes": 5}, {"$other": 1},
    [math.nan, {"x": math.inf}], msgpack.ExtType(5, b"\x01\x02"),
    msgpack.Timestamp(1_700_000_000, 123),
    (), (1, [2, (3,)]), {(1, "a"): {"$tuple": ()}}, {1, 2, 3}, frozenset({b"x"}), set(),
    datetime.datetime(2024, 2, 29, 1, 2, 3, 4), datetime.datetime(2021, 11, 7, 1, 30, fold=1),
    datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=-5), "EST")),
    datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(seconds=-1))),
    datetime.date(1, 1, 1), decimal.Decimal("-1.10E-7"), decimal.Decimal("NaN5"),
    uuid.UUID(int=12345),
]


def _canonical(m: Any) -> dict[bytes, bytes]:
    """A map's contents as encoded bytes: NaN compares equal to NaN, -0.0
    differs from 0.0, a list from a tuple, an int from a float."""
    return {encode_key(k): encode_value(v) for k, v in m.items()}


def test_dump_and_load_round_trip_every_key_and_value_type(tmp_path: Path) -> None:
    a, b = unique_map_name("a"), unique_map_name("b")
    try:
        with shmmap.Daemon(a) as da, shmmap.Daemon(b) as db, da.connect() as ma, \
                db.connect() as mb:
            for i, key in enumerate(AWKWARD_KEYS):
                ma[key] = AWKWARD_VALUES[i % len(AWKWARD_VALUES)]
            for i, value in enumerate(AWKWARD_VALUES):
                ma[("value", i)] = value
            expected = _canonical(ma)
            assert len(expected) == len(AWKWARD_KEYS) + len(AWKWARD_VALUES)

            dump = cli("dump", a).stdout
            for line in dump.splitlines():              # strict JSON: no bare NaN
                json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c}"))
            path = tmp_path / "a.jsonl"
            path.write_text(dump, encoding="utf-8")
            mb["other"] = 1
            report = json.loads(cli("load", b, str(path), "--clear", "--json").stdout)
            assert report == {"stored": len(expected), "keys": len(expected)}
            assert _canonical(mb) == expected

            # Through a pipe, into a map that already has keys: they stay.
            ma["extra"] = [1]
            piped = subprocess.run(
                ["bash", "-c", f'"{sys.executable}" -m shmmap dump {b} | '
                 f'"{sys.executable}" -m shmmap load {a}'],
                capture_output=True, text=True, timeout=120, check=False)
            assert piped.returncode == 0, piped.stderr
            assert piped.stdout == f"stored {len(expected)} keys; map {a!r} has " \
                f"{len(expected) + 1} keys\n"
            assert _canonical(ma) == {**expected, encode_key("extra"): encode_value([1])}

            # get prints the same form; set reads it back.
            for i, value in enumerate(AWKWARD_VALUES):
                printed = cli("get", a, "--json-key", json.dumps(["value", i])).stdout
                cli("set", b, "--int-key", str(i), printed)
                assert encode_value(mb[i]) == encode_value(value), printed
    finally:
        remove_map(a)
        remove_map(b)


def test_load_checks_every_line_before_storing(map_name: str, tmp_path: Path) -> None:
    good = json.dumps({"key": "k", "value": 1})
    with shmmap.Daemon(map_name) as d, d.connect() as m:
        for bad, message in (
            ("{oops", "line 2 is not valid JSON"),
            ('{"key": "k"}', 'line 2: not a {"key": ..., "value": ...} object'),
            ('{"key": 1.5, "value": 1}', "line 2: keys must be"),
            ('{"key": "k", "value": {"$bytes": "%%"}}', "line 2: '%%' is not valid base64"),
            ('{"key": "k", "value": {"$float": "big"}}', 'takes "nan", "inf" or "-inf"'),
            ('{"key": "k", "value": {"$map": [[[1], 2]]}}', "cannot be an array"),
            ('{"key": "k", "value": {"$date": "nope"}}', '"$date": "nope" is not one'),
            ('{"key": "k", "value": {"$datetime": ["2024-01-01", 2, null]}}', "fold 0 or 1"),
            ('{"key": "k", "value": {"$set": 5}}', "takes an array"),
            ('{"key": "k", "value": 1e999999}', None),          # inf: accepted
        ):
            path = tmp_path / "bad.jsonl"
            path.write_text(f"{good}\n{bad}\n\n", encoding="utf-8")
            if message is None:
                cli("load", map_name, str(path))
                assert m["k"] == math.inf
                continue
            assert message in fails("load", map_name, str(path))
            assert len(m) == 0                                    # nothing stored
        m.clear()
        assert "No such file" in fails("load", map_name, str(tmp_path / "absent"))


# -- other users' maps --------------------------------------------------------

NOBODY = 65534
SPAWN = mp.get_context("spawn")


def _main_as_nobody(argv: list[str], out_path: str, err_path: str) -> None:
    sys.stdout = open(out_path, "w")      # noqa: SIM115 (this child's output until os._exit)
    sys.stderr = open(err_path, "w")      # noqa: SIM115
    try:
        # Everything is imported first (nobody may not read the stdlib): the
        # parser's modules, and the daemon's, which serve imports when it runs.
        build_parser()
        for module in ("shmmap.server.logs", "shmmap.server.server"):   # _run_serve's
            importlib.import_module(module)
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        code = main(argv)
    except BaseException:
        traceback.print_exc()
        code = 99
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def as_nobody(*argv: str) -> tuple[int, str, str]:
    """Runs the command line as user nobody, in a child process."""
    with tempfile.TemporaryDirectory() as where:
        out, err = os.path.join(where, "out"), os.path.join(where, "err")
        p = SPAWN.Process(target=_main_as_nobody, args=(list(argv), out, err))
        p.start()
        p.join(120)
        if p.is_alive():
            p.kill()
            p.join()
        return p.exitcode, Path(out).read_text(), Path(err).read_text()  # type: ignore[return-value]


@pytest.fixture
def stale_map_of_nobody() -> Iterator[str]:
    """A map user nobody served, whose daemon was killed."""
    name = unique_map_name("nobody")
    with tempfile.TemporaryDirectory() as where:
        os.chmod(where, 0o777)
        sock = os.path.join(where, "s.sock")
        daemon = SPAWN.Process(target=_main_as_nobody, args=(
            ["serve", name, "--socket", sock], os.devnull, os.path.join(where, "log")))
        daemon.start()
        try:
            deadline = time.monotonic() + 60
            while not _accepts(sock):
                assert daemon.is_alive() and time.monotonic() < deadline, \
                    Path(where, "log").read_text()
                time.sleep(0.02)
        finally:
            daemon.kill()
            daemon.join()
        try:
            yield name
        finally:
            remove_map(name)


def _accepts(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the CLI as another user")
def test_ls_and_cleanup_carry_on_past_maps_they_may_not_read(
        map_name: str, stale_map_of_nobody: str) -> None:
    theirs = stale_map_of_nobody
    assert segments.map_segments(theirs)
    with shmmap.Daemon(map_name) as d:              # root's map, mode 0600
        assert map_name in segments.map_names() and theirs in segments.map_names()

        code, out, err = as_nobody("ls", "--json")
        assert (code, err) == (0, "")
        rows = {r["name"]: r for r in json.loads(out)}
        assert rows[map_name]["state"] == "denied" and rows[map_name]["daemon_alive"] is None
        # Its generation and reader segments are not taken for maps of their own.
        assert [n for n in rows if n.startswith(map_name)] == [map_name]
        assert rows[theirs]["state"] == "stale"
        code, out, err = as_nobody("ls")
        assert code == 0 and err == ""
        assert [ln.split()[1] for ln in out.splitlines() if ln.split()[0] == map_name] \
            == ["denied"]

        code, out, err = as_nobody("cleanup", map_name)
        assert code == 1 and err == f"shmmap: map {map_name!r} is not readable by this " \
            "user: left alone\n"
        code, out, err = as_nobody("cleanup")           # removes theirs, skips root's
        assert code == 0, err
        assert f"skipped map {map_name!r}" in err
        assert f"removed {segments.header_name(theirs)}\n" in out
        assert segments.map_segments(theirs) == []
        with d.connect() as m:                          # root's map is untouched
            m["still"] = "here"
            assert m["still"] == "here"


@pytest.mark.parametrize("script, args, first", [
    ("writer.py", ["--duration", "60", "--rate", "2000"], "writes/s"),
    ("readers.py", ["--processes", "2", "--duration", "60", "--gets", "10"], "reader "),
])
def test_clients_stop_on_ctrl_c_without_a_traceback(map_name: str, script: str,
                                                    args: list[str], first: str) -> None:
    with shmmap.Daemon(map_name) as d:
        with d.connect() as m:
            m.update((i, i) for i in range(1000))
        p = subprocess.Popen([sys.executable, str(CLIENTS / script), map_name, *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
        try:
            assert first in p.stdout.readline()             # type: ignore[union-attr]
            os.killpg(p.pid, signal.SIGINT)
            out, err = p.communicate(timeout=60)
            assert p.returncode == 130 and err == f"{script[:-3]}: interrupted\n", err
        finally:
            if p.poll() is None or _group_alive(p.pid):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
