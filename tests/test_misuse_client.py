"""Misuse of the client map, as a new user would make it: every operation
after close(), iterations that outlive promotions and close(), close() in
one thread while others read, iterate and write, a map handed to spawn and
forkserver children, a write to a stopped daemon, a corrupt generation, a
bad name. Each case runs in a child process, so that a crash fails that test
instead of the run; each child reports what it saw through a pipe."""
from __future__ import annotations

import copy
import multiprocessing as mp
import os
import pickle
import signal
import threading
import time
import traceback
from typing import Any, Callable

import pytest

import shmmap
from shmmap import MapClosedError
from shmmap._core import lib
from shmmap.client.reader import MapReader
from shmmap.server.writer import MapWriter
from shmmap.shared.codec import encode_key, encode_value
from shmmap.shared.protocol import batch_blob

CTX = mp.get_context("spawn")
KEYS = 5000
CHILD_SECONDS = 120.0       # bound on a child's whole run


def _child_main(conn: Any, target: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        result: tuple[str, Any] = ("ok", target(*args))
    except BaseException:
        result = ("error", traceback.format_exc())
    conn.send(result)
    conn.close()


def in_child(target: Callable[..., Any], *args: Any, ctx: Any = CTX) -> Any:
    """target(*args) run in a child process of context ctx; returns what it
    returned. An exception, a crash (a signal) or a hang fails the test."""
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child_main, args=(w, target, args))
    p.start()
    w.close()                   # the child's end only: EOF when it dies
    try:
        if not r.poll(CHILD_SECONDS):
            pytest.fail(f"the child did not finish within {CHILD_SECONDS} s")
        try:
            kind, value = r.recv()
        except EOFError:
            p.join(30)
            pytest.fail(f"the child died without reporting: exit code {p.exitcode}")
    finally:
        p.join(30)
        if p.is_alive():
            p.kill()
            p.join()
    if kind == "error":
        pytest.fail(f"the child raised:\n{value}")
    assert p.exitcode == 0, p.exitcode
    return value


# -- every operation after close() ----------------------------------------------

def _operations(m: shmmap.SharedMap) -> dict[str, Callable[[], Any]]:
    """One call of every public method and operator of SharedMap."""
    def batch() -> None:
        with m.batch() as b:
            b["x"] = 1

    def enter() -> None:
        with m:
            pass

    def ior() -> None:
        m_ = m
        m_ |= {"x": 1}

    return {
        "get": lambda: m.get(1), "__getitem__": lambda: m[1], "__contains__": lambda: 1 in m,
        "__len__": lambda: len(m), "__iter__": lambda: iter(m), "__bool__": lambda: bool(m),
        "keys": m.keys, "values": m.values, "items": m.items, "snapshot": m.snapshot,
        "load": lambda: m.load(1), "range": lambda: m.range(lambda k, v: None),
        "__eq__": lambda: m == {}, "__ne__": lambda: m != {}, "__or__": lambda: m | {},
        "__ror__": lambda: {} | m, "__ior__": ior,
        "__setitem__": lambda: m.__setitem__("x", 1), "__delitem__": lambda: m.__delitem__(1),
        "store": lambda: m.store("x", 1), "delete": lambda: m.delete(1),
        "setdefault": lambda: m.setdefault("x", 1), "pop": lambda: m.pop(1, None),
        "popitem": m.popitem, "update": lambda: m.update({"x": 1}), "clear": m.clear,
        "load_or_store": lambda: m.load_or_store("x", 1),
        "load_and_delete": lambda: m.load_and_delete(1), "swap": lambda: m.swap("x", 2),
        "compare_and_swap": lambda: m.compare_and_swap(1, 1, 2),
        "compare_and_delete": lambda: m.compare_and_delete(1, 1),
        "batch": batch, "pipeline": m.pipeline, "promote": m.promote, "stats": m.stats, "refresh": m.refresh,
        "generation": lambda: m.generation, "socket_path": lambda: m.socket_path,
        "__enter__": enter, "pickle": lambda: pickle.dumps(m), "copy": lambda: copy.copy(m),
        # A key or value that cannot be encoded: still the closed error first.
        "store a bad key": lambda: m.store(1.5, 1), "update bad": lambda: m.update({1.5: 1}),
    }


def _after_close(name: str) -> dict[str, str]:
    """What each operation raised on a closed map ("ok" if MapClosedError)."""
    m = shmmap.connect(name)
    m.update({i: i for i in range(100)})
    it = iter(m.items())                # started before close(): runs to its end
    open_batch = m.batch()
    b = open_batch.__enter__()
    b["late"] = 1
    pipeline = m.pipeline()
    pipeline["late"] = 1
    m.close()
    m.close()                           # closing twice does nothing
    seen = {}
    ops = _operations(m)
    ops["batch begun before close"] = lambda: open_batch.__exit__(None, None, None)
    ops["pipeline begun before close"] = pipeline.sync
    for what, op in ops.items():
        try:
            op()
            seen[what] = "did not raise"
        except MapClosedError as exc:
            seen[what] = "ok" if m.name in str(exc) and "closed" in str(exc) else str(exc)
        except BaseException as exc:
            seen[what] = repr(exc)
    seen["iteration begun before close"] = "ok" if dict(it) == {i: i for i in range(100)} else "bad"
    seen["repr"] = "ok" if "closed" in repr(m) else repr(m)
    seen["closed"] = "ok" if m.closed else "not closed"
    return seen


def test_every_operation_after_close_raises_map_closed(map_name: str) -> None:
    with shmmap.Daemon(map_name) as d, d.connect() as m:
        seen = in_child(_after_close, map_name)
        assert {what: r for what, r in seen.items() if r != "ok"} == {}
        public = {n for n in dir(shmmap.SharedMap) if not n.startswith("_")} - {"close", "closed"}
        assert public <= set(seen), f"not tried after close(): {public - set(seen)}"
        assert "late" not in m and len(m) == 100       # the open batch was not sent


def _reader_after_close(name: str) -> dict[str, str]:
    r = MapReader(name)
    r.close()
    seen = {}
    for what, op in {"lookup": lambda: r.lookup(1), "items": r.items, "pin": r.pin,
                     "refresh": r.refresh, "len": lambda: len(r),
                     "socket_path": lambda: r.socket_path}.items():
        try:
            op()
            seen[what] = "did not raise"
        except MapClosedError:
            seen[what] = "ok"
        except BaseException as exc:
            seen[what] = repr(exc)
    return seen


def test_a_closed_map_reader_raises_map_closed(map_name: str) -> None:
    with shmmap.Daemon(map_name):
        seen = in_child(_reader_after_close, map_name)
        assert set(seen.values()) == {"ok"}, seen


# -- iterations outlive promotions and close() ------------------------------------------

def _iterate_promote_close_iterate(name: str) -> list[int]:
    m = shmmap.connect(name)
    expected = {i: i for i in range(KEYS)}
    items, keys, values = iter(m.items()), iter(m.keys()), iter(m.values())
    first = [next(items), next(keys), next(values)]
    m[KEYS] = KEYS                      # after the snapshot: not in it
    m.promote()
    assert m.get(1) == 1                # maps the new generation
    m.promote()
    m.close()
    rest = dict(items)
    rest[first[0][0]] = first[0][1]
    assert rest == expected
    assert sorted([first[1], *keys]) == list(range(KEYS))
    assert sorted([first[2], *values]) == list(range(KEYS))
    return sorted(rest)[-3:]


def test_iterate_promote_close_iterate_finishes_the_snapshot(map_name: str) -> None:
    with shmmap.Daemon(map_name) as d, d.connect() as m:
        m.update({i: i for i in range(KEYS)})
        assert in_child(_iterate_promote_close_iterate, map_name) == [KEYS - 3, KEYS - 2, KEYS - 1]
        assert m[KEYS] == KEYS


def _close_under_threads(name: str) -> dict[str, Any]:
    """Reader, iterator and writer threads run until close() from the main
    thread stops them: each either finishes what it started or gets
    MapClosedError."""
    m = shmmap.connect(name)
    errors: list[str] = []
    rounds: dict[str, int] = {}
    warm = {kind: threading.Event() for kind in ("iterate", "read", "write")}

    def loop(kind: str, step: Callable[[], None]) -> None:
        rounds[kind] = 0
        while True:
            try:
                step()
            except MapClosedError:
                return
            except BaseException as exc:
                errors.append(f"{kind}: {exc!r}")
                return
            rounds[kind] += 1
            if rounds[kind] >= 3:
                warm[kind].set()

    def iterate() -> None:
        pairs = dict(m.items())         # once begun, a whole snapshot
        if pairs != {i: i for i in range(KEYS)}:
            errors.append(f"iterate: a snapshot of {len(pairs)} keys")

    def read() -> None:
        for k in range(0, KEYS, 61):
            v = m.get(k)
            if v != k:
                errors.append(f"read: {k} -> {v!r}")

    def write() -> None:
        m.update({k: k for k in range(0, KEYS, 97)})     # same values: snapshots stay equal

    threads = [threading.Thread(target=loop, args=(kind, fn))
               for kind, fn in (("iterate", iterate), ("iterate", iterate), ("read", read),
                                ("read", read), ("write", write))]
    for t in threads:
        t.start()
    for kind, event in warm.items():
        assert event.wait(60), f"no {kind} thread got going"
    m.promote()
    m.close()
    for t in threads:
        t.join(60)
    return {"alive": sum(t.is_alive() for t in threads), "errors": errors, "rounds": rounds}


def test_close_in_one_thread_while_others_iterate_read_and_write(map_name: str) -> None:
    with shmmap.Daemon(map_name) as d, d.connect() as m:
        m.update({i: i for i in range(KEYS)})
        result = in_child(_close_under_threads, map_name)
        assert result["alive"] == 0 and result["errors"] == [], result
        assert len(m) == KEYS and m.stats()["clients"] == 1   # the child's connection ended


# -- a map handed to spawn and forkserver children -------------------------------------------

def _use_inherited_map(m: shmmap.SharedMap) -> tuple[Any, int, float]:
    assert "not yet opened" in repr(m)          # unpickling did no I/O
    seen = m["from-parent"]
    m[("from-child", os.getpid())] = os.getpid()
    assert m[("from-child", os.getpid())] == os.getpid()
    m.close()
    return seen, os.getpid(), m.timeout


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_map_passed_to_a_child_connects_there(map_name: str, method: str) -> None:
    with shmmap.Daemon(map_name) as d, d.connect(timeout=7.5) as m:
        m["from-parent"] = [1, 2]
        seen, pid, timeout = in_child(_use_inherited_map, m, ctx=mp.get_context(method))
        assert seen == [1, 2] and timeout == 7.5
        assert m[("from-child", pid)] == pid
        again = pickle.loads(pickle.dumps(m))     # in this process too
        assert again.timeout == 7.5 and again["from-parent"] == [1, 2]
        again.close()
        assert m["from-parent"] == [1, 2]         # the original is untouched


# -- a stopped daemon ----------------------------------------------------------------

def _write_to_stopped_daemon(name: str, pid: int) -> dict[str, Any]:
    m = shmmap.connect(name, timeout=1)
    m["a"] = 1
    seen: dict[str, Any] = {}
    os.kill(pid, signal.SIGSTOP)
    try:
        for what, op in (("store", lambda: m.__setitem__("b", 1)),
                         ("compare_and_swap", lambda: m.compare_and_swap("a", 1, 2)),
                         ("stats", m.stats)):
            started = time.monotonic()
            try:
                op()
                seen[what] = ("did not raise", 0.0)
            except shmmap.ShmmapError as exc:
                seen[what] = (type(exc).__name__, time.monotonic() - started)
        seen["read"] = (m["a"], len(m) >= 1)         # shared memory: no daemon needed
        started = time.monotonic()
        try:
            shmmap.connect(name, timeout=1)
            seen["connect"] = ("did not raise", 0.0)
        except shmmap.ShmmapError as exc:
            seen["connect"] = (type(exc).__name__, time.monotonic() - started)
    finally:
        os.kill(pid, signal.SIGCONT)
    # The daemon serves again, on the same connection: it applies the store
    # it had not answered, and its late reply is skipped.
    seen["after"] = (m.swap("a", 5), m["b"], m["a"])
    m.close()
    return seen


def test_a_write_to_a_stopped_daemon_raises_outcome_unknown(map_name: str) -> None:
    """The store, posted on the channel, times out: its outcome is unknown.
    What follows is not sent while it is unanswered (it would have to wait
    for it anyway: a connection's requests are applied in order), so the
    conditional write and stats raise DaemonUnavailableError."""
    d = shmmap.Daemon(map_name).start()
    try:
        seen = in_child(_write_to_stopped_daemon, map_name, d.pid)
    finally:
        os.kill(d.pid, signal.SIGCONT)          # whatever the child did
        d.stop()
    kind, took = seen["store"]
    assert issubclass(getattr(shmmap, kind), shmmap.OutcomeUnknownError), kind
    assert took < 2.5, f"store: raised after {took:.1f} s with timeout=1 (resent?)"
    for what in ("compare_and_swap", "stats", "connect"):   # nothing sent: nothing to know
        kind, took = seen[what]
        assert kind == "DaemonUnavailableError" and took < 2.5, (what, kind, took)
    assert seen["read"] == (1, True)
    assert seen["after"] == ((1, True), 1, 5)     # the timed-out store was applied late


def test_an_idle_connection_to_a_restarted_daemon_is_renewed(map_name: str) -> None:
    """A conditional write on a connection whose daemon died since the last
    request: nothing was sent, so it goes to the new daemon, once."""
    d = shmmap.Daemon(map_name).start()
    try:
        m = d.connect()
        m["k"] = 1
        d.process.send_signal(signal.SIGKILL)
        d.process.wait()
        d = shmmap.Daemon(map_name).start()     # adopts the map
        assert m.compare_and_swap("k", 1, 2) is True
        assert m["k"] == 2
        m.close()
    finally:
        d.stop()


# -- a corrupt map, a bad name ------------------------------------------------------------

def _lookup_in_superseded_current(name: str) -> dict[str, str]:
    w = MapWriter(name)
    r = None
    seen = {}
    try:
        w.apply(batch_blob([(encode_key(1), encode_value("one"))]))
        w.commit()
        r = MapReader(name)
        assert r.lookup(1) == "one"
        lib.shm_mark_superseded(w.generation.view)     # current, yet superseded
        for what, op in (("lookup", lambda: r.lookup(1)), ("items", lambda: list(r.items())),
                         ("len", lambda: len(r))):
            try:
                op()
                seen[what] = "did not raise"
            except shmmap.CorruptSegmentError as exc:
                seen[what] = "ok" if "superseded" in str(exc) else str(exc)
            except BaseException as exc:
                seen[what] = repr(exc)
    finally:
        if r is not None:
            r.close()
        w.close()
    return seen


def test_a_current_generation_marked_superseded_is_an_error_not_a_recursion(
        map_name: str) -> None:
    assert set(in_child(_lookup_in_superseded_current, map_name).values()) == {"ok"}


@pytest.mark.parametrize("name", ["bad/name", "", "-x", "a" * 300, "sp ace", 7])
def test_a_bad_map_name_raises_invalid_name(name: Any) -> None:
    with pytest.raises(shmmap.InvalidNameError, match="map name"):
        shmmap.connect(name)
    assert issubclass(shmmap.InvalidNameError, shmmap.ShmmapError)
    assert issubclass(shmmap.InvalidNameError, ValueError)
