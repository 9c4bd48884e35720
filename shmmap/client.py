"""The client map: ``shmmap.connect(name)``.

Reads go straight to shared memory (see MapReader): no message, no lock,
no system call. Writes are requests to the daemon over its Unix socket; a
write returns once the daemon has committed it, so this process, and any
other that reads afterwards, sees it.
"""
from __future__ import annotations

import os
import select
import socket
import threading
import time
import weakref
from collections.abc import ItemsView, KeysView, MutableMapping, ValuesView
from contextlib import contextmanager
from itertools import chain
from operator import itemgetter
from typing import Any, Callable, Iterator, Optional

import msgpack

from . import protocol
from ._core import ffi
from .codec import decode_value, encode_key, encode_value
from .errors import (AccessDeniedError, DaemonUnavailableError, InvalidRequestError, LimitError, MapFullError,
                     OutcomeUnknownError, ShmmapError)
from .protocol import Err, Op, batch_blob, delete_item, store_item
from .reader import MapReader
from .slots import ClientSlot

DEFAULT_TIMEOUT = 10.0
BATCH_BYTES = 1 << 20      # update() sends blobs of about this size, pipelined
_MISSING: Any = object()
_ERRORS: dict[int, type[ShmmapError]] = {
    Err.INVALID: InvalidRequestError,
    Err.LIMIT: LimitError,
    Err.FULL: MapFullError,
    Err.PROTOCOL: InvalidRequestError,
    Err.UNKNOWN_OP: InvalidRequestError,
    Err.INTERNAL: ShmmapError,
    Err.DENIED: AccessDeniedError,
}
# Maps of this process by id (a Mapping is unhashable), for the fork hook.
_live_maps: "weakref.WeakValueDictionary[int, SharedMap]" = weakref.WeakValueDictionary()


def _forget_connections_in_child() -> None:
    for m in list(_live_maps.values()):
        m._after_fork()


os.register_at_fork(after_in_child=_forget_connections_in_child)


class _Keys(KeysView):  # type: ignore[type-arg]
    _mapping: "SharedMap"

    def __iter__(self) -> Iterator[Any]:
        return map(itemgetter(0), self._mapping.items_snapshot())


class _Values(ValuesView):  # type: ignore[type-arg]
    _mapping: "SharedMap"

    def __iter__(self) -> Iterator[Any]:
        return map(itemgetter(1), self._mapping.items_snapshot())


class _Items(ItemsView):  # type: ignore[type-arg]
    _mapping: "SharedMap"

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        return self._mapping.items_snapshot()


class SharedMap(MapReader, MutableMapping):  # type: ignore[type-arg]
    """A map shared with every process of this host that connects to it.

    A MutableMapping, plus the operations of Go's sync.Map under Python
    names. Iterating (keys(), values(), items(), iter(), snapshot()) reads
    one consistent snapshot, whatever is written meanwhile.
    """

    def __init__(self, name: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        MapReader.__init__(self, name)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._sock: Optional[socket.socket] = None
        self._unpacker = msgpack.Unpacker(raw=False)
        self._packer = msgpack.Packer(use_bin_type=True)
        self._next_id = 0
        self._slot: Optional[ClientSlot] = None
        self._retired_slots: list[ClientSlot] = []
        self.daemon_info: dict[str, Any] = {}
        _live_maps[id(self)] = self
        with self._lock:
            self._connect()

    # -- connection -------------------------------------------------------

    @property
    def socket_path(self) -> str:
        return ffi.string(self.header.socket_path).decode()

    def _connect(self) -> None:
        path = self.socket_path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise DaemonUnavailableError(
                f"no daemon answers for map {self.name!r} at {path}: {exc.strerror or exc}"
            ) from None
        sock.setblocking(False)         # replies are awaited by _recv_some
        self._sock = sock
        self._unpacker = msgpack.Unpacker(raw=False)
        try:
            info = self._roundtrip([Op.HELLO, self._new_id(), protocol.VERSION])[0]
        except ShmmapError:
            self._disconnect()
            raise
        except OSError as exc:
            refusal = self._refusal()
            self._disconnect()
            if refusal is not None:
                raise refusal from None
            raise DaemonUnavailableError(
                f"the daemon of map {self.name!r} closed the connection: {exc}") from None
        self.daemon_info = info
        if info["slot"] >= 0:
            self._slot = ClientSlot(self.name, info["slot"])
            self.set_counters(self._slot.slot)

    def _refusal(self) -> Optional[ShmmapError]:
        """The error a daemon that refused this connection (too many
        clients, a uid it does not allow) sent before closing it."""
        assert self._sock is not None
        self._sock.settimeout(self.timeout)
        try:
            while True:
                data = self._sock.recv(protocol.RECV_SIZE)
                if not data:
                    break
                self._unpacker.feed(data)
        except OSError:
            pass
        for reply in self._unpacker:
            if isinstance(reply, list) and len(reply) >= 3 and reply[1] != protocol.OK:
                return _ERRORS.get(reply[1], ShmmapError)(reply[2])
        return None

    def _disconnect(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._slot is not None:
            # Another thread may be counting into it inside a C call right
            # now: keep the mapping until the map is closed.
            self.set_counters(None)
            self._retired_slots.append(self._slot)
            self._slot = None

    def _after_fork(self) -> None:
        """In a forked child: the parent's connection and slot are not ours.
        Forget them; the first write connects anew."""
        self._lock = threading.Lock()
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._slot = None               # the parent's: unmapped with its mapping
        self.set_counters(None)

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _wait(self, events: int, deadline: float) -> None:
        """Sleeps until the socket has events, or raises TimeoutError."""
        assert self._sock is not None
        poller = select.poll()
        poller.register(self._sock, events)
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            raise TimeoutError(f"no reply from the daemon within {self.timeout} s")

    def _send_all(self, data: bytes, deadline: float) -> None:
        assert self._sock is not None
        view = memoryview(data)
        while view:
            try:
                view = view[self._sock.send(view):]
            except BlockingIOError:
                self._wait(select.POLLOUT, deadline)

    def _recv_some(self, deadline: float) -> bytes:
        """The next bytes from the daemon: polls without sleeping for up to
        CLIENT_SPIN_SECONDS (a reply usually comes sooner), then sleeps."""
        assert self._sock is not None
        spin_until = time.perf_counter() + protocol.CLIENT_SPIN_SECONDS
        while True:
            try:
                data = self._sock.recv(protocol.RECV_SIZE)
            except BlockingIOError:
                if time.perf_counter() > spin_until:
                    self._wait(select.POLLIN, deadline)
                continue
            if not data:
                raise ConnectionResetError("the daemon closed the connection")
            return data

    def _roundtrip(self, *requests: list[Any]) -> list[Any]:
        """Sends requests (pipelined) and returns their results in order;
        raises the first error a reply carries. Caller holds the lock."""
        deadline = time.monotonic() + self.timeout
        pack = self._packer.pack
        self._send_all(b"".join([pack(r) for r in requests]), deadline)
        results, error = [], None
        for _ in requests:
            reply = next(self._unpacker, None)
            while reply is None:
                self._unpacker.feed(self._recv_some(deadline))
                reply = next(self._unpacker, None)
            if reply[1] == protocol.OK:
                results.append(reply[2])
            elif error is None:
                error = _ERRORS.get(reply[1], ShmmapError)(reply[2])
        if error is not None:
            raise error
        return results

    def _request(self, op: Op, *args: Any) -> Any:
        return self._pipeline([[op, *args]])[0]

    def _pipeline(self, requests: list[list[Any]]) -> list[Any]:
        with self._lock:
            idempotent = all(r[0] in protocol.IDEMPOTENT for r in requests)
            for attempt in (1, 2):
                try:
                    if self._sock is None:
                        self._connect()
                    return self._roundtrip(*([r[0], self._new_id(), *r[1:]] for r in requests))
                except ShmmapError:
                    raise       # the daemon's answer, or no daemon to connect to
                except (OSError, ValueError) as exc:    # ValueError: a garbled reply
                    # The connection broke with the requests sent: a new
                    # daemon may have adopted the map. Idempotent requests
                    # are sent once more; the others may have been applied.
                    self._disconnect()
                    if not idempotent:
                        raise OutcomeUnknownError(
                            f"map {self.name!r}: the daemon went away during "
                            f"{Op(requests[0][0]).name}; it may or may not have been applied"
                        ) from exc
                    if attempt == 2:
                        raise DaemonUnavailableError(
                            f"map {self.name!r}: the daemon went away: {exc}") from None
            raise AssertionError("unreachable")

    def close(self) -> None:
        """Closes the connection and unmaps the map."""
        with self._lock:
            self._disconnect()
            for slot in self._retired_slots:
                slot.close()
            self._retired_slots.clear()
        _live_maps.pop(id(self), None)
        MapReader.close(self)

    def __enter__(self) -> "SharedMap":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- reads (Mapping) ----------------------------------------------------

    get = MapReader.lookup

    def __getitem__(self, key: Any) -> Any:
        value = self.lookup(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    __contains__ = MapReader.contains  # type: ignore[assignment]

    def items_snapshot(self) -> Iterator[tuple[Any, Any]]:
        """(key, value) pairs of one snapshot; the generation read stays
        mapped until the iterator is exhausted or dropped."""
        return MapReader.items(self)

    def __iter__(self) -> Iterator[Any]:
        return map(itemgetter(0), self.items_snapshot())

    def keys(self) -> KeysView:  # type: ignore[type-arg]
        return _Keys(self)

    def values(self) -> ValuesView:  # type: ignore[type-arg]
        return _Values(self)

    def items(self) -> ItemsView:  # type: ignore[override, type-arg]
        return _Items(self)

    def snapshot(self) -> dict[Any, Any]:  # type: ignore[override]
        """A dict of the whole map at one instant."""
        return dict(self.items_snapshot())

    def __or__(self, other: Any) -> dict[Any, Any]:
        if not hasattr(other, "keys"):
            return NotImplemented
        merged = self.snapshot()
        merged.update(other)
        return merged

    def __ror__(self, other: Any) -> dict[Any, Any]:
        if not hasattr(other, "keys"):
            return NotImplemented
        merged = dict(other)
        merged.update(self.snapshot())
        return merged

    def __ior__(self, other: Any) -> "SharedMap":
        self.update(other)
        return self

    def __repr__(self) -> str:
        return f"<shmmap.SharedMap {self.name!r} keys={len(self)} gen={self.generation.gen}>"

    # -- writes (MutableMapping) ----------------------------------------------

    def __setitem__(self, key: Any, value: Any) -> None:
        self.store(key, value)

    def __delitem__(self, key: Any) -> None:
        _, loaded = self.load_and_delete(key)
        if not loaded:
            raise KeyError(key)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        return self.load_or_store(key, default)[0]

    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        value, loaded = self.load_and_delete(key)
        if loaded:
            return value
        if default is _MISSING:
            raise KeyError(key)
        return default

    def popitem(self) -> tuple[Any, Any]:
        for key in self:
            value, loaded = self.load_and_delete(key)
            if loaded:
                return key, value
        raise KeyError("popitem(): map is empty")

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Stores many pairs; each blob of about BATCH_BYTES is atomic, and
        the blobs are pipelined."""
        pairs = chain(*(a.items() if hasattr(a, "items") else a for a in args), kwargs.items())
        blobs, parts, size = [], [], 0
        for key, value in pairs:
            item = store_item(encode_key(key), encode_value(value))
            parts.append(item)
            size += len(item)
            if size >= BATCH_BYTES:
                blobs.append(b"".join(parts))
                parts, size = [], 0
        if parts:
            blobs.append(b"".join(parts))
        if blobs:
            self._pipeline([[Op.BATCH, b] for b in blobs])

    def clear(self) -> None:
        """Removes every key, as one write."""
        self._request(Op.CLEAR)

    # -- sync.Map --------------------------------------------------------------

    def load(self, key: Any) -> tuple[Any, bool]:
        value = self.lookup(key, _MISSING)
        return (None, False) if value is _MISSING else (value, True)

    def store(self, key: Any, value: Any) -> None:
        self._request(Op.BATCH, store_item(encode_key(key), encode_value(value)))

    def load_or_store(self, key: Any, value: Any) -> tuple[Any, bool]:
        """(the existing value, True), or (value, False) after storing it."""
        loaded, raw = self._request(Op.LOAD_OR_STORE, encode_key(key), encode_value(value))
        return (decode_value(raw), True) if loaded else (value, False)

    def load_and_delete(self, key: Any) -> tuple[Any, bool]:
        loaded, raw = self._request(Op.LOAD_AND_DELETE, encode_key(key))
        return (decode_value(raw), True) if loaded else (None, False)

    def delete(self, key: Any) -> None:
        self._request(Op.BATCH, delete_item(encode_key(key)))

    def swap(self, key: Any, value: Any) -> tuple[Any, bool]:
        """Stores value; returns (the previous value, whether there was one)."""
        loaded, raw = self._request(Op.SWAP, encode_key(key), encode_value(value))
        return (decode_value(raw), True) if loaded else (None, False)

    def compare_and_swap(self, key: Any, old: Any, new: Any) -> bool:
        return bool(self._request(Op.COMPARE_AND_SWAP, encode_key(key), encode_value(old),
                                  encode_value(new)))

    def compare_and_delete(self, key: Any, old: Any) -> bool:
        return bool(self._request(Op.COMPARE_AND_DELETE, encode_key(key), encode_value(old)))

    def range(self, fn: Callable[[Any, Any], Any]) -> None:
        """Calls fn(key, value) for each pair of one snapshot until fn
        returns False."""
        for key, value in self.items_snapshot():
            if fn(key, value) is False:
                return

    @contextmanager
    def batch(self) -> Iterator["Batch"]:
        """``with m.batch() as b: b[k] = v; del b[j]`` -- applied as one
        atomic write when the block ends without an exception."""
        b = Batch()
        yield b
        if b.items:
            self._request(Op.BATCH, batch_blob(b.items))

    # -- the daemon -------------------------------------------------------------

    def promote(self) -> int:
        """Asks the daemon to promote now; returns the new generation."""
        return int(self._request(Op.PROMOTE))

    def stats(self) -> dict[str, Any]:
        """The daemon's statistics of the map (see the README)."""
        return dict(self._request(Op.STATS))


class Batch:
    """Writes collected by SharedMap.batch(), encoded as they are added so
    that a bad key or value raises at once."""

    def __init__(self) -> None:
        self.items: list[tuple[bytes, Optional[bytes]]] = []

    def store(self, key: Any, value: Any) -> None:
        self.items.append((encode_key(key), encode_value(value)))

    def delete(self, key: Any) -> None:
        self.items.append((encode_key(key), None))

    __setitem__ = store
    __delitem__ = delete


def connect(name: str, *, timeout: float = DEFAULT_TIMEOUT) -> SharedMap:
    """Opens map name, which a daemon (``shmmap serve name``) must serve."""
    return SharedMap(name, timeout=timeout)
