"""shmmap for asyncio: ``async with shmmap.aio.connect(name) as m``.

Writes await the daemon's reply: ``await m.set(k, v)``, ``await
m.delete(k)``, the conditional ops, ``async with m.batch() as b``, a
pipeline, ``await m.promote()``, ``await m.stats()``. They travel on the
connection's Unix socket, through an asyncio transport, in the protocol
of shmmap.client.connection (the same request ids, reply matching and retry
table as the synchronous SharedMap).

Reads stay synchronous and never wait for the daemon: ``m[k]``,
``m.get(k)``, ``k in m``, ``len(m)`` and iteration read this process's
cache or shared memory exactly as SharedMap's do (the same code), without
a message or a system call, so they never block the event loop on the
daemon.

Cancelling an await (or its timeout) is safe: replies are matched to
requests by id, so a later await never receives the reply to an earlier
one. A cancelled write's outcome is unknown: it may already be applied, or
be applied later; it is not resent.
"""
from __future__ import annotations

import asyncio
import socket
import weakref
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Generator, Iterable, Optional, TypeVar

from ..shared import protocol
from ..shared.codec import Ext, encode_key
from ..shared.errors import DaemonUnavailableError, EventLoopError, MapClosedError, ShmmapError
from ..shared.protocol import DELETE, STORE, Op, batch_blob
from .cache import DEFAULT_CACHE_BYTES, DEFAULT_CACHE_KEYS, ReadCache
from .connection import (ATTEMPTS, ClientConnection, Requests, Sent, failure_of, resend_or_raise,
                         stream_survives)
from .map import DEFAULT_TIMEOUT, PIPELINE_WRITES, Batch, MapReads, decode_loaded, update_blobs
from .reader import MapReader
from .slot import ClientSlot

__all__ = ["AsyncMap", "AsyncPipeline", "EventLoopError", "connect"]
T = TypeVar("T")


async def _by(deadline: float, aw: Awaitable[T], loop: asyncio.AbstractEventLoop) -> T:
    """aw, awaited until deadline (loop.time()); then it is cancelled and
    TimeoutError raised. (asyncio.timeout_at needs Python 3.11, and before
    3.11 wait_for's asyncio.TimeoutError is not the built-in TimeoutError
    that the retry table reads as a failure.)"""
    try:
        return await asyncio.wait_for(aw, max(deadline - loop.time(), 0))
    except asyncio.TimeoutError:
        raise TimeoutError("no reply from the daemon by the deadline") from None

class _Stream(asyncio.Protocol):
    """One socket to the daemon: hands what arrives to the connection and
    wakes the awaits whose exchanges it completed."""

    def __init__(self, conn: ClientConnection, loop: asyncio.AbstractEventLoop,
                 sock: socket.socket) -> None:
        self.conn = conn
        self.sock = sock                # the transport's, read here only once it broke
        self.transport: Optional[asyncio.Transport] = None
        self.waiters: dict[Requests, asyncio.Future[None]] = {}
        self.lost: Optional[BaseException] = None       # why the stream ended
        self.closed: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.conn.receive(data)
        try:
            done = self.conn.collect()
        except ValueError as exc:       # not replies: the stream is unusable
            self._end(exc)
            assert self.transport is not None
            self.transport.abort()
            return
        for ex in done:
            waiter = self.waiters.pop(ex, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if exc is not None:
            self._drain()
        self._end(exc or ConnectionResetError("the daemon closed the connection"))
        if not self.closed.done():
            self.closed.set_result(None)

    def _drain(self) -> None:
        """Reads what the daemon sent before the stream broke: a write
        that failed (EPIPE) ends the transport with it unread, and it may
        be a refusal of the connection, or replies."""
        try:
            while self.lost is None:
                data = self.sock.recv(protocol.RECV_SIZE)
                if not data:
                    return
                self.data_received(data)
        except OSError:
            pass                # nothing more (or the socket is gone)

    def _end(self, why: BaseException) -> None:
        """Wakes every await: each finds its exchange not done, and why."""
        if self.lost is None:
            self.lost = why
        for waiter in self.waiters.values():
            if not waiter.done():
                waiter.set_result(None)
        self.waiters.clear()


def _drop_unclosed(loop: asyncio.AbstractEventLoop, transport: asyncio.Transport,
                   sock: socket.socket) -> None:
    """The stream of a map collected without aclose(): aborted in its loop
    (from whichever thread collected the map), or, that loop closed, its
    socket closed here."""
    if loop.is_closed():
        sock.close()
    else:
        loop.call_soon_threadsafe(transport.abort)


class AsyncMap(MapReads):
    """A map shared with every process of this host, for asyncio code.

    Reads (``m[k]``, get, ``in``, len, iteration, snapshot) are
    synchronous and never wait for the daemon: SharedMap's reads, from
    this process's cache or shared memory. Writes are coroutines that
    return once the daemon committed them (then every process reads
    them). The map belongs to the event loop it was connected in: used
    from another, it raises EventLoopError. Made by connect().
    """

    def __init__(self, name: str, *, timeout: float = DEFAULT_TIMEOUT,
                 cache_keys: int = DEFAULT_CACHE_KEYS,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, ext_types: Iterable[Ext] = ()) -> None:
        """A map not yet connected: ``await connect(...)`` makes and opens one."""
        self._init_reads(name, cache_keys, cache_bytes, None, ext_types)     # no trace events
        self.timeout = timeout
        self._reader: Optional[MapReader] = None
        self._closed = False
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._conn = ClientConnection()
        self._stream: Optional[_Stream] = None
        self._close_stream: weakref.finalize[..., Any]  # the finalizer that drops it
        self._connecting: Optional[asyncio.Lock] = None
        self.daemon_info: dict[str, Any] = {}

    # -- opening and closing ----------------------------------------------------

    async def _start(self) -> AsyncMap:
        """Maps the map and connects to its daemon (within timeout)."""
        if self._loop is not None:
            raise ShmmapError(f"map {self.name!r} is connected already")
        self._loop = asyncio.get_running_loop()
        self._connecting = asyncio.Lock()
        reader = MapReader(self.name, self.codec)
        try:
            self._reader = reader
            await self._connected(self._loop.time() + self.timeout)
        except BaseException:
            self._reader = None
            reader.close()
            self._closed = True
            raise
        self._cache = ReadCache(reader, self.cache_limits)
        return self

    def _open(self) -> MapReader:
        reader = self._reader
        if reader is None or self._closed:
            raise MapClosedError(f"map {self.name!r} is closed")
        return reader

    @property
    def closed(self) -> bool:
        """True once aclose() was called."""
        return self._closed

    async def aclose(self) -> None:
        """Closes the connection and lets go of the map: every later
        operation raises MapClosedError (an iteration already started runs
        to its end); awaits still in flight fail. Closing twice does
        nothing."""
        if self._closed:
            return
        self._check_loop()
        self._closed = True
        reader, self._reader = self._reader, None
        stream = self._stream
        if stream is not None:
            self._drop(stream)
            await stream.closed         # its socket is closed once this is done
        if isinstance(self._cache, ReadCache):
            self._cache.close()
        if reader is not None:
            reader.use_slot(None)
            reader.close()

    async def __aenter__(self) -> AsyncMap:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        reader = self._reader
        if self._closed or reader is None:
            return f"<shmmap.aio.AsyncMap {self.name!r} closed>"
        return f"<shmmap.aio.AsyncMap {self.name!r} keys={len(reader)} gen={reader.refresh().gen}>"

    def _check_loop(self) -> asyncio.AbstractEventLoop:
        """The map's loop, if it is the one running; else EventLoopError."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not self._loop or running is None:
            raise EventLoopError(
                f"map {self.name!r} was connected in another event loop than the one running "
                f"now: connect a map in each loop (for example in each asyncio.run())")
        return running

    # -- the connection: the asyncio driver of self._conn ----------------------------

    async def _connected(self, deadline: float) -> _Stream:
        """The stream, connecting (and saying hello) if there is none;
        DaemonUnavailableError (or the daemon's refusal) if that fails."""
        stream = self._stream
        if stream is not None and stream.lost is None:
            return stream
        assert self._connecting is not None
        async with self._connecting:            # one task connects, the others wait for it
            stream = self._stream
            if stream is not None and stream.lost is None:
                return stream
            reader = self._open()
            if stream is not None:
                self._drop(stream)
            return await self._connect(reader, deadline)

    async def _connect(self, reader: MapReader, deadline: float) -> _Stream:
        loop = self._loop
        assert loop is not None
        path = reader.socket_path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        conn = self._conn
        conn.new_stream()
        async def connected() -> _Stream:
            await loop.sock_connect(sock, path)
            _, stream = await loop.create_unix_connection(lambda: _Stream(conn, loop, sock),
                                                           sock=sock)
            return stream

        try:
            stream = await _by(deadline, connected(), loop)
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, OSError):
                raise       # a cancellation
            raise DaemonUnavailableError(
                f"no daemon answers for map {self.name!r} at {path}: {exc.strerror or exc}"
            ) from None
        assert stream.transport is not None
        self._close_stream = weakref.finalize(self, _drop_unclosed, loop, stream.transport, sock)
        self._stream = stream
        hello = conn.hello()
        try:
            await self._roundtrip(stream, hello, deadline)
            if not hello.done:
                raise conn.refusal or ConnectionResetError(f"{stream.lost}")
            info = conn.hello_info(hello)
        except ShmmapError:
            self._drop(stream)
            raise
        except (OSError, ValueError) as exc:
            self._drop(stream)
            raise DaemonUnavailableError(
                f"the daemon of map {self.name!r} did not say hello: {exc}") from None
        except BaseException:
            self._drop(stream)
            raise
        self.daemon_info = info
        reader.use_slot(ClientSlot(self.name, info["slot"]) if info["slot"] >= 0 else None)
        return stream

    def _drop(self, stream: _Stream) -> None:
        """Ends stream (its socket closes in the loop's next turn)."""
        if stream is self._stream:
            self._stream = None
            self._close_stream.detach()
        if stream.lost is None:
            stream._end(ConnectionResetError("the connection was closed"))
        assert stream.transport is not None
        stream.transport.abort()

    async def _roundtrip(self, stream: _Stream, ex: Requests, deadline: float) -> None:
        """Sends ex on stream and waits until its replies came or the
        stream ended (then ex is not done); TimeoutError at the deadline.
        An await that ends without the replies (a timeout, a
        cancellation) forgets ex: its replies, if they come, go to no one."""
        loop = self._loop
        assert stream.transport is not None and loop is not None
        waiter = loop.create_future()
        self._conn.expect(ex)
        stream.waiters[ex] = waiter
        try:
            # One write puts the whole exchange in the transport's buffer:
            # however the await ends, the stream never holds half a request.
            stream.transport.write(ex.data)
            await _by(deadline, waiter, loop)
        finally:
            if not ex.done:
                self._conn.forget(ex)
                stream.waiters.pop(ex, None)

    async def _exchange(self, ex: Requests) -> list[Any]:
        """Sends ex and returns its results in order; the daemon's error
        reply is raised as it is, a failure as connection.decide says."""
        loop = self._check_loop()
        self._open()
        deadline = loop.time() + self.timeout
        for attempt in range(1, ATTEMPTS + 1):
            stream = await self._connected(deadline)
            sent = Sent.NOTHING
            try:
                if stream.lost is not None:
                    raise ConnectionResetError(f"the daemon went away: {stream.lost}")
                sent = Sent.ALL         # into the transport's buffer: it may have left
                await self._roundtrip(stream, ex, deadline)
                if ex.done:
                    return ex.outcome()
                cause: BaseException = ConnectionResetError(f"the daemon went away: {stream.lost}")
            except ShmmapError:
                raise       # the daemon's answer
            except (OSError, ValueError) as exc:    # TimeoutError is an OSError
                cause = exc
            failure = failure_of(cause)
            if not stream_survives(sent, failure):
                self._drop(stream)
            resend_or_raise(self.name, ex.ops, sent, failure, attempt, self.timeout, cause)
        raise AssertionError("unreachable: the last attempt never resends")

    async def _request(self, op: Op, *args: Any) -> Any:
        return (await self._exchange(self._conn.requests([[op, *args]])))[0]

    async def _write(self, blob: bytes) -> None:
        await self._exchange(self._conn.batch(self._conn.new_id(), blob))

    # -- writes ------------------------------------------------------------------
    # Each encodes its arguments before its first await: a bad key or value
    # raises TypeError before a byte is sent.

    async def set(self, key: Any, value: Any) -> None:
        """Sets key to value; returns once every process can read it."""
        await self._write(STORE + self._encode_pair(key, value))

    store = set

    async def delete(self, key: Any) -> None:
        """Removes key if present (no error if it is absent)."""
        await self._write(DELETE + encode_key(key))

    async def update(self, *args: Any, **kwargs: Any) -> None:
        """Stores many pairs; each blob of about shmmap.client.map.BATCH_BYTES is
        atomic, and the blobs are pipelined."""
        blobs = update_blobs(self.codec, args, kwargs)
        if blobs:
            await self._exchange(self._conn.batches(blobs))

    async def clear(self) -> None:
        """Removes every key, as one write."""
        await self._request(Op.CLEAR)

    async def load_or_store(self, key: Any, value: Any) -> tuple[Any, bool]:
        """(the existing value, True), or (value, False) after storing it."""
        return decode_loaded(self.codec, await self._request(Op.LOAD_OR_STORE, encode_key(key),
                                                 self._encode_value(value)), value)

    async def load_and_delete(self, key: Any) -> tuple[Any, bool]:
        """Removes key; returns (its value, True), or (None, False) if it
        was absent."""
        return decode_loaded(self.codec, await self._request(Op.LOAD_AND_DELETE, encode_key(key)), None)

    async def swap(self, key: Any, value: Any) -> tuple[Any, bool]:
        """Stores value; returns (the previous value, whether there was one)."""
        swapped = await self._request(Op.SWAP, encode_key(key), self._encode_value(value))
        return decode_loaded(self.codec, swapped, None)

    async def compare_and_swap(self, key: Any, old: Any, new: Any) -> bool:
        """Sets key to new if its value equals old (as msgpack bytes);
        returns whether it did."""
        return bool(await self._request(Op.COMPARE_AND_SWAP, encode_key(key), self._encode_value(old),
                                        self._encode_value(new)))

    async def compare_and_delete(self, key: Any, old: Any) -> bool:
        """Removes key if its value equals old (as msgpack bytes); returns
        whether it did."""
        return bool(await self._request(Op.COMPARE_AND_DELETE, encode_key(key),
                                        self._encode_value(old)))

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[Batch]:
        """``async with m.batch() as b: b[k] = v; del b[j]`` -- applied as
        one atomic write when the block ends without an exception."""
        self._open()
        b = Batch(self.codec)
        yield b
        if b.items:
            await self._write(batch_blob(b.items))

    def pipeline(self) -> AsyncPipeline:
        """``async with m.pipeline() as p: p[k] = v; del p[j]`` -- writes
        collected, then sent by ``await p.sync()`` (or the block's end) in
        bursts of shmmap.client.map.PIPELINE_WRITES, each burst one round trip. Each
        write is applied on its own, in order; the first error one met is
        raised by that sync. Read-your-writes holds once sync() returns."""
        self._open()
        return AsyncPipeline(self)

    async def _write_many(self, blobs: list[bytes]) -> None:
        await self._exchange(self._conn.batches(blobs))

    # -- the daemon --------------------------------------------------------------

    async def promote(self) -> int:
        """Asks the daemon to promote now; returns the new generation."""
        return int(await self._request(Op.PROMOTE))

    async def stats(self) -> dict[str, Any]:
        """The daemon's statistics of the map, and under "cache" this
        client's cache (see the README)."""
        stats = dict(await self._request(Op.STATS))
        stats["cache"] = self._open_cache().stats()
        return stats


class AsyncPipeline:
    """Writes made by AsyncMap.pipeline(): encoded as they are made (a bad
    key or value raises at once), sent by sync() in bursts."""

    def __init__(self, m: AsyncMap) -> None:
        self._map = m
        self._blobs: list[bytes] = []

    def store(self, key: Any, value: Any) -> None:
        """Sets key to value (also: ``p[key] = value``)."""
        self._blobs.append(STORE + self._map._encode_pair(key, value))

    def delete(self, key: Any) -> None:
        """Removes key if present (also: ``del p[key]``)."""
        self._blobs.append(DELETE + encode_key(key))

    __setitem__ = store
    __delitem__ = delete

    async def sync(self) -> None:
        """Sends the writes not yet sent and waits for every
        acknowledgement: then all are visible to every process. Raises the
        first error a write met (in its burst; later bursts are not sent)."""
        blobs, self._blobs = self._blobs, []
        for at in range(0, len(blobs), PIPELINE_WRITES):
            await self._map._write_many(blobs[at:at + PIPELINE_WRITES])

    async def __aenter__(self) -> AsyncPipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.sync()


class _Connecting:
    """What connect() returns: awaited, the open map; used in ``async
    with``, the map, closed at the block's end."""

    def __init__(self, m: AsyncMap) -> None:
        self._map = m

    def __await__(self) -> Generator[Any, None, AsyncMap]:
        return self._map._start().__await__()

    async def __aenter__(self) -> AsyncMap:
        return await self._map._start()

    async def __aexit__(self, *exc: object) -> None:
        await self._map.aclose()


def connect(name: str, *, timeout: float = DEFAULT_TIMEOUT,
            cache_keys: int = DEFAULT_CACHE_KEYS,
            cache_bytes: int = DEFAULT_CACHE_BYTES,
            ext_types: Iterable[Ext] = ()) -> _Connecting:
    """Opens map name, which a daemon must serve, for asyncio code:
    ``m = await shmmap.aio.connect(name)`` (then ``await m.aclose()``), or
    ``async with shmmap.aio.connect(name) as m``. The options are
    shmmap.connect's: timeout bounds connecting and each write with its
    reply; the cache serves the synchronous reads; ext_types, the
    application's own value types, as for shmmap.connect."""
    return _Connecting(AsyncMap(name, timeout=timeout, cache_keys=cache_keys,
                                cache_bytes=cache_bytes, ext_types=ext_types))
