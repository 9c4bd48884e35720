"""``shmmap top NAME``: a live view of a running map, one frame a second.

Each frame compares two snapshots of the daemon (Op.TIMINGS: stats() and
the timing histograms at one moment): rates are the counters' differences
over the time between them, and the latency quantiles are those of the
requests served in between (from the histograms' bucket counts, as
Prometheus' histogram_quantile estimates them).
"""
from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from typing import Any, Optional, TextIO

from ..client.map import SharedMap, connect
from ..shared.protocol import Op
from .format import human_bytes, quantile, requests_between, summed

CLEAR = "\x1b[H\x1b[J"          # cursor home, clear to the end of the screen
TOP_OPS = 4                     # operations listed by request rate


def sample(m: SharedMap) -> dict[str, Any]:
    """One snapshot of the daemon, with the local time it was taken."""
    m.refresh()             # so that the daemon does not count top's own old generation
    snap: dict[str, Any] = m._request(Op.TIMINGS)
    snap["at"] = time.monotonic()
    return snap


def frame(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What one frame shows, as numbers (also what --json prints)."""
    seconds = max(after["at"] - before["at"], 1e-9)
    a, b = before["stats"], after["stats"]

    def rate(key: str) -> float:
        return (b[key] - a[key]) / seconds

    lookups, misses = b["lookups"] - a["lookups"], b["misses"] - a["misses"]
    per_op = requests_between(before, after)
    total = summed(per_op)
    ops = sorted(({"op": op, "per_s": sum(counts) / seconds,
                   "p50_us": _us(quantile(counts, 0.5)), "p99_us": _us(quantile(counts, 0.99))}
                  for op, counts in per_op.items()), key=lambda o: -o["per_s"])
    return {
        "map": b["name"], "pid": b["pid"], "uptime_s": b["uptime_s"],
        "time": datetime.now().strftime("%H:%M:%S"), "interval_s": round(seconds, 3),
        "writes_per_s": rate("writes"), "lookups_per_s": rate("lookups"),
        "misses_per_s": rate("misses"), "requests_per_s": rate("requests"),
        "miss_ratio": misses / lookups if lookups else 0.0,
        "promotions": b["promotions"], "promotions_in_interval": b["promotions"] - a["promotions"],
        "promotions_by_reason": b["promotions_by_reason"],
        "last_promotion_ms": b["last_promotion_ms"],
        "generation": b["generation"], "live_keys": b["live_keys"], "live_bytes": b["live_bytes"],
        "dirty_keys": b["dirty_keys"], "segment_bytes": b["segment_bytes"],
        "clients": b["clients"], "older_generations_mapped": b["older_generations_mapped"],
        "request_p50_us": _us(quantile(total, 0.5)), "request_p99_us": _us(quantile(total, 0.99)),
        "ops": ops,
        **({"upstream": b["upstream"]} if "upstream" in b else {}),
    }


def _us(seconds: Optional[float]) -> Optional[float]:
    return None if seconds is None else round(seconds * 1e6, 1)


def render(f: dict[str, Any]) -> str:
    """A frame as text, about 12 lines of up to 80 columns."""
    reasons = ", ".join(f"{r} {n}" for r, n in sorted(f["promotions_by_reason"].items()))
    lines = [
        f"shmmap top - map {f['map']!r}, daemon pid {f['pid']}, up {_duration(f['uptime_s'])}"
        f"{f['time']:>12}",
        "",
        f"writes/s   {_n(f['writes_per_s']):>12}    live keys  {f['live_keys']:>14,}",
        f"lookups/s  {_n(f['lookups_per_s']):>12}    "
        f"live bytes {human_bytes(f['live_bytes']):>14}",
        f"misses/s   {_n(f['misses_per_s']):>12}    dirty keys {f['dirty_keys']:>14,}"
        f"   ({f['miss_ratio']:.1%} of lookups missed)",
        f"requests/s {_n(f['requests_per_s']):>12}    "
        f"segment    {human_bytes(f['segment_bytes']):>14}"
        f"   (generation {f['generation']})",
        "",
        f"clients {f['clients']}    older generations still mapped {f['older_generations_mapped']}",
        f"promotions {f['promotions']:,} ({reasons or 'none'}), "
        f"{f['promotions_in_interval']} in the last {f['interval_s']:.1f} s, "
        f"last took {f['last_promotion_ms']:,.1f} ms",
        f"request latency in the daemon  p50 {_lat(f['request_p50_us'])}  "
        f"p99 {_lat(f['request_p99_us'])}",
    ]
    for o in f["ops"][:TOP_OPS]:
        lines.append(f"  {o['op']:<20} {_n(o['per_s']):>10}/s   p50 {_lat(o['p50_us'])}  "
                     f"p99 {_lat(o['p99_us'])}")
    if "upstream" in f:
        lines += ["", *_upstream_lines(f["upstream"])]
    return "\n".join(lines)


def _upstream_lines(up: dict[str, Any]) -> list[str]:
    """A near cache's state and counters (serve --upstream)."""
    since = datetime.fromtimestamp(up["since"]).strftime("%H:%M:%S")
    synced = (datetime.fromtimestamp(up["last_sync"]).strftime("%H:%M:%S")
              if up["last_sync"] else "never")
    skipped = ", ".join(f"{k} {n}" for k, n in sorted(up["skipped_keys"].items()))
    w, lag = up["write_ms"], up["lag_ms"]
    return [
        f"upstream {up['url']} {up['state'].upper()} since {since}"
        f"{'  (STALE: writes refused)' if up['stale'] else ''}, last sync {synced}",
        f"  invalidations {up['invalidations']:,}  refetched {up['keys_refetched']:,}  "
        f"resyncs {up['resyncs']}  reconnects {up['reconnects']}"
        f"{f'  skipped {skipped}' if skipped else ''}",
        f"  writes {up['writes']:,} (failed {up['write_failures']:,})  round trip mean "
        f"{w['mean']:,.2f} ms max {w['max']:,.2f} ms  lag {lag['last']:,.2f} ms",
    ]


def _n(x: float) -> str:
    return f"{x:,.0f}"


def _lat(us: Optional[float]) -> str:
    if us is None:
        return "-"
    return f"{us:,.0f} us" if us < 10_000 else f"{us / 1000:,.1f} ms"


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def run(name: str, *, interval: float = 1.0, once: bool = False, as_json: bool = False,
        count: int = 0, out: TextIO = sys.stdout) -> int:
    """Shows frames until Ctrl-C (or count frames; one with once). On a
    terminal each frame replaces the last; elsewhere frames follow each
    other, separated by a blank line (JSON: one object per line)."""
    redraw = out.isatty() and not as_json and not once
    shown = 0
    with connect(name) as m:
        before = sample(m)
        try:
            while True:
                time.sleep(interval)
                after = sample(m)
                if after["stats"]["pid"] != before["stats"]["pid"]:
                    before = after      # a new daemon: its counters start again
                    continue
                f = frame(before, after)
                before = after
                if as_json:
                    out.write(json.dumps(f) + "\n")
                else:
                    out.write((CLEAR if redraw else ("\n" if shown else "")) + render(f) + "\n")
                out.flush()
                shown += 1
                if once or (count and shown >= count):
                    return 0
        except KeyboardInterrupt:       # how a live view is left: not an error
            return 0
