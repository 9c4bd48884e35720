"""Values come back as they went in: the README's table of types, stored by
this process and read back, with their types, by another process through
every read path (get with and without the cache, the reader, iteration,
snapshot) and through the values the daemon returns (swap, pop,
load_or_store, load_and_delete); what cannot be stored raises TypeError
naming the type before the daemon sees a request; an application's own
types (Ext), and what a process without them reads; the limits of nesting
and size, the same in client and daemon."""
from __future__ import annotations

import collections
import datetime as dt
import enum
import multiprocessing as mp
import uuid
import zoneinfo
from decimal import Decimal
from typing import Any, Callable, Optional

import msgpack
import pytest

import shmmap
from shmmap.client.reader import MapReader
from shmmap.shared.codec import MAX_DEPTH, Codec
from shmmap.shared.protocol import VERSION, Err, Op

from test_protocol_fuzz import connect_raw, read_replies

CTX = mp.get_context("spawn")


class Point:
    """An application's own type, registered with every map as an Ext."""

    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return type(other) is Point and (other.x, other.y) == (self.x, self.y)

    def __hash__(self) -> int:
        return hash((self.x, self.y))

    def __repr__(self) -> str:
        return f"Point({self.x}, {self.y})"


POINT_CODE = 7
EXT_TYPES = [shmmap.Ext(POINT_CODE, Point, lambda p: msgpack.packb([p.x, p.y]),
                        lambda data: Point(*msgpack.unpackb(data)))]


class Color(enum.IntEnum):
    RED = 1


class Shade(str, enum.Enum):
    DARK = "dark"


class Row(dict):  # type: ignore[type-arg]
    pass


Pair = collections.namedtuple("Pair", "a b")
UTC, EST = dt.timezone.utc, dt.timezone(dt.timedelta(hours=-5), "EST")
ODD = dt.timezone(dt.timedelta(hours=5, minutes=30, seconds=7, microseconds=9))


def table() -> list[tuple[str, Any, Any]]:
    """(name, value stored, value read back): the README's table of types.
    Built the same in every process that checks it."""
    nested: Any = "leaf"
    for i in range(MAX_DEPTH):
        nested = [nested] if i % 2 else (nested,)
    same = [
        ("None", None), ("True", True), ("False", False), ("int", 7), ("int -2**63", -2**63),
        ("int 2**64-1", 2**64 - 1), ("float", 1.5), ("float -0.0", -0.0),
        ("float inf", float("inf")), ("str", "é€\U0001F600"), ("str empty", ""),
        ("bytes", b"\x00\xff"), ("list", [1, "a", None]), ("list empty", []),
        ("tuple", (1, "a", None)), ("tuple empty", ()), ("tuple of one", (1,)),
        ("dict", {"a": 1, 2: "b", None: 3, 1.5: 4, b"k": 5, True: 6}),
        ("dict tuple keys", {(1, 2): "x", ("a", (b"b",)): [1]}),
        ("dict frozenset key", {frozenset({1, 2}): "f"}),
        ("dict other keys", {dt.date(2020, 1, 1): 1, Decimal("1.5"): 2,
                             uuid.UUID(int=5): 3, dt.datetime(2020, 1, 1, tzinfo=UTC): 4}),
        ("nested mix", {"l": [(1, [2, (3, {"d": (4,)})]), {5, 6}], "t": ({"x": [()]},)}),
        ("list of tuples", [(1, 2), (3, 4)]), ("tuple of lists", ([1], [2])),
        ("set", {1, "a", (2, 3), frozenset({4})}), ("set empty", set()),
        ("frozenset", frozenset({b"x", 2.5})), ("frozenset empty", frozenset()),
        ("datetime naive", dt.datetime(2024, 2, 29, 23, 59, 59, 999_999)),
        ("datetime fold", dt.datetime(2021, 11, 7, 1, 30, fold=1)),
        ("datetime min", dt.datetime.min), ("datetime max", dt.datetime.max),
        ("datetime utc", dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC)),
        ("datetime named zone", dt.datetime(2024, 1, 2, 3, 4, tzinfo=EST)),
        ("datetime odd offset", dt.datetime(1, 1, 1, tzinfo=ODD)),
        ("date", dt.date(1999, 12, 31)), ("date min", dt.date.min), ("date max", dt.date.max),
        ("Decimal", Decimal("1.10")), ("Decimal exp", Decimal("-1.2E-30")),
        ("Decimal NaN", Decimal("-NaN12")), ("Decimal inf", Decimal("Infinity")),
        ("Decimal -0", Decimal("-0.000")), ("UUID", uuid.UUID("12345678-1234-5678-1234-567812345678")),
        ("Timestamp", msgpack.Timestamp(5, 7)), ("ext of no type", msgpack.ExtType(42, b"raw")),
        ("Point", Point(1, 2)), ("Points in a set", {Point(1, 2), Point(3, 4)}),
        ("nested to the limit", nested),
    ]
    changed = [
        ("bytearray", bytearray(b"ba"), b"ba"), ("memoryview", memoryview(b"mv"), b"mv"),
        ("IntEnum", Color.RED, 1), ("str Enum", Shade.DARK, "dark"),
        ("namedtuple", Pair(1, 2), (1, 2)), ("dict subclass", Row(a=1), {"a": 1}),
        ("list of subclasses", [Color.RED, Pair(1, [Row(b=2)])], [1, (1, [{"b": 2}])]),
    ]
    return [(name, v, v) for name, v in same] + changed


def same(a: Any, b: Any) -> bool:
    """a == b, and of the same types all the way down (so (1,) is not [1],
    1 not True, -0.0 not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (float, Decimal)):
        return repr(a) == repr(b)           # NaN is not == itself
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(same(ka, kb) and same(va, vb) for (ka, va), (kb, vb)
                                        in zip(a.items(), b.items()))
    if isinstance(a, (set, frozenset)):
        return a == b and sorted(map(repr, a)) == sorted(map(repr, b))
    if isinstance(a, dt.datetime):
        return a == b and a.fold == b.fold and a.tzinfo == b.tzinfo and \
            (a.tzinfo is None or a.tzname() == b.tzname())
    return bool(a == b) and repr(a) == repr(b)


def _read_back(name: str, paths: Callable[[shmmap.SharedMap, list[str]], dict[str, dict[str, Any]]]
               ) -> list[str]:
    """What a process other than the writer reads through each path:
    the names of the rows that did not come back as the table says."""
    bad: list[str] = []
    expected = {row: back for row, _, back in table()}
    with shmmap.connect(name, ext_types=EXT_TYPES) as m, \
            shmmap.connect(name, ext_types=EXT_TYPES, cache_keys=0) as uncached:
        reader = MapReader(name, Codec(EXT_TYPES))
        try:
            got = {
                "get (cached)": {k: m[k] for k in expected},
                "get (uncached)": {k: uncached[k] for k in expected},
                "reader lookup": {k: reader.lookup(k) for k in expected},
                "items (cached)": dict(m.items()),
                "items (uncached)": dict(uncached.items()),
                "values": dict(zip(list(m.keys()), list(m.values()))),
                "snapshot": m.snapshot(),
                "reader items": dict(reader.items()),
            }
            got.update(paths(m, list(expected)))
        finally:
            reader.close()
    for path, values in got.items():
        for row, back in expected.items():
            if row not in values or not same(values[row], back):
                bad.append(f"{path}: {row}: {values.get(row, 'missing')!r}")
    return bad


def _daemon_results(m: shmmap.SharedMap, rows: list[str]) -> dict[str, dict[str, Any]]:
    """The values the daemon returns: each row's value swapped for itself,
    loaded by load_or_store, then popped and load_and_deleted (the map is
    left as it was)."""
    expected = {row: back for row, _, back in table()}
    swapped = {k: m.swap(k, expected[k])[0] for k in rows}
    loaded = {k: m.load_or_store(k, "unused")[0] for k in rows}
    equal = {k: k for k in rows if m.compare_and_swap(k, expected[k], expected[k])}
    removed = {k: m.pop(k) for k in rows[::2]}
    removed.update((k, m.load_and_delete(k)[0]) for k in rows[1::2])
    for k in rows:
        m[k] = expected[k]
    return {"items after the writes (the cache's deltas)": dict(m.items()), "swap": swapped,
            "load_or_store": loaded, "pop and load_and_delete": removed,
            "compare_and_swap with an equal value": {k: expected[k] for k in equal}}


def _child_reads(name: str, out: Any) -> None:
    try:
        out.send(_read_back(name, lambda m, rows: {}))
    except BaseException as exc:
        out.send([f"child raised {exc!r}"])


def _child_daemon_results(name: str, out: Any) -> None:
    try:
        out.send(_read_back(name, _daemon_results))
    except BaseException as exc:
        out.send([f"child raised {exc!r}"])


def _in_child(target: Callable[..., None], *args: Any) -> Any:
    here, there = CTX.Pipe(duplex=False)
    p = CTX.Process(target=target, args=(*args, there))
    p.start()
    there.close()
    try:
        if not here.poll(120):
            raise AssertionError("the child did not report in time")
        return here.recv()
    finally:
        p.join(30)
        if p.is_alive():
            p.kill()
            p.join()


def _store_table(m: shmmap.SharedMap) -> None:
    for row, stored, _ in table():
        m[row] = stored


@pytest.mark.parametrize("channel", [True, False], ids=["channel", "socket"])
def test_the_table_reads_back_in_another_process(map_name: str, channel: bool) -> None:
    with shmmap.Daemon(map_name) as d, d.connect(ext_types=EXT_TYPES, channel=channel) as m:
        _store_table(m)
        with m.batch() as b:                      # the batch and pipeline paths too
            for row, stored, _ in table()[::3]:
                b[row] = stored
        with m.pipeline() as p:
            for row, stored, _ in table()[1::3]:
                p[row] = stored
        assert _in_child(_child_reads, map_name) == []


def test_values_the_daemon_returns_read_back_in_another_process(map_name: str) -> None:
    with shmmap.Daemon(map_name) as d, d.connect(ext_types=EXT_TYPES) as m:
        m.update((row, stored) for row, stored, _ in table())
        assert _in_child(_child_daemon_results, map_name) == []


def test_the_table_reads_back_in_this_process_after_a_promotion(map_name: str) -> None:
    with shmmap.Daemon(map_name) as d, d.connect(ext_types=EXT_TYPES) as m:
        _store_table(m)
        m.promote()
        for row, _, back in table():
            assert same(m[row], back), row
            assert same(m.get(row), back), row
        assert all(same(v, back) for (row, _, back), v
                   in zip(table(), (m.snapshot()[r] for r, _, _ in table())))


def test_compare_and_swap_compares_values_with_their_types(map_name: str) -> None:
    with shmmap.Daemon(map_name) as d, d.connect(ext_types=EXT_TYPES) as m:
        m["t"] = (1, 2)
        assert not m.compare_and_swap("t", [1, 2], "x")       # a list is not the tuple
        assert m.compare_and_swap("t", (1, 2.0), "x")          # == as Python compares
        m["s"] = {"a", "b", "c", "d"}
        assert m.compare_and_swap("s", {"d", "c", "b", "a"}, "y")   # any order
        m["p"] = Point(1, 2)
        assert m.compare_and_swap("p", Point(1, 2), "z")       # an Ext: as its bytes
        assert not m.compare_and_swap("p", Point(1, 3), "z")
        m["when"] = dt.datetime(2024, 1, 1, 12, tzinfo=UTC)
        assert m.compare_and_swap("when", dt.datetime(2024, 1, 1, 7, tzinfo=EST), "w")
        assert (m["t"], m["s"], m["p"], m["when"]) == ("x", "y", "z", "w")


REFUSED = [
    (complex(1, 2), "builtins.complex"),
    (object(), "builtins.object"),
    ([1, {"k": 1j}], "builtins.complex"),
    ({(1, 2): lambda: None}, "function"),
    (dt.datetime(2024, 1, 1, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")), "ZoneInfo"),
    (Decimal("sNaN"), "signaling NaN"),
    (dt.time(12), "datetime.time"),
    (dt.timedelta(1), "datetime.timedelta"),
    (2**64, "out of range"),
    ("\ud800", "surrogates"),
    (msgpack.ExtType(100, b"\x01"), "tuple ext"),      # shmmap's codes are shmmap's
    (msgpack.ExtType(120, b""), "reserved by shmmap"),
    (Point, "builtins.type"),
]


def _deep(depth: int, make: Callable[[Any], Any]) -> Any:
    x: Any = 0
    for _ in range(depth):
        x = make(x)
    return x


REFUSED_DEEP = [
    (_deep(600, lambda x: [x]), "nested deeper than"),
    (_deep(MAX_DEPTH + 1, lambda x: (x,)), "nested deeper than"),
    (_deep(MAX_DEPTH + 1, lambda x: {"k": x}), "nested deeper than"),
    (_deep(3000, lambda x: (x,)), "nested deeper than"),
]


@pytest.mark.parametrize("value,names", REFUSED + REFUSED_DEEP,
                         ids=[f"{i}:{n}" for i, (_, n) in enumerate(REFUSED + REFUSED_DEEP)])
def test_what_cannot_be_stored_raises_before_a_byte_is_sent(map_name: str, value: Any,
                                                            names: str) -> None:
    with shmmap.Daemon(map_name) as d, d.connect() as m:
        before = m.stats()
        writes: list[Callable[[], Any]] = [
            lambda: m.__setitem__("k", value), lambda: m.update({"k": value}),
            lambda: m.swap("k", value), lambda: m.load_or_store("k", value),
            lambda: m.compare_and_swap("k", value, 1), lambda: m.compare_and_delete("k", value),
            lambda: m.setdefault("k", value)]
        for write in writes:
            with pytest.raises(TypeError, match=names):
                write()
        with pytest.raises(TypeError, match=names):
            with m.batch() as b:
                b["k"] = value
        with pytest.raises(TypeError, match=names):
            with m.pipeline() as p:
                p["k"] = value
        after = m.stats()
        # One request between the two: the second stats() itself.
        assert after["requests"] == before["requests"] + 1
        assert (after["writes"], after["errors"]) == (before["writes"], before["errors"])
        assert "k" not in m


def _child_reads_points(name: str, out: Any) -> None:
    """What a process without the Point Ext reads, and what it may write."""
    try:
        with shmmap.connect(name) as m:
            p, ps = m["p"], m["ps"]
            m["copy"] = p                         # written back as the same ext
            out.send((p, sorted(ps), m.compare_and_swap("p", p, p)))
    except BaseException as exc:
        out.send(repr(exc))


def test_a_process_without_an_ext_reads_its_values_as_ext_types(map_name: str) -> None:
    with shmmap.Daemon(map_name) as d, d.connect(ext_types=EXT_TYPES) as m:
        m["p"] = Point(1, 2)
        m["ps"] = {Point(3, 4), Point(5, 6)}
        p, ps, swapped = _in_child(_child_reads_points, map_name)
        assert p == msgpack.ExtType(POINT_CODE, msgpack.packb([1, 2]))
        assert ps == sorted(msgpack.ExtType(POINT_CODE, msgpack.packb(xy)) for xy in ([3, 4], [5, 6]))
        assert swapped
        assert m["copy"] == Point(1, 2) and type(m["copy"]) is Point


def test_ext_codes_are_checked_when_registered() -> None:
    def ext(code: int, cls: type = Point) -> shmmap.Ext:
        return shmmap.Ext(code, cls, bytes, bytes)
    with pytest.raises(ValueError, match="0 to 99"):
        Codec([ext(100)])
    with pytest.raises(ValueError, match="0 to 99"):
        Codec([ext(-1)])
    with pytest.raises(ValueError, match="taken"):
        Codec([ext(1), ext(1, Row)])
    with pytest.raises(ValueError, match="taken"):
        Codec([ext(1, tuple)])
    with pytest.raises(TypeError, match="gave str, not bytes"):
        Codec([shmmap.Ext(1, Point, lambda p: "text", bytes)]).encode_value(Point(1, 2))


def test_dicts_with_tuple_keys_and_deep_nesting_agree_with_the_daemon(map_name: str) -> None:
    with shmmap.Daemon(map_name) as d, d.connect() as m:
        m["tk"] = {(1, 2): "x", (3, (4, "y")): {(5,): 6}}
        m["deep"] = _deep(MAX_DEPTH, lambda x: [x])
        m["deep mix"] = _deep(MAX_DEPTH // 2, lambda x: ({"k": x},))
        assert m["tk"] == {(1, 2): "x", (3, (4, "y")): {(5,): 6}}
        assert m["deep"] == _deep(MAX_DEPTH, lambda x: [x])
        with pytest.raises(TypeError, match=f"nested deeper than {MAX_DEPTH} levels"):
            m["deep"] = _deep(MAX_DEPTH + 1, lambda x: [x])


def test_limits_count_encoded_bytes_and_say_so(map_name: str) -> None:
    with shmmap.Daemon(map_name) as d, d.connect() as m:
        max_value, max_key = m.daemon_info["max_value"], m.daemon_info["max_key"]
        assert max_value == 16 * 1024 * 1024 and max_key == 64 * 1024   # the documented defaults
        m["big"] = b"x" * (max_value - 5)          # bin32: 5 bytes of header
        with pytest.raises(shmmap.LimitError,
                           match=f"encoded value of {max_value + 5} bytes exceeds "
                                 f"--max-value {max_value}"):
            m["big"] = b"x" * max_value
        with pytest.raises(shmmap.LimitError,
                           match=f"encoded key of {max_key + 5} bytes exceeds --max-key {max_key}"):
            m["k" * max_key] = 1                   # str32: 5 bytes of header
        m["k" * (max_key - 3)] = 1                 # str16: 3
        assert len(m["big"]) == max_value - 5


def test_serve_help_says_limits_count_encoded_bytes() -> None:
    from shmmap.cli.main import build_parser
    serve: Optional[Any] = None
    parser = build_parser()
    for action in parser._subparsers._group_actions:    # type: ignore[union-attr]
        serve = action.choices.get("serve", serve)
    assert serve is not None
    text = " ".join(serve.format_help().split())
    assert "largest value, counted as its msgpack encoding" in text
    assert "largest key, counted as its msgpack encoding" in text


def test_a_client_of_the_protocol_before_these_types_is_refused_clearly(map_name: str) -> None:
    # Protocol 1 sent tuples as arrays and read them as lists.
    assert VERSION == 2
    with shmmap.Daemon(map_name) as d:
        sock = connect_raw(str(d.socket_path))
        try:
            sock.sendall(msgpack.packb([Op.HELLO, 1, 1]))
            [reply] = read_replies(sock, 1)
        finally:
            sock.close()
        assert reply[:2] == [1, Err.INVALID]
        assert reply[2] == "the client speaks protocol version 1, the daemon 2: run the same " \
            "shmmap in both"
