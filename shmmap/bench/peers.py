"""The systems the benchmark compares, each behind one interface.

A Peer owns a store holding the keys 0..n-1 (each with value 1 after
setup); open() gives this process a Store on it, and attach(spec) gives
one to another process (or thread, for peers that only share within a
process). Every peer runs the same workload code in scenarios.py.
"""
from __future__ import annotations

import abc
import itertools
import multiprocessing as mp
import os
import shutil
import subprocess
import tempfile
import threading
import time
from typing import Any, Iterable, Iterator, cast

import msgpack

from ..client.map import SharedMap, connect
from ..launcher import Daemon

READY_TIMEOUT = 30.0
_setups = itertools.count()     # makes every setup's names unique


def unique(prefix: str) -> str:
    return f"{prefix}{os.getpid()}x{next(_setups)}"


class Store(abc.ABC):
    """One process's (or thread's) handle on a peer's data."""

    @abc.abstractmethod
    def get(self, key: int) -> Any: ...

    @abc.abstractmethod
    def set(self, key: int, value: Any) -> None: ...

    @abc.abstractmethod
    def set_many(self, pairs: dict[int, Any]) -> None: ...

    @abc.abstractmethod
    def delete(self, key: int) -> None: ...

    @abc.abstractmethod
    def items(self) -> Iterable[tuple[Any, Any]]:
        """Every pair, as one consistent view if the system offers one."""

    def close(self) -> None:
        """Releases the handle; most have nothing to release."""
        return None


class Peer(abc.ABC):
    name: str = ""
    processes = True        # other processes can attach (else: threads)
    shared = True           # anything else can attach at all (the floor cannot)
    multi_writer = True     # several processes may write at once
    why_single_writer = ""  # why not, when multi_writer is False
    why_missing = ""        # set by available() when it cannot run here

    @classmethod
    def available(cls) -> bool:
        return True

    @abc.abstractmethod
    def setup(self, n: int) -> None: ...

    @abc.abstractmethod
    def open(self) -> Store: ...

    def spec(self) -> Any:
        """What attach() needs, picklable."""
        return None

    @classmethod
    def attach(cls, spec: Any) -> Store:
        raise NotImplementedError(f"{cls.name} is not shared between processes")

    def server_pids(self) -> list[int]:
        """Processes that work for the clients (a daemon, a server): their
        CPU time counts toward what a write costs."""
        return []

    def teardown(self) -> None:
        """Removes everything setup made (also after a failed setup)."""
        return None


def initial(n: int) -> dict[int, int]:
    return dict.fromkeys(range(n), 1)


def _chunks(pairs: dict[int, Any], size: int = 10_000) -> Iterator[dict[int, Any]]:
    it = iter(pairs.items())
    while chunk := dict(itertools.islice(it, size)):
        yield chunk


# -- shmmap -------------------------------------------------------------------

class ShmmapStore(Store):
    def __init__(self, m: SharedMap) -> None:
        self.m = m
        self.get = m.get            # type: ignore[method-assign]

    def get(self, key: int) -> Any:
        return self.m.get(key)

    def set(self, key: int, value: Any) -> None:
        self.m[key] = value

    def set_many(self, pairs: dict[int, Any]) -> None:
        self.m.update(pairs)

    def delete(self, key: int) -> None:
        self.m.delete(key)

    def items(self) -> Iterable[tuple[Any, Any]]:
        return self.m.items()

    def promote(self) -> None:
        self.m.promote()

    def close(self) -> None:
        self.m.close()


class ShmmapPeer(Peer):
    name = "shmmap"

    def setup(self, n: int) -> None:
        self.map_name = unique("bench-")
        self.daemon = Daemon(self.map_name).start()
        with connect(self.map_name) as m:
            m.update(initial(n))
            m.promote()

    def open(self) -> Store:
        return ShmmapStore(connect(self.map_name))

    def spec(self) -> Any:
        return self.map_name

    @classmethod
    def attach(cls, spec: Any) -> Store:
        return ShmmapStore(connect(spec))

    def server_pids(self) -> list[int]:
        return [self.daemon.pid]

    def teardown(self) -> None:
        if hasattr(self, "daemon"):
            self.daemon.stop()


# -- the floor and the usual advice ---------------------------------------------

class DictStore(Store):
    def __init__(self, d: dict[int, Any]) -> None:
        self.d = d

    def get(self, key: int) -> Any:
        return self.d.get(key)

    def set(self, key: int, value: Any) -> None:
        self.d[key] = value

    def set_many(self, pairs: dict[int, Any]) -> None:
        self.d.update(pairs)

    def delete(self, key: int) -> None:
        self.d.pop(key, None)

    def items(self) -> Iterable[tuple[Any, Any]]:
        return self.d.items()


class DictPeer(Peer):
    """A local dict: the floor. Nothing else can see it."""

    name = "dict (local, floor)"
    processes = False
    shared = False

    def setup(self, n: int) -> None:
        self.d = initial(n)

    def open(self) -> Store:
        return DictStore(self.d)


class LockedDictStore(DictStore):
    def __init__(self, d: dict[int, Any], lock: threading.Lock) -> None:
        super().__init__(d)
        self.lock = lock

    def get(self, key: int) -> Any:
        with self.lock:
            return self.d.get(key)

    def set(self, key: int, value: Any) -> None:
        with self.lock:
            self.d[key] = value

    def set_many(self, pairs: dict[int, Any]) -> None:
        with self.lock:
            self.d.update(pairs)

    def delete(self, key: int) -> None:
        with self.lock:
            self.d.pop(key, None)

    def items(self) -> Iterable[tuple[Any, Any]]:
        with self.lock:                 # a consistent view: copy under the lock
            return list(self.d.items())


class LockedDictPeer(Peer):
    """A dict shared by threads under a lock: the usual advice instead of
    sync.Map. Its workers are threads of the measuring process."""

    name = "dict + lock (threads)"
    processes = False

    def setup(self, n: int) -> None:
        self.d = initial(n)
        self.lock = threading.Lock()

    def open(self) -> Store:
        return LockedDictStore(self.d, self.lock)

    def spec(self) -> Any:
        return self


# -- multiprocessing.Manager ---------------------------------------------------------

class ProxyStore(DictStore):
    def items(self) -> Iterable[tuple[Any, Any]]:
        return self.d.items()           # one request: a list copy of the dict

    def set_many(self, pairs: dict[int, Any]) -> None:
        self.d.update(pairs)


class ManagerPeer(Peer):
    name = "multiprocessing.Manager().dict()"

    def setup(self, n: int) -> None:
        self.manager = mp.get_context("spawn").Manager()
        self.d = self.manager.dict()
        for chunk in _chunks(initial(n)):
            self.d.update(chunk)

    def open(self) -> Store:
        return ProxyStore(self.d)       # type: ignore[arg-type]

    def spec(self) -> Any:
        return self.d

    @classmethod
    def attach(cls, spec: Any) -> Store:
        return ProxyStore(spec)

    def server_pids(self) -> list[int]:
        return [self.manager._process.pid]  # type: ignore[attr-defined]  # no public pid

    def teardown(self) -> None:
        if hasattr(self, "manager"):
            self.manager.shutdown()


# -- optional peers: pip install 'shmmap[bench]' -----------------------------------------

def _importable(cls: type[Peer], module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        cls.why_missing = f"python package {module!r} not installed (pip install 'shmmap[bench]')"
        return False
    return True


class UltraDictPeer(Peer):
    name = "UltraDict"
    BUFFER = 64 * 1024 * 1024

    @classmethod
    def available(cls) -> bool:
        return _importable(cls, "UltraDict") and _importable(cls, "atomics")

    def setup(self, n: int) -> None:
        from UltraDict import UltraDict
        self.ud_name = unique("ub")
        self.ud = UltraDict(name=self.ud_name, create=True, buffer_size=self.BUFFER,
                            full_dump_size=self.BUFFER, shared_lock=True, auto_unlink=False)
        for chunk in _chunks(initial(n)):
            self.ud.update(chunk)

    def open(self) -> Store:
        return self.attach(self.ud_name)

    def spec(self) -> Any:
        return self.ud_name

    @classmethod
    def attach(cls, spec: Any) -> Store:
        from UltraDict import UltraDict
        return UltraStore(UltraDict(name=spec, create=False, auto_unlink=False))

    def teardown(self) -> None:
        if hasattr(self, "ud"):
            self.ud.unlink()


class UltraStore(DictStore):
    def items(self) -> Iterable[tuple[Any, Any]]:
        return list(self.d.items())     # apply pending updates, then copy

    def close(self) -> None:
        self.d.close()                  # type: ignore[attr-defined]


class SharedMemoryDictPeer(Peer):
    name = "shared-memory-dict"
    multi_writer = False
    # Its optional lock (SHARED_MEMORY_USE_LOCK=1) is made at import, so
    # spawned processes do not share it.
    why_single_writer = ("no lock between processes: writers at once lose each other's "
                         "writes")

    @classmethod
    def available(cls) -> bool:
        return _importable(cls, "shared_memory_dict")

    def setup(self, n: int) -> None:
        from shared_memory_dict import SharedMemoryDict
        self.smd_name = unique("smd")
        self.size = max(1 << 20, n * 64)
        self.smd = SharedMemoryDict(name=self.smd_name, size=self.size)
        self.smd.update(initial(n))

    def open(self) -> Store:
        return self.attach(self.spec())

    def spec(self) -> Any:
        return self.smd_name, self.size

    @classmethod
    def attach(cls, spec: Any) -> Store:
        from shared_memory_dict import SharedMemoryDict
        return SmdStore(SharedMemoryDict(name=spec[0], size=spec[1]))

    def teardown(self) -> None:
        if hasattr(self, "smd"):
            self.smd.shm.close()
            self.smd.shm.unlink()


class SmdStore(DictStore):
    def items(self) -> Iterable[tuple[Any, Any]]:
        return list(self.d.items())

    def close(self) -> None:
        self.d.shm.close()              # type: ignore[attr-defined]


class LmdbStore(Store):
    """One environment per process (LMDB forbids opening one twice in a
    process). Its fastest comparable configuration: the files live on
    /dev/shm, like shmmap's segments, and commits skip the fsync that
    tmpfs makes pointless anyway (sync=False, metasync=False); every commit
    is still atomic and visible to every process once put returns."""

    def __init__(self, path: str) -> None:
        import lmdb
        self.env = lmdb.open(path, map_size=1 << 34, max_readers=512, readahead=False,
                             sync=False, metasync=False)

    @staticmethod
    def _k(key: int) -> bytes:
        return key.to_bytes(8, "big", signed=True)

    def get(self, key: int) -> Any:
        with self.env.begin() as txn:
            raw = txn.get(self._k(key))
        return None if raw is None else msgpack.unpackb(raw)

    def set(self, key: int, value: Any) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(self._k(key), msgpack.packb(value))

    def set_many(self, pairs: dict[int, Any]) -> None:
        with self.env.begin(write=True) as txn:
            for k, v in pairs.items():
                txn.put(self._k(k), msgpack.packb(v))

    def delete(self, key: int) -> None:
        with self.env.begin(write=True) as txn:
            txn.delete(self._k(key))

    def items(self) -> Iterable[tuple[Any, Any]]:
        with self.env.begin() as txn:   # a read transaction: a snapshot
            return [(int.from_bytes(k, "big", signed=True), msgpack.unpackb(v))
                    for k, v in txn.cursor()]

    def close(self) -> None:
        self.env.close()


LMDB_PARENT = "/dev/shm"
LMDB_DIR_PREFIX = "lmdb-bench-"


class LmdbPeer(Peer):
    name = "LMDB (py-lmdb, /dev/shm)"

    @classmethod
    def available(cls) -> bool:
        return _importable(cls, "lmdb")

    def setup(self, n: int) -> None:
        # Not named "shmmap*": /dev/shm entries by those names are shmmap segments.
        self.dir = tempfile.mkdtemp(prefix=LMDB_DIR_PREFIX, dir=LMDB_PARENT)
        store = LmdbStore(self.dir)
        for chunk in _chunks(initial(n)):
            store.set_many(chunk)
        store.close()

    def open(self) -> Store:
        return LmdbStore(self.dir)

    def spec(self) -> Any:
        return self.dir

    @classmethod
    def attach(cls, spec: Any) -> Store:
        return LmdbStore(spec)

    def teardown(self) -> None:
        if hasattr(self, "dir"):
            shutil.rmtree(self.dir, ignore_errors=True)


class RedisStore(Store):
    KEY = "shmmap-bench"

    def __init__(self, socket_path: str) -> None:
        import redis
        self.r = redis.Redis(unix_socket_path=socket_path)

    def get(self, key: int) -> Any:
        raw = self.r.hget(self.KEY, key)
        return None if raw is None else int(raw)

    def set(self, key: int, value: Any) -> None:
        self.r.hset(self.KEY, key, value)

    def set_many(self, pairs: dict[int, Any]) -> None:
        self.r.hset(self.KEY, mapping=cast(Any, pairs))

    def delete(self, key: int) -> None:
        self.r.hdel(self.KEY, key)

    def items(self) -> Iterable[tuple[Any, Any]]:
        return [(int(k), int(v)) for k, v in self.r.hgetall(self.KEY).items()]

    def close(self) -> None:
        self.r.close()


class RedisPeer(Peer):
    """redis-py with hiredis against a redis-server of its own, reached
    through a Unix socket (faster than TCP on loopback, and what shmmap's
    clients use), with persistence off."""

    name = "Redis (Unix socket)"

    @classmethod
    def available(cls) -> bool:
        if not _importable(cls, "redis"):
            return False
        if shutil.which("redis-server") is None:
            cls.why_missing = "no redis-server binary on PATH (e.g. apt-get install redis-server)"
            return False
        return True

    def setup(self, n: int) -> None:
        self.dir = tempfile.mkdtemp(prefix="shmmap-bench-redis-")
        self.socket_path = os.path.join(self.dir, "redis.sock")
        self.server = subprocess.Popen(
            ["redis-server", "--port", "0", "--unixsocket", self.socket_path,
             "--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        store = RedisStore(self.socket_path)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:                     # ready once it answers PING
            try:
                store.r.ping()
                break
            except Exception:
                if time.monotonic() > deadline or self.server.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
        for chunk in _chunks(initial(n)):
            store.set_many(chunk)
        store.close()

    def open(self) -> Store:
        return RedisStore(self.socket_path)

    def spec(self) -> Any:
        return self.socket_path

    @classmethod
    def attach(cls, spec: Any) -> Store:
        return RedisStore(spec)

    def server_pids(self) -> list[int]:
        return [self.server.pid]

    def teardown(self) -> None:
        if hasattr(self, "server"):
            self.server.terminate()
            self.server.wait(10)
        if hasattr(self, "dir"):
            shutil.rmtree(self.dir, ignore_errors=True)


PEERS: list[type[Peer]] = [ShmmapPeer, DictPeer, LockedDictPeer, ManagerPeer, UltraDictPeer,
                           SharedMemoryDictPeer, LmdbPeer, RedisPeer]
