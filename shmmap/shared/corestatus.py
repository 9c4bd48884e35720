"""The C core's status codes as exceptions: one table in ``cext/core.h``
(``SHM_*``, named by ``shm_strerror``), one mapping to the classes of
:mod:`shmmap.shared.errors`, one helper that raises."""
from __future__ import annotations

from typing import Any, Optional

from .._core import ffi, lib
from .errors import CorruptSegmentError, InvalidRequestError, LimitError, MapFullError, ShmmapError

ERR_LEN = lib.SHM_ERR_LEN   # bytes of the err buffer the core's calls fill

EXCEPTIONS: dict[int, type[ShmmapError]] = {
    lib.SHM_EINVAL: InvalidRequestError,
    lib.SHM_EKEY: InvalidRequestError,
    lib.SHM_EVALUE: InvalidRequestError,
    lib.SHM_ETOOBIG: LimitError,
    lib.SHM_ENOSPACE: MapFullError,
    lib.SHM_ELIMIT: MapFullError,
    lib.SHM_EBUFSMALL: ShmmapError,
    lib.SHM_ECORRUPT: CorruptSegmentError,
    lib.SHM_ENOMEM: ShmmapError,
    lib.SHM_ECANCELED: ShmmapError,
}


def err_buffer() -> Any:
    """A buffer for the core's err/errlen arguments (ERR_LEN bytes)."""
    return ffi.new("char[]", ERR_LEN)


def strerror(code: int) -> str:
    """The core's fixed text for a status code."""
    return ffi.string(lib.shm_strerror(code)).decode()


def error(code: int, err: Any = None, context: str = "",
          cls: Optional[type[ShmmapError]] = None) -> ShmmapError:
    """The exception for a failed call: its class from the code (or cls),
    its message the core's err text (or the code's fixed text), after
    context."""
    text = ffi.string(err).decode(errors="replace") if err is not None else ""
    message = text or f"{strerror(code)} (status {code})"
    return (cls or EXCEPTIONS.get(code, ShmmapError))(
        f"{context}: {message}" if context else message)


def check(code: int, err: Any = None, context: str = "",
          cls: Optional[type[ShmmapError]] = None) -> int:
    """Returns code if the call succeeded (>= 0); raises error() if not."""
    if code < 0:
        raise error(code, err, context, cls)
    return code
