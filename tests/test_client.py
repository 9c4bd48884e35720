"""The client map against a dict, over a real daemon: every operation's
result and effect; visibility across processes; threads and fork."""
from __future__ import annotations

import multiprocessing as mp
import os
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import shmmap
from conftest import unique_map_name

CTX = mp.get_context("spawn")
keys = st.one_of(st.integers(-3, 12), st.sampled_from(["a", "b", "é"]),
                 st.tuples(st.integers(0, 2), st.sampled_from(["x", "y"])))
values = st.one_of(st.none(), st.integers(-5, 5), st.text(max_size=4),
                   st.lists(st.integers(0, 3), max_size=3),
                   st.dictionaries(st.sampled_from(["p", "q"]), st.integers(0, 3), max_size=2))


class ClientModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.name = unique_map_name("cm-")
        self.daemon = shmmap.Daemon(self.name).start()
        self.m = self.daemon.connect()
        self.model: dict[Any, Any] = {}

    def teardown(self) -> None:
        self.m.close()
        self.daemon.stop()

    @rule(k=keys, v=values)
    def setitem(self, k: Any, v: Any) -> None:
        self.m[k] = v
        self.model[k] = v

    @rule(k=keys)
    def delitem(self, k: Any) -> None:
        if k in self.model:
            del self.m[k]
            del self.model[k]
        else:
            with pytest.raises(KeyError):
                del self.m[k]

    @rule(k=keys, v=values)
    def load_or_store(self, k: Any, v: Any) -> None:
        expected = (self.model[k], True) if k in self.model else (v, False)
        assert self.m.load_or_store(k, v) == expected
        self.model.setdefault(k, v)

    @rule(k=keys)
    def load_and_delete(self, k: Any) -> None:
        expected = (self.model.pop(k), True) if k in self.model else (None, False)
        assert self.m.load_and_delete(k) == expected

    @rule(k=keys, v=values)
    def swap(self, k: Any, v: Any) -> None:
        expected = (self.model[k], True) if k in self.model else (None, False)
        assert self.m.swap(k, v) == expected
        self.model[k] = v

    @rule(k=keys, old=values, new=values, use_current=st.booleans())
    def compare_and_swap(self, k: Any, old: Any, new: Any, use_current: bool) -> None:
        if use_current and k in self.model:
            old = self.model[k]
        swapped = k in self.model and self.model[k] == old
        assert self.m.compare_and_swap(k, old, new) is swapped
        if swapped:
            self.model[k] = new

    @rule(k=keys, old=values, use_current=st.booleans())
    def compare_and_delete(self, k: Any, old: Any, use_current: bool) -> None:
        if use_current and k in self.model:
            old = self.model[k]
        deleted = k in self.model and self.model[k] == old
        assert self.m.compare_and_delete(k, old) is deleted
        if deleted:
            del self.model[k]

    @rule(k=keys, default=values)
    def pop_and_setdefault(self, k: Any, default: Any) -> None:
        assert self.m.pop(k, default) == self.model.pop(k, default)
        assert self.m.setdefault(k, default) == self.model.setdefault(k, default)

    @rule(pairs=st.dictionaries(keys, values, max_size=6))
    def update(self, pairs: dict[Any, Any]) -> None:
        self.m.update(pairs)
        self.model.update(pairs)

    @rule(ops=st.lists(st.tuples(keys, values, st.booleans()), max_size=5))
    def batch(self, ops: list[tuple[Any, Any, bool]]) -> None:
        with self.m.batch() as b:
            for k, v, delete in ops:
                if delete:
                    del b[k]
                    self.model.pop(k, None)
                else:
                    b[k] = v
                    self.model[k] = v

    @rule()
    def popitem(self) -> None:
        if self.model:
            k, v = self.m.popitem()
            assert self.model.pop(k) == v
        else:
            with pytest.raises(KeyError):
                self.m.popitem()

    @rule()
    def clear_or_promote(self) -> None:
        if len(self.model) > 12:
            self.m.clear()
            self.model.clear()
        else:
            self.m.promote()

    @invariant()
    def same_as_model(self) -> None:
        m, model = self.m, self.model
        assert m.snapshot() == model and m == model and len(m) == len(model)
        assert sorted(map(repr, m.keys())) == sorted(map(repr, model.keys()))
        assert sorted(map(repr, m.values())) == sorted(map(repr, model.values()))
        for k in list(model)[:5]:
            assert m[k] == model[k] and k in m and m.get(k) == model[k]
            assert m.load(k) == (model[k], True)
        assert m.get(("absent",)) is None and ("absent",) not in m
        assert m.load(("absent",)) == (None, False)


TestClientModel = ClientModel.TestCase
TestClientModel.settings = settings(max_examples=15, stateful_step_count=25, deadline=None,
                                    suppress_health_check=[HealthCheck.too_slow])


def test_mapping_extras(map_name: str) -> None:
    with shmmap.Daemon(map_name) as d, d.connect() as m:
        m.update({"a": 1, "b": 2}, c=3)
        assert (m | {"d": 4}) == {"a": 1, "b": 2, "c": 3, "d": 4}
        assert ({"z": 0} | m) == {"z": 0, "a": 1, "b": 2, "c": 3}
        m |= {"e": 5}
        assert m["e"] == 5 and isinstance(m, shmmap.SharedMap)
        seen: list[Any] = []
        m.range(lambda k, v: seen.append(k) or len(seen) < 2)
        assert len(seen) == 2                       # stopped when fn returned False
        assert ("a", 1) in m.items() and 5 in m.values() and "e" in m.keys()  # noqa: SIM118 (the view)
        with pytest.raises(KeyError):
            m["nope"]
        with pytest.raises(RuntimeError):
            with m.batch() as b:                    # an exception: nothing is sent
                b["x"] = 1
                raise RuntimeError("abandon the batch")
        assert "x" not in m
        assert "SharedMap" in repr(m)


def _write_and_signal(name: str, conn: Any) -> None:
    with shmmap.connect(name) as m:
        for i in range(200):
            m[("from-a", i)] = i                    # returns once committed
            conn.send(i)
        conn.send(None)


def test_a_write_acknowledged_to_a_is_visible_to_b(map_name: str) -> None:
    with shmmap.Daemon(map_name) as d, d.connect() as b:
        r, w = CTX.Pipe(duplex=False)
        a = CTX.Process(target=_write_and_signal, args=(map_name, w))
        a.start()
        try:
            seen = 0
            while True:
                assert r.poll(60)
                i = r.recv()
                if i is None:
                    break
                assert b[("from-a", i)] == i        # read right after the signal
                seen += 1
            assert seen == 200
        finally:
            a.join(30)
            if a.is_alive():
                a.kill()


def test_read_your_writes_from_many_threads(map_name: str) -> None:
    with shmmap.Daemon(map_name) as d, d.connect() as m:
        errors: list[str] = []

        def work(t: int) -> None:
            for i in range(300):
                m[(t, i)] = i
                if m[(t, i)] != i:
                    errors.append(f"thread {t} did not read its write {i}")
                if i % 50 == 0:
                    m.update({(t, "bulk", j): j for j in range(100)})

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert errors == []
        assert len(m) == 4 * 300 + 4 * 100


def test_a_forked_child_writes_through_the_inherited_map(map_name: str) -> None:
    with shmmap.Daemon(map_name) as d, d.connect() as m:
        m["before"] = 1
        pid = os.fork()
        if pid == 0:                                # the child
            code = 1
            try:
                if m["before"] == 1:
                    m["child"] = os.getpid()        # reconnects by itself
                    code = 0 if m["child"] == os.getpid() else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert m["child"] == pid
        m["parent"] = "still connected"
        assert m["parent"] == "still connected"
