"""Fixtures shared by the suites: unique map names, and the guarantee that a
run leaves /dev/shm as it found it."""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from shmmap import segments
from shmmap.protocol import default_socket_path

SHM = Path("/dev/shm")


def _shmmap_entries() -> set[str]:
    return {p.name for p in SHM.iterdir() if p.name.startswith("shmmap-")}


@pytest.fixture
def map_name() -> Iterator[str]:
    """A map name no other test uses; its segments and default socket are
    removed after the test, even when it fails."""
    name = f"t{os.getpid()}-{uuid.uuid4().hex[:10]}"
    yield name
    for seg in segments.map_segments(name):
        segments.unlink(seg)
    default_socket_path(name).unlink(missing_ok=True)


@pytest.fixture(scope="session", autouse=True)
def dev_shm_left_as_found() -> Iterator[None]:
    before = _shmmap_entries()
    yield
    # New segments of maps that existed before the run (a daemon someone
    # else runs on this machine promoting meanwhile) are not the run's.
    left = {e for e in _shmmap_entries() - before
            if not any(e.startswith(b + "-") for b in before)}
    assert not left, f"the test run left shared-memory segments behind: {sorted(left)}"
