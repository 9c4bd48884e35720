"""The exceptions shmmap raises: one base class, one subclass per cause,
and the one table that turns a daemon's error reply into one of them."""
from __future__ import annotations

from .protocol import Err


class ShmmapError(Exception):
    """Base class of every error shmmap raises on its own account."""


class InvalidNameError(ShmmapError, ValueError):
    """Not a valid map name (see segments.check_map_name)."""


class MapNotFoundError(ShmmapError, LookupError):
    """No map of that name exists on this host (no header segment)."""


class MapClosedError(ShmmapError):
    """The map object was closed: every operation on it raises this. An
    iteration started before close() still runs to its end."""


class CorruptSegmentError(ShmmapError):
    """A shared-memory segment failed validation; the message names it."""


class MapFullError(ShmmapError):
    """The map cannot grow: a size limit or /dev/shm's space is reached."""


class LimitError(ShmmapError, ValueError):
    """A key, value or request is over a configured limit."""


class InvalidRequestError(ShmmapError, ValueError):
    """The daemon rejected a request as malformed; nothing was changed."""


class DaemonUnavailableError(ShmmapError, ConnectionError):
    """No daemon answers for the map: writes cannot be made now. Nothing of
    the request that raised it was applied, or it is safe to resend."""


class DaemonStartError(DaemonUnavailableError):
    """The daemon did not start; the message says why, in its own words."""


class AccessDeniedError(ShmmapError, PermissionError):
    """The daemon refuses this process's user (see --allow-uid, --group)."""


class DaemonRunningError(ShmmapError):
    """A live daemon already serves the map."""


class OutcomeUnknownError(ShmmapError):
    """A write was in flight when the daemon went away or stopped answering:
    it may or may not have been applied, so it is not resent."""


class WriteTimeoutError(OutcomeUnknownError, TimeoutError):
    """No reply to a write within the map's timeout (a stopped or overloaded
    daemon): the write may still be applied later. It is not resent."""


class EventLoopError(ShmmapError, RuntimeError):
    """An asyncio map (shmmap.aio) was used outside the event loop it was
    connected in: its socket belongs to that loop."""


class UpstreamUnavailableError(ShmmapError, ConnectionError):
    """The map is a near cache of an upstream store (``serve --upstream``)
    that the daemon cannot reach now: the write was not made (writes are
    never queued). Reads go on from the last copy; ``stats()["upstream"]``
    says since when it is stale."""


# Error codes of replies (protocol.Err) -> the exception each raises. The
# daemon's side of this contract maps its exceptions to these codes.
_REPLY_ERRORS: dict[int, type[ShmmapError]] = {
    Err.INVALID: InvalidRequestError,
    Err.LIMIT: LimitError,
    Err.FULL: MapFullError,
    Err.PROTOCOL: InvalidRequestError,
    Err.UNKNOWN_OP: InvalidRequestError,
    Err.INTERNAL: ShmmapError,
    Err.DENIED: AccessDeniedError,
    Err.UPSTREAM: UpstreamUnavailableError,
    Err.UPSTREAM_UNKNOWN: OutcomeUnknownError,
}


def reply_error(code: int, message: object) -> ShmmapError:
    """The exception for an error reply (code, message) from the daemon; an
    unknown code (a newer daemon) is a plain ShmmapError."""
    return _REPLY_ERRORS.get(code, ShmmapError)(f"{message}" if code in _REPLY_ERRORS
                                                else f"error {code}: {message}")
