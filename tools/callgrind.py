"""The *_instructions.py tools' way of counting: a program's instructions
under valgrind's callgrind, a figure that does not move with the machine's
load. Each tool runs its program at a size n and at 2n and divides the
difference by n: start-up and shutdown cancel out."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile


def missing(tool: str) -> bool:
    """Whether valgrind is missing (tool says so on stderr)."""
    if shutil.which("valgrind") is not None:
        return False
    print(f"{tool}: needs valgrind", file=sys.stderr)
    return True


def counts(script: str, args: list[str], n: int) -> tuple[int, int]:
    """The instructions of ``python script *args n`` and of ``... 2n``
    (hash seeds fixed: the two runs build the same dicts)."""
    workdir = tempfile.mkdtemp(prefix="shmmap-callgrind-")
    try:
        low, high = (_count([script, *args, str(size)], workdir) for size in (n, 2 * n))
        return low, high
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _count(argv: list[str], workdir: str) -> int:
    done = subprocess.run(
        ["valgrind", "--tool=callgrind",
         f"--callgrind-out-file={os.path.join(workdir, 'callgrind.out')}",
         sys.executable, *argv],
        capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{' '.join(argv)} failed under callgrind: {done.stderr[-1500:]}")
    return int(found.group(1))
