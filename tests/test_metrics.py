"""`shmmap serve --metrics`: a real daemon's /metrics, parsed with
prometheus_client's own parser and checked against stats()."""
from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import shmmap
from shmmap import DaemonStartError
from shmmap.server.metrics import MetricsServer, parse_address
from shmmap.shared import segments

from test_cli import fails


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """{sample name: {sorted labels: value}} of one scrape."""
    with urllib.request.urlopen(url, timeout=30) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def one(samples: dict[str, Any], name: str, map_name: str, **labels: str) -> float:
    return samples[name][tuple(sorted({"map": map_name, **labels}.items()))]


def test_metrics_match_stats_at_the_same_moment(map_name: str) -> None:
    # uncached: reads the cache serves never reach shared memory, so count nothing
    with shmmap.Daemon(map_name, metrics="127.0.0.1:0") as d, d.connect(cache_keys=0) as m:
        m.update((i, i) for i in range(500))        # one BATCH request
        for i in range(200):
            m[f"k{i}"] = i                          # 200 BATCH requests
        m.promote()
        m["dirty"] = 1
        for i in range(50):
            m.get("dirty")                          # misses: "dirty" is in the dirty table
            m.get(i)
        m.swap("k1", 2)
        st = m.stats()
        samples = scrape(st["metrics_url"])
    url = st["metrics_url"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
    # Nothing happened between the two (the test is the only client).
    for metric, key in (("shmmap_writes_total", "writes"), ("shmmap_lookups_total", "lookups"),
                        ("shmmap_misses_total", "misses"), ("shmmap_live_keys", "live_keys"),
                        ("shmmap_clients", "clients"), ("shmmap_requests_total", "requests"),
                        ("shmmap_bytes_copied_total", "bytes_copied"),
                        ("shmmap_older_generations_mapped", "older_generations_mapped"),
                        ("shmmap_generation", "generation"), ("shmmap_live_bytes", "live_bytes"),
                        ("shmmap_dirty_keys", "dirty_keys"),
                        ("shmmap_committed_seq", "committed_seq")):
        assert one(samples, metric, map_name) == st[key], metric
    assert st["writes"] == 203 and st["live_keys"] == 701 and st["misses"] >= 50
    assert st["lookups"] >= 100 and st["clients"] == 1
    assert one(samples, "shmmap_promotions_total", map_name, reason="requested") == 1
    assert one(samples, "shmmap_promotions_total", map_name, reason="full") == \
        st["promotions_by_reason"].get("full", 0)
    assert sum(samples["shmmap_promotions_total"].values()) == st["promotions"]
    # The request histogram, by operation: every request so far was timed.
    count = samples["shmmap_request_duration_seconds_count"]
    assert one(samples, "shmmap_request_duration_seconds_count", map_name, op="BATCH") == 202
    assert one(samples, "shmmap_request_duration_seconds_count", map_name, op="SWAP") == 1
    assert one(samples, "shmmap_request_duration_seconds_count", map_name, op="PROMOTE") == 1
    # The STATS request too: timed once its reply was sent, before the scrape.
    assert sum(count.values()) == st["requests"]
    assert one(samples, "shmmap_request_duration_seconds_count", map_name, op="STATS") == 1
    buckets = {k: v for k, v in samples["shmmap_request_duration_seconds_bucket"].items()
               if ("op", "BATCH") in k}
    by_le = sorted(((float(dict(k)["le"]), v) for k, v in buckets.items()))
    assert by_le[-1] == (float("inf"), 202)
    assert all(a[1] <= b[1] for a, b in zip(by_le, by_le[1:]))      # cumulative
    assert one(samples, "shmmap_request_duration_seconds_sum", map_name, op="BATCH") > 0
    promo = one(samples, "shmmap_promotion_duration_seconds_count", map_name)
    assert promo == st["promotions"]
    # stats() rounds milliseconds to 3 decimals
    assert one(samples, "shmmap_promotion_duration_seconds_sum", map_name) >= \
        (st["last_promotion_ms"] - 0.001) / 1000
    assert one(samples, "shmmap_round_requests_total", map_name) == st["requests"]
    rounds = one(samples, "shmmap_round_duration_seconds_count", map_name)
    assert 0 < rounds <= st["requests"]


def test_scrapes_while_writes_go_on_are_each_one_moment(map_name: str) -> None:
    """Scrapes from threads, as fast as they come, during writes: every
    write is acknowledged, and each scrape's counters never go back."""
    with shmmap.Daemon(map_name, metrics="0") as d, d.connect() as m:
        url = m.stats()["metrics_url"]
        seen: list[float] = []
        errors: list[BaseException] = []
        done = threading.Event()

        def scraper() -> None:
            try:
                while not done.is_set():
                    s = scrape(url)
                    seen.append(one(s, "shmmap_writes_total", map_name))
                    assert one(s, "shmmap_committed_seq", map_name) >= seen[-1]
            except BaseException as exc:        # reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=scraper) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            for i in range(2000):
                m[i] = i
        finally:
            done.set()
            for t in threads:
                t.join()
        assert not errors, errors
        assert len(seen) >= 2
        assert one(scrape(url), "shmmap_writes_total", map_name) == 2000 == m.stats()["writes"]


def test_a_port_in_use_refuses_the_start_and_creates_nothing(map_name: str) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        with pytest.raises(DaemonStartError, match=f"--metrics 127.0.0.1:{port}: cannot listen"):
            shmmap.Daemon(map_name, metrics=f"127.0.0.1:{port}").start()
    finally:
        taken.close()
    assert segments.map_segments(map_name) == []


def test_a_bad_address_is_a_usage_error() -> None:
    assert "is not HOST:PORT" in fails("serve", "m", "--metrics", "localhost:http", status=2)
    assert parse_address("9100") == ("127.0.0.1", 9100)
    assert parse_address("0.0.0.0:9100") == ("0.0.0.0", 9100)
    assert parse_address("[::1]:9100") == ("::1", 9100)
    assert parse_address(":9100") == ("127.0.0.1", 9100)
    with pytest.raises(ValueError):
        parse_address("127.0.0.1:70000")


def test_metrics_stop_with_the_daemon(map_name: str) -> None:
    with shmmap.Daemon(map_name, metrics="0") as d, d.connect() as m:
        url = m.stats()["metrics_url"]
        assert "shmmap_writes_total" in urllib.request.urlopen(url, timeout=30).read().decode()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=30)


def test_a_scrape_the_daemon_cannot_answer_is_a_503_not_a_traceback() -> None:
    """Before the loop serves (and once it stops) a scrape gets a one-line
    503 from the endpoint."""
    server = MetricsServer("127.0.0.1:0")
    try:
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(server.url, timeout=30)
        assert caught.value.code == 503
        assert caught.value.read() == b"shmmap: the daemon is not serving yet\n"
    finally:
        server.close()
