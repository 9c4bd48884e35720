"""The client's cache of decoded objects (shmmap.client.cache), over a real daemon:
reads follow every write, promotion and clear; an iteration keeps its
instant while the cache refreshes; a batch is seen whole; the memory bound
holds; a closed map stays closed. The model across processes is in
test_cache_model.py."""
from __future__ import annotations

import gc
import multiprocessing as mp
import os
import pickle
import threading
import time
import tracemalloc
from itertools import islice
from typing import Any, Iterator

import pytest

import shmmap
from shmmap import MapClosedError
from shmmap.client.cache import LOAD_AFTER_LOOKUPS

CTX = mp.get_context("spawn")


@pytest.fixture
def daemon(map_name: str) -> Iterator[shmmap.Daemon]:
    with shmmap.Daemon(map_name) as d:
        yield d


def _cache(m: shmmap.SharedMap) -> dict[str, Any]:
    return m.stats()["cache"]


def _load(m: shmmap.SharedMap) -> None:
    """Loads m's cache (an iteration does) and checks that it did."""
    for _ in m.items():
        pass
    assert _cache(m)["state"] == "cached"


def _same_as(m: shmmap.SharedMap, model: dict[Any, Any]) -> None:
    assert dict(m.items()) == model
    assert sorted(m.keys(), key=repr) == sorted(model, key=repr)
    assert sorted(m.values(), key=repr) == sorted(model.values(), key=repr)
    assert len(m) == len(model)
    assert m.snapshot() == model
    for k, v in model.items():
        assert m[k] == v and m.get(k) == v and k in m
    assert m.get("absent", 7) == 7 and "absent" not in m
    with pytest.raises(KeyError):
        m["absent"]


def test_cached_reads_follow_another_clients_writes(daemon: shmmap.Daemon) -> None:
    with daemon.connect() as writer, daemon.connect() as reader:
        writer.update({i: i for i in range(100)})
        _load(reader)
        model = {i: i for i in range(100)}
        writer[5] = "five"
        writer[500] = [1, {"a": None}]
        del writer[6]
        with writer.batch() as b:
            b[7] = None
            b[("t", 1)] = b"bytes"
            del b[8]
        model.update({5: "five", 500: [1, {"a": None}], 7: None, ("t", 1): b"bytes"})
        del model[6], model[8]
        _same_as(reader, model)
        stats = _cache(reader)
        assert stats["loads"] == 1 and stats["refreshes"] >= 1
        assert stats["keys"] == len(model)
        # A key changed many times between two reads is reported once.
        for i in range(50):
            writer[9] = i
        before = _cache(reader)["changed_keys"]
        assert reader[9] == 49
        assert _cache(reader)["changed_keys"] == before + 1


def test_a_process_reads_its_own_writes_through_its_cache(daemon: shmmap.Daemon) -> None:
    with daemon.connect() as m:
        m.update({i: -i for i in range(10)})
        _load(m)
        for i in range(200):
            m[i % 10] = i
            assert m[i % 10] == i
            m.delete(i % 10)
            assert (i % 10) not in m
            m[i % 10] = i


def test_an_iteration_keeps_its_instant_while_the_cache_refreshes(
        daemon: shmmap.Daemon) -> None:
    with daemon.connect() as m:
        m.update({i: i for i in range(1000)})
        _load(m)
        it = iter(m.items())
        taken = [next(it) for _ in range(10)]
        m.update({i: -1 for i in range(1000)})      # refreshes on the next read
        del m[999]
        m[1000] = "new"
        assert m[0] == -1 and 999 not in m          # the cache is current ...
        rest = list(it)                             # ... the iteration is not
        assert dict(taken + rest) == {i: i for i in range(1000)}
        assert len(taken + rest) == 1000
        assert _cache(m)["copies"] >= 1
        assert dict(m.items()) == {**{i: -1 for i in range(999)}, 1000: "new"}


def test_an_iteration_finished_lets_the_cache_change_in_place(daemon: shmmap.Daemon) -> None:
    with daemon.connect() as m:
        m.update({i: i for i in range(100)})
        _load(m)
        for _ in range(5):
            for _ in m.items():
                pass
            m[1] = "x"
            assert m[1] == "x"
        assert _cache(m)["copies"] == 0


def test_promotions_are_followed_without_reloading(daemon: shmmap.Daemon) -> None:
    with daemon.connect() as writer, daemon.connect() as reader:
        writer.update({i: i for i in range(100)})
        _load(reader)
        model = {i: i for i in range(100)}
        gen = reader.stats()["cache"]["generation"]
        for round_ in range(3):
            writer[round_] = "before"          # in the old generation's tail
            writer.promote()
            writer[round_ + 50] = "after"      # in the new one
            model.update({round_: "before", round_ + 50: "after"})
            _same_as(reader, model)
        stats = _cache(reader)
        assert stats["loads"] == 1 and stats["generation"] == gen + 3
        writer.promote()
        writer.promote()                        # two at once: loads again
        writer[0] = 0
        model[0] = 0
        _same_as(reader, model)
        assert _cache(reader)["loads"] == 2


def test_clear_is_seen_whole(daemon: shmmap.Daemon) -> None:
    with daemon.connect() as writer, daemon.connect() as reader:
        writer.update({i: i for i in range(100)})
        _load(reader)
        writer.clear()
        writer["after"] = 1
        _same_as(reader, {"after": 1})


def test_lookups_alone_load_the_cache(daemon: shmmap.Daemon) -> None:
    with daemon.connect() as m:
        m.update({i: i for i in range(100)})
        for i in range(LOAD_AFTER_LOOKUPS - 1):
            assert m[i % 100] == i % 100
        assert _cache(m)["state"] == "not loaded"
        for i in range(2):
            assert m.get(i) == i
        assert _cache(m)["state"] == "cached"


def test_the_key_limit_bounds_the_cache(daemon: shmmap.Daemon) -> None:
    with daemon.connect() as writer, daemon.connect(cache_keys=50) as reader:
        writer.update({i: i for i in range(100)})
        model = {i: i for i in range(100)}
        _same_as(reader, model)
        stats = _cache(reader)
        assert stats["state"] == "over limit" and stats["keys"] == 0
        for i in range(60):
            del writer[i]
            del model[i]
        _same_as(reader, model)                 # 40 keys: cached again
        assert _cache(reader)["state"] == "cached"
        writer.update({i: i for i in range(100, 120)})
        model.update({i: i for i in range(100, 120)})
        _same_as(reader, model)                 # 60 keys: dropped at the refresh
        stats = _cache(reader)
        assert stats["state"] == "over limit" and stats["keys"] == 0 and stats["drops"] == 1


def test_the_byte_limit_bounds_the_cache(daemon: shmmap.Daemon) -> None:
    with daemon.connect() as writer, daemon.connect(cache_bytes=10_000) as reader:
        writer.update({i: "x" * 200 for i in range(100)})       # about 20 kB encoded
        _same_as(reader, {i: "x" * 200 for i in range(100)})
        assert _cache(reader)["state"] == "over limit"


def test_cache_keys_zero_turns_the_cache_off(daemon: shmmap.Daemon) -> None:
    with daemon.connect() as writer, daemon.connect(cache_keys=0) as reader:
        writer.update({i: i for i in range(100)})
        for i in range(LOAD_AFTER_LOOKUPS * 2):
            assert reader[i % 100] == i % 100
        _same_as(reader, {i: i for i in range(100)})
        assert _cache(reader)["state"] == "off"


def _memory_held_after_reading(m: shmmap.SharedMap) -> int:
    """Bytes this process still holds after iterating m and reading every
    key (the cache's dict, if it keeps one)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        total = sum(v for _, v in m.items())
        total += sum(m[k] for k in range(len(m)))
        assert total > 0
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_over_its_limit_a_client_holds_no_copy_of_the_map(daemon: shmmap.Daemon) -> None:
    n = 20_000
    with daemon.connect() as writer:
        writer.update({i: i + 1_000_000 for i in range(n)})
    with daemon.connect() as cached, daemon.connect(cache_keys=n - 1) as bounded:
        held_cached = _memory_held_after_reading(cached)
        held_bounded = _memory_held_after_reading(bounded)
    # A dict of 20k int->int pairs (with their int objects) is over 1 MB;
    # bounded, what stays is the mappings' bookkeeping and a few buffers.
    assert held_cached > 40 * n, held_cached
    assert held_bounded < held_cached / 10, (held_bounded, held_cached)


def test_after_close_cached_reads_raise_and_a_started_iteration_finishes(
        daemon: shmmap.Daemon) -> None:
    m = daemon.connect()
    m.update({i: i for i in range(100)})
    _load(m)
    it = iter(m.items())
    next(it)
    m.close()
    for read in (lambda: m[1], lambda: m.get(1), lambda: 1 in m, lambda: len(m),
                 lambda: list(m.items()), lambda: list(m), lambda: m.snapshot(),
                 lambda: m.stats()):
        with pytest.raises(MapClosedError):
            read()
    assert len(list(it)) == 99


def _read_in_child(m: shmmap.SharedMap) -> tuple[Any, dict[str, Any]]:
    return dict(m.items()), m.stats()["cache"]


def test_a_pickled_map_keeps_its_cache_limits(daemon: shmmap.Daemon) -> None:
    with daemon.connect(cache_keys=10) as m:
        m.update({i: i for i in range(20)})
        copy = pickle.loads(pickle.dumps(m))
        try:
            assert copy.cache_limits == m.cache_limits
            with CTX.Pool(1) as pool:
                items, stats = pool.apply(_read_in_child, (m,))
            assert items == {i: i for i in range(20)}
            assert stats["state"] == "over limit" and stats["max_keys"] == 10
        finally:
            copy.close()


def test_a_forked_child_reads_through_the_inherited_cache(daemon: shmmap.Daemon) -> None:
    with daemon.connect() as m:
        m.update({i: i for i in range(100)})
        _load(m)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:                            # the child: report, never return
            ok = False
            try:
                m[0] = "child"
                ok = m[0] == "child" and dict(m.items()) == {**{i: i for i in range(100)},
                                                             0: "child"}
            finally:
                os.write(w, b"1" if ok else b"0")
                os._exit(0)
        os.close(w)
        try:
            assert os.read(r, 1) == b"1"
        finally:
            os.close(r)
            os.waitpid(pid, 0)
        assert m[0] == "child"


def _batch_writer(name: str, batches: int, width: int) -> None:
    with shmmap.connect(name) as m:
        for i in range(1, batches + 1):
            with m.batch() as b:
                for k in range(width):
                    b[k] = i
            if i % 40 == 0:
                m.promote()


def test_batches_are_seen_whole_while_another_process_writes(daemon: shmmap.Daemon) -> None:
    """Every iteration and every snapshot sees all keys of a batch at one
    value, and the value never goes back, while a writer process commits
    batches and promotions."""
    width, batches = 20, 400
    with daemon.connect() as m:
        m.update({k: 0 for k in range(width)})
        _load(m)
        p = CTX.Process(target=_batch_writer, args=(daemon.name, batches, width))
        p.start()
        try:
            last = 0
            while last < batches:
                for seen in ({v for _, v in m.items()}, set(m.snapshot().values()),
                             set(m.values())):
                    assert len(seen) == 1, seen
                    now = seen.pop()
                    assert now >= last
                    last = now
                assert m[width - 1] >= last
        finally:
            p.join(60)
            if p.is_alive():
                p.kill()
        assert p.exitcode == 0


def test_threads_read_and_iterate_while_another_writes(daemon: shmmap.Daemon) -> None:
    """Threads sharing one cache: each iteration sees every key of a batch
    at one value, each read sees values that never go back, while another
    thread writes batches (refreshes then copy the dict or change it in
    place, whichever is safe)."""
    width, batches = 50, 300
    failures: list[str] = []
    with daemon.connect() as m:
        m.update({k: 0 for k in range(width)})
        _load(m)
        done = threading.Event()

        def read() -> None:
            last = 0
            try:
                while not done.is_set():
                    it = iter(m.items())
                    values = {v for _, v in islice(it, 5)}
                    time.sleep(0.0002)      # lets the others run (and refresh) mid-iteration
                    values |= {v for _, v in it}
                    if len(values) != 1 or min(values) < last:
                        failures.append(f"iteration saw {sorted(values)} after {last}")
                        return
                    last = values.pop()
                    now = m[width // 2]
                    if now < last:
                        failures.append(f"m[k] went back from {last} to {now}")
                        return
            except BaseException as exc:           # reported by the main thread
                failures.append(repr(exc))

        readers = [threading.Thread(target=read) for _ in range(3)]
        for t in readers:
            t.start()
        try:
            for i in range(1, batches + 1):
                with m.batch() as b:
                    for k in range(width):
                        b[k] = i
        finally:
            done.set()
            for t in readers:
                t.join(60)
        assert failures == []
        assert set(m.values()) == {batches}
