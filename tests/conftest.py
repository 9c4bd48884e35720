"""Fixtures shared by the suites: unique map names, and the guarantee that a
run leaves /dev/shm as it found it."""
from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Iterator

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
