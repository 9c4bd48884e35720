"""What a daemon is told that whoever starts it also knows (``shmmap
serve``'s options, ``shmmap.Daemon``): the sizes its writer enforces and the
formats it logs in."""
from __future__ import annotations

from dataclasses import dataclass

from .._core import lib

LOG_FORMATS = ("text", "json")


@dataclass
class Limits:
    max_key: int = lib.SHM_DEFAULT_MAX_KEY
    max_value: int = lib.SHM_DEFAULT_MAX_VALUE
    max_live_bytes: int = 0              # 0: no limit but /dev/shm's size
