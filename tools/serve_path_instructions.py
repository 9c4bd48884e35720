"""Instructions the daemon spends per batch request on its ways into the C
hot path, counted by valgrind's callgrind: a figure that does not move with
the machine's load, where a timing of the same code moves 2x between runs.

    .venv/bin/python tools/serve_path_instructions.py [REQUESTS]   # default 5000

Each of the three ways a batch request reaches the C serve calls is run
twice under callgrind, with REQUESTS and 2*REQUESTS requests, and the
difference per request is printed (start-up and shutdown cancel out):

- loop:  Transport.serve, the C loop (shm_serve_loop), told to return after
  every round it serves (its room check always says short);
- round: Transport.poll, one C round (shm_round_serve), as while a build
  runs or a trace records;
- bytes: the bytes a connection has pending (shm_serve on them), each
  receive completing one request and starting the next.

The daemon (a Server, not run: the program drives its transport one round
at a time, as Server._loop does) and a raw socket client share one process,
so what is counted is the daemon's work per request, its Python and its C,
plus one send and one receive of the client's (the same on every path).
Needs valgrind.
"""
from __future__ import annotations

import os
import socket
import sys
import time

import callgrind
import msgpack

PATHS = ("loop", "round", "bytes")


def _run(path: str, requests: int) -> None:
    """The measured program: requests batch requests down one path."""
    from shmmap._core import lib
    from shmmap.server.server import DaemonConfig, Server
    from shmmap.shared import protocol
    from shmmap.shared.protocol import Op, store_item

    request = msgpack.packb([Op.BATCH, 1, store_item(msgpack.packb("k"), msgpack.packb(1))])
    server = Server(DaemonConfig(name=f"spi{os.getpid()}"))
    # Room for every write: no promotion interrupts the count.
    server.writer.promote("requested", reserve_keys=16, reserve_bytes=256 * requests)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(str(server.socket_path))
        server.transport.poll(0)                    # accepted
        loop = server.timings.new_loop()
        spin = protocol.Spin(protocol.DAEMON_SPIN_SECONDS)
        short = (0, 1 << 62, 1 << 62)               # every served round returns
        half = len(request) // 2
        if path == "bytes":
            client.sendall(request[:half])
            server.transport.poll(0)
            server._commit_round()
            request = request[half:] + request[:half]
        for _ in range(requests):
            client.sendall(request)
            if path == "loop":
                server.transport.serve(loop, time.monotonic() + 60, spin, short)
                if loop.stop != lib.SHM_LOOP_RUNWAY:
                    raise RuntimeError(f"the C loop stopped for {loop.stop}, not its room")
                server.timings.observe_loop(loop)
            else:
                server.transport.poll(0)
            server._commit_round()
            client.recv(64)
        if server.ops.writes != requests or server.writer.stats.promotions != 1:
            raise RuntimeError(f"{server.ops.writes} writes of {requests} requests, "
                               f"{server.writer.stats.promotions} promotions")
    finally:
        client.close()
        server.promoter.stop()
        server._remove()


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--run":
        _run(sys.argv[2], int(sys.argv[3]))
        return 0
    if callgrind.missing("serve_path_instructions"):
        return 2
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 5_000
    for path in PATHS:
        low, high = callgrind.counts(__file__, ["--run", path], requests)
        print(f"{path:5s} {(high - low) / requests:9,.0f} instructions per request "
              f"({requests:,} and {2 * requests:,}: {low:,} and {high:,})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
