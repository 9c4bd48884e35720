"""Fixtures shared by the suites: unique map names, and the guarantee that a
run leaves /dev/shm as it found it."""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from shmmap.shared import segments
from shmmap.shared.protocol import default_socket_path

SHM = Path("/dev/shm")
# Names this run gives its maps start with "t<pid>-" (the map_name fixture,
# and tests that make up names of their own the same way).
# Segments are "shmmap:NAME..."; "shmmap-t<pid>-..." are of the older layout,
# as test_names makes them (others of that layout are no test's).
_OTHER_RUN = re.compile(r"shmmap[:-]t(\d+)-")


def _shmmap_entries() -> set[str]:
    return {p.name for p in SHM.iterdir() if p.name.startswith(("shmmap:", "shmmap-t"))}


def unique_map_name(tag: str = "") -> str:
    """A map name no other test, and no other test run, uses."""
    return f"t{os.getpid()}-{tag}{uuid.uuid4().hex[:10]}"


def remove_map(name: str) -> None:
    """Unlinks every segment of map name and its default socket."""
    for seg in segments.map_segments(name):
        segments.unlink(seg)
    default_socket_path(name).unlink(missing_ok=True)


def open_fds() -> int:
    """How many file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


def mappings_of(name: str) -> int:
    """This process's mappings of map name's segments."""
    prefix = "/dev/shm" + segments.header_name(name)    # every segment's name starts so
    with open("/proc/self/maps") as maps:
        return sum(prefix in line for line in maps)


@pytest.fixture
def map_name() -> Iterator[str]:
    """A map name no other test uses; its segments and default socket are
    removed after the test, even when it fails."""
    name = unique_map_name()
    try:
        yield name
    finally:
        remove_map(name)


def _from_another_run(entry: str) -> bool:
    m = _OTHER_RUN.match(entry)
    return m is not None and int(m.group(1)) != os.getpid()


@pytest.fixture(scope="session", autouse=True)
def dev_shm_left_as_found() -> Iterator[None]:
    before = _shmmap_entries()
    yield
    # New segments of maps that existed before the run (a daemon someone
    # else runs on this machine promoting meanwhile), and the maps of other
    # test runs going on at the same time, are not this run's.
    left = {e for e in _shmmap_entries() - before
            if not any(e.startswith((b + ":", b + "-")) for b in before) and not _from_another_run(e)}
    assert not left, f"the test run left shared-memory segments behind: {sorted(left)}"


# -- Redis, for the near cache's tests ------------------------------------------
# redis-server is Debian's package; without it these tests skip, unless
# SHMMAP_REQUIRE_REDIS=1 (CI sets it) makes its absence a failure.
REQUIRE_REDIS = os.environ.get("SHMMAP_REQUIRE_REDIS") == "1"
REDIS_START_SECONDS = 10.0


@pytest.fixture(scope="session")
def redis_server_binary() -> str:
    """The path of redis-server (and redis-py importable), or a skip."""
    path = shutil.which("redis-server")
    missing = [what for what, ok in (("redis-server", path is not None),
                                     ("redis-py", _importable("redis"))) if not ok]
    if missing:
        why = f"{' and '.join(missing)} not installed (apt-get install redis-server; pip install redis)"
        if REQUIRE_REDIS:
            pytest.fail(f"SHMMAP_REQUIRE_REDIS=1 but {why}")
        pytest.skip(why)
    assert path is not None
    return path


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


class RedisServer:
    """A redis-server of this test's own: a free loopback port, a temporary
    directory, no persistence. kill() and start() again keep its port."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        with socket.socket() as s:      # the kernel's free port; Redis binds it next
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.workdir), "--save", "", "--appendonly", "no", "--logfile",
             str(self.workdir / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self.client()
        deadline = time.monotonic() + REDIS_START_SECONDS
        while True:
            try:
                client.ping()
                return self
            except Exception as exc:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = (self.workdir / "redis.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"redis-server did not start on port {self.port}: "
                                       f"{log}") from exc
                time.sleep(0.02)
            finally:
                client.close()

    def client(self) -> Any:
        import redis
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def kill(self) -> None:
        """SIGKILL, and waits for it: its data is gone."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def redis_server(redis_server_binary: str, tmp_path: Path) -> Iterator[RedisServer]:
    """A running redis-server of the test's own, killed after it."""
    server = RedisServer(redis_server_binary, tmp_path)
    try:
        yield server.start()
    finally:
        server.kill()
