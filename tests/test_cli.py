"""The command line, run as a user runs it, against real daemons."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

import shmmap
from shmmap import segments

COMMANDS = ["serve", "get", "set", "del", "dump", "stats", "promote", "ls", "cleanup",
            "demo", "soak", "bench"]


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "shmmap", *args], capture_output=True,
                          text=True, timeout=120)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def test_help_explains_every_command() -> None:
    top = cli("--help").stdout
    for command in COMMANDS:
        assert command in top
        assert "usage: shmmap " + command in cli(command, "--help").stdout


def test_set_get_del_dump_stats_promote(map_name: str) -> None:
    with shmmap.Daemon(map_name):
        cli("set", map_name, "a", '{"x": [1, 2]}')
        cli("set", map_name, "--int-key", "7", '"seven"')
        cli("set", map_name, "--json-key", '["t", 1]', "3.5")
        assert json.loads(cli("get", map_name, "a").stdout) == {"x": [1, 2]}
        assert json.loads(cli("get", map_name, "--int-key", "7").stdout) == "seven"
        lines = [json.loads(x) for x in cli("dump", map_name).stdout.splitlines()]
        assert {"key": ["t", 1], "value": 3.5} in lines and len(lines) == 3
        cli("del", map_name, "a")
        missing = cli("get", map_name, "a", check=False)
        assert missing.returncode == 1 and "no key 'a'" in missing.stderr
        assert cli("del", map_name, "a", check=False).returncode == 1
        assert cli("promote", map_name).stdout.startswith("generation ")
        stats = json.loads(cli("stats", map_name, "--json").stdout)
        assert stats["live_keys"] == 2 and stats["promotions"] >= 1
        assert "promotions" in cli("stats", map_name).stdout
        row = [r for r in json.loads(cli("ls", "--json").stdout) if r["name"] == map_name]
        assert row and row[0]["state"] == "live"


def test_errors_go_to_stderr_with_a_nonzero_exit(map_name: str) -> None:
    no_map = cli("get", map_name, "k", check=False)
    assert no_map.returncode == 1 and no_map.stderr.startswith("shmmap: no map named")
    assert no_map.stdout == ""
    with shmmap.Daemon(map_name):
        bad = cli("set", map_name, "k", "{bad", check=False)
        assert bad.returncode == 1 and "not valid JSON" in bad.stderr
        bad_key = cli("set", map_name, "--int-key", "x1", "1", check=False)
        assert bad_key.returncode == 1 and "not an integer" in bad_key.stderr
    usage = cli("get", check=False)
    assert usage.returncode == 2 and "usage:" in usage.stderr


def test_stale_map_is_listed_adopted_or_cleaned_up(map_name: str) -> None:
    d = shmmap.Daemon(map_name).start()
    try:
        with d.connect() as m:
            m["kept"] = 1
        os.kill(d.pid, signal.SIGKILL)
        d.process.wait()
        row = [r for r in json.loads(cli("ls", "--json").stdout) if r["name"] == map_name]
        assert row[0]["state"] == "stale"
        with shmmap.Daemon(map_name) as again, again.connect() as m:
            assert m["kept"] == 1                       # adopted by default
        # ... and after a crash once more, --fresh starts empty.
        d2 = shmmap.Daemon(map_name).start()
        os.kill(d2.pid, signal.SIGKILL)
        d2.process.wait()
        with shmmap.Daemon(map_name, fresh=True) as fresh, fresh.connect() as m:
            assert len(m) == 0
        d3 = shmmap.Daemon(map_name).start()
        os.kill(d3.pid, signal.SIGKILL)
        d3.process.wait()
        out = cli("cleanup", map_name).stdout
        assert "removed /shmmap-" + map_name in out
        assert segments.map_segments(map_name) == []
    finally:
        d.stop()


def test_cleanup_leaves_a_live_map_alone(map_name: str) -> None:
    with shmmap.Daemon(map_name), shmmap.connect(map_name) as m:
        done = cli("cleanup", map_name, check=False)
        assert done.returncode == 1 and "live daemon" in done.stderr
        m["still"] = "here"
        assert m["still"] == "here"


@pytest.mark.parametrize("command", ["demo", "soak"])
def test_demo_and_soak_run_end_to_end(command: str, tmp_path: object) -> None:
    out = os.path.join(str(tmp_path), "summary.json")
    done = cli(command, "--keys", "2000", "--readers", "2", "--writers", "1",
               "--duration", "2", "--json", out, "-q")
    assert "consistency checks" in done.stdout
    summary = json.load(open(out))
    assert summary["consistency_checks_failed"] == 0 and summary["iterations"] > 0
    assert summary["final_sum_ok"] and summary["writes_per_s"] > 0


def test_quickstart_client_runs() -> None:
    script = os.path.join(os.path.dirname(__file__), "..", "clients", "quickstart.py")
    done = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "compare_and_swap: True" in done.stdout and "1000 keys" in done.stdout
    assert segments.map_segments("quickstart") == []
