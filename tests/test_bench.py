"""`shmmap bench` end to end at a tiny size: every installed peer runs,
the JSON is valid, the plot is drawn, nothing is left behind."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from shmmap.bench.peers import PEERS


def _shm_entries() -> set[str]:
    return set(os.listdir("/dev/shm"))


def test_bench_quick_run(tmp_path: Path) -> None:
    before = _shm_entries()
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    done = subprocess.run(
        [sys.executable, "-m", "shmmap", "bench", "--quick", "--duration", "0.2",
         "--json", str(out), "--plot", str(png)],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    results = report["results"]
    ran = {r["system"] for r in results}
    for cls in PEERS:
        if cls.available():
            assert cls.name in ran, f"{cls.name} is installed but did not run"
        else:
            assert any(cls.name in line for line in report["skipped"])
    shm = [r for r in results if r["system"] == "shmmap"]
    assert {r["scenario"] for r in shm} >= {
        "iterate idle", "iterate under load", "get", "set, synchronous",
        "set, batches of 1000", "iteration vs keys", "insert + iterate fully",
        "insert + iterate first item", "delete + insert churn"}
    assert all(r["check"] == "ok" for r in shm), [r for r in shm if r["check"] != "ok"]
    assert all(r["check"] in ("ok",) or r["check"].startswith(("n/a", "FAILED"))
               for r in results)
    assert any(line.startswith(("PASS", "MISS")) for line in report["verdicts"])
    assert "scenario" in done.stdout and "shmmap" in done.stdout
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not png.exists()
    else:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    left = {e for e in _shm_entries() - before if not any(e.startswith(b) for b in before)}
    assert not left, f"the bench left shared memory behind: {sorted(left)}"
    assert not list(Path("/tmp").glob("shmmap-bench-lmdb-*"))
