"""The daemon's side of ``serve --upstream``: clients' writes become the
upstream's commands, and the upstream's Updates become the map's writes,
each committed as one write on the daemon's thread (readers see each
refetch, each resync, as a snapshot) before the client write it answers is
acknowledged: a write returns once Redis has it and so does the map."""
from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Optional

import msgpack

from ...shared.codec import encode_key, encode_value
from ...shared.errors import InvalidRequestError, ShmmapError, UpstreamUnavailableError
from ...shared.protocol import DELETE, STORE, Err, Op, batch_blob
from ..transport import Connection, Later
from ..writer import MapWriter
from .base import LIVE, SYNCING, Fetched, Update, Upstream, Write
from .redisnode import RedisNode
from .values import ABSENT, Unheld, Values, key_name, redis_name

log = logging.getLogger("shmmap.daemon")

Result = tuple[Any, int]


@dataclass(frozen=True)
class UpstreamConfig:
    """serve's --upstream, --prefix and --decode."""

    url: str
    prefixes: tuple[str, ...]
    decode: Optional[str] = None


class NearCache:
    """Serves a map as the near cache of an upstream: start() it with the
    loop's wake-up, call check() on each turn of the loop."""

    def __init__(self, name: str, config: UpstreamConfig, writer: MapWriter) -> None:
        if not config.prefixes:
            raise ValueError("--upstream needs at least one --prefix")
        self.name = name
        self.writer = writer
        self.values = Values(config.decode)
        self.prefixes = [p.encode() for p in config.prefixes]
        self._updates: deque[Update] = deque()
        self._wake: Callable[[], None] = lambda: None
        self.upstream: Upstream = RedisNode(config.url, self.prefixes, self._deliver)
        self.url = self.upstream.where
        self.state = SYNCING
        self.since = time.time()          # when it entered this state
        self.last_sync = 0.0              # when the copy was last whole and current
        self.fulls = 0                    # full loads committed (the first, then resyncs)
        self.keys_refetched = 0
        self.writes = 0
        self.write_failures = 0
        self.write_s = [0.0, 0.0, 0.0]    # last, sum, max of the write round trips
        self.lag_s = [0.0, 0.0]           # last, max: from a push's arrival to its commit
        self.skipped: dict[bytes, str] = {}    # keys of other types (or undecodable), by kind
        self.commit_errors = 0
        # An update the map's limits refused: the copy misses it until a
        # full load fits again, and says so (stale).
        self.incomplete = False

    # -- the loop's side -----------------------------------------------------

    def start(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self.upstream.start()

    def stop(self) -> None:
        self.upstream.stop()

    def _deliver(self, update: Update) -> None:
        """Called by the upstream (its thread): queued for check()."""
        self._updates.append(update)
        self._wake()

    def check(self) -> None:
        """Commits every Update delivered so far, each as one write, then
        answers the write it carries (the reply goes out with the round's)."""
        while self._updates:
            self._apply(self._updates.popleft())

    def _apply(self, u: Update) -> None:
        if u.error is not None:
            assert u.write is not None
            self.write_failures += 1
            u.write.later.error(*u.error)
            return
        seq = self.writer.seq
        try:
            blob = self._blob(u)
            if blob:
                seq = self.writer.apply(blob)
                self.writer.commit()
        except ShmmapError as exc:
            # Over the map's limits: said loudly, never served as whole.
            self.commit_errors += 1
            self.incomplete = True
            log.error("map %r: the upstream's update of %d keys does not fit, the copy is "
                      "stale: %s", self.name, len(u.fetched), exc,
                      extra={"event": "upstream_commit_failed"})
            if u.write is not None:
                u.write.later.error(Err.FULL, f"the map cannot hold the write: {exc}")
            return
        now = time.perf_counter()
        if u.received and not u.full and u.write is None:
            self.lag_s[0] = now - u.received
            self.lag_s[1] = max(self.lag_s[1], self.lag_s[0])
        if u.full:
            self.fulls += 1
            self.incomplete = False
        else:
            self.keys_refetched += len(u.fetched)
        if u.state is not None and u.state != self.state:
            self.state, self.since = u.state, time.time()
            log.warning("map %r: upstream %s is %s", self.name, self.url, u.state,
                        extra={"event": "upstream_state", "state": u.state})
        if self.state == LIVE:
            self.last_sync = time.time()
        if u.write is not None:
            took = now - u.write.started
            self.writes += 1
            self.write_s = [took, self.write_s[1] + took, max(self.write_s[2], took)]
            u.write.later.ok(self._answer(u), seq)

    def _answer(self, u: Update) -> Any:
        assert u.write is not None
        return None if u.write.answer is None else u.write.answer(u)

    def _previous(self, u: Update) -> list[Any]:
        """[loaded, the value before]: a swap's, a load-and-delete's."""
        before = self._local(u.before[0])
        return [before is not None, before]

    def _stored_or_loaded(self, u: Update) -> list[Any]:
        """A load-or-store's [loaded, the value]: the one Redis held, or
        the one stored."""
        if u.wrote:
            return [False, self._local(u.fetched[0])]
        return [True, self._local(u.before[0])]

    def _blob(self, u: Update) -> bytes:
        """The batch blob that makes the map hold what u fetched (with
        u.full, only that)."""
        lookup = self.writer.lookup_raw
        items: list[tuple[bytes, Optional[bytes]]] = []
        seen: set[bytes] = set()
        for f in u.fetched:
            k = encode_key(key_name(f.key))
            seen.add(k)
            v = self._local(f)
            current = lookup(k)
            if v is None:
                if current is not None:
                    items.append((k, None))
            elif v != current:
                items.append((k, v))
        if u.full:
            names = {f.key for f in u.fetched}
            self.skipped = {k: kind for k, kind in self.skipped.items() if k in names}
            g = self.writer.generation
            for keys, _ in g.batches(g.snapshot()):
                items += [(k, None) for k in map(encode_key, keys) if k not in seen]
        return batch_blob(items)

    def _local(self, f: Fetched) -> Optional[bytes]:
        """f's value as the map holds it, encoded; None: not in the map."""
        try:
            value = self.values.view(f)
        except Unheld as exc:
            self._skip(f.key, exc.kind, str(exc))
            return None
        except ValueError as exc:
            self._skip(f.key, "undecodable", f"--decode {self.values.decode} cannot read it: "
                                             f"{exc}")
            return None
        self.skipped.pop(f.key, None)
        return None if value is ABSENT else encode_value(value)

    def _skip(self, key: bytes, kind: str, why: str) -> None:
        """Counts a key the map leaves out, logged once (until it changes)."""
        if self.skipped.get(key) != kind:
            log.warning("map %r: Redis key %r is left out: %s", self.name, key, why,
                        extra={"event": "upstream_skipped", "kind": kind})
        self.skipped[key] = kind

    # -- the handlers -----------------------------------------------------------

    def handlers(self, hello: Callable[..., Result]) -> dict[int, tuple[Callable[..., Result], int]]:
        """The ops served differently: writes go to the upstream (clear()
        is refused: it would empty the range in Redis); and no client gets
        a channel, whose batches the daemon would apply in C, without Redis
        (hello, the map's HELLO handler, says so)."""
        def op_hello(conn: Connection, version: Any) -> Result:
            info, seq = hello(conn, version)
            return {**info, "channel": False}, seq
        out: dict[int, tuple[Callable[..., Result], int]] = {
            Op.HELLO: (op_hello, 1), Op.BATCH: (self.op_batch, 1),
            Op.CHANNEL: (self._refuse("channels"), 0), Op.CLEAR: (self._refuse("clear()"), 0)}
        out.update({
            Op.SWAP: (self.op_swap, 2), Op.LOAD_AND_DELETE: (self.op_load_and_delete, 1),
            Op.LOAD_OR_STORE: (self.op_load_or_store, 2),
            Op.COMPARE_AND_SWAP: (self.op_compare_and_swap, 3),
            Op.COMPARE_AND_DELETE: (self.op_compare_and_delete, 2)})
        return out

    def _refuse(self, what: str) -> Callable[..., Result]:
        def refuse(conn: Connection, *args: Any) -> Result:
            raise InvalidRequestError(f"map {self.name!r} is served from Redis: {what} is not "
                                      "supported there")
        return refuse

    def op_batch(self, conn: Connection, blob: Any) -> Result:
        return self._forward(_items(_bin(blob, "batch")))

    def op_swap(self, conn: Connection, key: Any, value: Any) -> Result:
        return self._forward([(_decoded(key, "key"), _decoded(value, "value"))], before=True,
                             answer=self._previous)

    def op_load_and_delete(self, conn: Connection, key: Any) -> Result:
        return self._forward([(_decoded(key, "key"), _DELETED)], before=True,
                             answer=self._previous)

    def op_load_or_store(self, conn: Connection, key: Any, value: Any) -> Result:
        view = self.values.view
        return self._forward([(_decoded(key, "key"), _decoded(value, "value"))],
                             condition=lambda f: view(f) is ABSENT,
                             answer=self._stored_or_loaded)

    def op_compare_and_swap(self, conn: Connection, key: Any, old: Any, new: Any) -> Result:
        return self._forward([(_decoded(key, "key"), _decoded(new, "new value"))],
                             condition=self._equals(_decoded(old, "old value")),
                             answer=lambda u: u.wrote)

    def op_compare_and_delete(self, conn: Connection, key: Any, old: Any) -> Result:
        return self._forward([(_decoded(key, "key"), _DELETED)],
                             condition=self._equals(_decoded(old, "old value")),
                             answer=lambda u: u.wrote)

    def _equals(self, old: Any) -> Callable[[Fetched], bool]:
        """Whether a key holds old, as Python compares values (1 == 1.0),
        the map's own rule; run in the upstream's thread."""
        view = self.values.view

        def holds(f: Fetched) -> bool:
            current = view(f)
            return current is not ABSENT and bool(current == old)
        return holds

    def _forward(self, items: list[tuple[Any, Any]], before: bool = False,
                 condition: Optional[Callable[[Fetched], bool]] = None,
                 answer: Optional[Callable[[Update], Any]] = None) -> Result:
        """Sends the stores and deletes of items to Redis as one
        transaction (if condition holds for the one key); answered once
        Redis made it and the map has it."""
        if self.state != LIVE:
            since = time.strftime("%H:%M:%S", time.localtime(self.since))
            raise UpstreamUnavailableError(
                f"map {self.name!r}: upstream {self.url} is {self.state} (since {since}): "
                "nothing was written")
        commands: list[tuple[Any, ...]] = []
        keys: dict[bytes, None] = {}
        for key, value in items:
            name = self._in_range(key)
            keys[name] = None
            if value is _DELETED:
                commands.append(("DEL", name))
            elif isinstance(value, dict):
                commands.append(self.values.store_dict(name, value))
            else:
                commands.append(("SET", name, self.values.dump(value)))
        if not commands:
            return None, self.writer.seq
        later = Later()
        self.upstream.submit(Write(commands, list(keys), later, before=before,
                                   condition=condition, answer=answer))
        return later, 0

    def _in_range(self, key: Any) -> bytes:
        name = redis_name(key)
        if not any(name.startswith(p) for p in self.prefixes):
            raise InvalidRequestError(
                f"key {key!r} is outside the map's range in Redis (prefixes "
                f"{', '.join(repr(p.decode(errors='replace')) for p in self.prefixes)})")
        return name

    # -- stats ------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """stats()["upstream"]."""
        kinds: dict[str, int] = {}
        for kind in self.skipped.values():
            kinds[kind] = kinds.get(kind, 0) + 1
        last, total, most = self.write_s
        return {
            "url": self.url,
            "prefixes": [p.decode(errors="replace") for p in self.prefixes],
            "decode": self.values.decode,
            "state": self.state,
            "stale": self.state != LIVE or self.incomplete,
            "since": round(self.since, 3),
            "last_sync": round(self.last_sync, 3),
            "invalidations": self.upstream.invalidations,
            "keys_refetched": self.keys_refetched,
            "resyncs": max(self.fulls - 1, 0),
            "reconnects": self.upstream.reconnects,
            "writes": self.writes,
            "write_failures": self.write_failures,
            "write_ms": {"last": _ms(last), "mean": _ms(total / self.writes if self.writes else 0),
                         "max": _ms(most)},
            "lag_ms": {"last": _ms(self.lag_s[0]), "max": _ms(self.lag_s[1])},
            "skipped_keys": kinds,
            "commit_errors": self.commit_errors,
        }


_DELETED: Any = object()


def _bin(x: Any, what: str) -> bytes:
    if type(x) is not bytes:
        raise InvalidRequestError(f"{what} must be msgpack-encoded bytes, not {type(x).__name__}")
    return x


def _decoded(x: Any, what: str) -> Any:
    """A key or value the client encoded; InvalidRequestError if it is not."""
    try:
        return msgpack.unpackb(_bin(x, what), raw=False, strict_map_key=False)
    except InvalidRequestError:
        raise
    except Exception as exc:        # msgpack's errors
        raise InvalidRequestError(f"malformed {what}: {type(exc).__name__}: {exc}") from None


def _items(blob: bytes) -> list[tuple[Any, Any]]:
    """The (key, value) stores and (key, _DELETED) deletes of a batch blob;
    InvalidRequestError if it is none."""
    u = msgpack.Unpacker(raw=False, strict_map_key=False, use_list=True)
    u.feed(blob)
    out: list[tuple[Any, Any]] = []
    try:
        while True:
            op = u.read_bytes(1)
            if not op:
                return out
            key = u.unpack()
            if op == STORE:
                out.append((key, u.unpack()))
            elif op == DELETE:
                out.append((key, _DELETED))
            else:
                raise InvalidRequestError(f"batch item of unknown operation {op[0]}")
    except InvalidRequestError:
        raise
    except Exception as exc:        # msgpack's errors: bytes that are no batch
        raise InvalidRequestError(f"malformed batch: {type(exc).__name__}: {exc}") from None


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)
