"""A client's conversation with its daemon, without the I/O (sans-IO).

ClientConnection owns what a connection's bytes mean: request ids,
framing (msgpack), matching replies to the requests awaiting them,
skipping replies no one awaits any more (to requests that timed out or
were cancelled), and the hello and channel replies. It owns no socket: a
driver sends the bytes it frames and feeds it the bytes that come back.
SharedMap drives one with a blocking socket and the channel's C waits;
shmmap.aio with an asyncio transport.

What to do when an exchange fails is decide(), a pure function of the
ops, what was sent, the failure and the attempt, read from one table.
Replies are matched by id, never by order, so a reply can only ever
complete the request it answers, whatever was abandoned before it.
"""
from __future__ import annotations

import enum
from typing import Any, Iterable, Optional, Sequence

import msgpack

from ..shared import protocol
from ..shared.errors import (DaemonUnavailableError, OutcomeUnknownError, ShmmapError,
                             WriteTimeoutError, reply_error)
from ..shared.protocol import Op, batch_request, is_batch_ack

_OK = protocol.OK


class Requests:
    """Requests framed together (pipelined), with ids first_id,
    first_id + 1, ..., and the replies that came for them. ``data`` is the
    bytes to send on a socket."""

    __slots__ = ("ops", "first_id", "count", "data", "results", "error", "left")

    def __init__(self, ops: Sequence[int], first_id: int, data: bytes) -> None:
        self.ops = ops
        self.first_id = first_id
        self.count = len(ops)
        self.data = data
        self.results: list[Any] = [None] * self.count
        self.error: Optional[ShmmapError] = None    # the first error a reply carried
        self.left = self.count                      # replies still to come

    @property
    def done(self) -> bool:
        """Every reply came."""
        return not self.left

    def outcome(self) -> list[Any]:
        """The results in order, once done; raises the first error a reply
        carried (the others were applied)."""
        assert not self.left
        if self.error is not None:
            raise self.error
        return self.results

    def _deliver(self, rid: int, reply: list[Any]) -> None:
        self.left -= 1
        if reply[1] == _OK:
            self.results[rid - self.first_id] = reply[2]
        elif self.error is None:
            self.error = reply_error(reply[1], reply[2])


class OneBatch(Requests):
    """One batch request (Op.BATCH) of one blob: a store, a delete, a
    batch(). A channel takes the blob as it is (the C core frames it);
    a socket takes ``data``, framed by protocol.batch_request."""

    __slots__ = ("blob",)
    OPS = (Op.BATCH,)

    def __init__(self, rid: int, blob: bytes) -> None:
        super().__init__(self.OPS, rid, batch_request(rid, blob))
        self.blob = blob


# ---- the retry policy ------------------------------------------------------------

class Kind(enum.Enum):
    """What the ops of an exchange are, as far as resending them goes."""

    READ_ONLY = "read-only"     # changes nothing (protocol.READ_ONLY)
    IDEMPOTENT = "idempotent"   # the same effect if applied twice (protocol.IDEMPOTENT)
    UNSAFE = "unsafe"           # applied twice is not applied once: never resent


class Sent(enum.Enum):
    """How much of an exchange's bytes went out before it failed."""

    NOTHING = "nothing"     # not a byte: the daemon cannot have applied any of it
    PART = "part"           # some: the stream is cut mid-request, and unusable
    ALL = "all"             # every byte (a channel's post is all or nothing)


class Failure(enum.Enum):
    """How an exchange failed (a reply with an error is not a failure: it
    is the daemon's answer, raised as it is)."""

    BROKEN = "broken"       # the connection failed, closed, or carried garbage
    TIMEOUT = "timeout"     # no reply within the map's timeout


class Decision(enum.Enum):
    """What the driver does about a failed exchange."""

    RESEND = "resend"               # reconnect and send it once more
    UNAVAILABLE = "unavailable"     # DaemonUnavailableError: nothing of it applied, or harmless
    UNKNOWN = "unknown"             # OutcomeUnknownError: it may or may not be applied
    TIMEOUT = "timeout"             # WriteTimeoutError: it may still be applied later


ATTEMPTS = 2        # an exchange is sent at most this many times

_R, _U, _X, _T = Decision.RESEND, Decision.UNAVAILABLE, Decision.UNKNOWN, Decision.TIMEOUT
# (sent, failure, kind) -> (the decision on the first attempt, on the last).
# A connection that failed before a byte went out is a daemon that died
# since the last request: nothing was applied, so anything goes again. One
# that broke with bytes out may have applied them: only what is harmless
# twice goes again. No reply in time is a stopped or overloaded daemon that
# may still apply it: nothing goes again, and a write's outcome is unknown.
POLICY: dict[tuple[Sent, Failure, Kind], tuple[Decision, Decision]] = {
    # sent          failure          kind                first  last
    (Sent.NOTHING, Failure.BROKEN,  Kind.READ_ONLY):   (_R, _U),
    (Sent.NOTHING, Failure.BROKEN,  Kind.IDEMPOTENT):  (_R, _U),
    (Sent.NOTHING, Failure.BROKEN,  Kind.UNSAFE):      (_R, _U),
    (Sent.NOTHING, Failure.TIMEOUT, Kind.READ_ONLY):   (_U, _U),
    (Sent.NOTHING, Failure.TIMEOUT, Kind.IDEMPOTENT):  (_U, _U),
    (Sent.NOTHING, Failure.TIMEOUT, Kind.UNSAFE):      (_U, _U),
    (Sent.PART,    Failure.BROKEN,  Kind.READ_ONLY):   (_R, _U),
    (Sent.PART,    Failure.BROKEN,  Kind.IDEMPOTENT):  (_R, _U),
    (Sent.PART,    Failure.BROKEN,  Kind.UNSAFE):      (_X, _X),
    (Sent.PART,    Failure.TIMEOUT, Kind.READ_ONLY):   (_U, _U),
    (Sent.PART,    Failure.TIMEOUT, Kind.IDEMPOTENT):  (_T, _T),
    (Sent.PART,    Failure.TIMEOUT, Kind.UNSAFE):      (_T, _T),
    (Sent.ALL,     Failure.BROKEN,  Kind.READ_ONLY):   (_R, _U),
    (Sent.ALL,     Failure.BROKEN,  Kind.IDEMPOTENT):  (_R, _U),
    (Sent.ALL,     Failure.BROKEN,  Kind.UNSAFE):      (_X, _X),
    (Sent.ALL,     Failure.TIMEOUT, Kind.READ_ONLY):   (_U, _U),
    (Sent.ALL,     Failure.TIMEOUT, Kind.IDEMPOTENT):  (_T, _T),
    (Sent.ALL,     Failure.TIMEOUT, Kind.UNSAFE):      (_T, _T),
}


def kind(ops: Iterable[int]) -> Kind:
    """The kind of an exchange: that of its least resendable op."""
    ops = frozenset(ops)
    if ops <= protocol.READ_ONLY:
        return Kind.READ_ONLY
    if ops <= protocol.IDEMPOTENT:
        return Kind.IDEMPOTENT
    return Kind.UNSAFE


def decide(ops: Iterable[int], sent: Sent, failure: Failure, attempt: int) -> Decision:
    """What to do about an exchange of ops that failed so on its attempt-th
    sending (1 .. ATTEMPTS): POLICY's entry. A pure function."""
    if not 1 <= attempt <= ATTEMPTS:
        raise ValueError(f"attempt {attempt} is not one of 1 .. {ATTEMPTS}")
    first, last = POLICY[sent, failure, kind(ops)]
    return last if attempt == ATTEMPTS else first


def stream_survives(sent: Sent, failure: Failure) -> bool:
    """Whether the connection can carry the next request after this
    failure: only a timeout leaves it whole, and not one that cut a request
    in two (late replies are skipped by id)."""
    return failure is Failure.TIMEOUT and sent is not Sent.PART


def failure_of(cause: BaseException) -> Failure:
    """How an exchange that raised cause failed."""
    return Failure.TIMEOUT if isinstance(cause, TimeoutError) else Failure.BROKEN


def resend_or_raise(map_name: str, ops: Sequence[int], sent: Sent, failure: Failure,
                    attempt: int, timeout: float, cause: BaseException) -> None:
    """Returns if decide() resends the failed exchange of ops; else raises
    the error that reports its decision (failure_error)."""
    decision = decide(ops, sent, failure, attempt)
    if decision is not Decision.RESEND:
        error = failure_error(decision, map_name, ops, sent, failure, timeout, cause)
        raise error from (None if decision is Decision.UNAVAILABLE else cause)


def timed_out(timeout: float) -> TimeoutError:
    """The TimeoutError of a wait for the daemon that ran out."""
    return TimeoutError(f"no reply from the daemon within {timeout} s")


def failure_error(decision: Decision, map_name: str, ops: Sequence[int], sent: Sent,
                  failure: Failure, timeout: float, cause: BaseException) -> ShmmapError:
    """The exception that reports decision (any but RESEND) about an
    exchange of ops on map map_name that failed so (cause: why)."""
    what = Op(ops[0]).name
    if decision is Decision.UNAVAILABLE:
        if sent is Sent.NOTHING:
            why = f"the daemon does not take requests: {cause}"
        elif failure is Failure.TIMEOUT:
            why = f"no reply from the daemon within {timeout} s"
        else:
            why = f"the daemon went away: {cause}"
        return DaemonUnavailableError(f"map {map_name!r}: {why}")
    if decision is Decision.UNKNOWN:
        return OutcomeUnknownError(f"map {map_name!r}: the daemon went away during {what}; "
                                   f"it may or may not have been applied")
    if decision is Decision.TIMEOUT:
        return WriteTimeoutError(f"map {map_name!r}: no reply to {what} within {timeout} s; "
                                 f"it may or may not be applied (it is not resent)")
    raise ValueError(f"{decision} is not reported by an exception")


# ---- the connection -----------------------------------------------------------

class ClientConnection:
    """One client's side of the protocol, across the sockets it uses.

    A driver frames requests here (hello(), channel(), requests(),
    batch(), batches()), registers what it sends with expect(), feeds what
    it receives to receive() and calls collect(), which completes the
    awaited Requests. A driver that stops waiting for an exchange (a
    timeout, a cancellation) calls forget(): its replies, if they come,
    are skipped. Each new socket starts with new_stream().
    """

    def __init__(self) -> None:
        """A connection that has sent nothing yet."""
        # Ids increase for the connection's life, across reconnections,
        # so no reply on any stream can be taken for another request's.
        # A plain int: a driver's lean path takes the next one inline
        # (last_id = rid = last_id + 1), which costs less than any call.
        self.last_id = 0
        self._packer = msgpack.Packer(use_bin_type=True)
        self._unpacker = msgpack.Unpacker(raw=False)
        self._fed = 0                   # bytes fed to _unpacker (see buffered)
        self._waiting: dict[int, Requests] = {}
        self.refusal: Optional[ShmmapError] = None  # the daemon's refusal of this stream

    def new_id(self) -> int:
        """A request id never used on this connection."""
        self.last_id = rid = self.last_id + 1
        return rid

    def _new_ids(self, count: int) -> range:
        first = self.last_id + 1
        self.last_id += count
        return range(first, first + count)

    def new_stream(self) -> None:
        """A new socket: nothing buffered, and no reply to come for what
        the old one carried (its exchanges are forgotten)."""
        self._unpacker = msgpack.Unpacker(raw=False)
        self._fed = 0
        self._waiting.clear()
        self.refusal = None

    # -- framing --

    def requests(self, requests: Sequence[Sequence[Any]]) -> Requests:
        """Requests [op, *args] framed with new ids."""
        pack, ids = self._packer.pack, self._new_ids(len(requests))
        data = b"".join([pack([r[0], rid, *r[1:]]) for rid, r in zip(ids, requests)])
        return Requests([r[0] for r in requests], ids[0], data)

    def hello(self) -> Requests:
        """The first request on a stream: this client's protocol version."""
        return self.requests([[Op.HELLO, protocol.VERSION]])

    def channel(self) -> Requests:
        """The request for a channel (its descriptors come with the reply)."""
        return self.requests([[Op.CHANNEL]])

    def batch(self, rid: int, blob: bytes) -> OneBatch:
        """The batch request rid (from new_id) of blob."""
        return OneBatch(rid, blob)

    def batches(self, blobs: Sequence[bytes]) -> Requests:
        """One batch request per blob, pipelined."""
        ids = self._new_ids(len(blobs))
        return Requests([Op.BATCH] * len(blobs), ids[0],
                        b"".join([batch_request(rid, b) for rid, b in zip(ids, blobs)]))

    # -- replies --

    def expect(self, ex: Requests) -> None:
        """ex is being sent (or sent once more) on the current stream: its
        replies, from now on, complete it."""
        ex.results, ex.error, ex.left = [None] * ex.count, None, ex.count
        waiting = self._waiting
        for rid in range(ex.first_id, ex.first_id + ex.count):
            waiting[rid] = ex

    def forget(self, ex: Requests) -> None:
        """No one awaits ex any more: its replies still to come are skipped."""
        for rid in range(ex.first_id, ex.first_id + ex.count):
            self._waiting.pop(rid, None)

    @property
    def buffered(self) -> bool:
        """Whether bytes fed have not been consumed yet (part of a reply)."""
        return self._fed != self._unpacker.tell()

    def receive(self, data: bytes) -> None:
        """Bytes from the daemon, as they came."""
        self._unpacker.feed(data)
        self._fed += len(data)

    def acknowledged(self, ex: OneBatch, data: bytes) -> bool:
        """Whether data, just received with nothing buffered, is exactly
        the acknowledgement of ex (then ex is done, nothing decoded: the
        lean path of a socket's store). Otherwise data is fed to receive()."""
        if not self.buffered and is_batch_ack(ex.first_id, data):
            self._waiting.pop(ex.first_id, None)
            ex.left = 0
            return True
        self.receive(data)
        return False

    def collect(self) -> list[Requests]:
        """Consumes the whole replies received, completing the requests
        they answer; returns the exchanges they completed. A reply to a
        request no one awaits is skipped. ValueError if the bytes are not
        replies (the stream is then unusable). The daemon's refusal of the
        connection (an error reply to no request) fails every exchange
        awaited, and stays in ``refusal``."""
        done = []
        waiting = self._waiting
        for reply in self._unpacker:
            if not isinstance(reply, list) or len(reply) < 3:
                raise ValueError(f"a garbled reply from the daemon: {reply!r:.100}")
            rid = reply[0]
            if rid is None and reply[1] != _OK:
                self.refusal = reply_error(reply[1], reply[2])
                for refused in set(waiting.values()):
                    refused.error, refused.left = self.refusal, 0
                    done.append(refused)
                waiting.clear()
                continue
            if type(rid) is not int:
                raise ValueError(f"a garbled reply from the daemon: {reply!r:.100}")
            ex = waiting.pop(rid, None)
            if ex is None:
                continue            # the late reply to a request that timed out
            ex._deliver(rid, reply)
            if not ex.left:
                done.append(ex)
        return done

    @staticmethod
    def hello_info(ex: Requests) -> dict[str, Any]:
        """The daemon's info from the reply to hello(); ValueError if it is
        not what a daemon of this protocol sends (the daemon's error reply
        raises as it is)."""
        info = ex.outcome()[0]
        if not isinstance(info, dict) or not isinstance(info.get("slot"), int):
            raise ValueError(f"the daemon answered hello with {info!r:.100}")
        return info

    @staticmethod
    def channel_granted(ex: Requests, fds: Sequence[int]) -> bool:
        """Whether the reply to channel(), which came with fds, grants a
        channel (a daemon that answers with an error gives none: writes
        then all go on the socket); ValueError if the descriptors are not
        the channel's two."""
        if ex.error is not None:
            return False
        if len(fds) != 2:
            raise ValueError(f"CHANNEL's reply carried {len(fds)} descriptors, not 2")
        return True
