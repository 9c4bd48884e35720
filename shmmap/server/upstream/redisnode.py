"""One Redis server (not a cluster) as a map's upstream.

One connection, RESP3, used by one thread, carries everything: tracking
(``CLIENT TRACKING on BCAST PREFIX ... NOLOOP``), the loads, the refetches
and the clients' writes. Redis answers a connection in the order it asked,
and writes an invalidation push into the same stream once the change is
made, so on this one connection every reply and push arrives in Redis'
order: a fetch answered before a push for its key is refetched after it,
and a fetch answered after it shows the change already. Applying them in
arrival order makes the copy follow Redis per key, never backwards.
NOLOOP spares the pushes of our own writes, which fetch their keys in the
same transaction instead.

Why a thread: redis-py reads replies and pushes with blocking calls, and
pushes are only read when something reads the socket. The thread waits in
poll() on the socket (and on a pipe that says a write was submitted),
and hands each Update to the daemon's loop (deliver), which commits it on
the daemon's thread: the map has one writer still.

Any doubt -- a lost connection, a reply later than TIMEOUT_SECONDS (a PING
goes out after HEARTBEAT_SECONDS of silence), a push it does not know --
drops the connection: the map is marked disconnected, writes are refused,
and the thread reconnects with backoff, turns tracking on first, then loads
the whole range again (the daemon diffs it against the copy)."""
from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections import deque
from typing import Any, Optional

import redis
from redis.exceptions import ResponseError

from ...shared.protocol import Err
from .base import DISCONNECTED, LIVE, RESYNCING, SYNCING, Deliver, Fetched, Update, Write

log = logging.getLogger("shmmap.daemon")

HEARTBEAT_SECONDS = 1.0      # silence after which the link PINGs
TIMEOUT_SECONDS = 2.0        # a reply later than this puts the link in doubt
BACKOFF_SECONDS = (0.05, 2.0)  # the first reconnection's wait, and the longest
SCAN_COUNT = 1000            # SCAN's COUNT hint
FETCH_KEYS = 500             # keys per fetch script call
WATCH_TRIES = 16             # a conditional write whose key changes under it, retried
PIPELINE_WRITES = 256        # queued writes sent at once, each its own transaction

# Each key's type and value at one instant (a script runs atomically):
# {type} or {type, value}, a hash's value as HGETALL's flat list.
FETCH_SCRIPT = """
local out = {}
for i, k in ipairs(KEYS) do
  local t = redis.call('TYPE', k)['ok']
  if t == 'string' then
    out[i] = {t, redis.call('GET', k)}
  elseif t == 'hash' then
    out[i] = {t, redis.call('HGETALL', k)}
  else
    out[i] = {t}
  end
end
return out
"""

_LINK_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


class Doubt(Exception):
    """The link cannot be trusted any more: reconnect and resync."""


def glob_escape(prefix: bytes) -> bytes:
    """prefix as a literal in a SCAN MATCH pattern."""
    out = bytearray()
    for b in prefix:
        if b in b"*?[]\\":
            out += b"\\"
        out.append(b)
    return bytes(out)


def check_prefixes(prefixes: list[bytes]) -> None:
    """Redis' BCAST refuses prefixes of which one begins another."""
    for a in prefixes:
        for b in prefixes:
            if a is not b and b.startswith(a):
                raise ValueError(f"--prefix {a!r} overlaps --prefix {b!r}: Redis tracks "
                                 "prefixes of which none begins another")


class RedisNode:
    """The Upstream of one Redis server at url, for keys under prefixes."""

    def __init__(self, url: str, prefixes: list[bytes], deliver: Deliver) -> None:
        check_prefixes(prefixes)
        self.url = url
        self.prefixes = prefixes
        self.deliver = deliver
        self._pool = redis.ConnectionPool.from_url(
            url, protocol=3, socket_timeout=TIMEOUT_SECONDS,
            socket_connect_timeout=TIMEOUT_SECONDS)
        # A redis.connection.Connection (or its SSL or Unix socket kin),
        # whose methods redis-py leaves untyped.
        self._conn: Any = None
        self._writes: deque[Write] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shmmap-upstream", daemon=True)
        # Changes pushed and not yet fetched: keys in arrival order, or
        # the whole range (a null push: FLUSHALL, FLUSHDB).
        self._dirty: dict[bytes, None] = {}
        self._flushed = False
        self._dirty_since = 0.0
        self._odd_push: Any = None    # a push that is no invalidation: a doubt
        self.invalidations = 0      # pushes received
        self.reconnects = 0
        self._script_sha = b""
        self.where = _where(url, self._pool.connection_kwargs)

    # -- the daemon's side ---------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, write: Write) -> None:
        self._writes.append(write)
        self._wake()

    def stop(self) -> None:
        self._stopping.set()
        self._wake()
        self._thread.join()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass                # the pipe is full: the thread wakes anyway

    # -- the thread ----------------------------------------------------------

    def _run(self) -> None:
        state, backoff = SYNCING, BACKOFF_SECONDS[0]
        while not self._stopping.is_set():
            try:
                self._connect(state)
                backoff = BACKOFF_SECONDS[0]
                self._serve()
            except Exception as exc:
                if self._stopping.is_set():
                    break
                if not isinstance(exc, (*_LINK_ERRORS, Doubt, ResponseError)):
                    # A bug here must not leave the map looking live while
                    # nothing keeps it current: it is one more doubt.
                    log.exception("upstream %s: the link failed: a daemon bug", self.where,
                                  extra={"event": "error"})
                log.warning("upstream %s: %s; the map is stale until it reconnects",
                            self.where, _why(exc),
                            extra={"event": "upstream_lost", "reason": _why(exc)})
                self._lost()
                state = RESYNCING
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_SECONDS[1])
            finally:
                self._close()
        self._fail_writes(Err.UPSTREAM, "the daemon is stopping")

    def _connect(self, state: str) -> None:
        """Connects, turns tracking on, then loads the range: one full
        Update, after which the map is live."""
        self._dirty.clear()
        self._flushed = False
        self._odd_push = None
        conn = self._pool.connection_class(**self._pool.connection_kwargs)
        self._conn = conn
        conn.connect()
        # Pushes are handed to this handler as the parser meets them, ahead
        # of the reply they came before: the order Redis sent them in
        # (redis-py's own client-side cache hooks its parser the same way).
        conn._parser.set_invalidation_push_handler(self._on_push)
        conn._parser.set_pubsub_push_handler(self._on_other_push)
        args: list[Any] = ["CLIENT", "TRACKING", "ON", "BCAST", "NOLOOP"]
        for p in self.prefixes:
            if p:
                args += ["PREFIX", p]
        self._call(*args)
        self._script_sha = self._call("SCRIPT", "LOAD", FETCH_SCRIPT)
        if state == RESYNCING:
            self.reconnects += 1
            self.deliver(Update(state=RESYNCING))
        self._load(LIVE)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.disconnect()
            self._conn = None

    def _lost(self) -> None:
        self._fail_writes(Err.UPSTREAM, f"upstream {self.where} is unreachable")
        self.deliver(Update(state=DISCONNECTED))

    def _fail_writes(self, code: Err, message: str) -> None:
        while self._writes:
            self.deliver(Update(write=self._writes.popleft(), error=(code, message)))

    def _on_push(self, push: list[Any]) -> None:
        self.invalidations += 1
        if not self._dirty and not self._flushed:
            self._dirty_since = time.perf_counter()
        keys = push[1] if len(push) > 1 else None
        if keys is None:
            self._flushed = True
        else:
            self._dirty.update(dict.fromkeys(keys))

    def _on_other_push(self, push: list[Any]) -> None:
        # Raised by _serve, not here: the parser is in the middle of a read.
        self._odd_push = push

    def _serve(self) -> None:
        """Answers writes and pushes until the link is in doubt."""
        conn = self._conn
        assert conn is not None
        sock = conn._sock           # redis-py names no accessor for the socket it reads
        # poll, not select: a daemon of many clients has descriptors past 1024.
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        heard = time.monotonic()
        while not self._stopping.is_set():
            if self._odd_push is not None:
                raise Doubt(f"Redis pushed {self._odd_push!r}")
            if self._flushed or self._dirty or self._writes or conn.can_read(timeout=0):
                if self._flushed:
                    self._load(None)
                elif self._dirty:
                    self._refetch()
                elif not self._writes:
                    self._read_push()
                elif self._writes[0].condition is not None:
                    self._write(self._writes.popleft())
                else:
                    self._transact(self._take_writes(), [])
                heard = time.monotonic()
            else:
                wait = heard + HEARTBEAT_SECONDS - time.monotonic()
                if wait <= 0:
                    self._call("PING")
                    heard = time.monotonic()
                    continue
                ready = {fd for fd, _ in poller.poll(wait * 1000)}
                if self._wake_r in ready:
                    _drain(self._wake_r)
                if sock.fileno() in ready:
                    self._read_push()
                    heard = time.monotonic()

    def _read_push(self) -> None:
        assert self._conn is not None
        if self._conn.read_response(push_request=True) is not None:
            raise Doubt("Redis sent a reply nothing asked for")

    # -- commands --------------------------------------------------------------

    def _call(self, *args: Any) -> Any:
        assert self._conn is not None
        self._conn.send_command(*args)
        return self._conn.read_response()

    def _pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Sends commands at once and reads their replies in order; an
        error reply is its ResponseError, in its place."""
        conn = self._conn
        assert conn is not None
        conn.send_packed_command(conn.pack_commands(commands))
        out: list[Any] = []
        for _ in commands:
            try:
                out.append(conn.read_response())
            except ResponseError as exc:
                out.append(exc)
        return out

    def _check_stopping(self) -> None:
        """A load of a big range is cut short by stop()."""
        if self._stopping.is_set():
            raise Doubt("the daemon is stopping")

    def _fetch_command(self, keys: list[bytes]) -> tuple[Any, ...]:
        return ("EVALSHA", self._script_sha, len(keys), *keys)

    def _fetch(self, keys: list[bytes]) -> list[Fetched]:
        out: list[Fetched] = []
        for i in range(0, len(keys), FETCH_KEYS):
            self._check_stopping()
            part = keys[i:i + FETCH_KEYS]
            out += _fetched(part, self._call(*self._fetch_command(part)))
        return out

    def _load(self, state: Optional[str]) -> None:
        """The whole range, as one full Update: pushes that arrive
        meanwhile are fetched after it."""
        self._flushed = False
        started = time.perf_counter()
        names: dict[bytes, None] = {}
        for p in self.prefixes:
            cursor: Any = 0
            pattern = glob_escape(p) + b"*"
            while True:
                self._check_stopping()
                cursor, found = self._call("SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_COUNT)
                names.update(dict.fromkeys(found))
                if int(cursor) == 0:
                    break
        self.deliver(Update(fetched=self._fetch(list(names)), full=True, state=state,
                            received=started))

    def _refetch(self) -> None:
        keys, since = list(self._dirty), self._dirty_since
        self._dirty.clear()
        self.deliver(Update(fetched=self._fetch(keys), received=since))

    def _take_writes(self) -> list[Write]:
        """The unconditional writes at the head of the queue: many
        clients' writes cost one round trip, not one each."""
        out = [self._writes.popleft()]
        while (self._writes and self._writes[0].condition is None
               and len(out) < PIPELINE_WRITES):
            out.append(self._writes.popleft())
        return out

    def _write(self, w: Write) -> None:
        """A client's write as one transaction that fetches its keys too:
        the copy gets them as the write left them. A conditional write
        WATCHes its key and tests it first, and goes again if the key
        changed before its EXEC."""
        for _ in range(WATCH_TRIES):
            before: list[Fetched] = []
            if w.condition is not None:
                try:
                    self._call("WATCH", *w.keys)
                    before = self._fetch(w.keys)
                except _LINK_ERRORS:
                    self.deliver(Update(write=w, error=(
                        Err.UPSTREAM, f"upstream {self.where} went away: nothing was written")))
                    raise
                try:
                    go = w.condition(before[0])
                except ValueError as exc:
                    self._call("UNWATCH")
                    self.deliver(Update(fetched=before, received=w.started))
                    self.deliver(Update(write=w, error=(Err.INVALID, f"{exc}: nothing was "
                                                                     "written")))
                    return
                if not go:
                    self._call("UNWATCH")
                    self.deliver(Update(fetched=before, write=w, before=before, wrote=False,
                                        received=w.started))
                    return
            if self._transact([w], before):
                return
        self.deliver(Update(write=w, error=(Err.INVALID, f"key {w.keys[0]!r} changed under "
                                                         f"the write {WATCH_TRIES} times")))

    def _transact(self, ws: list[Write], before: list[Fetched]) -> bool:
        """Each write's commands, and its keys fetched, in a MULTI of its
        own, all sent at once; False if the (one) conditional write's
        WATCHed key changed first (nothing was written)."""
        sent = [self._transaction(w) for w in ws]
        try:
            replies = self._pipeline([c for commands in sent for c in commands])
        except _LINK_ERRORS:
            for w in ws:
                self.deliver(Update(write=w, error=(
                    Err.UPSTREAM_UNKNOWN, f"upstream {self.where} went away with the write "
                    "in flight: it may or may not have been made")))
            raise
        at = 0
        for w, commands in zip(ws, sent):
            mine, at = replies[at:at + len(commands)], at + len(commands)
            if mine[-1] is None and w.condition is not None:
                return False
            self._settle(w, mine, before)
        return True

    def _transaction(self, w: Write) -> list[tuple[Any, ...]]:
        fetch = self._fetch_command(w.keys)
        return [("MULTI",), *([fetch] if w.before else []), *w.commands, fetch, ("EXEC",)]

    def _settle(self, w: Write, replies: list[Any], before: list[Fetched]) -> None:
        """Hands the daemon the outcome of w's transaction (its replies)."""
        done = replies[-1]
        if isinstance(done, ResponseError) or done is None:
            refused = next((r for r in replies if isinstance(r, ResponseError)), done)
            self.deliver(Update(write=w, error=(Err.INVALID, f"Redis refused the write: "
                                                             f"{refused}")))
            return
        failed = [r for r in done[:-1] if isinstance(r, ResponseError)]
        fetched = _fetched(w.keys, done[-1])
        if w.before:
            before = _fetched(w.keys, done[0])
        if failed:
            # Part of it was made: the copy takes what Redis holds now.
            self.deliver(Update(fetched=fetched, received=w.started))
            self.deliver(Update(write=w, error=(Err.INVALID, f"Redis refused part of the "
                                                             f"write: {failed[0]}")))
            return
        self.deliver(Update(fetched=fetched, write=w, before=before, received=w.started))


def _fetched(keys: list[bytes], reply: Any) -> list[Fetched]:
    """The fetch script's reply for keys."""
    if isinstance(reply, ResponseError):
        raise Doubt(f"the fetch script failed: {reply}")
    out = []
    for key, entry in zip(keys, reply):
        kind = entry[0].decode() if isinstance(entry[0], bytes) else str(entry[0])
        value: Any = None
        if kind == "string":
            value = entry[1]
        elif kind == "hash":
            flat = entry[1]
            value = dict(zip(flat[0::2], flat[1::2]))
        out.append(Fetched(key, kind, value))
    return out


def _where(url: str, kw: dict[str, Any]) -> str:
    """url without its user and password, for logs and stats."""
    place = kw.get("path") or f"{kw.get('host')}:{kw.get('port')}"
    return f"{url.partition(':')[0]}://{place}/{kw.get('db', 0)}"


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
