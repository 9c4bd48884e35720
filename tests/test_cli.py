"""The command line and the example clients, run as a user runs them
(`python -m shmmap ...`, `python clients/...`), against real daemons."""
from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import shmmap
from shmmap import segments
from shmmap.cli import build_parser

COMMANDS = ["serve", "get", "set", "del", "dump", "stats", "promote", "ls", "cleanup",
            "demo", "soak", "bench"]
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
            "t": [1, {"$bytes": "eA=="}]}} in map(json.loads, lines)
        got = json.loads(cli("get", map_name, "--json-key", '["a", {"$bytes": "Yg=="}, 3]').stdout)
        assert got == [{"$bytes": "dg=="}]
        # What dump prints can be set again, into the same map or another.
        for line in lines:
            pair = json.loads(line)
            cli("set", map_name, "--json-key", json.dumps(pair["key"]), json.dumps(pair["value"]))
        with d.connect() as m:
            assert m.snapshot() == {b"\x00raw": {"blob": b"\xff\x00", "t": [1, b"x"]},
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
            assert "removed /shmmap-" + map_name in out
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
