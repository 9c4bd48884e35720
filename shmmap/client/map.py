"""The client map: ``shmmap.connect(name)``.

Reads go straight to shared memory (see MapReader): no message, no lock,
no system call. Writes are requests to the daemon: a synchronous store or
delete through this connection's channel in shared memory (see
shmmap.client.channel), everything else over its Unix socket. A write
returns once the daemon has committed it, so this process, and any other
that reads afterwards, sees it.
"""
from __future__ import annotations

import errno
import os
import select
import socket
import threading
import time
import weakref
from collections.abc import ItemsView, KeysView, Mapping, MutableMapping, ValuesView
from contextlib import contextmanager
from itertools import chain
from math import ceil
from operator import itemgetter
from typing import Any, Callable, Iterable, Iterator, Optional

from .._core import ffi, lib
from ..shared import protocol, segments
from ..shared.codec import CODEC, Codec, Ext, encode_key
from ..shared.errors import DaemonUnavailableError, MapClosedError, ShmmapError
from ..shared.generation import Generation
from ..shared.protocol import DELETE, STORE, Op, batch_blob
from ..shared.tracing import now_us
from .cache import DEFAULT_CACHE_BYTES, DEFAULT_CACHE_KEYS, CacheLimits, NoCache, ReadCache
from .channel import BLOB_BYTES as CHANNEL_BLOB_BYTES
from .channel import Channel, receive_fds
from .connection import (ATTEMPTS, ClientConnection, OneBatch, Requests, Sent, failure_of,
                         resend_or_raise, stream_survives, timed_out)
from .reader import MapReader
from .slot import ClientSlot
from .tracer import ClientTracer, client_tracer

DEFAULT_TIMEOUT = 10.0
BATCH_BYTES = 1 << 20      # update() sends blobs of about this size, pipelined
PIPELINE_WRITES = 256      # writes a pipeline sends per round trip
_MISSING: Any = object()
# Maps of this process by id (a Mapping is unhashable), for the fork hook.
_live_maps: weakref.WeakValueDictionary[int, SharedMap] = weakref.WeakValueDictionary()


def _forget_connections_in_child() -> None:
    for m in list(_live_maps.values()):
        m._after_fork()


os.register_at_fork(after_in_child=_forget_connections_in_child)


class _SendFailed(Exception):
    """Sending failed (the cause is chained) with ``sent`` of the bytes out."""

    def __init__(self, sent: Sent) -> None:
        super().__init__(sent)
        self.sent = sent


def update_blobs(codec: Codec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[bytes]:
    """The batch blobs of update(*args, **kwargs), encoded by codec: its
    stores, in blobs of about BATCH_BYTES (each applied atomically)."""
    encode_pair = codec.encode_pair
    pairs = chain(*(a.items() if hasattr(a, "items") else a for a in args), kwargs.items())
    blobs, parts, size = [], [], 0
    for key, value in pairs:
        item = STORE + encode_pair(key, value)
        parts.append(item)
        size += len(item)
        if size >= BATCH_BYTES:
            blobs.append(b"".join(parts))
            parts, size = [], 0
    if parts:
        blobs.append(b"".join(parts))
    return blobs


def decode_loaded(codec: Codec, result: list[Any], absent: Any) -> tuple[Any, bool]:
    """(the value, True) from the result [loaded, encoded value] of a
    conditional op, decoded by codec, else (absent, False)."""
    was, raw = result
    return (codec.decode_value(raw), True) if was else (absent, False)


class _Keys(KeysView):  # type: ignore[type-arg]
    _mapping: MapReads

    def __iter__(self) -> Iterator[Any]:
        return self._mapping._iterate("keys")


class _Values(ValuesView):  # type: ignore[type-arg]
    _mapping: MapReads

    def __iter__(self) -> Iterator[Any]:
        return self._mapping._iterate("values")


class _Items(ItemsView):  # type: ignore[type-arg]
    _mapping: MapReads

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        return self._mapping._pairs()


class MapReads(Mapping):  # type: ignore[type-arg]
    """The reads of a map, shared by SharedMap and shmmap.aio's AsyncMap:
    from this process's cache or shared memory, never waiting for the
    daemon. A subclass calls _init_reads() first, and provides _open()
    (the reader; MapClosedError after close())."""

    def _init_reads(self, name: str, cache_keys: int, cache_bytes: int,
                    tracer: Optional[ClientTracer], ext_types: Iterable[Ext]) -> None:
        """The read state of a map not yet opened: its name (checked), the
        codec of its values (with the application's ext_types), its
        cache's limits, and no cache yet."""
        self.name = segments.check_map_name(name)
        ext_types = tuple(ext_types)
        self.codec = Codec(ext_types) if ext_types else CODEC
        self._encode_value = self.codec.encode_value
        self._encode_pair = self.codec.encode_pair
        if cache_keys < 0 or cache_bytes < 0:
            raise ValueError("cache_keys and cache_bytes are counts: 0 or more")
        self.cache_limits = CacheLimits(cache_keys, cache_bytes)
        # The read fast path loads self._cache.hot and nothing else; before
        # the map is opened it never matches, so the first read opens it.
        self._cache: NoCache | ReadCache = NoCache()
        self._trace = tracer

    def _open(self) -> MapReader:
        """The reader, opening the map if the subclass does so on first
        use; MapClosedError after close()."""
        raise NotImplementedError

    def _open_cache(self) -> ReadCache:
        """The cache, after opening the map if this is its first use;
        MapClosedError after close()."""
        self._open()
        cache = self._cache
        assert isinstance(cache, ReadCache)
        return cache

    # -- generations --------------------------------------------------------------------

    @property
    def generation(self) -> Generation:
        """The generation this process reads now (it owns its mapping)."""
        gen = self._open().generation
        if gen is None:
            raise MapClosedError(f"map {self.name!r} is closed")
        return gen

    def refresh(self) -> Generation:
        """The current generation, mapping it if a promotion superseded the
        one read so far (reads do this by themselves)."""
        return self._open().refresh()

    # -- reads (Mapping) ----------------------------------------------------
    # The fast path, inlined in each: the cache's hot tuple, whose version
    # equals the header's version word when nothing changed since the dict
    # was brought up to date (a closed or unopened map never matches).
    # Otherwise the cache's slow path: open (the closed check), refresh,
    # or read shared memory through the reader.

    def get(self, key: Any, default: Any = None) -> Any:
        """The value of key, or default: no message, no lock, no system
        call; from the cache's dict while the map is unchanged."""
        seen, word, data = self._cache.hot
        if seen == word[0]:
            return data.get(key, default)
        del data                # a refresh may change it in place if no one holds it
        cache = self._cache
        if isinstance(cache, NoCache):          # not opened yet (or closed: it raises)
            cache = self._open_cache()
        return cache.lookup(key, default)

    def __getitem__(self, key: Any) -> Any:
        seen, word, data = self._cache.hot
        if seen == word[0]:
            return data[key]
        del data
        cache = self._cache
        if isinstance(cache, NoCache):          # not opened yet (or closed: it raises)
            cache = self._open_cache()
        value = cache.lookup(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __contains__(self, key: Any) -> bool:
        seen, word, data = self._cache.hot
        if seen == word[0]:
            return key in data
        del data
        cache = self._cache
        if isinstance(cache, NoCache):          # not opened yet (or closed: it raises)
            cache = self._open_cache()
        return cache.lookup(key, _MISSING) is not _MISSING

    def __len__(self) -> int:
        reader = self._open()
        data = self._open_cache().current()
        return len(data) if data is not None else len(reader)

    def _iterate(self, what: str) -> Iterator[Any]:
        """An iterator over one snapshot, taken now ("items", "keys" or
        "values"): the cache's dict as of now (a later refresh copies it),
        or, uncached, the pairs of a generation the iterator holds. Either
        runs to its end, whatever happens meanwhile (writes, promotions,
        close())."""
        reader = self._open()
        it = self._open_cache().iterate(what)
        if it is None:
            pairs = reader.items()
            it = pairs if what == "items" else map(itemgetter(0 if what == "keys" else 1), pairs)
        if self._trace is not None:
            return self._trace.iterate(it, self.name)
        return it

    def _pairs(self) -> Iterator[tuple[Any, Any]]:
        """(key, value) pairs of one snapshot, taken now."""
        return self._iterate("items")

    def __iter__(self) -> Iterator[Any]:
        return self._iterate("keys")

    def keys(self) -> KeysView:  # type: ignore[type-arg]
        """The keys; each iteration over them reads one snapshot."""
        self._open()
        return _Keys(self)

    def values(self) -> ValuesView:  # type: ignore[type-arg]
        """The values; each iteration over them reads one snapshot."""
        self._open()
        return _Values(self)

    def items(self) -> ItemsView:  # type: ignore[type-arg]
        """The (key, value) pairs; each iteration over them reads one
        snapshot, however long it runs."""
        self._open()
        return _Items(self)

    def snapshot(self) -> dict[Any, Any]:
        """A dict of the whole map at one instant (the caller's own)."""
        reader = self._open()
        data = self._open_cache().copy()
        return data if data is not None else dict(reader.items())

    # -- sync.Map's reads ------------------------------------------------

    def load(self, key: Any) -> tuple[Any, bool]:
        """(the value of key, True), or (None, False) if it is absent."""
        value = self.get(key, _MISSING)
        return (None, False) if value is _MISSING else (value, True)

    def range(self, fn: Callable[[Any, Any], Any]) -> None:
        """Calls fn(key, value) for each pair of one snapshot until fn
        returns False."""
        for key, value in self._pairs():
            if fn(key, value) is False:
                return


class SharedMap(MapReads, MutableMapping):  # type: ignore[type-arg]
    """A map shared with every process of this host that connects to it.

    A MutableMapping, plus the operations of Go's sync.Map under Python
    names. Iterating (keys(), values(), items(), iter(), snapshot()) reads
    one consistent snapshot, whatever is written meanwhile.

    It reads through a ReadCache (a dict of the map, kept current by
    deltas; see shmmap.client.cache) or, for a map over the cache's limits, a
    MapReader, and writes through its connection to the daemon. After
    close(), every operation raises MapClosedError (an iteration already
    started runs to its end). Pickled -- for a spawn or forkserver child --
    it travels as its name and options, and connects on first use; a
    fork()ed child reconnects by itself.
    """

    def __init__(self, name: str, *, timeout: float = DEFAULT_TIMEOUT,
                 cache_keys: int = DEFAULT_CACHE_KEYS,
                 cache_bytes: int = DEFAULT_CACHE_BYTES,
                 trace: Optional[str] = None, channel: bool = True,
                 ext_types: Iterable[Ext] = ()) -> None:
        """Maps map name and connects to its daemon (within timeout)."""
        self._setup(name, timeout, cache_keys, cache_bytes, trace, channel, ext_types)
        self._open()

    def _setup(self, name: str, timeout: float, cache_keys: int = DEFAULT_CACHE_KEYS,
               cache_bytes: int = DEFAULT_CACHE_BYTES, trace: Optional[str] = None,
               channel: bool = True, ext_types: Iterable[Ext] = ()) -> None:
        """The state of a map not yet opened (connect() opens it at once,
        unpickling on first use)."""
        # Opt-in trace events (iterations, waits): see shmmap.client.tracer.
        self._init_reads(name, cache_keys, cache_bytes, client_tracer(trace), ext_types)
        self._trace_path = trace
        self.timeout = timeout
        # Serialises requests, connecting and closing; reads never take it.
        self._lock = threading.Lock()
        self._closed = False
        self._reader: Optional[MapReader] = None    # None: closed, or not yet opened
        self._sock: Optional[socket.socket] = None
        self._use_channel = channel
        self._chan: Optional[Channel] = None    # the connection's channel, if it has one
        self._poller: Optional[select.poll] = None
        self._conn = ClientConnection()     # ids, framing, replies: the protocol's side
        # The finalizers that close the socket and the channel (set with each).
        self._close_sock: Callable[[], Any]
        self._close_chan: Callable[[], Any]
        self._spin = protocol.Spin(protocol.CLIENT_SPIN_SECONDS, in_crowds=True)
        self._recv_buf = ffi.new("uint8_t[]", protocol.RECV_SIZE)    # _recv_some's
        self._recv_bytes = ffi.buffer(self._recv_buf)
        self.daemon_info: dict[str, Any] = {}
        _live_maps[id(self)] = self

    # -- the closed state, and opening on first use ---------------------------------

    def _open(self) -> MapReader:
        """The reader, after mapping the map and connecting if this is the
        first use; MapClosedError after close(). Checked on entry of every
        public method."""
        reader = self._reader
        if reader is not None:
            return reader
        with self._lock:
            return self._open_locked(time.monotonic() + self.timeout)

    def _open_locked(self, deadline: float) -> MapReader:
        if self._closed:
            raise MapClosedError(f"map {self.name!r} is closed")
        reader = self._reader
        if reader is None:
            reader = MapReader(self.name, self.codec)
            try:
                self._connect(reader, deadline)
            except BaseException:
                self._disconnect(None)
                reader.close()
                raise
            # The cache first: whoever finds the reader set finds it too.
            self._cache = ReadCache(reader, self.cache_limits)
            self._reader = reader
        return reader

    @property
    def closed(self) -> bool:
        """True once close() was called."""
        return self._closed

    def close(self) -> None:
        """Closes the connection and lets go of the map: every later
        operation raises MapClosedError. An iteration already started
        finishes on its own snapshot; closing twice does nothing."""
        with self._lock:            # a request in flight ends first
            self._closed = True
            reader, self._reader = self._reader, None
            self._disconnect(reader)
        _live_maps.pop(id(self), None)
        if isinstance(self._cache, ReadCache):
            self._cache.close()
        if reader is not None:
            reader.close()

    def __enter__(self) -> SharedMap:
        self._open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickles as the name and options: the process that unpickles it
        maps the map and connects on first use (as a Manager proxy does)."""
        if self._closed:
            raise MapClosedError(f"map {self.name!r} is closed")
        return (_connect_on_first_use, (self.name, {
            "timeout": self.timeout, "cache_keys": self.cache_limits.max_keys,
            "cache_bytes": self.cache_limits.max_bytes, "trace": self._trace_path,
            "channel": self._use_channel, "ext_types": self.codec.ext_types}))

    def _after_fork(self) -> None:
        """In a forked child: the parent's connection and reader slot are
        not ours. Forget them; the first write connects anew."""
        self._lock = threading.Lock()
        if self._sock is not None:
            self._close_sock()          # our copy of the fd; the parent keeps its own
        if self._chan is not None:
            self._close_chan()          # our mapping and fd; the parent's stay
        self._sock = self._poller = self._chan = None
        if self._reader is not None:
            self._reader.after_fork()
        if isinstance(self._cache, ReadCache):
            self._cache.after_fork()

    # -- connection: the synchronous driver of self._conn ---------------------
    # The socket, its poller and the channel are this driver's; what the
    # bytes mean, and what to do when an exchange fails, are the
    # connection's (shmmap.client.connection). Each of the socket and the channel
    # is closed through a weakref.finalize, so that a map dropped without
    # close() releases them too (a daemon frees the reader slot of a
    # connection that closed).

    @property
    def socket_path(self) -> str:
        """The daemon's socket, as the map's header names it."""
        return self._open().socket_path

    def _connect(self, reader: MapReader, deadline: float) -> None:
        """Connects to the daemon and says hello; takes the reader slot it
        assigns, and the channel it offers. Raises DaemonUnavailableError
        (or the daemon's refusal)."""
        path = reader.socket_path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._close_sock = weakref.finalize(self, sock.close)
        sock.settimeout(max(deadline - time.monotonic(), 1e-3))
        try:
            sock.connect(path)
        except OSError as exc:
            self._close_sock()
            raise DaemonUnavailableError(
                f"no daemon answers for map {self.name!r} at {path}: {exc.strerror or exc}"
            ) from None
        sock.setblocking(False)         # replies are awaited by _recv_some
        self._sock = sock
        self._poller = select.poll()    # _wait's, on this socket
        self._poller.register(sock, select.POLLIN)
        conn = self._conn
        conn.new_stream()
        hello = conn.hello()
        try:
            self._send(hello, deadline)
            self._await(hello, deadline)
        except (_SendFailed, OSError, ValueError) as exc:
            cause = exc.__cause__ if isinstance(exc, _SendFailed) else exc
            refusal = None if isinstance(cause, TimeoutError) else self._refusal(deadline)
            self._disconnect(reader)
            if refusal is not None:
                raise refusal from None
            raise DaemonUnavailableError(
                f"the daemon of map {self.name!r} did not say hello: {cause}") from None
        try:
            info = conn.hello_info(hello)
        except ShmmapError:
            self._disconnect(reader)
            raise
        except ValueError as exc:
            self._disconnect(reader)
            raise DaemonUnavailableError(f"map {self.name!r}: {exc}") from None
        self.daemon_info = info
        if info["slot"] >= 0:
            reader.use_slot(ClientSlot(self.name, info["slot"]))
        if self._use_channel and info.get("channel"):
            try:
                self._open_channel(deadline)
            except (_SendFailed, OSError, ValueError) as exc:
                self._disconnect(reader)
                raise DaemonUnavailableError(f"the daemon of map {self.name!r} gave no channel: "
                                             f"{exc.__cause__ or exc}") from None

    def _open_channel(self, deadline: float) -> None:
        """Asks the daemon for a channel, whose descriptors come with the
        reply (a daemon that answers with an error gives none)."""
        assert self._sock is not None
        ex = self._conn.channel()
        self._send(ex, deadline)
        fds: list[int] = []
        try:
            self._await(ex, deadline, fds)
            if self._conn.channel_granted(ex, fds):
                memfd, efd = fds
                fds = []
                chan = Channel(memfd, efd, self._sock.fileno())
                self._close_chan = weakref.finalize(self, chan.close)
                self._chan = chan
        finally:
            for fd in fds:
                os.close(fd)

    def _refusal(self, deadline: float) -> Optional[ShmmapError]:
        """The error a daemon that refused this connection (too many
        clients, a uid it does not allow) sent before closing it."""
        conn = self._conn
        try:
            while conn.refusal is None:
                conn.receive(self._recv_some(deadline))
                conn.collect()
        except (OSError, ValueError):
            pass                # its end (or none in time): all it said is read
        return conn.refusal

    def _disconnect(self, reader: Optional[MapReader]) -> None:
        """Closes the connection; the reader stops counting into the slot
        the daemon will give to another client (the slot stays mapped for
        as long as a generation that counted into it lives)."""
        if self._sock is not None:
            self._close_sock()
            self._sock = self._poller = None
        if self._chan is not None:
            self._close_chan()
            self._chan = None
        if reader is not None:
            reader.use_slot(None)

    def _wait(self, events: int, deadline: float) -> None:
        """Sleeps until the socket has events, or raises TimeoutError."""
        assert self._sock is not None and self._poller is not None
        poller = self._poller
        if events != select.POLLIN:
            poller.modify(self._sock, events)
        try:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                raise timed_out(self.timeout)
        finally:
            if events != select.POLLIN:
                poller.modify(self._sock, select.POLLIN)

    def _send(self, ex: Requests, deadline: float) -> None:
        """Sends ex's framed requests, whose replies then complete it;
        raises _SendFailed if the connection failed (or timed out) before
        every byte went out."""
        self._conn.expect(ex)
        sock, data = self._sock, ex.data
        assert sock is not None
        try:
            sent = sock.send(data, socket.MSG_NOSIGNAL)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise _SendFailed(Sent.NOTHING) from exc
        if sent == len(data):
            return
        view = memoryview(data)[sent:]
        try:
            while view:
                try:
                    view = view[sock.send(view, socket.MSG_NOSIGNAL):]
                except BlockingIOError:
                    self._wait(select.POLLOUT, deadline)
        except OSError as exc:
            raise _SendFailed(Sent.NOTHING if len(view) == len(data) else Sent.PART) from exc

    def _recv_some(self, deadline: float) -> bytes:
        """The next bytes from the daemon: polls for a while (a reply
        often comes sooner than a sleeper wakes; protocol.Spin says how
        long pays now), then sleeps; all in one C call (shm_wait_recv)."""
        assert self._sock is not None
        fd, spin = self._sock.fileno(), self._spin.c
        while True:
            got = lib.shm_wait_recv(fd, self._recv_buf, protocol.RECV_SIZE, spin,
                                    self._left_ms(deadline))
            if got > 0:
                return self._recv_bytes[0:got]
            if got == 0:
                raise ConnectionResetError("the daemon closed the connection")
            if got == -errno.ETIMEDOUT:
                raise timed_out(self.timeout)
            if got != -errno.EINTR:     # a signal: its handler ran; wait on
                raise OSError(-got, os.strerror(-got))

    def _recv_with_fds(self, deadline: float, fds: list[int]) -> bytes:
        """The next bytes from the daemon, adding the descriptors passed
        with them to fds."""
        assert self._sock is not None
        while True:
            self._wait(select.POLLIN, deadline)
            try:
                data, passed = receive_fds(self._sock, protocol.RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                continue
            fds += passed
            if not data:
                raise ConnectionResetError("the daemon closed the connection")
            return data

    def _await(self, ex: Requests, deadline: float, fds: Optional[list[int]] = None) -> None:
        """Receives until every reply to ex came (replies to requests that
        timed out are skipped). With fds, the descriptors passed with the
        bytes are added to it (the channel's reply carries two)."""
        conn = self._conn
        conn.collect()
        while not ex.done:
            conn.receive(self._recv_some(deadline) if fds is None
                         else self._recv_with_fds(deadline, fds))
            conn.collect()

    def _await_batch(self, ex: OneBatch, deadline: float) -> None:
        """_await for one batch request on the socket, whose usual reply,
        the acknowledgement, is recognised without decoding it."""
        if self._conn.buffered or not self._conn.acknowledged(ex, self._recv_some(deadline)):
            self._await(ex, deadline)

    def _call_channel(self, chan: Channel, ex: OneBatch, deadline: float) -> None:
        """Sends the batch request ex through the channel and waits for its
        acknowledgement, in one C call (shm_chan_batch)."""
        got = chan.batch(ex.first_id, ex.blob, self._spin.c, self._left_ms(deadline))
        self._channel_outcome(chan, ex, got, deadline)

    def _channel_outcome(self, chan: Channel, ex: OneBatch, got: int, deadline: float) -> None:
        """Turns what a channel's batch call returned (got) into the
        write's outcome: nothing for the acknowledgement; else it raises
        the daemon's error, TimeoutError, or what the socket says when the
        daemon went away meanwhile. After a signal it waits on."""
        if got == 0:
            return
        self._conn.expect(ex)           # any other reply is read as a socket's
        while got < 0:
            if got == -errno.ETIMEDOUT:
                raise timed_out(self.timeout)
            if got == -errno.EPIPE:     # the socket speaks: the daemon's end, or its error
                self._await(ex, deadline)
                ex.outcome()
                raise ValueError("the daemon answered a channel request on the socket")
            if got != -errno.EINTR:     # a signal: its handler ran; wait on
                raise OSError(-got, os.strerror(-got))
            got = chan.batch_wait(ex.first_id, self._left_ms(deadline))
        if got:
            self._conn.receive(chan.reply(got))
            self._await(ex, deadline)
            ex.outcome()

    def _settle(self, chan: Channel, deadline: float) -> None:
        """Waits for the answer to a channel request that timed out (or
        was interrupted) before anything else is sent, so that the daemon
        applies this connection's requests in order. If it does not come,
        nothing is sent: _SendFailed(Sent.NOTHING)."""
        while chan.outstanding is not None:
            left_ms = ceil((deadline - time.monotonic()) * 1000)
            got = chan.wait(left_ms) if left_ms > 0 else -errno.ETIMEDOUT
            if got >= 0:
                return                  # the outcome of a write already reported unknown
            if got == -errno.EPIPE:
                raise _SendFailed(Sent.NOTHING) from ConnectionResetError("the daemon went away")
            if got != -errno.EINTR:
                raise _SendFailed(Sent.NOTHING) from TimeoutError(
                    f"an earlier write is still unanswered after {self.timeout} s")

    def _left_ms(self, deadline: float) -> int:
        """Milliseconds to deadline; TimeoutError if it passed."""
        left = ceil((deadline - time.monotonic()) * 1000)
        if left <= 0:
            raise timed_out(self.timeout)
        return left

    def _request(self, op: Op, *args: Any) -> Any:
        return self._pipeline([[op, *args]])[0]

    def _pipeline(self, requests: list[list[Any]]) -> list[Any]:
        """Sends requests (pipelined) and returns their results in order,
        all within one timeout (see _exchange)."""
        with self._lock:
            deadline = time.monotonic() + self.timeout
            reader = self._open_locked(deadline)
            return self._exchange(reader, self._conn.requests(requests), deadline)

    def _write(self, blob: bytes) -> None:
        """One batch blob, acknowledged: the lean path of store() and
        delete(), the same policy as _pipeline's. While the connection's
        channel is up and idle it is one C call (shm_chan_batch), and
        _exchange sees only what is not an acknowledgement."""
        with self._lock:
            started = time.monotonic()
            conn = self._conn
            conn.last_id = rid = conn.last_id + 1   # its new_id(), inline: no call
            chan, got = self._chan, None
            if (chan is not None and chan.outstanding is None and self._trace is None
                    and len(blob) <= CHANNEL_BLOB_BYTES):
                got = chan.batch(rid, blob, self._spin.c, ceil(self.timeout * 1000))
                if got == 0:
                    return          # acknowledged: visible to every process
            reader = self._reader
            if reader is None:
                reader = self._open_locked(started + self.timeout)   # MapClosedError after close()
            self._exchange(reader, OneBatch(rid, blob), started + self.timeout, got)

    def _exchange(self, reader: MapReader, ex: Requests, deadline: float,
                  channel_got: Optional[int] = None) -> list[Any]:
        """Sends ex and returns its results in order. For a OneBatch,
        channel_got, if given, is what the channel answered when _write
        posted it there (then it is not sent again). The caller holds the
        lock. The daemon's error reply is raised as it is; what a failure
        leads to is connection.decide's (the retry policy's table). An
        exchange sent once more goes with the same ids, on a new
        connection (whose replies are all to requests made on it); after a
        timeout the connection stays, and late replies are skipped by id.
        """
        traced = now_us() if self._trace is not None else 0.0
        for attempt in range(1, ATTEMPTS + 1):
            if self._sock is None:
                self._connect(reader, deadline)
            sent = Sent.NOTHING
            try:
                chan, got, channel_got = self._chan, channel_got, None   # posted once only
                if got is not None:     # _write posted it: its outcome
                    assert chan is not None and isinstance(ex, OneBatch)
                    sent = Sent.ALL
                    self._channel_outcome(chan, ex, got, deadline)
                    return ex.results   # (a trace records only with no fast path)
                if chan is not None and chan.outstanding is not None:
                    self._settle(chan, deadline)
                if isinstance(ex, OneBatch) and chan is not None and len(ex.blob) <= CHANNEL_BLOB_BYTES:
                    sent = Sent.ALL     # posting is all or nothing
                    self._call_channel(chan, ex, deadline)
                    results = ex.results
                else:
                    self._send(ex, deadline)
                    sent = Sent.ALL
                    if isinstance(ex, OneBatch):
                        self._await_batch(ex, deadline)
                    else:
                        self._await(ex, deadline)
                    results = ex.outcome()
                if self._trace is not None:
                    self._trace.wait(self.name, list(ex.ops), traced)
                return results
            except ShmmapError:
                raise       # the daemon's answer
            except _SendFailed as exc:
                sent, cause = exc.sent, exc.__cause__ or exc
            except (OSError, ValueError) as exc:    # ValueError: a garbled reply
                cause = exc
            failure = failure_of(cause)
            self._conn.forget(ex)
            if not stream_survives(sent, failure):
                self._disconnect(reader)
            elif sent is Sent.ALL and self._chan is not None and self._chan.outstanding is None:
                # A late reply may still come on the socket: the channel's
                # requests could overtake it. Socket only.
                self._close_chan()
                self._chan = None
            resend_or_raise(self.name, ex.ops, sent, failure, attempt, self.timeout, cause)
        raise AssertionError("unreachable: the last attempt never resends")

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

    def __ior__(self, other: Any) -> SharedMap:
        self.update(other)
        return self

    def __repr__(self) -> str:
        # The one method that works after close(): a repr must not raise.
        reader = self._reader
        if self._closed:
            return f"<shmmap.SharedMap {self.name!r} closed>"
        if reader is None:
            return f"<shmmap.SharedMap {self.name!r} not yet opened>"
        return f"<shmmap.SharedMap {self.name!r} keys={len(reader)} gen={reader.refresh().gen}>"

    # -- writes (MutableMapping) ----------------------------------------------
    # Each checks the closed state on entry (before encoding its arguments),
    # and again under the lock in _pipeline.

    def __delitem__(self, key: Any) -> None:
        _, loaded = self.load_and_delete(key)
        if not loaded:
            raise KeyError(key)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        """The value of key, storing default first if key is absent (one
        atomic write: load_or_store)."""
        return self.load_or_store(key, default)[0]

    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        """Removes key and returns its value; default, or KeyError, if it
        is absent (one atomic write: load_and_delete)."""
        value, loaded = self.load_and_delete(key)
        if loaded:
            return value
        if default is _MISSING:
            raise KeyError(key)
        return default

    def popitem(self) -> tuple[Any, Any]:
        """Removes some (key, value) pair and returns it; KeyError if the
        map is empty."""
        for key in self:
            value, loaded = self.load_and_delete(key)
            if loaded:
                return key, value
        raise KeyError("popitem(): map is empty")

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Stores many pairs; each blob of about BATCH_BYTES is atomic, and
        the blobs are pipelined."""
        self._open()
        blobs = update_blobs(self.codec, args, kwargs)
        if blobs:
            self._pipeline([[Op.BATCH, b] for b in blobs])

    def clear(self) -> None:
        """Removes every key, as one write."""
        self._request(Op.CLEAR)

    # -- sync.Map --------------------------------------------------------------

    def store(self, key: Any, value: Any) -> None:
        """Sets key to value; returns once every process can read it."""
        if self._reader is None:
            self._open()        # closed: MapClosedError before the arguments
        self._write(STORE + self._encode_pair(key, value))

    __setitem__ = store         # one call less on the hottest write

    def load_or_store(self, key: Any, value: Any) -> tuple[Any, bool]:
        """(the existing value, True), or (value, False) after storing it."""
        self._open()
        loaded = self._request(Op.LOAD_OR_STORE, encode_key(key), self._encode_value(value))
        return decode_loaded(self.codec, loaded, value)

    def load_and_delete(self, key: Any) -> tuple[Any, bool]:
        """Removes key; returns (its value, True), or (None, False) if it
        was absent."""
        self._open()
        return decode_loaded(self.codec, self._request(Op.LOAD_AND_DELETE, encode_key(key)), None)

    def delete(self, key: Any) -> None:
        """Removes key if present (no error if it is absent)."""
        if self._reader is None:
            self._open()        # closed: MapClosedError before the arguments
        self._write(DELETE + encode_key(key))

    def swap(self, key: Any, value: Any) -> tuple[Any, bool]:
        """Stores value; returns (the previous value, whether there was one)."""
        self._open()
        swapped = self._request(Op.SWAP, encode_key(key), self._encode_value(value))
        return decode_loaded(self.codec, swapped, None)

    def compare_and_swap(self, key: Any, old: Any, new: Any) -> bool:
        """Sets key to new if its value equals old (as msgpack bytes);
        returns whether it did."""
        self._open()
        return bool(self._request(Op.COMPARE_AND_SWAP, encode_key(key), self._encode_value(old),
                                  self._encode_value(new)))

    def compare_and_delete(self, key: Any, old: Any) -> bool:
        """Removes key if its value equals old (as msgpack bytes); returns
        whether it did."""
        self._open()
        return bool(self._request(Op.COMPARE_AND_DELETE, encode_key(key), self._encode_value(old)))

    @contextmanager
    def batch(self) -> Iterator[Batch]:
        """``with m.batch() as b: b[k] = v; del b[j]`` -- applied as one
        atomic write when the block ends without an exception."""
        self._open()
        b = Batch(self.codec)
        yield b
        if b.items:
            self._write(batch_blob(b.items))

    def pipeline(self) -> Pipeline:
        """``with m.pipeline() as p: p[k] = v; del p[j]`` -- writes sent
        without waiting for each acknowledgement: they go to the daemon in
        bursts of up to PIPELINE_WRITES, each burst one round trip, and the
        block's end (or ``p.sync()``) waits for the last. Each write is
        applied on its own, in order, as store() or delete() would apply
        it; an error that one of them met is raised by the sync that
        collected it (the others are applied).

        Read-your-writes holds once sync() returns (the block's end syncs):
        every write made through the pipeline is then visible to every
        process. Before that, a read may or may not see them. A pipeline is
        for one thread; other threads may use the map meanwhile."""
        self._open()
        return Pipeline(self)

    def _write_many(self, blobs: list[bytes]) -> None:
        """Batch blobs, each its own request, pipelined and acknowledged."""
        with self._lock:
            deadline = time.monotonic() + self.timeout
            reader = self._reader
            if reader is None:
                reader = self._open_locked(deadline)
            self._exchange(reader, self._conn.batches(blobs), deadline)

    # -- the daemon -------------------------------------------------------------

    def promote(self) -> int:
        """Asks the daemon to promote now; returns the new generation,
        which this process reads from then on (letting go of the old one
        at once, not at its next read)."""
        gen = int(self._request(Op.PROMOTE))
        self.refresh()
        return gen

    def stats(self) -> dict[str, Any]:
        """The daemon's statistics of the map, and under "cache" this
        client's cache (see the README). This process reads the current
        generation first, so the daemon does not count a superseded one
        that it kept only for lack of a read since."""
        self.refresh()
        stats = dict(self._request(Op.STATS))
        stats["cache"] = self._open_cache().stats()
        return stats


class Batch:
    """Writes collected by SharedMap.batch(), encoded as they are added so
    that a bad key or value raises at once."""

    def __init__(self, codec: Codec = CODEC) -> None:
        """An empty batch of values encoded by codec."""
        self.items: list[tuple[bytes, Optional[bytes]]] = []
        self._encode_value = codec.encode_value

    def store(self, key: Any, value: Any) -> None:
        """Adds setting key to value (also: ``b[key] = value``)."""
        self.items.append((encode_key(key), self._encode_value(value)))

    def delete(self, key: Any) -> None:
        """Adds removing key, if present (also: ``del b[key]``)."""
        self.items.append((encode_key(key), None))

    __setitem__ = store
    __delitem__ = delete


class Pipeline:
    """Writes made by SharedMap.pipeline(): encoded as they are made (a bad
    key or value raises at once), sent in bursts, acknowledged by sync()."""

    def __init__(self, m: SharedMap) -> None:
        self._map = m
        self._blobs: list[bytes] = []
        self._bytes = 0

    def store(self, key: Any, value: Any) -> None:
        """Sets key to value (also: ``p[key] = value``)."""
        self._add(STORE + self._map._encode_pair(key, value))

    def delete(self, key: Any) -> None:
        """Removes key if present (also: ``del p[key]``)."""
        self._add(DELETE + encode_key(key))

    __setitem__ = store
    __delitem__ = delete

    def _add(self, blob: bytes) -> None:
        self._blobs.append(blob)
        self._bytes += len(blob)
        if len(self._blobs) >= PIPELINE_WRITES or self._bytes >= BATCH_BYTES:
            self.sync()

    def sync(self) -> None:
        """Sends the writes not yet sent and waits for every
        acknowledgement: then all are visible to every process. Raises the
        first error a write met."""
        blobs, self._blobs, self._bytes = self._blobs, [], 0
        if blobs:
            self._map._write_many(blobs)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.sync()


def connect(name: str, *, timeout: float = DEFAULT_TIMEOUT,
            cache_keys: int = DEFAULT_CACHE_KEYS,
            cache_bytes: int = DEFAULT_CACHE_BYTES,
            trace: Optional[str] = None, channel: bool = True,
            ext_types: Iterable[Ext] = ()) -> SharedMap:
    """Opens map name, which a daemon (``shmmap serve name``) must serve.

    timeout bounds each operation that talks to the daemon: connecting,
    and each write with its reply (a write with no reply in time raises
    WriteTimeoutError: it may or may not be applied).

    Reads go through a per-process cache of decoded objects (a dict of the
    map, kept current by deltas) while the map has at most cache_keys keys
    and cache_bytes bytes of encoded keys and values; a bigger map is read
    from shared memory directly. cache_keys=0 turns the cache off. Values
    read from the cache are shared by every read of this process: copy one
    before changing it.

    trace (or the environment variable SHMMAP_TRACE) names a file this
    process appends trace events to: each iteration and each wait for the
    daemon, which ``shmmap trace`` merges into its trace.

    channel: a synchronous store or delete (and a batch of up to 64 KiB)
    travels through a channel in shared memory that the daemon makes for
    this connection, not the socket: no system call when both sides are
    busy, a futex wake-up when they are not. False sends every write on
    the socket.

    ext_types: the application's own value types (shmmap.Ext), the same
    in every process that shares the map; a process without one reads its
    values as msgpack.ExtType(code, data). Values are checked before they
    are sent: a type with no form (the README's table of types) raises
    TypeError, and nothing is sent."""
    return SharedMap(name, timeout=timeout, cache_keys=cache_keys, cache_bytes=cache_bytes,
                     trace=trace, channel=channel, ext_types=ext_types)


def _connect_on_first_use(name: str, options: dict[str, Any]) -> SharedMap:
    """A map unpickled in another process: mapped and connected on first
    use, so that unpickling itself does no I/O."""
    m = SharedMap.__new__(SharedMap)
    m._setup(name, **options)
    return m
