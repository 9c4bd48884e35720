"""The daemon's transport: its listening Unix socket, who may connect
(SO_PEERCRED), the connections, their msgpack framing, and epoll.

It knows nothing of the map. A round of the loop (``poll``) is served
first by ``serve_round``, the C hot path, which waits for events and
receives, serves and queues the replies of connections that have nothing
of their own queued here, then serves the requests posted on channels
(see shmmap.client.channel); what it leaves, Python handles: bytes go to
``serve_bytes`` (the same C path, on the bytes given), each request it
leaves is decoded here and goes to ``on_request``, whose reply comes back
through ``reply()`` (or into the channel it came on). The daemon's loop
commits a round's writes before ``flush()`` publishes or sends a reply:
that is where a round ends."""
from __future__ import annotations

import array
import enum
import errno
import heapq
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

from .._core import ffi, lib
from ..shared import protocol
from ..shared.errors import DaemonRunningError
from ..shared.protocol import Err, socket_in_use

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
        self.chan = -1                        # its channel's entry, once it asked for one
        # Descriptors to pass with the next bytes sent (SCM_RIGHTS): a new
        # channel's memfd, closed here once passed, and its doorbell.
        self.passing: Optional[tuple[int, int]] = None


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
    """Why serve_bytes stopped (SHM_STOP_* of cext/core.h)."""

    END = lib.SHM_STOP_END        # every byte served
    MORE = lib.SHM_STOP_MORE      # an incomplete request: wait for more bytes
    OBJECT = lib.SHM_STOP_OBJECT  # a request of arg bytes for on_request
    BAD = lib.SHM_STOP_BAD        # bytes that are no request; arg says why


# serve_round(round, timeout_ms) -> events, or -errno: one round of the
# daemon's loop in C (shm_round_serve on the transport's struct shm_round).
ServeRound = Callable[[Any, int], int]
# serve_loop(round, loop) -> the last round's events, or -errno: rounds in C,
# each committed and answered, until one needs Python (shm_serve_loop).
ServeLoop = Callable[[Any, Any], int]
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
    ends. Without ``fast``, the C round serves no connection: every event
    comes to Python, and serve_bytes decides what is served in C."""

    def __init__(self, path: Path, *, mode: int, group: Optional[int], max_connections: int,
                 authorize: Callable[[Peer], Optional[str]],
                 serve_round: ServeRound,
                 serve_loop: ServeLoop,
                 serve_bytes: ServeBytes,
                 on_request: Callable[[Connection, Any], list[Any] | Later],
                 on_drop: Callable[[Connection], None], fast: bool = True) -> None:
        self.path = path
        self.max_connections = max_connections
        self.authorize = authorize
        self.serve_round = serve_round
        self.serve_loop = serve_loop
        self.serve_bytes = serve_bytes
        self.on_request = on_request
        self.on_drop = on_drop
        self.fast = fast
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
        # Channels: one entry per connection at most, the lowest free first
        # (the round scans entries up to the highest in use).
        self._ends = ffi.new("struct shm_chan_end[]", max_connections)
        self._chan_lists = (ffi.new("uint32_t[]", max_connections),
                            ffi.new("uint32_t[]", max_connections))
        self._round.chans = self._ends
        self._round.chan_left, self._round.chan_answered = self._chan_lists
        self._free_ends = list(range(max_connections))
        self._chan_conns: dict[int, Connection] = {}

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
        self._handle_left()
        return events > 0

    def serve(self, loop: Any, deadline: float, spin: protocol.Spin,
              room: tuple[int, int, int]) -> None:
        """Serves rounds in C (serve_loop on loop, a struct shm_loop: each
        round committed and answered there) until deadline (time.
        monotonic()) or a round that needs Python, which it then handles
        like poll(): the caller commits and calls flush() after it, as
        after poll(). spin carries the polling budget from call to call;
        room is (live keys from which, dirty entries, arena bytes) at or
        below which the loop returns for a build."""
        r = self._round
        loop.deadline_ns = int(deadline * 1e9)
        loop.spin = spin.c
        loop.min_live, loop.dirty_room, loop.arena_room = room
        events = self.serve_loop(r, loop)
        if events < 0:
            raise OSError(-events, f"epoll_wait: {os.strerror(-events)}")
        if loop.stop == lib.SHM_LOOP_LEFT:
            self._handle_left()
        elif loop.stop == lib.SHM_LOOP_UNSENT:
            self._queue_unsent()

    def _handle_left(self) -> None:
        """What the last C round left to Python: its events, then the
        requests it took from channels."""
        r = self._round
        for i in range(r.left_count):
            self._handle(r.left[i])
        for i in range(r.chan_left_count):
            self._serve_channel(r.chan_left[i])

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
        if (r.reply_count or r.chan_answered_count) and lib.shm_round_send(r):
            self._queue_unsent()
        while self._pending:
            self._flush(self._pending.pop())

    def _queue_unsent(self) -> None:
        """Queues here the replies shm_round_send could not send whole."""
        r = self._round
        for i in range(r.left_count):
            ev = r.left[i]
            conn = self.connections.get(ev.fd)
            if conn is not None:
                conn.out += self._out[ev.out_at:ev.out_at + ev.out_len]
                self._pending.add(conn)
                self._mark(conn)
        r.left_count = 0

    def _mark(self, conn: Connection) -> None:
        """Lets the C round serve conn while nothing of its own is queued
        here (bytes, replies, a Later's place) and it is open: its
        requests and replies then stay in order."""
        if conn.fd < len(self._fast):
            self._fast[conn.fd] = (self.fast and not (conn.pending or conn.out or conn.closing or conn.held)
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
        self._close_channel(conn)
        self._pending.discard(conn)
        self.epoll.unregister(conn.fd)
        conn.sock.close()
        self.on_drop(conn)
        log.info("client disconnected: pid %d uid %d (%s; %d clients)", conn.peer.pid,
                 conn.peer.uid, why, len(self.connections),
                 extra={"event": "disconnect", "pid": conn.peer.pid, "uid": conn.peer.uid,
                        "reason": why, "clients": len(self.connections)})

    # -- channels ------------------------------------------------------------

    @property
    def channels(self) -> int:
        """How many connections have a channel."""
        return len(self._chan_conns)

    def open_channel(self, conn: Connection) -> int:
        """Makes conn's channel, whose descriptors go with the next bytes
        sent to it (the reply to its Op.CHANNEL); its size in bytes.
        OSError if the system has no memory or descriptors for one;
        ValueError if conn has one already."""
        if conn.chan >= 0:
            raise ValueError("this connection has a channel already")
        i = heapq.heappop(self._free_ends)
        e = self._ends + i
        memfd = ffi.new("int32_t *")
        rc = lib.shm_chan_open(e, memfd)
        if rc != 0:
            heapq.heappush(self._free_ends, i)
            raise OSError(-rc, f"cannot make a channel: {os.strerror(-rc)}")
        try:
            self.epoll.register(e.efd, _IN | select.EPOLLET)   # never read (serve.c)
        except OSError:
            lib.shm_chan_close(e)
            os.close(memfd[0])
            heapq.heappush(self._free_ends, i)
            raise
        if e.efd < len(self._fast):
            self._fast[e.efd] = lib.SHM_FAST_DOORBELL
        e.conn_fd = conn.fd
        conn.chan, conn.passing = i, (memfd[0], e.efd)
        self._chan_conns[i] = conn
        self._round.chan_len = max(self._round.chan_len, i + 1)
        return int(lib.SHM_CHAN_REQUEST)

    def _close_channel(self, conn: Connection) -> None:
        if conn.passing is not None:
            os.close(conn.passing[0])
            conn.passing = None
        i, conn.chan = conn.chan, -1
        if i < 0:
            return
        e = self._ends + i
        self.epoll.unregister(e.efd)
        if e.efd < len(self._fast):
            self._fast[e.efd] = 0
        lib.shm_chan_close(e)           # the client's mapping stays until it lets go
        del self._chan_conns[i]
        heapq.heappush(self._free_ends, i)
        r = self._round
        while r.chan_len and self._ends[r.chan_len - 1].chan == ffi.NULL:
            r.chan_len -= 1

    def _serve_channel(self, i: int) -> None:
        """A request the C round took from channel i and left: decoded and
        answered here, its reply published with the round's. Anything but
        one batch request is a protocol error (the connection is closed)."""
        e, conn = self._ends[i], self._chan_conns.get(i)
        if conn is None or e.state != lib.SHM_CHAN_LEFT:
            return                      # closed since, or a new channel's entry
        reply: list[Any] | Later
        try:
            if e.in_len > lib.SHM_CHAN_REQUEST:
                raise BadRequest(f"a channel request of {e.in_len} bytes: at most "
                                 f"{lib.SHM_CHAN_REQUEST} fit")
            req = _decode(self._in[e.in_at:e.in_at + e.in_len])
            if not (isinstance(req, list) and len(req) >= 2 and req[0] == protocol.Op.BATCH):
                raise BadRequest("a channel carries one batch request")
            reply = self.on_request(conn, req)
        except BadRequest as exc:
            reply = [None, Err.PROTOCOL, str(exc)]
        if isinstance(reply, Later):    # no batch is answered later
            raise AssertionError("a batch request answered later")
        data = _fit(self._packer.pack(reply), reply)
        if lib.shm_chan_answer(self._round, i, data, len(data)) != 0:
            raise AssertionError("a fitted reply did not fit")
        if reply[1] == Err.PROTOCOL:
            self.protocol_error(conn, reply[2])

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

    def _serve(self, conn: Connection, buf: bytes | bytearray) -> None:
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

    def _serve_object(self, conn: Connection, data: bytes | bytearray) -> None:
        """Decodes one request the fast path left, and answers it."""
        try:
            self.reply(conn, self.on_request(conn, _decode(data)))
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

    def reply(self, conn: Connection, reply: list[Any] | Later) -> None:
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
            sent = self._send(conn, ready) if ready else 0
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

    @staticmethod
    def _send(conn: Connection, data: bytes | bytearray) -> int:
        """Sends what the socket takes of data, passing conn's descriptors
        with its first byte if any wait."""
        if conn.passing is None:
            return conn.sock.send(data)
        fds = array.array("i", conn.passing)
        sent = conn.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        os.close(conn.passing[0])       # the client has its own now
        conn.passing = None
        return sent

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
    if socket_in_use(path):
        # Another map's daemon (--socket), or an older shmmap's serving a
        # map of this name: its socket is not this daemon's to remove.
        raise DaemonRunningError(f"{path}: another daemon listens on this socket "
                                 "(see serve --socket)")
    if path.exists() or path.is_symlink():
        path.unlink()   # stale: no daemon listens, and the caller holds the map's lock
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


def leave_requests(conn: Connection, buf: bytes | bytearray, pos: int) -> tuple[int, int, Any]:
    """A ServeBytes that serves nothing: it leaves the request at pos to
    on_request whole (Stop.OBJECT, its length), or waits for the rest of
    it (Stop.MORE)."""
    unpacker = msgpack.Unpacker(max_buffer_size=protocol.MAX_REQUEST)
    try:
        unpacker.feed(memoryview(buf)[pos:])
    except msgpack.BufferFull:
        return pos, Stop.BAD, f"a request over {protocol.MAX_REQUEST} bytes"
    try:
        unpacker.skip()
    except msgpack.OutOfData:
        return pos, Stop.MORE, None
    except Exception as exc:   # msgpack's errors: bytes that are no request
        return pos, Stop.BAD, f"malformed msgpack: {exc.__class__.__name__}: {exc}"
    return pos, Stop.OBJECT, unpacker.tell()


def _decode(data: bytes | bytearray) -> Any:
    """One msgpack object; BadRequest if the bytes are none."""
    try:
        return msgpack.unpackb(data, raw=False)
    except Exception as exc:   # msgpack's errors: bytes that are no request
        raise BadRequest(f"malformed msgpack: {exc.__class__.__name__}: {exc}") from None


def _fit(data: bytes, reply: list[Any]) -> bytes:
    """A channel's reply in its SHM_CHAN_REPLY bytes: an error's message
    is cut short if it is too long."""
    if len(data) <= lib.SHM_CHAN_REPLY:
        return data
    message = str(reply[2])[:lib.SHM_CHAN_REPLY // 4 - 64] + " ..."
    return msgpack.packb([*reply[:2], message])


def _drain(fd: int) -> None:
    try:
        os.read(fd, 512)
    except BlockingIOError:
        pass
