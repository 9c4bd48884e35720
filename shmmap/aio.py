"""shmmap for asyncio: ``async with shmmap.aio.connect(name) as m``.

The public name of shmmap.client.aio (see there): writes await the
daemon, reads are synchronous and never wait for it.
"""
from .client.aio import AsyncMap, AsyncPipeline, EventLoopError, connect

__all__ = ["AsyncMap", "AsyncPipeline", "EventLoopError", "connect"]
