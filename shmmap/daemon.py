"""The daemon: the one writer of a map. It owns the segments, applies the
requests clients send over its Unix socket one at a time in arrival order,
commits each round of them at once (group commit), acknowledges them, and
promotes when the map fills or readers' misses pay for it."""
from __future__ import annotations

import errno
import logging
import os
import select
import signal
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import msgpack

from . import protocol, segments
from ._core import ffi, lib
from .codec import decode_value
from .errors import DaemonRunningError, InvalidRequestError, LimitError, MapFullError
from .protocol import Err, Op, delete_item, store_item
from .slots import ReaderSlots
from .writer import Limits, MapWriter

log = logging.getLogger("shmmap.daemon")

MISS_CHECK_SECONDS = 0.1     # how often readers' miss counts are summed
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_LISTEN_BACKLOG = 128
_IN = select.EPOLLIN
_OUT = select.EPOLLOUT


@dataclass
class DaemonConfig:
    """Everything ``shmmap serve`` can be told."""

    name: str
    socket_path: Optional[str] = None
    mode: int = 0o600
    group: Optional[int] = None   # gid the segments and socket belong to
    limits: Limits = field(default_factory=Limits)
    max_connections: int = 1024
    allow_uids: frozenset[int] = frozenset()
    fresh: bool = False           # discard a dead daemon's segments instead of adopting
    ready_fd: Optional[int] = None


class Connection:
    """One client: its socket, its undecoded input, its pending replies."""

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock = sock
        self.pid = pid
        self.unpacker = msgpack.Unpacker(max_buffer_size=protocol.MAX_REQUEST, raw=False)
        self.out = bytearray()
        self.slot = -1
        self.closing = False
        self.events = _IN                     # what epoll waits for on it


class Server:
    """Serves one map until stop() or SIGTERM/SIGINT."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.name = segments.check_map_name(config.name)
        self.socket_path = Path(config.socket_path or protocol.default_socket_path(self.name))
        self.connections: dict[int, Connection] = {}
        self.epoll = select.epoll()
        self.stopping = False
        self.requests = 0
        self.writes = 0
        self.errors = 0
        self.started = time.time()
        self._uncommitted = False
        self._pending: set[Connection] = set()   # connections with replies to send
        self._misses_at_promotion = 0
        self._packer = msgpack.Packer(use_bin_type=True)
        self.writer = self._create_map()
        try:
            self.slots = ReaderSlots(self.name, config.mode, config.group)
            self.listener = self._listen()
        except BaseException:
            self.writer.close()
            raise

    # -- start and stop ----------------------------------------------------

    def _create_map(self) -> MapWriter:
        live = _live_daemon(self.name)
        if live:
            raise DaemonRunningError(f"map {self.name!r} is already served by daemon pid {live}")
        options: dict[str, Any] = dict(mode=self.config.mode, group=self.config.group,
                       limits=self.config.limits, socket_path=str(self.socket_path))
        stale = segments.map_segments(self.name)
        if stale and self.config.fresh:
            for seg in stale:
                log.warning("--fresh: removing %s", seg)
                segments.unlink(seg)
        elif segments.header_name(self.name) in stale:
            writer = MapWriter.adopt(self.name, **options)
            log.warning("adopted map %r at seq %d (generation %d)", self.name, writer.seq,
                        writer.generation.gen)
            return writer
        return MapWriter(self.name, **options)

    def _listen(self) -> socket.socket:
        self.socket_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.socket_path.exists() or self.socket_path.is_symlink():
            self.socket_path.unlink()   # stale: no live daemon holds the map
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o777 & ~self.config.mode)
        try:
            sock.bind(str(self.socket_path))
        finally:
            os.umask(old)
        if self.config.group is not None:
            os.chown(self.socket_path, -1, self.config.group)
        os.chmod(self.socket_path, self.config.mode)
        sock.listen(_LISTEN_BACKLOG)
        sock.setblocking(False)
        return sock

    def stop(self) -> None:
        self.stopping = True

    def _close(self) -> None:
        for conn in list(self.connections.values()):
            self._drop(conn)
        self.epoll.close()
        self.listener.close()
        try:
            self.socket_path.unlink()
        except FileNotFoundError:
            pass
        self.slots.close()
        self.writer.close(remove=True)

    # -- the loop -----------------------------------------------------------

    def run(self) -> int:
        """Serves until stopped; removes segments and socket; returns 0."""
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        old_wakeup = signal.set_wakeup_fd(wake_w)
        old_handlers = {s: signal.signal(s, lambda *_: self.stop())
                        for s in (signal.SIGTERM, signal.SIGINT)}
        listen_fd = self.listener.fileno()
        next_miss_check = time.monotonic() + MISS_CHECK_SECONDS
        busy_until = 0.0
        try:
            self.epoll.register(listen_fd, _IN)
            self.epoll.register(wake_r, _IN)
            lib.shm_map_set_daemon_pid(self.writer.header, os.getpid())
            self._announce_ready()
            log.info("serving map %r on %s", self.name, self.socket_path)
            while not self.stopping:
                # Right after serving, poll without sleeping for a moment:
                # the next request of a synchronous client comes sooner than
                # a wake-up from epoll would (see protocol.py).
                spinning = time.perf_counter() < busy_until
                events = self.epoll.poll(0 if spinning else MISS_CHECK_SECONDS)
                for fd, mask in events:
                    conn = self.connections.get(fd)
                    if conn is not None:
                        self._serve(conn, mask)
                    elif fd == listen_fd:
                        self._accept()
                    elif fd == wake_r:
                        _drain(wake_r)
                if events:
                    busy_until = time.perf_counter() + protocol.DAEMON_SPIN_SECONDS
                self._commit_and_flush()
                if time.monotonic() >= next_miss_check:
                    self._promote_for_misses()
                    next_miss_check = time.monotonic() + MISS_CHECK_SECONDS
            self._commit_and_flush()
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)
            signal.set_wakeup_fd(old_wakeup)
            os.close(wake_r)
            os.close(wake_w)
            self._close()
        log.info("stopped")
        return 0

    def _announce_ready(self) -> None:
        fd = self.config.ready_fd
        if fd is not None:
            os.write(fd, b"ready\n")
            os.close(fd)

    def _serve(self, conn: Connection, mask: int) -> None:
        if mask & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
            self._read(conn)
        if mask & select.EPOLLOUT and not conn.closing:
            self._flush(conn)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    log.error("out of file descriptors: %s", exc)
                    return
                raise
            pid, uid, gid = _PEERCRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
            if not self._allowed(uid, gid):
                log.warning("refused pid %d of uid %d (not allowed)", pid, uid)
                _refuse(sock, Err.DENIED, f"uid {uid} may not use map {self.name!r}")
                continue
            if len(self.connections) >= self.config.max_connections:
                _refuse(sock, Err.LIMIT,
                        f"daemon at its limit of {self.config.max_connections} connections")
                continue
            sock.setblocking(False)
            conn = Connection(sock, pid)
            self.connections[sock.fileno()] = conn
            self.epoll.register(sock.fileno(), _IN)

    def _allowed(self, uid: int, gid: int) -> bool:
        """Peers are authorised by uid (pids are reused): the daemon's own,
        root, those of --allow-uid, and members of --group by their gid."""
        c = self.config
        return (uid in (os.getuid(), 0) or uid in c.allow_uids
                or (c.group is not None and gid == c.group))

    def _read(self, conn: Connection) -> None:
        try:
            data = conn.sock.recv(protocol.RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        try:
            conn.unpacker.feed(data)
        except msgpack.BufferFull:
            self._protocol_error(conn, f"request over {protocol.MAX_REQUEST} bytes")
            return
        while not conn.closing:
            try:
                req = next(conn.unpacker)
            except StopIteration:
                return
            except Exception as exc:   # msgpack's errors: bytes that are no request
                self._protocol_error(conn, f"malformed msgpack: {exc.__class__.__name__}: {exc}")
                return
            self._handle(conn, req)

    def _protocol_error(self, conn: Connection, message: str) -> None:
        self.errors += 1
        self._reply(conn, [None, Err.PROTOCOL, message])
        conn.closing = True

    def _commit_and_flush(self) -> None:
        """Commits this round's writes with one release store, then sends
        every reply: no write is acknowledged before it is visible."""
        if self._uncommitted:
            self.writer.commit()
            self._uncommitted = False
        while self._pending:
            self._flush(self._pending.pop())

    def _flush(self, conn: Connection) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._drop(conn)
            return
        del conn.out[:sent]
        if conn.closing and not conn.out:
            self._drop(conn)
            return
        want = _OUT if conn.closing else _IN
        if conn.out:
            want |= _OUT
        if want != conn.events:
            conn.events = want
            self.epoll.modify(conn.sock.fileno(), want)

    def _drop(self, conn: Connection) -> None:
        fd = conn.sock.fileno()
        if fd < 0 or self.connections.get(fd) is not conn:
            return
        del self.connections[fd]
        self._pending.discard(conn)
        self.epoll.unregister(fd)
        conn.sock.close()
        if conn.slot >= 0:
            self.slots.release(conn.slot)

    # -- requests -------------------------------------------------------------

    def _reply(self, conn: Connection, reply: list[Any]) -> None:
        conn.out += self._packer.pack(reply)
        self._pending.add(conn)

    def _handle(self, conn: Connection, req: Any) -> None:
        self.requests += 1
        if (not isinstance(req, list) or len(req) < 2 or type(req[0]) is not int
                or type(req[1]) is not int):
            self._protocol_error(conn, "a request is an array [op, request_id, *args]")
            return
        op, rid, args = req[0], req[1], req[2:]
        handler = _HANDLERS.get(op)
        if handler is None:
            self.errors += 1
            self._reply(conn, [rid, Err.UNKNOWN_OP, f"unknown operation {op}"])
            return
        fn, arity = handler
        try:
            if len(args) != arity:
                raise InvalidRequestError(
                    f"{Op(op).name} takes {arity} arguments, not {len(args)}")
            result, seq = fn(self, conn, *args)
        except (InvalidRequestError, TypeError) as exc:
            self._error(conn, rid, Err.INVALID, exc)
        except LimitError as exc:
            self._error(conn, rid, Err.LIMIT, exc)
        except MapFullError as exc:
            self._error(conn, rid, Err.FULL, exc)
        except Exception as exc:        # a bug: report it, keep serving
            log.exception("request %s failed", Op(op).name)
            self._error(conn, rid, Err.INTERNAL, exc)
        else:
            self._reply(conn, [rid, protocol.OK, result, seq])

    def _error(self, conn: Connection, rid: int, code: Err, exc: Exception) -> None:
        self.errors += 1
        self._reply(conn, [rid, code, str(exc)])

    def _write(self, blob: bytes) -> int:
        seq = self.writer.apply(blob)
        self.writes += 1
        self._uncommitted = True
        return seq

    def _current(self, key: bytes, *values: bytes) -> Optional[bytes]:
        """Validates key and values; returns key's latest encoded value."""
        self.writer.check_key(key)
        for value in values:
            self.writer.check_value(value)
        return self.writer.lookup_raw(key)

    def op_hello(self, conn: Connection, version: Any) -> tuple[Any, int]:
        if version != protocol.VERSION:
            raise InvalidRequestError(f"protocol version {version!r}, the daemon speaks "
                                      f"{protocol.VERSION}")
        if conn.slot < 0:
            conn.slot = self.slots.assign(conn.pid)
        lim = self.writer.limits
        return {"pid": os.getpid(), "slot": conn.slot, "max_key": lim.max_key,
                "max_value": lim.max_value, "version": protocol.VERSION}, 0

    def op_batch(self, conn: Connection, blob: Any) -> tuple[Any, int]:
        return None, self._write(_bin(blob, "batch"))

    def op_load_or_store(self, conn: Connection, key: Any, value: Any) -> tuple[Any, int]:
        key, value = _bin(key, "key"), _bin(value, "value")
        current = self._current(key, value)
        if current is not None:
            return [True, current], 0
        return [False, value], self._write(store_item(key, value))

    def op_load_and_delete(self, conn: Connection, key: Any) -> tuple[Any, int]:
        key = _bin(key, "key")
        current = self._current(key)
        if current is None:
            return [False, None], 0
        return [True, current], self._write(delete_item(key))

    def op_swap(self, conn: Connection, key: Any, value: Any) -> tuple[Any, int]:
        key, value = _bin(key, "key"), _bin(value, "value")
        current = self._current(key, value)
        return [current is not None, current], self._write(store_item(key, value))

    def op_compare_and_swap(self, conn: Connection, key: Any, old: Any,
                            new: Any) -> tuple[Any, int]:
        key, old, new = _bin(key, "key"), _bin(old, "old value"), _bin(new, "new value")
        current = self._current(key, old, new)
        if current is None or not _same(current, old):
            return False, 0
        return True, self._write(store_item(key, new))

    def op_compare_and_delete(self, conn: Connection, key: Any, old: Any) -> tuple[Any, int]:
        key, old = _bin(key, "key"), _bin(old, "old value")
        current = self._current(key, old)
        if current is None or not _same(current, old):
            return False, 0
        return True, self._write(delete_item(key))

    def op_clear(self, conn: Connection) -> tuple[Any, int]:
        self.writes += 1
        return None, self.writer.clear()

    def op_promote(self, conn: Connection) -> tuple[Any, int]:
        self._uncommitted = False
        self.writer.promote("requested")
        return self.writer.generation.gen, self.writer.seq

    def op_stats(self, conn: Connection) -> tuple[Any, int]:
        return self.stats(), 0

    # -- promotion and statistics ------------------------------------------

    def _promote_for_misses(self) -> None:
        in_use = [c.slot for c in self.connections.values() if c.slot >= 0]
        misses = self.slots.totals(in_use)["misses"]
        if self.writer.should_promote_for_misses(misses - self._misses_at_promotion):
            self.writer.promote("misses")
            self._uncommitted = False
            self._misses_at_promotion = misses

    def stats(self) -> dict[str, Any]:
        g = self.writer.generation
        h = g.header
        st = self.writer.stats
        in_use = [c.slot for c in self.connections.values() if c.slot >= 0]
        readers = self.slots.totals(in_use)
        return {
            "name": self.name,
            "pid": os.getpid(),
            "socket": str(self.socket_path),
            "uptime_s": round(time.time() - self.started, 3),
            "generation": int(h.gen),
            "committed_seq": int(h.committed_seq),
            "live_keys": int(h.live_count),
            "live_bytes": int(h.live_bytes),
            "read_keys": int(h.read_count),
            "dirty_keys": int(h.dirty_count),
            "dirty_capacity": int(h.dirty_cap),
            "arena_used": int(h.arena_used),
            "arena_free": int(h.arena_cap) - int(h.arena_used),
            "segment_bytes": int(h.segment_size),
            "requests": self.requests,
            "writes": self.writes,
            "errors": self.errors,
            "clients": len(self.connections),
            "lookups": readers["lookups"],
            "misses": readers["misses"],
            "export_batches": readers["iterations"],
            "older_generations_mapped": readers["older_generations_mapped"],
            "promotions": st.promotions,
            "promotions_by_reason": dict(st.promotions_by_reason),
            "compactions": st.compactions,
            "bytes_copied": st.bytes_copied,
            "last_promotion_ms": round(st.last_promotion_ms, 3),
        }


_HANDLERS: dict[int, tuple[Callable[..., tuple[Any, int]], int]] = {
    Op.HELLO: (Server.op_hello, 1),
    Op.BATCH: (Server.op_batch, 1),
    Op.LOAD_OR_STORE: (Server.op_load_or_store, 2),
    Op.LOAD_AND_DELETE: (Server.op_load_and_delete, 1),
    Op.SWAP: (Server.op_swap, 2),
    Op.COMPARE_AND_SWAP: (Server.op_compare_and_swap, 3),
    Op.COMPARE_AND_DELETE: (Server.op_compare_and_delete, 2),
    Op.CLEAR: (Server.op_clear, 0),
    Op.PROMOTE: (Server.op_promote, 0),
    Op.STATS: (Server.op_stats, 0),
}


def _bin(x: Any, what: str) -> bytes:
    if type(x) is not bytes:
        raise InvalidRequestError(f"{what} must be msgpack-encoded bytes, not {type(x).__name__}")
    return x


def _same(stored: bytes, given: bytes) -> bool:
    """Whether two encoded (and validated) values are equal as Python
    values (1 == 1.0)."""
    return stored == given or bool(decode_value(stored) == decode_value(given))


def _drain(fd: int) -> None:
    try:
        os.read(fd, 512)
    except BlockingIOError:
        pass


def _refuse(sock: socket.socket, code: Err, message: str) -> None:
    try:
        sock.sendall(msgpack.packb([None, code, message]))
    except OSError:
        pass
    sock.close()


def _live_daemon(name: str) -> int:
    """The pid of a live daemon serving name, or 0."""
    try:
        mm = segments.open_readonly(segments.header_name(name))
    except FileNotFoundError:
        return 0
    try:
        if len(mm) < ffi.sizeof("struct shm_map_header"):
            return 0
        buf = ffi.from_buffer(mm)
        h = ffi.cast("struct shm_map_header *", buf)
        pid = int(lib.shm_map_daemon_pid(h)) if h.magic == lib.SHM_MAGIC_MAP else 0
        ffi.release(buf)
    finally:
        mm.close()
    return pid if pid and process_alive(pid) else 0


def process_alive(pid: int) -> bool:
    """Whether a process pid exists (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def serve(config: DaemonConfig) -> int:
    return Server(config).run()
