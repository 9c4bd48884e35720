"""The article's system as a peer: Go's sync.Map, in one Go process.

The Go program (gosyncmap/main.go beside this file) runs the "writer under
iteration load" scenario itself: Range in a loop, in turns idle and while
a goroutine writes half overwrites and half new keys (as writes.py does for
the other systems). It is built with the Go
toolchain found here, into a temporary directory, offline, at bench time.
Go 1.19 has the read/dirty sync.Map the article measured; Go 1.24 replaced
it with a trie, so the version that ran goes into every result."""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Optional

from .scenarios import Result

NAME = "Go sync.Map (in-process)"
SOURCE = Path(__file__).with_name("gosyncmap")
BUILD_TIMEOUT = 300.0
# The article's Go first: the read/dirty sync.Map that Go 1.24 replaced.
_PREFERRED = ["/usr/lib/go-1.19/bin/go"]


def find_go() -> Optional[str]:
    """The go binary to use: Debian's Go 1.19 if installed, else `go` on
    PATH, else any other Debian golang-1.x; None when there is none."""
    for candidate in _PREFERRED + [shutil.which("go") or ""] + sorted(
            glob.glob("/usr/lib/go-1.*/bin/go"), reverse=True):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def why_missing() -> Optional[str]:
    if not (SOURCE / "main.go").is_file():
        return f"its source {SOURCE / 'main.go'} is missing from this installation"
    if find_go() is None:
        return "no Go toolchain (apt-get install golang-1.19-go, the article's Go)"
    return None


def _build(go: str, workdir: str) -> str:
    binary = os.path.join(workdir, "gosyncmap")
    env = dict(os.environ, GOCACHE=os.path.join(workdir, "cache"),
               GOPATH=os.path.join(workdir, "gopath"), GOPROXY="off", GOFLAGS="",
               GOTOOLCHAIN="local", CGO_ENABLED="0", GO111MODULE="on")
    done = subprocess.run([go, "build", "-o", binary, "."], cwd=SOURCE, env=env,
                          capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"go build failed: {done.stderr.strip()[-500:]}")
    return binary


def run(keys: int, duration: float) -> list[Result]:
    """Builds and runs the Go program; its two results, or one FAILED row."""
    go = find_go()
    if go is None:
        return []
    scratch = tempfile.mkdtemp(prefix="shmmap-bench-go-")
    try:
        binary = _build(go, scratch)
        done = subprocess.run([binary, "-keys", str(keys), "-duration", f"{duration}s"],
                              capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT + 10 * duration)
        if done.returncode != 0:
            raise RuntimeError(f"gosyncmap exited {done.returncode}: {done.stderr.strip()}")
        report: dict[str, Any] = json.loads(done.stdout)
    except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
        return [Result("writer under iteration", NAME, keys, None, "writes/s",
                       f"FAILED: {exc}")]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return results_from(report)


def results_from(report: dict[str, Any]) -> list[Result]:
    """The Go program's JSON as the bench's two rows for this scenario."""
    keys, check = report["keys"], report["check"]
    idle, load = report["idle"], report["under_load"]
    # Per entry seen, as ms for the map's starting keys: the writer's new
    # keys grow the map under load (see writes._ms_at).
    idle_ms, load_ms, p99_ms = (idle["p50_ns_per_entry"] * keys / 1e6,
                                load["p50_ns_per_entry"] * keys / 1e6,
                                load["p99_ns_per_entry"] * keys / 1e6)
    ratio = load_ms / idle_ms if idle_ms else None
    common = {"go_version": report["go_version"], "gomaxprocs": report["gomaxprocs"]}
    iteration = Result(
        "iteration under 1 writer", NAME, keys, round(load_ms, 3), "ms", check,
        extra={**common, "p50_ms": round(load_ms, 3), "p99_ms": round(p99_ms, 3),
               "idle_p50_ms": round(idle_ms, 3),
               "under_load_vs_idle": None if ratio is None else round(ratio, 2),
               "keys_seen_p50": load["p50_entries_seen"],
               "whole_p50_ms": round(load["p50_ms"], 3),
               "iterations": load["iterations"],
               "summary": f"per {keys:,} keys; idle {idle_ms:.2f} ms, {ratio or 0:.2f}x idle "
                          f"under load (median Range {load['p50_entries_seen']:,} entries); "
                          f"{report['go_version']}"})
    writer = Result(
        "writer under iteration", NAME, keys, round(report["writes_per_s"]), "writes/s", check,
        extra={**common, "cpu_us_per_write": round(report["writer_cpu_us_per_write"], 2),
               "process_cpu_us_per_write": round(report["process_cpu_us_per_write"], 2),
               "writes": report["writes"],
               "summary": f"CPU {report['writer_cpu_us_per_write']:.2f} us/write (writer "
                          f"thread); {report['go_version']}"})
    return [iteration, writer]
