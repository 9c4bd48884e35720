"""m.pipeline(): writes sent in bursts, acknowledged by sync() and at the
block's end; each write applied on its own and in order; read-your-writes
once synced, in this process and in another."""
from __future__ import annotations

import multiprocessing as mp

import pytest

import shmmap
from shmmap.client.map import PIPELINE_WRITES

CTX = mp.get_context("spawn")


def _read_in_child(name: str, keys: list[int], q: mp.Queue[object]) -> None:
    with shmmap.connect(name) as m:
        q.put([m.get(k) for k in keys])


def test_pipeline_writes_are_applied_in_order_and_visible_after_sync(map_name: str) -> None:
    n = PIPELINE_WRITES * 3 + 17            # several bursts and a partial one
    with shmmap.Daemon(map_name) as d, d.connect() as m:
        seq_before = m.stats()["committed_seq"]
        with m.pipeline() as p:
            for i in range(n):
                p[i] = i
            for i in range(0, n, 2):
                del p[i]
            p.store("x", 1)
            p.store("x", 2)                 # in order: the last one wins
            p.delete("absent")              # no error, as delete()
        expected = {i: i for i in range(1, n, 2)}
        expected["x"] = 2
        assert m.snapshot() == expected
        # every write its own request: its own seq
        assert m.stats()["committed_seq"] - seq_before == n + (n + 1) // 2 + 3


def test_sync_gives_read_your_writes_to_other_processes(map_name: str) -> None:
    with shmmap.Daemon(map_name) as d, d.connect() as m:
        p = m.pipeline()
        for i in range(10):
            p[i] = i * 10
        p.sync()
        q = CTX.Queue()
        child = CTX.Process(target=_read_in_child, args=(map_name, list(range(10)), q))
        child.start()
        try:
            assert q.get(timeout=60) == [i * 10 for i in range(10)]
        finally:
            child.join(30)
            if child.is_alive():
                child.kill()
                child.join()
        p.sync()                            # nothing left to send: no-op


def test_an_error_is_raised_by_sync_and_the_other_writes_applied(map_name: str) -> None:
    with shmmap.Daemon(map_name, max_value=100) as d, d.connect() as m:
        with pytest.raises(shmmap.LimitError):
            with m.pipeline() as p:
                p["a"] = 1
                p["big"] = "x" * 200            # over --max-value: the daemon refuses it
                p["b"] = 2
        assert m.snapshot() == {"a": 1, "b": 2}


def test_a_bad_key_raises_at_once_and_an_exception_still_syncs(map_name: str) -> None:
    with shmmap.Daemon(map_name) as d, d.connect() as m:
        with pytest.raises(ZeroDivisionError):
            with m.pipeline() as p:
                p["a"] = 1
                with pytest.raises(TypeError):
                    p[1.5] = 2                  # encoded as it is made
                raise ZeroDivisionError
        assert m.snapshot() == {"a": 1}         # made before the exception: applied


def test_pipeline_of_a_closed_map(map_name: str) -> None:
    with shmmap.Daemon(map_name) as d:
        m = d.connect()
        p = m.pipeline()
        p["a"] = 1
        m.close()
        with pytest.raises(shmmap.MapClosedError):
            p.sync()
        with pytest.raises(shmmap.MapClosedError):
            m.pipeline()
