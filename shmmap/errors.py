"""The exceptions shmmap raises: one base class, one subclass per cause."""
from __future__ import annotations


class ShmmapError(Exception):
    """Base class of every error shmmap raises on its own account."""


class MapNotFoundError(ShmmapError, LookupError):
    """No map of that name exists on this host (no header segment)."""


class CorruptSegmentError(ShmmapError):
    """A shared-memory segment failed validation; the message names it."""


class MapFullError(ShmmapError):
    """The map cannot grow: a size limit or /dev/shm's space is reached."""


class LimitError(ShmmapError, ValueError):
    """A key, value or request is over a configured limit."""


class InvalidRequestError(ShmmapError, ValueError):
    """The daemon rejected a request as malformed; nothing was changed."""


class DaemonUnavailableError(ShmmapError, ConnectionError):
    """No daemon answers for the map: writes cannot be made now."""


class AccessDeniedError(ShmmapError, PermissionError):
    """The daemon refuses this process's user (see --allow-uid, --group)."""


class DaemonRunningError(ShmmapError):
    """A live daemon already serves the map."""


class OutcomeUnknownError(ShmmapError):
    """A conditional write was in flight when the daemon went away: it may
    or may not have been applied, so it is not retried."""
