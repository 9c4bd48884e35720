"""A model of the map with the cache on, across processes: random
interleavings of writes, batches, promotions, clears, gets and iterations
(some of them held open across later writes) in several reader processes,
each reading through its loaded cache. The cache never returns anything but
the snapshot's value: a read after an acknowledged write sees it, and an
iteration sees the map as of its start, whole."""
from __future__ import annotations

import multiprocessing as mp
import traceback
from itertools import islice
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import shmmap

CTX = mp.get_context("spawn")
READERS = 2
REPLY_SECONDS = 60.0
ABSENT = ("<absent>",)

keys = st.one_of(st.integers(-2, 8), st.sampled_from(["a", "b"]),
                 st.tuples(st.integers(0, 1), st.sampled_from(["x", "y"])))
values = st.one_of(st.none(), st.integers(-3, 3), st.text(max_size=3),
                   st.lists(st.integers(0, 2), max_size=2),
                   st.dictionaries(st.sampled_from(["p", "q"]), st.integers(0, 2), max_size=2))
reader_ids = st.integers(0, READERS - 1)
ops = st.one_of(
    st.tuples(st.just("store"), keys, values),
    st.tuples(st.just("delete"), keys),
    st.tuples(st.just("batch"), st.lists(st.tuples(keys, st.one_of(st.just(ABSENT), values)),
                                         min_size=1, max_size=4)),
    st.tuples(st.just("promote")),
    st.tuples(st.just("clear")),
    st.tuples(st.just("get"), reader_ids, keys),
    st.tuples(st.just("read_all"), reader_ids),
    st.tuples(st.just("iter_start"), reader_ids, st.integers(0, 3)),
    st.tuples(st.just("iter_finish"), reader_ids),
    st.tuples(st.just("reader_store"), reader_ids, keys, values),
)


def _reader_main(name: str, conn: Any) -> None:
    """Serves commands over conn with its own cached map until "stop"."""
    m = shmmap.connect(name)
    open_iter: Any = None
    taken: list[Any] = []
    try:
        for _ in m.items():             # loads the cache
            pass
        while True:
            cmd = conn.recv()
            try:
                if cmd[0] == "stop":
                    break
                if cmd[0] == "get":
                    reply: Any = (m.get(cmd[1], ABSENT), cmd[1] in m)
                elif cmd[0] == "read_all":
                    reply = (list(m.items()), len(m), m.snapshot())
                elif cmd[0] == "iter_start":
                    open_iter = iter(m.items())
                    taken = list(islice(open_iter, cmd[1]))
                    reply = None
                elif cmd[0] == "iter_finish":
                    reply = taken + list(open_iter)
                    open_iter, taken = None, []
                elif cmd[0] == "reader_store":
                    m[cmd[1]] = cmd[2]
                    reply = m[cmd[1]]
                elif cmd[0] == "state":
                    reply = m.stats()["cache"]["state"]
                conn.send(("ok", reply))
            except BaseException:
                conn.send(("error", traceback.format_exc()))
    finally:
        m.close()


class Readers:
    """READERS reader processes, each with its pipe."""

    def __init__(self, name: str) -> None:
        self.conns, self.procs = [], []
        for _ in range(READERS):
            here, there = CTX.Pipe()
            p = CTX.Process(target=_reader_main, args=(name, there))
            p.start()
            there.close()
            self.conns.append(here)
            self.procs.append(p)

    def ask(self, i: int, *cmd: Any) -> Any:
        conn = self.conns[i]
        conn.send(cmd)
        if not conn.poll(REPLY_SECONDS):
            pytest.fail(f"reader {i} did not answer {cmd!r:.80} within {REPLY_SECONDS} s")
        kind, value = conn.recv()
        if kind != "ok":
            pytest.fail(f"reader {i} failed on {cmd!r:.80}:\n{value}")
        return value

    def stop(self) -> None:
        for conn, p in zip(self.conns, self.procs):
            try:
                conn.send(("stop",))
            except OSError:
                pass
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join(5)
            conn.close()


@pytest.fixture
def world(map_name: str) -> Iterator[tuple[shmmap.SharedMap, Readers]]:
    with shmmap.Daemon(map_name) as d, d.connect() as m:
        readers = Readers(map_name)
        try:
            yield m, readers
        finally:
            readers.stop()


def _check_pairs(pairs: list[tuple[Any, Any]], expected: dict[Any, Any]) -> None:
    assert len(pairs) == len(expected)
    assert dict(pairs) == expected


def test_the_cache_returns_only_snapshot_values(
        world: tuple[shmmap.SharedMap, Readers]) -> None:
    m, readers = world

    @settings(max_examples=100, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    # The paths that random steps reach rarely, always: a promotion after
    # writes a reader's cache has not seen (the old generation's tail), an
    # iteration held across a refresh (copy on write), two promotions and a
    # clear between two reads (loads again).
    @example(steps=[("store", "b", 1), ("delete", 1), ("promote",), ("read_all", 0),
                    ("store", "c", 2), ("promote",), ("get", 1, "c")])
    @example(steps=[("store", 1, 1), ("store", 2, 2), ("iter_start", 0, 1), ("delete", 2),
                    ("store", 1, "x"), ("get", 0, 1), ("iter_finish", 0), ("read_all", 0)])
    @example(steps=[("store", 1, 1), ("promote",), ("promote",), ("get", 0, 1), ("clear",),
                    ("store", 2, 2), ("read_all", 0), ("reader_store", 1, 3, 3),
                    ("read_all", 1)])
    @given(steps=st.lists(ops, max_size=25))
    def run(steps: list[tuple[Any, ...]]) -> None:
        m.clear()
        model: dict[Any, Any] = {}
        for i in range(READERS):        # each cache at this generation: the
            readers.ask(i, "read_all")  # promotions below are followed
        open_snapshots: dict[int, dict[Any, Any]] = {}
        for step in steps:
            op = step[0]
            if op == "store":
                m[step[1]] = step[2]
                model[step[1]] = step[2]
            elif op == "delete":
                m.delete(step[1])
                model.pop(step[1], None)
            elif op == "batch":
                with m.batch() as b:
                    for k, v in step[1]:
                        if v == ABSENT:
                            del b[k]
                            model.pop(k, None)
                        else:
                            b[k] = v
                            model[k] = v
            elif op == "promote":
                m.promote()
            elif op == "clear":
                m.clear()
                model.clear()
            elif op == "get":
                _, i, k = step
                value, present = readers.ask(i, "get", k)
                assert value == model.get(k, ABSENT)
                assert present == (k in model)
            elif op == "read_all":
                pairs, length, snap = readers.ask(step[1], "read_all")
                _check_pairs(pairs, model)
                assert length == len(model) and snap == model
            elif op == "iter_start":
                readers.ask(step[1], "iter_start", step[2])
                open_snapshots[step[1]] = dict(model)
            elif op == "iter_finish":
                if step[1] in open_snapshots:
                    pairs = readers.ask(step[1], "iter_finish")
                    _check_pairs(pairs, open_snapshots.pop(step[1]))
            elif op == "reader_store":
                _, i, k, v = step
                assert readers.ask(i, "reader_store", k, v) == v
                model[k] = v
            # The writer's own cache reads its writes and everyone's.
            assert m.snapshot() == model
        for i, snapshot in list(open_snapshots.items()):
            _check_pairs(readers.ask(i, "iter_finish"), snapshot)
        for i in range(READERS):
            assert readers.ask(i, "state") == "cached"

    run()
