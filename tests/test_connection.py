"""The sans-IO client connection (shmmap.client.connection), without processes:
its retry table, every combination of op kind, bytes sent, failure and
attempt, against the rule the README states; and its framing and reply
matching, fed bytes by hand. The same code under real daemons is tested
by test_client.py, test_misuse_client.py, test_guarantees.py and
test_aio.py."""
from __future__ import annotations

import itertools
import struct

import msgpack
import pytest

import shmmap
from shmmap.client.connection import (ATTEMPTS, POLICY, ClientConnection, Decision, Failure, Kind,
                                      OneBatch, Sent, decide, failure_error, failure_of, kind,
                                      resend_or_raise, stream_survives)
from shmmap.shared import protocol
from shmmap.shared.protocol import Err, Op

# Exchanges of each kind: single ops and pipelines mixing them.
EXCHANGES = {
    Kind.READ_ONLY: [[Op.HELLO], [Op.STATS], [Op.TIMINGS], [Op.CHANNEL], [Op.STATS, Op.TIMINGS]],
    Kind.IDEMPOTENT: [[Op.BATCH], [Op.CLEAR], [Op.PROMOTE], [Op.BATCH] * 3, [Op.STATS, Op.BATCH]],
    Kind.UNSAFE: [[Op.LOAD_OR_STORE], [Op.LOAD_AND_DELETE], [Op.SWAP], [Op.COMPARE_AND_SWAP],
                  [Op.COMPARE_AND_DELETE], [Op.TRACE], [Op.BATCH, Op.SWAP], [Op.STATS, Op.SWAP]],
}


def expected(k: Kind, sent: Sent, failure: Failure, attempt: int) -> Decision:
    """The policy in words, written apart from the table it checks."""
    if failure is Failure.TIMEOUT:
        # Not answered in time: it may still be applied; never resent.
        if sent is Sent.NOTHING or k is Kind.READ_ONLY:
            return Decision.UNAVAILABLE
        return Decision.TIMEOUT
    if sent is not Sent.NOTHING and k is Kind.UNSAFE:
        return Decision.UNKNOWN         # may be applied: applying it twice is not once
    return Decision.RESEND if attempt < ATTEMPTS else Decision.UNAVAILABLE


@pytest.mark.parametrize("k", list(Kind))
def test_every_combination_decides_as_the_policy_says(k: Kind) -> None:
    for ops in EXCHANGES[k]:
        assert kind(ops) is k, ops
        for sent, failure, attempt in itertools.product(Sent, Failure, range(1, ATTEMPTS + 1)):
            got = decide(ops, sent, failure, attempt)
            assert got is expected(k, sent, failure, attempt), (ops, sent, failure, attempt)


def test_the_table_covers_every_case_and_nothing_else() -> None:
    assert set(POLICY) == set(itertools.product(Sent, Failure, Kind))


def test_no_unsafe_op_that_may_have_left_is_ever_resent() -> None:
    for ops, sent, failure, attempt in itertools.product(
            EXCHANGES[Kind.UNSAFE], [Sent.PART, Sent.ALL], Failure, range(1, ATTEMPTS + 1)):
        assert decide(ops, sent, failure, attempt) is not Decision.RESEND


def test_the_last_attempt_never_resends() -> None:
    for ops, sent, failure in itertools.product(
            itertools.chain(*EXCHANGES.values()), Sent, Failure):
        assert decide(ops, sent, failure, ATTEMPTS) is not Decision.RESEND


def test_every_op_has_the_kind_its_protocol_sets_give_it() -> None:
    for op in Op:
        want = (Kind.READ_ONLY if op in protocol.READ_ONLY else
                Kind.IDEMPOTENT if op in protocol.IDEMPOTENT else Kind.UNSAFE)
        assert kind([op]) is want, op


@pytest.mark.parametrize("attempt", [0, ATTEMPTS + 1])
def test_an_attempt_out_of_range_is_refused(attempt: int) -> None:
    with pytest.raises(ValueError, match="attempt"):
        decide([Op.BATCH], Sent.ALL, Failure.BROKEN, attempt)


def test_only_a_whole_stream_survives_a_failure() -> None:
    for sent, failure in itertools.product(Sent, Failure):
        assert stream_survives(sent, failure) is (failure is Failure.TIMEOUT
                                                  and sent is not Sent.PART)


@pytest.mark.parametrize("decision, error", [
    (Decision.UNAVAILABLE, shmmap.DaemonUnavailableError),
    (Decision.UNKNOWN, shmmap.OutcomeUnknownError),
    (Decision.TIMEOUT, shmmap.WriteTimeoutError),
])
def test_each_decision_raises_its_error(decision: Decision, error: type) -> None:
    exc = failure_error(decision, "m", [Op.SWAP], Sent.ALL, Failure.BROKEN, 1.0, OSError("x"))
    assert type(exc) is error and "'m'" in str(exc)
    if decision is Decision.UNKNOWN:
        assert not isinstance(exc, shmmap.WriteTimeoutError)
    with pytest.raises(ValueError):
        failure_error(Decision.RESEND, "m", [Op.SWAP], Sent.ALL, Failure.BROKEN, 1.0, OSError())


def test_a_driver_resends_or_raises_as_decided() -> None:
    """resend_or_raise, which both drivers call: it returns exactly when
    the table resends, and otherwise raises the decision's error, chained
    to the cause unless nothing of it can have been applied."""
    errors = {Decision.UNAVAILABLE: shmmap.DaemonUnavailableError,
              Decision.UNKNOWN: shmmap.OutcomeUnknownError,
              Decision.TIMEOUT: shmmap.WriteTimeoutError}
    for ops, sent, cause, attempt in itertools.product(
            itertools.chain(*EXCHANGES.values()), Sent,
            [TimeoutError("slow"), ConnectionResetError("gone"), ValueError("garbled")],
            range(1, ATTEMPTS + 1)):
        failure = failure_of(cause)
        assert failure is (Failure.TIMEOUT if isinstance(cause, TimeoutError) else Failure.BROKEN)
        decision = decide(ops, sent, failure, attempt)
        if decision is Decision.RESEND:
            resend_or_raise("m", ops, sent, failure, attempt, 1.0, cause)
            continue
        with pytest.raises(errors[decision]) as raised:
            resend_or_raise("m", ops, sent, failure, attempt, 1.0, cause)
        assert type(raised.value) is errors[decision]
        assert raised.value.__cause__ is (None if decision is Decision.UNAVAILABLE else cause)


# ---- framing and matching --------------------------------------------------------

def _reply(rid: object, result: object = None, code: int = protocol.OK) -> bytes:
    return msgpack.packb([rid, code, result, 7] if code == protocol.OK else [rid, code, result])


def _ack(rid: int) -> bytes:
    """The daemon's acknowledgement of a batch request, as it frames it."""
    return struct.pack(">BBQBB", 0x94, 0xcf, rid, protocol.OK, 0xc0) + msgpack.packb(12)


def test_requests_are_framed_with_increasing_ids() -> None:
    conn = ClientConnection()
    a = conn.requests([[Op.STATS], [Op.SWAP, b"k", b"v"]])
    b = conn.hello()
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(a.data + b.data)
    assert list(unpacker) == [[Op.STATS, 1], [Op.SWAP, 2, b"k", b"v"], [Op.HELLO, 3, protocol.VERSION]]
    assert (a.first_id, a.count, b.first_id) == (1, 2, 3)


def test_batches_are_framed_as_the_core_frames_one() -> None:
    conn = ClientConnection()
    ex = conn.batches([b"\x01ab", b"\x02c"])
    assert ex.data == protocol.batch_request(1, b"\x01ab") + protocol.batch_request(2, b"\x02c")
    one = conn.batch(conn.new_id(), b"\x01x")
    assert isinstance(one, OneBatch) and one.data == protocol.batch_request(3, b"\x01x")
    assert one.blob == b"\x01x" and one.ops == (Op.BATCH,)


def test_replies_complete_their_own_requests_in_any_order_and_in_any_cut() -> None:
    conn = ClientConnection()
    ex = conn.requests([[Op.STATS], [Op.STATS], [Op.STATS]])
    conn.expect(ex)
    data = _reply(3, "c") + _reply(1, "a") + _reply(2, "b")
    for i in range(len(data)):                  # one byte at a time
        conn.receive(data[i:i + 1])
        done = conn.collect()
        assert done == ([ex] if i == len(data) - 1 else [])
    assert ex.outcome() == ["a", "b", "c"]


def test_the_first_error_is_raised_after_every_reply_came() -> None:
    conn = ClientConnection()
    ex = conn.requests([[Op.SWAP], [Op.SWAP], [Op.SWAP]])
    conn.expect(ex)
    conn.receive(_reply(1, "ok") + _reply(2, "bad key", Err.INVALID) + _reply(3, "full", Err.FULL))
    assert conn.collect() == [ex]
    with pytest.raises(shmmap.InvalidRequestError, match="bad key"):
        ex.outcome()


def test_a_forgotten_requests_late_reply_goes_to_no_one() -> None:
    """A request that timed out (or whose await was cancelled) is
    forgotten: when its reply comes after all, the next request does not
    take it for its own."""
    conn = ClientConnection()
    first = conn.requests([[Op.SWAP, b"k", b"1"]])
    conn.expect(first)
    conn.forget(first)
    second = conn.requests([[Op.SWAP, b"k", b"2"]])
    conn.expect(second)
    conn.receive(_reply(first.first_id, "for the first"))
    assert conn.collect() == [] and not first.done and not second.done
    conn.receive(_reply(second.first_id, "for the second"))
    assert conn.collect() == [second] and second.outcome() == ["for the second"]


def test_a_new_stream_drops_what_the_old_one_left_half_received() -> None:
    conn = ClientConnection()
    ex = conn.requests([[Op.STATS]])
    conn.expect(ex)
    conn.receive(_reply(ex.first_id, "x")[:3])
    assert conn.buffered
    conn.new_stream()
    assert not conn.buffered
    conn.expect(ex)                             # sent once more, on the new stream
    conn.receive(_reply(ex.first_id, "again"))
    assert conn.collect() == [ex] and ex.outcome() == ["again"]


def test_an_acknowledgement_is_recognised_without_decoding() -> None:
    conn = ClientConnection()
    ex = conn.batch(conn.new_id(), b"\x01ab")
    conn.expect(ex)
    assert conn.acknowledged(ex, _ack(ex.first_id)) and ex.done and not conn.buffered
    other = conn.batch(conn.new_id(), b"\x01ab")
    conn.expect(other)
    assert not conn.acknowledged(other, _ack(ex.first_id))     # not its id: fed
    assert conn.collect() == [] and not other.done
    assert not conn.acknowledged(other, _reply(other.first_id, "no", Err.LIMIT))
    assert conn.collect() == [other]
    with pytest.raises(shmmap.LimitError):
        other.outcome()


def test_a_refusal_fails_every_awaited_exchange() -> None:
    conn = ClientConnection()
    hello, stats = conn.hello(), conn.requests([[Op.STATS]])
    conn.expect(hello)
    conn.expect(stats)
    conn.receive(_reply(None, "uid 1000 may not use this map", Err.DENIED))
    assert set(conn.collect()) == {hello, stats}
    assert isinstance(conn.refusal, shmmap.AccessDeniedError)
    with pytest.raises(shmmap.AccessDeniedError):
        conn.hello_info(hello)


@pytest.mark.parametrize("garbage", [msgpack.packb(3), msgpack.packb([1, 0]),
                                     msgpack.packb(["1", 0, None])])
def test_bytes_that_are_not_replies_are_an_error(garbage: bytes) -> None:
    conn = ClientConnection()
    conn.expect(conn.requests([[Op.STATS]]))
    conn.receive(garbage)
    with pytest.raises(ValueError, match="garbled"):
        conn.collect()


def test_hello_and_channel_replies_are_checked() -> None:
    conn = ClientConnection()
    hello = conn.hello()
    conn.expect(hello)
    conn.receive(_reply(hello.first_id, {"slot": 3, "channel": True}))
    conn.collect()
    assert conn.hello_info(hello)["slot"] == 3
    bad = conn.hello()
    conn.expect(bad)
    conn.receive(_reply(bad.first_id, "hi"))
    conn.collect()
    with pytest.raises(ValueError, match="hello"):
        conn.hello_info(bad)
    chan = conn.channel()
    conn.expect(chan)
    conn.receive(_reply(chan.first_id, {"bytes": 1}))
    conn.collect()
    assert conn.channel_granted(chan, [5, 6])
    with pytest.raises(ValueError, match="descriptors"):
        conn.channel_granted(chan, [5])
    refused = conn.channel()
    conn.expect(refused)
    conn.receive(_reply(refused.first_id, "no channels here", Err.UNKNOWN_OP))
    conn.collect()
    assert not conn.channel_granted(refused, [])
