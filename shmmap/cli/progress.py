"""Progress of long commands on stderr, drawn for a person only.

On a terminal one status line is redrawn in place (``\\r`` and the ANSI
erase-line code). When stderr is a file or a pipe (a log, CI), nothing is
redrawn: a plain line is written now and then, so the log stays readable.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Optional, TextIO

_ERASE_LINE = "\r\033[K"


class Progress:
    """``update(msg)`` as often as convenient: on a terminal the line is
    redrawn at most every ``tty_every`` seconds; elsewhere a plain line is
    written at most every ``plain_every`` seconds (never if that is None).
    Use as a context manager (or call ``close()``) so that the terminal's
    status line is ended before anything else is printed."""

    def __init__(self, stream: Optional[TextIO] = None, enabled: bool = True,
                 tty_every: float = 0.1, plain_every: Optional[float] = 10.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = enabled and _isatty(self.stream)
        self.every = tty_every if self.tty else plain_every
        self.enabled = enabled and self.every is not None
        self._last = float("-inf")
        self._drawn = False

    def update(self, msg: str, force: bool = False) -> None:
        """Shows msg, unless the last one was shown too recently (force:
        shown anyway)."""
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < (self.every or 0)):
            return
        self._last = now
        if self.tty:
            self.stream.write(_ERASE_LINE + msg)
            self._drawn = True
        else:
            self.stream.write(msg + "\n")
        self.stream.flush()

    def close(self, keep: bool = True) -> None:
        """Ends the status line: kept (a newline) or erased."""
        if self._drawn:
            self.stream.write("\n" if keep else _ERASE_LINE)
            self.stream.flush()
            self._drawn = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
