"""Numbers as the command line shows them: byte counts, and the latency
quantiles of the daemon's histograms (Op.TIMINGS snapshots)."""
from __future__ import annotations

from typing import Any, Optional

from ..shared.protocol import BUCKET_BOUNDS


def human_bytes(n: float) -> str:
    """n bytes as B, KiB, MiB, GiB or TiB with one decimal."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def quantile(counts: list[int], q: float) -> Optional[float]:
    """The q-quantile (0..1) of a histogram's per-bucket counts, linearly
    interpolated inside its bucket (as Prometheus' histogram_quantile);
    None without observations. In the +Inf bucket: the last bound."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i == len(BUCKET_BOUNDS):
                return BUCKET_BOUNDS[-1]
            low = BUCKET_BOUNDS[i - 1] if i else 0.0
            return low + (BUCKET_BOUNDS[i] - low) * (rank - seen) / n
        seen += n
    return BUCKET_BOUNDS[-1]


def counts_between(before: dict[str, Any], after: dict[str, Any]) -> list[int]:
    """Per-bucket observations made between two Histogram snapshots."""
    return [b - a for a, b in zip(before["counts"], after["counts"])]


def requests_between(before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[int]]:
    """{op: per-bucket counts} of the requests timed between two
    Timings.snapshot()s (ops with none left out)."""
    out = {}
    for op, hist in after["request_seconds"].items():
        old = before["request_seconds"].get(op, {"counts": [0] * len(hist["counts"])})
        counts = counts_between(old, hist)
        if sum(counts):
            out[op] = counts
    return out


def summed(per_op: dict[str, list[int]]) -> list[int]:
    """The bucket counts of every operation together."""
    return [sum(c) for c in zip(*per_op.values())] if per_op else []
