"""The daemon's transport: its listening Unix socket, who may connect
(SO_PEERCRED), the connections, their msgpack framing, and epoll.

It knows nothing of the map. A round of the loop (``poll``) is served
first by ``serve_round``, the C hot path, which waits for events and
receives, serves and queues the replies of connections that have nothing
of their own queued here; what it leaves, Python handles: bytes go to
``serve_bytes`` (the same C path, on the bytes given), each request it
leaves is decoded here and goes to ``on_request``, whose reply comes back
through ``reply()``. The daemon's loop commits a round's writes before
``flush()`` sends a reply: that is where a round ends."""
from __future__ import annotations

import enum
import errno
import logging
import math
import os
import resource
import select
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import msgpack

from . import protocol
from ._core import ffi, lib
from .protocol import Err

log = logging.getLogger("shmmap.daemon")

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_LISTEN_BACKLOG = 128
_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_READABLE = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR
_MAX_FAST_FDS = 1 << 20    # descriptors the C round serves at most


@dataclass(frozen=True)
class Peer:
    """Who is at the other end of a connection, as the kernel says."""

    pid: int
    uid: int
    gid: int


class Connection:
    """One client: its socket, its undecoded input, its pending replies."""

    def __init__(self, sock: socket.socket, peer: Peer) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        # Received bytes not yet served: the start of a request still
        # incomplete (usually nothing: a request arrives in one piece).
        self.pending = bytearray()
        # How far the scan of that request got (see struct shm_serve).
        self.scan_at = 0
        self.scan_pending = 0
        self.out = bytearray()
        self.slot = -1                        # its reader slot, once it said hello
        self.closing = False                  # send what is queued, then drop
        self.events = _IN                     # what epoll waits for on it
        # Replies given later (Later), each with its place in out: nothing
        # queued after the first of them is sent before it is filled in.
        self.held: list[tuple[int, Later]] = []


class Later:
    """The reply to a request that its handler answers later (a promotion
    request, once the promotion is published). The handler returns it as
    its result; the transport keeps its place in the connection's output,
    so that the client still reads its replies in request order."""

    def __init__(self) -> None:
        self.rid: Any = None                  # set by the dispatcher
        self._deliver: Optional[Callable[[list[Any]], None]] = None

    def ok(self, result: Any, seq: int) -> None:
        self._give([self.rid, protocol.OK, result, seq])

    def error(self, code: Err, message: str) -> None:
        self._give([self.rid, code, message])

    def _give(self, reply: list[Any]) -> None:
        if self._deliver is not None:
            self._deliver(reply)
            self._deliver = None


class Stop(enum.IntEnum):
    """Why serve_bytes stopped (SHM_STOP_* of cext/shmmap.h)."""

    END = lib.SHM_STOP_END        # every byte served
    MORE = lib.SHM_STOP_MORE      # an incomplete request: wait for more bytes
    OBJECT = lib.SHM_STOP_OBJECT  # a request of arg bytes for on_request
    BAD = lib.SHM_STOP_BAD        # bytes that are no request; arg says why


# serve_round(round, timeout_ms) -> events, or -errno: one round of the
# daemon's loop in C (shm_round_serve on the transport's struct shm_round).
ServeRound = Callable[[Any, int], int]
# serve_bytes(conn, buf, pos) -> (where it stopped, why, arg): it serves the
# requests of buf from pos on that it can, appending their replies to
# conn.out, and stops at the first it leaves (see Stop).
ServeBytes = Callable[[Connection, "bytes | bytearray", int], tuple[int, int, Any]]


class BadRequest(Exception):
    """Raised by a request handler for bytes that are no request: the
    transport answers PROTOCOL and closes the connection."""


class Transport:
    """Accepts, authenticates, reads requests, queues and sends replies.

    ``authorize(peer)`` returns None to admit a peer, else why not;
    ``serve_bytes(conn, buf, pos)`` serves what it can of buf from pos on
    (see ServeBytes); ``on_request(conn, request)`` returns the reply of
    every request it left; ``on_drop(conn)`` is called when a connection
    ends."""

    def __init__(self, path: Path, *, mode: int, group: Optional[int], max_connections: int,
                 authorize: Callable[[Peer], Optional[str]],
                 serve_round: "ServeRound",
                 serve_bytes: "ServeBytes",
                 on_request: Callable[[Connection, Any], "list[Any] | Later"],
                 on_drop: Callable[[Connection], None]) -> None:
        self.path = path
        self.max_connections = max_connections
        self.authorize = authorize
        self.serve_round = serve_round
        self.serve_bytes = serve_bytes
        self.on_request = on_request
        self.on_drop = on_drop
        self.connections: dict[int, Connection] = {}
        self._pending: set[Connection] = set()   # connections with replies to send
        self._packer = msgpack.Packer(use_bin_type=True)
        self.epoll = select.epoll()
        try:
            self.listener = _listen(path, mode, group)
        except BaseException:
            self.epoll.close()
            raise
        self._listen_fd = self.listener.fileno()
        self._wake_fd = -1
        self.epoll.register(self._listen_fd, _IN)
        # The C round (see poll), and its buffers as Python sees them.
        self._round, self._fast, inbuf, outbuf = _new_round(self.epoll.fileno())
        self._round_arrays = (inbuf, outbuf)
        self._in, self._out = ffi.buffer(inbuf), ffi.buffer(outbuf)

    def watch_wakeup(self, fd: int) -> None:
        """Also wakes poll() when fd (a signal wake-up pipe) is readable."""
        self._wake_fd = fd
        self.epoll.register(fd, _IN)

    # -- the loop's one step -------------------------------------------------

    def poll(self, timeout: float) -> bool:
        """Waits up to timeout for events and serves a round of them: in C
        what it can (serve_round), then here what it left. True if any.
        The caller commits the round's writes, then calls flush()."""
        r = self._round
        events = self.serve_round(r, math.ceil(timeout * 1000))
        if events < 0:
            raise OSError(-events, f"epoll_wait: {os.strerror(-events)}")
        for i in range(r.left_count):
            self._handle(r.left[i])
        return events > 0

    def _handle(self, ev: Any) -> None:
        """An event the C round left (a struct shm_round_event)."""
        fd, mask = ev.fd, ev.events
        conn = self.connections.get(fd)
        if conn is not None:
            if ev.out_len:          # replies to the requests it served first
                conn.out += self._out[ev.out_at:ev.out_at + ev.out_len]
                self._pending.add(conn)
            if ev.in_len:           # the bytes it received and left
                self._serve(conn, self._in[ev.in_at:ev.in_at + ev.in_len])
            elif mask & _READABLE:
                self._read(conn)
            if mask & _OUT and self.connections.get(fd) is conn:   # not dropped
                self._flush(conn)
            self._mark(conn)
        elif fd == self._listen_fd:
            self._accept()
        elif fd == self._wake_fd:
            _drain(fd)

    def flush(self) -> None:
        """Sends every queued reply (as much as each socket takes): the C
        round's, then the others."""
        r = self._round
        if r.reply_count and lib.shm_round_send(r):
            for i in range(r.left_count):
                ev = r.left[i]
                conn = self.connections.get(ev.fd)
                if conn is not None:
                    conn.out += self._out[ev.out_at:ev.out_at + ev.out_len]
                    self._pending.add(conn)
                    self._mark(conn)
        while self._pending:
            self._flush(self._pending.pop())

    def _mark(self, conn: Connection) -> None:
        """Lets the C round serve conn while nothing of its own is queued
        here (bytes, replies, a Later's place) and it is open: its
        requests and replies then stay in order."""
        if conn.fd < len(self._fast):
            self._fast[conn.fd] = (not (conn.pending or conn.out or conn.closing or conn.held)
                                   and self.connections.get(conn.fd) is conn)

    # -- connections ---------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    log.error("cannot accept a client: out of file descriptors (%s)", exc,
                              extra={"event": "error"})
                    return
                raise
            pid, uid, gid = _PEERCRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
            peer = Peer(pid, uid, gid)
            denied = self.authorize(peer)
            if denied is not None:
                self._refuse(sock, peer, Err.DENIED, denied)
            elif len(self.connections) >= self.max_connections:
                self._refuse(sock, peer, Err.LIMIT,
                             f"daemon at its limit of {self.max_connections} connections")
            else:
                self._admit(sock, peer)

    def _admit(self, sock: socket.socket, peer: Peer) -> None:
        sock.setblocking(False)
        conn = Connection(sock, peer)
        self.connections[conn.fd] = conn
        self.epoll.register(conn.fd, _IN)
        self._mark(conn)
        log.info("client connected: pid %d uid %d (%d clients)", peer.pid, peer.uid,
                 len(self.connections),
                 extra={"event": "connect", "pid": peer.pid, "uid": peer.uid,
                        "clients": len(self.connections)})

    def _refuse(self, sock: socket.socket, peer: Peer, code: Err, message: str) -> None:
        log.warning("refused client pid %d uid %d: %s", peer.pid, peer.uid, message,
                    extra={"event": "refuse", "pid": peer.pid, "uid": peer.uid,
                           "reason": code.name.lower()})
        try:
            sock.sendall(msgpack.packb([None, code, message]))
        except OSError:
            pass            # it left already: nothing more to tell it
        sock.close()

    def drop(self, conn: Connection, why: str = "closed") -> None:
        if self.connections.get(conn.fd) is not conn:
            return          # dropped already
        del self.connections[conn.fd]
        self._mark(conn)                # not fast: its fd may be reused
        self._pending.discard(conn)
        self.epoll.unregister(conn.fd)
        conn.sock.close()
        self.on_drop(conn)
        log.info("client disconnected: pid %d uid %d (%s; %d clients)", conn.peer.pid,
                 conn.peer.uid, why, len(self.connections),
                 extra={"event": "disconnect", "pid": conn.peer.pid, "uid": conn.peer.uid,
                        "reason": why, "clients": len(self.connections)})

    # -- input ---------------------------------------------------------------

    def _read(self, conn: Connection) -> None:
        try:
            data = conn.sock.recv(protocol.RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.drop(conn, f"receive failed: {exc.strerror}")
            return
        if not data:
            self.drop(conn)
            return
        if conn.pending:
            conn.pending += data
            self._serve(conn, conn.pending)
        else:
            self._serve(conn, data)

    def _serve(self, conn: Connection, buf: "bytes | bytearray") -> None:
        """Serves the requests in buf; keeps an incomplete last one in
        conn.pending for the next read."""
        pos, end = 0, len(buf)
        while pos < end and not conn.closing:
            pos, stop, arg = self.serve_bytes(conn, buf, pos)
            if conn.out:
                self._pending.add(conn)
            if stop == Stop.MORE:
                break
            if stop == Stop.BAD:
                self.protocol_error(conn, arg)
            elif stop == Stop.OBJECT:
                self._serve_object(conn, buf[pos:pos + arg])
                pos += arg
        if conn.closing:
            conn.pending = bytearray()      # nothing more is read
        elif buf is conn.pending:
            del conn.pending[:pos]
        elif pos < end:
            conn.pending = bytearray(buf[pos:])

    def _serve_object(self, conn: Connection, data: "bytes | bytearray") -> None:
        """Decodes one request the fast path left, and answers it."""
        try:
            req = msgpack.unpackb(data, raw=False)
        except Exception as exc:   # msgpack's errors: bytes that are no request
            self.protocol_error(conn, f"malformed msgpack: {exc.__class__.__name__}: {exc}")
            return
        try:
            self.reply(conn, self.on_request(conn, req))
        except BadRequest as exc:
            self.protocol_error(conn, str(exc))

    def protocol_error(self, conn: Connection, message: str) -> None:
        """Answers bytes that are no request, then closes the connection."""
        log.warning("protocol error from pid %d uid %d: %s", conn.peer.pid, conn.peer.uid,
                    message, extra={"event": "protocol_error", "pid": conn.peer.pid,
                                    "uid": conn.peer.uid})
        self.reply(conn, [None, Err.PROTOCOL, message])
        conn.closing = True

    # -- output --------------------------------------------------------------

    def reply(self, conn: Connection, reply: "list[Any] | Later") -> None:
        """Queues reply; flush() sends it. A Later keeps its place until
        it is given."""
        if isinstance(reply, Later):
            conn.held.append((len(conn.out), reply))
            reply._deliver = lambda r: self._fill(conn, reply, r)
            self._mark(conn)
            return
        conn.out += self._packer.pack(reply)
        self._pending.add(conn)

    def _fill(self, conn: Connection, later: Later, reply: list[Any]) -> None:
        """Puts a Later's reply in its place (on a connection still open)."""
        if self.connections.get(conn.fd) is not conn:
            return
        i = next(i for i, (_, held) in enumerate(conn.held) if held is later)
        data = self._packer.pack(reply)
        at = conn.held.pop(i)[0]
        conn.out[at:at] = data
        conn.held[i:] = [(pos + len(data), held) for pos, held in conn.held[i:]]
        self._pending.add(conn)

    def _flush(self, conn: Connection) -> None:
        ready = conn.out if not conn.held else conn.out[:conn.held[0][0]]
        try:
            sent = conn.sock.send(ready) if ready else 0
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self.drop(conn, f"send failed: {exc.strerror}")
            return
        del conn.out[:sent]
        if conn.held and sent:
            conn.held = [(pos - sent, held) for pos, held in conn.held]
        if conn.closing and not conn.out:
            self.drop(conn, "protocol error")
            return
        want = _OUT if conn.closing else _IN
        if conn.out:
            want |= _OUT
        if want != conn.events:
            conn.events = want
            self.epoll.modify(conn.fd, want)
        self._mark(conn)

    # -- the end -------------------------------------------------------------

    def close(self, *, unlink: bool) -> None:
        """Drops every connection and stops listening; with unlink, also
        removes the socket's path (a clean stop)."""
        for conn in list(self.connections.values()):
            self.drop(conn, "daemon stopping")
        self.epoll.close()
        self.listener.close()
        if unlink:
            self.path.unlink(missing_ok=True)


def _listen(path: Path, mode: int, group: Optional[int]) -> socket.socket:
    """A non-blocking socket listening at path with exactly mode and group."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        path.unlink()   # stale: the caller checked that no live daemon holds the map
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o777 & ~mode)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        if group is not None:
            os.chown(path, -1, group)
        os.chmod(path, mode)
        sock.listen(_LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _new_round(epfd: int) -> tuple[Any, Any, Any, Any]:
    """The C round's state on epoll epfd: the struct shm_round and the
    arrays it points into, which the caller keeps as long as it: its fast
    flags (one per descriptor this process may open), its receive and its
    reply buffer."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    fds = _MAX_FAST_FDS if soft == resource.RLIM_INFINITY else min(soft, _MAX_FAST_FDS)
    r = ffi.new("struct shm_round *")
    fast = ffi.new("uint8_t[]", fds)
    inbuf = ffi.new("uint8_t[]", lib.SHM_ROUND_IN)
    outbuf = ffi.new("uint8_t[]", lib.SHM_ROUND_OUT)
    r.epfd, r.fast_len, r.fast, r.inbuf, r.outbuf = epfd, fds, fast, inbuf, outbuf
    return r, fast, inbuf, outbuf


def _drain(fd: int) -> None:
    try:
        os.read(fd, 512)
    except BlockingIOError:
        pass
