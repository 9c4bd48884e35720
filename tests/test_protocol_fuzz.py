"""Protocol fuzzing: over 100,000 random and mutated messages against a real
daemon. It must answer every request that is well-formed msgpack with a
reply, close a connection on bytes that are not a request, stay up, and
afterwards hold exactly the effect of the writes it reported as applied.

Half the batch requests come framed as a client's lean path frames them,
and the bytes of a round reach the daemon cut at random places: the
daemon's C path (cext/serve.c) serves what it can and leaves the rest to
Python, and the outcome must be the same.

Seeded, so a failure reproduces: SHMMAP_FUZZ_SEED overrides the seed.
"""
from __future__ import annotations

import os
import random
import socket
from typing import Any

import msgpack

import shmmap
from shmmap.shared.codec import decode_key, decode_value, encode_key, encode_value
from shmmap.shared.protocol import OK, Err, Op
from shmmap.shared.protocol import DELETE, STORE, batch_request

SEED = int(os.environ.get("SHMMAP_FUZZ_SEED", "20261124"))
ROUNDS = 95          # rounds of pipelined requests on one connection
PER_ROUND = 1000     # requests per round
GARBAGE = 5500       # connections that send raw garbage (each is closed)
KEYS = [0, 1, -1, 127, 128, 255, 256, 65535, 2**32, -2**40, 2**64 - 1, "a", "key", "é",
        b"", b"\x00", (), (1, "a"), ((1, 2), b"x"), "k" * 40]


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.randrange(-2**63, 2**64)
    if kind == 3:
        return rng.random() * 1e6
    if kind == 4:
        return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(8)))
    if kind == 5:
        return rng.randbytes(rng.randrange(8))
    if kind == 6:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 7:
        return {str(rng.randrange(5)): _value(rng, depth + 1) for _ in range(rng.randrange(4))}
    return rng.randrange(100)


def _mutate(rng: random.Random, data: bytes) -> bytes:
    """Flips, inserts, deletes or truncates a few bytes."""
    b = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(4)
        if op == 0 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 1:
            b.insert(rng.randrange(len(b) + 1), rng.randrange(256))
        elif op == 2 and b:
            del b[rng.randrange(len(b))]
        elif b:
            del b[rng.randrange(len(b)):]
    return bytes(b)


def _blob(rng: random.Random) -> bytes:
    items = []
    for _ in range(rng.randrange(1, 5)):
        key = encode_key(rng.choice(KEYS))
        if rng.random() < 0.7:
            items.append(STORE + key + encode_value(_value(rng)))
        else:
            items.append(DELETE + key)
    return b"".join(items)


def _request(rng: random.Random, rid: int) -> list[Any]:
    """A request: valid, or with a mutated argument, a wrong type or arity,
    or an unknown op."""
    key = encode_key(rng.choice(KEYS))
    value = encode_value(_value(rng))
    kind = rng.randrange(12)
    if kind < 4:
        req = [Op.BATCH, rid, _blob(rng)]
    elif kind == 4:
        req = [Op.LOAD_OR_STORE, rid, key, value]
    elif kind == 5:
        req = [Op.LOAD_AND_DELETE, rid, key]
    elif kind == 6:
        req = [Op.SWAP, rid, key, value]
    elif kind == 7:
        req = [Op.COMPARE_AND_SWAP, rid, key, value, encode_value(_value(rng))]
    elif kind == 8:
        req = [Op.COMPARE_AND_DELETE, rid, key, value]
    elif kind == 9:
        req = [rng.choice([99, -1, 2**40]), rid, key]
    elif kind == 10:
        req = [rng.choice(list(Op)), rid] + [rng.choice([key, "str", 5, None, [1]])
                                             for _ in range(rng.randrange(4))]
    else:
        req = [Op.BATCH, rid, _blob(rng)]
    if rng.random() < 0.4 and len(req) > 2:
        i = rng.randrange(2, len(req))
        if isinstance(req[i], bytes):
            req[i] = _mutate(rng, req[i])
    return req


def _apply_to_model(model: dict[Any, Any], req: list[Any], result: Any) -> None:
    op = req[0]
    if op == Op.BATCH:
        for item_op, key, value in _decode_items(req[2]):
            if item_op == 0:
                model[key] = value
            else:
                model.pop(key, None)
    elif op == Op.LOAD_OR_STORE and not result[0]:
        model[decode_key(req[2])] = decode_value(req[3])
    elif op == Op.LOAD_AND_DELETE and result[0]:
        del model[decode_key(req[2])]
    elif op == Op.SWAP:
        model[decode_key(req[2])] = decode_value(req[3])
    elif op == Op.COMPARE_AND_SWAP and result:
        model[decode_key(req[2])] = decode_value(req[4])
    elif op == Op.COMPARE_AND_DELETE and result:
        del model[decode_key(req[2])]
    elif op == Op.CLEAR:
        model.clear()


def _decode_items(blob: bytes) -> list[tuple[int, Any, Any]]:
    """The (op, key, value) items of a blob the daemon accepted, decoded as
    a client decodes keys and values."""
    up = msgpack.Unpacker(raw=False, use_list=False, strict_map_key=False)
    up.feed(blob)
    out = []
    while True:
        try:
            op = up.unpack()
        except msgpack.OutOfData:
            return out
        start = up.tell()
        up.skip()
        key_bytes = blob[start:up.tell()]
        value = None
        if op == 0:
            vstart = up.tell()
            up.skip()
            value = decode_value(blob[vstart:up.tell()])
        out.append((op, decode_key(key_bytes), value))


def _frame(rng: random.Random, req: list[Any]) -> bytes:
    """A request's bytes: as msgpack packs it, or as a client's lean path
    frames a batch (a uint64 id, a bin32 blob): the daemon's C path serves
    both."""
    if req[0] == Op.BATCH and len(req) == 3 and isinstance(req[2], bytes) and rng.random() < 0.5:
        return batch_request(req[1], req[2])
    return msgpack.packb(req, use_bin_type=True)


def _send_in_pieces(rng: random.Random, sock: socket.socket, data: bytes) -> None:
    """Sends data whole, or cut at random places into up to 50 sends, so
    that requests reach the daemon cut anywhere."""
    cuts = sorted(rng.sample(range(1, len(data)), min(rng.choice([0, 5, 50]), len(data) - 1)))
    for start, end in zip([0, *cuts], [*cuts, len(data)]):
        sock.sendall(data[start:end])


def connect_raw(path: str) -> socket.socket:
    """A bare connection to a daemon's socket (no hello)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    return s


def read_replies(sock: socket.socket, count: int) -> list[Any]:
    """The next count replies on sock."""
    up = msgpack.Unpacker(raw=False)
    out: list[Any] = []
    while len(out) < count:
        data = sock.recv(1 << 16)
        assert data, f"daemon closed the connection after {len(out)} of {count} replies: {out[-1:]}"
        up.feed(data)
        out.extend(up)
    return out


def _garbage(rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 64))
    if kind == 1:                                  # huge declared lengths
        return rng.choice([b"\xc6", b"\xdb", b"\xdd", b"\xdf"]) + b"\xff\xff\xff\xf0" + b"x"
    if kind == 2:                                  # deep nesting
        return b"\x91" * rng.randrange(2000, 100000) + b"\x00"
    if kind == 3:                                  # not an array, or a bad header
        return msgpack.packb(rng.choice([5, "hello", {"a": 1}, [], [1], ["x", 1]]))
    if kind == 4:                                  # the never-used byte
        return b"\x93\x01\x05\xc1"
    # A mutated request of an op without effect on the map, so that the
    # model need not follow this phase.
    return _mutate(rng, msgpack.packb([rng.choice([Op.STATS, Op.HELLO]), 1, 1]))


def test_fuzzed_protocol_leaves_daemon_up_and_map_equal_to_model(map_name: str) -> None:
    rng = random.Random(SEED)
    model: dict[Any, Any] = {}
    sent = 0
    with shmmap.Daemon(map_name) as daemon:
        path = str(daemon.socket_path)
        sock = connect_raw(path)
        try:
            for _ in range(ROUNDS):
                reqs = [_request(rng, sent + i) for i in range(PER_ROUND)]
                _send_in_pieces(rng, sock, b"".join(_frame(rng, r) for r in reqs))
                sent += len(reqs)
                for req, reply in zip(reqs, read_replies(sock, len(reqs))):
                    assert reply[0] == req[1], "replies come in request order"
                    if reply[1] == OK:
                        _apply_to_model(model, req, reply[2])
                    else:
                        assert reply[1] in {e.value for e in Err} - {Err.INTERNAL, Err.PROTOCOL}
                        assert isinstance(reply[2], str) and reply[2]
        finally:
            sock.close()

        bystander = daemon.connect()      # connected through all of it
        for _ in range(GARBAGE):
            g = _garbage(rng)
            s = connect_raw(path)
            data = b""
            try:
                s.sendall(g)
                s.shutdown(socket.SHUT_WR)
                while True:
                    chunk = s.recv(1 << 16)
                    if not chunk:
                        break
                    data += chunk
            except (ConnectionResetError, BrokenPipeError):
                pass    # closed with our garbage unread: the kernel resets
            finally:
                s.close()
            sent += 1
            if data:
                up = msgpack.Unpacker(raw=False)
                up.feed(data)
                for reply in up:
                    assert isinstance(reply, list) and len(reply) >= 2

        assert sent >= 100_000
        with bystander as m:
            assert m.snapshot() == model
            assert m.stats()["errors"] > 0
            m["still"] = "up"
            assert m["still"] == "up"
