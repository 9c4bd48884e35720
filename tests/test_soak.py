"""A short soak: 8 iterating readers and 2 writers on one map, every
iteration checked (the total of all values, the key count, no duplicate
key). `shmmap soak --duration 600` runs the long one."""
from __future__ import annotations

import os

from shmmap.cli.demo import run_demo

SECONDS = float(os.environ.get("SHMMAP_SOAK_SECONDS", "15"))


def test_soak_8_readers_2_writers_keeps_every_invariant(map_name: str) -> None:
    summary = run_demo(keys=20_000, readers=8, writers=2, duration=SECONDS, name=map_name,
                       progress=False)
    assert summary["errors"] == []
    assert summary["consistency_checks_failed"] == 0
    assert summary["consistency_checks_passed"] >= 8
    assert summary["final_sum_ok"]
    assert summary["writes_per_s"] > 0 and summary["gets_per_s"] > 0
