"""The promotion policy, observed through stats(): promotion when readers'
misses pay for it, and amortized O(1) copying under the patterns that make
Go's sync.Map copy the whole map again and again."""
from __future__ import annotations

import time

import shmmap

POLL_SECONDS = 30.0       # bound on waiting for the daemon's periodic check


def test_misses_trigger_a_promotion(map_name: str) -> None:
    # Uncached: a client's cache reads its dict, and probes nothing.
    with shmmap.Daemon(map_name) as d, d.connect(cache_keys=0) as m:
        m.update({i: i for i in range(2000)})     # all in the dirty table
        before = m.stats()["promotions_by_reason"].get("misses", 0)
        deadline = time.monotonic() + POLL_SECONDS
        while m.stats()["promotions_by_reason"].get("misses", 0) == before:
            assert time.monotonic() < deadline, "no promotion for misses"
            for k in range(2000):                 # each read misses the read table
                assert m[k] == k
        st = m.stats()
        assert st["misses"] >= 2000 * 4
        assert m.refresh().header.read_count == 2000      # now all read-table hits


def test_insert_then_iterate_does_not_copy_the_map_per_insert(map_name: str) -> None:
    """Go's sync.Map: Range promotes, the next Store copies every key."""
    with shmmap.Daemon(map_name) as d, d.connect() as m:
        m.update({i: i for i in range(20_000)})
        m.promote()
        base = m.stats()
        for i in range(20_000, 23_000):
            m[i] = i
            next(iter(m.items()))                 # iterate, stopping after one
            if i % 500 == 0:
                assert sum(1 for _ in m.items()) == i + 1
        st = m.stats()
        assert st["promotions"] - base["promotions"] <= 1
        assert st["bytes_copied"] - base["bytes_copied"] <= 2 * st["arena_used"]


def test_delete_insert_churn_is_amortized(map_name: str) -> None:
    """Go's BenchmarkAdversarialDelete: delete one key, insert another."""
    n, churn = 5_000, 30_000
    with shmmap.Daemon(map_name) as d, d.connect() as m:
        m.update({i: i for i in range(n)})
        m.promote()
        base = m.stats()
        for i in range(churn):
            with m.batch() as b:
                del b[i]
                b[n + i] = i
        st = m.stats()
        assert len(m) == n and m[n + churn - 1] == churn - 1
        promotions = st["promotions"] - base["promotions"]
        copied_per_op = (st["bytes_copied"] - base["bytes_copied"]) / churn
        # A promotion copies the ~n live entries, and the next comes only
        # after about n more inserts (dirty table) or as many bytes of new
        # versions and tombstones as it copied (arena): so copying is a
        # constant per write, not O(n) as in sync.Map.
        assert promotions <= 2 * churn // n + 2
        assert copied_per_op <= 4 * st["arena_used"] / n
