"""Threads of one process that encode and store values whose packing runs
Python code (a dict subclass's items(), a list subclass's __iter__): with
the GIL passing between threads every microsecond, each value must still
be stored as the bytes of that value and no other. The writers run in a
child process (a crash fails the test, not the run); the values are read
back in this one."""
from __future__ import annotations

import multiprocessing as mp
import sys
import threading
from typing import Any, Iterator

import msgpack

import shmmap
from shmmap.shared.codec import decode_value, encode_pair, encode_value

CTX = mp.get_context("spawn")
THREADS = 8
PER_THREAD = 1500


class Row(dict):  # type: ignore[type-arg]
    """A dict whose items() is Python code: packing it may switch threads."""

    def items(self) -> Any:
        return sorted(super().items())


class Cells(list):  # type: ignore[type-arg]
    """A list whose iteration is Python code."""

    def __iter__(self) -> Iterator[Any]:
        for i in range(len(self)):
            yield self[i]


def _value(t: int, i: int) -> Any:
    """Thread t's i-th value, as the thread stores it."""
    if i % 2:
        return Row({"t": t, "i": i, "pad": "x" * (i % 17), "cells": Cells([t, i, [t] * 3])})
    return Cells([t, i, Row({"t": t}), "y" * (i % 13)])


def _plain(value: Any) -> Any:
    """value as it reads back: subclasses as plain dicts and lists."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _write(name: str, out: mp.Queue[list[str]]) -> None:
    sys.setswitchinterval(1e-6)
    errors: list[str] = []
    start = threading.Barrier(THREADS)

    def work(t: int) -> None:
        start.wait()
        try:
            for i in range(PER_THREAD):
                value = _value(t, i)
                # The codec alone, then through a map shared by every thread.
                got = decode_value(encode_value(value))
                if got != _plain(value):
                    errors.append(f"thread {t} encoded {_plain(value)!r} as {got!r}")
                pair = encode_pair(f"probe-{t}", value)
                got = msgpack.Unpacker(raw=False)
                got.feed(pair)
                if list(got) != [f"probe-{t}", _plain(value)]:
                    errors.append(f"thread {t} paired {_plain(value)!r} wrongly")
                if i % 3 == 0:
                    with m.batch() as b:
                        b[(t, i)] = value
                else:
                    m[(t, i)] = value
        except Exception as exc:        # reported to the parent
            errors.append(f"thread {t}: {exc!r}")

    with shmmap.connect(name) as m:
        threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    out.put(errors)


def test_threads_whose_values_run_python_while_packing_store_their_own_bytes(
        map_name: str) -> None:
    with shmmap.Daemon(map_name) as d, d.connect() as m:
        out = CTX.Queue()
        child = CTX.Process(target=_write, args=(map_name, out))
        child.start()
        child.join(240)
        if child.exitcode is None:
            child.kill()
            child.join()
        assert child.exitcode == 0, f"the writers' process ended with {child.exitcode}"
        assert out.get(timeout=10)[:10] == []
        expected = {(t, i): _plain(_value(t, i))
                    for t in range(THREADS) for i in range(PER_THREAD)}
        assert len(m) == len(expected)
        wrong = [(k, m.get(k)) for k, v in expected.items() if m.get(k) != v]
        assert wrong[:5] == []
        assert dict(m.items()) == expected
