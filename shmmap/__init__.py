"""shmmap: a key-value map shared by processes through POSIX shared memory.

>>> import shmmap
>>> with shmmap.Daemon("orders"):             # or: shmmap serve orders
...     m = shmmap.connect("orders")
...     m["a"] = 1
...     dict(m.items())
{'a': 1}
"""
from .client.map import Batch, Pipeline, SharedMap, connect
from .launcher import Daemon
from .shared.codec import Ext
from .shared.errors import (AccessDeniedError, CorruptSegmentError, DaemonRunningError,
                            DaemonStartError, DaemonUnavailableError, InvalidNameError,
                            InvalidRequestError, LimitError, MapClosedError, MapFullError,
                            MapNotFoundError, OutcomeUnknownError, ShmmapError,
                            UpstreamUnavailableError, WriteTimeoutError)

__version__ = "0.1.0"

__all__ = [
    "AccessDeniedError", "Batch", "CorruptSegmentError", "Daemon", "DaemonRunningError", "DaemonStartError",
    "DaemonUnavailableError", "Ext",
    "InvalidNameError", "InvalidRequestError", "LimitError", "MapClosedError", "MapFullError",
    "MapNotFoundError", "OutcomeUnknownError", "Pipeline", "SharedMap", "ShmmapError",
    "UpstreamUnavailableError", "WriteTimeoutError",
    "connect",
]
