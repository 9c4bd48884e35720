"""The daemon's log: one line per event through ``logging``, as text for a
terminal or journald, or as one JSON object per line for log collectors.

Events carry their fields as ``extra``: ``event`` (connect, disconnect,
refuse, promotion, adopt, error, ...) and what belongs to it (pid, uid,
reason, entries, bytes, ms). The JSON format writes them as keys."""
from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

from ..shared.config import LOG_FORMATS

TEXT_FORMAT = "shmmap %(levelname)s: %(message)s"

# The attributes every LogRecord has; anything else was given as extra.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the
    record's extra fields and, for an exception, its traceback."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD:
                out[key] = value
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(verbose: bool, fmt: str = "text", stream: TextIO = sys.stderr) -> None:
    """Logs warnings and errors; with verbose, every event."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r}: one of {', '.join(LOG_FORMATS)}")
    level = logging.INFO if verbose else logging.WARNING
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    # The handler keeps the level too: a trace recording (recorder.Recorder)
    # lowers the daemon logger's level to see every event, and the
    # terminal must not get them.
    handler.setLevel(level)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
