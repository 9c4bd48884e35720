"""A client's request channel: its synchronous writes through shared memory.

The daemon makes one per connection that asks (Op.CHANNEL) and passes its
memfd and doorbell eventfd over the socket (SCM_RIGHTS). A write then
costs no socket round trip: the request's bytes go into the channel, the
reply's bytes come back in it, and each side wakes the other only if that
one sleeps (see cext/chan.c). The socket stays open beside it for every
other request, and tells a waiting client that the daemon went away.
"""
from __future__ import annotations

import array
import errno
import os
import socket
from typing import TYPE_CHECKING, Optional

from .._core import ffi, lib

if TYPE_CHECKING:
    from .._core import CBuffer, struct_shm_chan, struct_shm_spin

REQUEST_BYTES = lib.SHM_CHAN_REQUEST    # a longer request goes on the socket
BLOB_BYTES = REQUEST_BYTES - lib.SHM_BATCH_HEADER   # ... a batch's blob, framed
REPLY_BYTES = lib.SHM_CHAN_REPLY
_FDS = 2                                # what Op.CHANNEL's reply carries: memfd, eventfd
_ANCILLARY = socket.CMSG_SPACE(_FDS * array.array("i").itemsize)


class Channel:
    """This connection's channel. ``outstanding`` is the ticket of a
    request posted and not yet answered (a wait that timed out or was
    interrupted), else None: no new request may be posted before it is
    answered, or the daemon could apply the two out of order."""

    __slots__ = ("_chan", "efd", "sockfd", "ticket", "outstanding", "_reply")

    def __init__(self, memfd: int, efd: int, sockfd: int) -> None:
        """Maps the channel memfd (closed here, whatever happens) and keeps
        the doorbell efd (closed by close()). sockfd is the connection's
        socket, which a wait watches for the daemon's end: the channel is
        dropped whenever the socket is, never after. OSError if memfd is
        not a channel as the daemon makes them."""
        try:
            chan = lib.shm_chan_attach(memfd)
            if chan == ffi.NULL:
                err = ffi.errno
                os.close(efd)
                raise OSError(err, f"cannot map the daemon's channel: {os.strerror(err)}")
        finally:
            os.close(memfd)
        self._chan: Optional[struct_shm_chan] = chan     # None once closed
        self.efd = efd
        self.sockfd = sockfd
        self.ticket = 0
        self.outstanding: Optional[int] = None
        self._reply: Optional[CBuffer] = ffi.buffer(chan.reply, REPLY_BYTES)

    def batch(self, rid: int, blob: bytes, spin: struct_shm_spin, timeout_ms: int) -> int:
        """Posts the batch request rid of blob as the next ticket and waits
        for its reply (shm_chan_batch, spin a struct shm_spin): 0 for its
        acknowledgement, the length of any other reply, or -errno."""
        self.ticket = ticket = (self.ticket + 1) & 0xFFFFFFFF
        self.outstanding = ticket       # set first: a KeyboardInterrupt may end the wait
        chan = self._chan
        assert chan is not None, "the channel is closed"
        got = lib.shm_chan_batch(chan, self.efd, self.sockfd, rid, blob, len(blob),
                                 ticket, spin, timeout_ms)
        if got >= 0:
            self.outstanding = None
        return got

    def batch_wait(self, rid: int, timeout_ms: int) -> int:
        """Waits on for the reply to the outstanding batch request rid, as
        batch() does (shm_chan_batch_wait), without polling."""
        assert self.outstanding is not None
        chan = self._chan
        assert chan is not None, "the channel is closed"
        got = lib.shm_chan_batch_wait(chan, self.sockfd, self.outstanding, rid,
                                      ffi.NULL, timeout_ms)
        if got >= 0:
            self.outstanding = None
        return got

    def wait(self, timeout_ms: int) -> int:
        """Waits on for the reply to the outstanding request, whatever it
        is (shm_chan_wait), without polling: its length, or -errno."""
        assert self.outstanding is not None
        chan = self._chan
        assert chan is not None, "the channel is closed"
        got = lib.shm_chan_wait(chan, self.sockfd, self.outstanding, ffi.NULL, timeout_ms)
        if got >= 0:
            self.outstanding = None
        return got

    def reply(self, length: int) -> bytes:
        """The reply's bytes, once a wait returned their length."""
        reply = self._reply
        assert reply is not None, "the channel is closed"
        return reply[0:length]

    def close(self) -> None:
        """Unmaps the channel and closes the doorbell (in a forked child:
        its own copies, the parent's stay)."""
        if self._chan is not None:
            lib.shm_chan_detach(self._chan)
            os.close(self.efd)
            self._chan = None
            self._reply = None


def receive_fds(sock: socket.socket, size: int) -> tuple[bytes, list[int]]:
    """One receive that also takes descriptors passed with the bytes
    (Op.CHANNEL's reply carries two). b"" at the end of the stream;
    BlockingIOError if nothing is there yet."""
    data, ancillary, flags, _ = sock.recvmsg(size, _ANCILLARY)
    fds = array.array("i")
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            whole = len(payload) - len(payload) % fds.itemsize
            fds.frombytes(payload[:whole])
    if flags & socket.MSG_CTRUNC:       # more than we asked for: none is ours
        for fd in fds:
            os.close(fd)
        raise OSError(errno.EPROTO, "the daemon passed more descriptors than a channel has")
    return data, list(fds)
