"""CPU time, to report beside every rate what each operation cost: the
measured process's own time and that of the peer's server processes
(shmmap's daemon, redis-server, the Manager's process) over the same
interval."""
from __future__ import annotations

import os
import resource
from typing import Iterable, Optional

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) process pid has used, from
    /proc/<pid>/stat; 0.0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(b")") + 2:].split()     # the name may hold spaces
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK   # utime, stime


def processes_cpu(pids: Iterable[int]) -> float:
    return sum(process_cpu(pid) for pid in pids)


def own_cpu() -> float:
    """CPU seconds this process has used, all its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def us_per(seconds: float, ops: int) -> Optional[float]:
    return round(seconds * 1e6 / ops, 2) if ops else None


def summary(own: float, server: float, ops: int) -> str:
    """'CPU 12.3 us/write (server 4.5)': the total, and the servers' part."""
    if not ops:
        return "no writes"
    text = f"CPU {us_per(own + server, ops)} us/write"
    return text + (f" (server {us_per(server, ops)})" if server else "")
