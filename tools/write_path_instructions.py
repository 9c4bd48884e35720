"""Instructions the client's Python spends on one synchronous store, counted
by valgrind's callgrind: a figure that does not move with the machine's
load, where a timing of the same code moves 2x between runs here.

    .venv/bin/python tools/write_path_instructions.py [WRITES]   # default 20000

It runs itself twice under callgrind, storing WRITES and 2*WRITES int keys
(`m[k] = 1`) on a real map whose daemon runs outside valgrind, and prints
the difference per store: start-up and shutdown cancel out. The channel's
C call is replaced by one that acknowledges at once, so what is counted is
the Python path from `m[k] = 1` to that call and back (encoding, the lock,
the checks), not the wait for the daemon. Needs valgrind.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import tempfile

KEYS = 100_000


class _Acknowledging:
    """The C core, but for the channel's call, which acknowledges at once."""

    def __init__(self, lib: object) -> None:
        self._lib = lib

    def __getattr__(self, name: str) -> object:
        return getattr(self._lib, name)

    @staticmethod
    def shm_chan_batch(*args: object) -> int:
        return 0


def _store(writes: int) -> None:
    """The measured program: writes stores through an acknowledging stub."""
    from shmmap.client import channel
    from shmmap.launcher import Daemon

    rng = random.Random(1)
    keys = [rng.randrange(KEYS) for _ in range(writes)]
    with Daemon(f"wpi{os.getpid()}") as daemon:
        m = daemon.connect()
        m[0] = 1                            # connected, channel open
        real = channel.lib
        channel.lib = _Acknowledging(real)              # type: ignore[assignment]
        try:
            for k in keys:
                m[k] = 1
        finally:
            channel.lib = real
        m.close()


def _count(writes: int, workdir: str) -> int:
    out = os.path.join(workdir, f"callgrind.{writes}")
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
         sys.executable, __file__, "--store", str(writes)],
        capture_output=True, text=True, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"callgrind printed no total: {done.stderr[-500:]}")
    return int(found.group(1))


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--store":
        _store(int(sys.argv[2]))
        return 0
    if shutil.which("valgrind") is None:
        print("write_path_instructions: needs valgrind", file=sys.stderr)
        return 2
    writes = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    workdir = tempfile.mkdtemp(prefix="shmmap-wpi-")
    try:
        low, high = _count(writes, workdir), _count(2 * writes, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{(high - low) / writes:,.0f} instructions per store in the client's Python path "
          f"({writes:,} and {2 * writes:,} stores: {low:,} and {high:,})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
