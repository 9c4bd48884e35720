"""Instructions the client's Python spends on one synchronous store, counted
by valgrind's callgrind: a figure that does not move with the machine's
load, where a timing of the same code moves 2x between runs here.

    .venv/bin/python tools/write_path_instructions.py [WRITES]   # default 20000

It runs itself twice under callgrind, storing WRITES and 2*WRITES int keys
(`m[k] = 1`) on a real map whose daemon runs outside valgrind, and prints
the difference per store: start-up and shutdown cancel out. The channel's
C call is replaced by one that acknowledges at once, so what is counted is
the Python path from `m[k] = 1` to that call and back (encoding, the lock,
the checks, the cffi call's arguments), not the wait for the daemon.
Needs valgrind.
"""
from __future__ import annotations

import os
import random
import sys

import callgrind

KEYS = 100_000


def _store(writes: int) -> None:
    """The measured program: writes stores through an acknowledging stub."""
    from shmmap.client.channel import Channel
    from shmmap.launcher import Daemon

    rng = random.Random(1)
    keys = [rng.randrange(KEYS) for _ in range(writes)]
    with Daemon(f"wpi{os.getpid()}") as daemon:
        m = daemon.connect()
        m[0] = 1                            # connected, channel open
        real = Channel.batch
        Channel.batch = lambda self, *args: 0           # type: ignore[method-assign]
        try:
            for k in keys:
                m[k] = 1
        finally:
            Channel.batch = real                        # type: ignore[method-assign]
        m.close()


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--store":
        _store(int(sys.argv[2]))
        return 0
    if callgrind.missing("write_path_instructions"):
        return 2
    writes = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    low, high = callgrind.counts(__file__, ["--store"], writes)
    print(f"{(high - low) / writes:,.0f} instructions per store in the client's Python path "
          f"({writes:,} and {2 * writes:,} stores: {low:,} and {high:,})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
