"""What an upstream gives the daemon, whatever it is (one Redis server
now; a cluster, one link per master, would give the same): Updates, in the
order the upstream's state changed, which the daemon's loop commits one
each; and writes it is handed (Write), each answered by an Update."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

from ...shared.protocol import Err
from ..transport import Later

# The states of an upstream, as stats()["upstream"]["state"] says them.
SYNCING = "syncing"           # the first load of the range
LIVE = "live"                 # the copy follows the upstream
DISCONNECTED = "disconnected"  # in doubt: the copy is stale, writes refused
RESYNCING = "resyncing"       # reconnected: the range is being diffed


@dataclass
class Fetched:
    """One key as the upstream held it at one instant."""

    key: bytes                # its name upstream
    kind: str                 # "string", "hash", "none" (absent), or another type's name
    value: Any = None         # bytes for a string, dict[bytes, bytes] for a hash


@dataclass
class Write:
    """A client's write, forwarded: the upstream's commands, the names of
    the keys it writes (fetched with it, so that the local copy includes
    it), and the reply that waits for both."""

    commands: list[tuple[Any, ...]]
    keys: list[bytes]
    later: Later
    # Also fetch the keys before the commands, in the same transaction:
    # what a swap or a load-and-delete answers with.
    before: bool = False
    # A conditional write's test of its one key as it is before (under
    # WATCH): whether to write; ValueError to refuse the write. It runs in
    # the upstream's thread.
    condition: Optional[Callable[[Fetched], bool]] = None
    # The client's result, from the Update that answers it (in the
    # daemon's thread); None for a batch.
    answer: Optional[Callable[[Update], Any]] = None
    started: float = field(default_factory=time.perf_counter)


@dataclass
class Update:
    """What the daemon commits as one write, in the order given: keys
    fetched (with full, the whole range: every key not in it is deleted),
    the write it answers, and the state the upstream is in from then on."""

    fetched: list[Fetched] = field(default_factory=list)
    full: bool = False
    write: Optional[Write] = None
    before: list[Fetched] = field(default_factory=list)    # the write's keys before it
    wrote: bool = True          # False: a condition held the write back
    error: Optional[tuple[Err, str]] = None     # the write failed: nothing to commit
    state: Optional[str] = None
    received: float = 0.0       # time.perf_counter() when the first change it carries arrived


Deliver = Callable[[Update], None]


class Upstream(Protocol):
    """A store the map is a near cache of. It calls deliver (from any
    thread) with each Update, in order; the first is the full range."""

    where: str                # what it is, for logs and stats (no password)
    invalidations: int        # pushes received
    reconnects: int

    def start(self) -> None:
        """Connects, loads the range, and keeps it current until stop()."""

    def submit(self, write: Write) -> None:
        """Forwards write (thread-safe): an Update answers it, with its
        keys as written or with an error."""

    def stop(self) -> None:
        """Disconnects; no Update comes after it returns."""
