"""``shmmap.Daemon``: run a map's daemon as a child process for as long as a
``with`` block lasts -- what tests, scripts and the demo use."""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

from . import protocol, segments
from .client import SharedMap, connect
from .errors import DaemonUnavailableError

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class Daemon:
    """Starts ``shmmap serve NAME`` with options, waits until it accepts
    connections, and on exit stops it (SIGTERM, then SIGKILL after
    STOP_TIMEOUT) and removes whatever it left.

    Options are the ``serve`` command's long options with underscores:
    ``Daemon("m", max_value=1024, mode=0o660)``.
    """

    def __init__(self, name: str, **options: Any) -> None:
        self.name = segments.check_map_name(name)
        self.options = options
        self.socket_path = Path(options.get("socket") or protocol.default_socket_path(name))
        self.process: Optional[subprocess.Popen[bytes]] = None
        self._log = tempfile.TemporaryFile()

    def _command(self, ready_fd: int) -> list[str]:
        cmd = [sys.executable, "-m", "shmmap", "serve", self.name, "--ready-fd", str(ready_fd)]
        for key, value in self.options.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                cmd.append(flag)
            elif isinstance(value, (list, tuple)):
                for v in value:
                    cmd += [flag, str(v)]
            elif key == "mode":
                cmd += [flag, oct(value)]
            elif value is not False and value is not None:
                cmd += [flag, str(value)]
        return cmd

    def start(self) -> "Daemon":
        ready_r, ready_w = os.pipe()
        try:
            self.process = subprocess.Popen(
                self._command(ready_w), pass_fds=(ready_w,), stdin=subprocess.DEVNULL,
                stdout=self._log, stderr=self._log)
        finally:
            os.close(ready_w)
        try:
            readable, _, _ = select.select([ready_r], [], [], START_TIMEOUT)
            line = os.read(ready_r, 64) if readable else b""
        finally:
            os.close(ready_r)
        if line != b"ready\n":
            self.stop()
            raise DaemonUnavailableError(
                f"daemon for map {self.name!r} did not start: {self.log().strip()}")
        return self

    def log(self) -> str:
        """What the daemon wrote to stdout and stderr so far."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def connect(self, **kwargs: Any) -> SharedMap:
        return connect(self.name, **kwargs)

    def stop(self) -> int:
        """Stops the daemon; returns its exit status."""
        code = 0
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
            try:
                code = self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                code = self.process.wait()
        cleanup(self.name, self.socket_path)
        self._log.close()
        return code

    def __enter__(self) -> "Daemon":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def cleanup(name: str, socket_path: Optional[Path] = None) -> list[str]:
    """Removes map name's segments and socket; returns what it removed."""
    removed = [seg for seg in segments.map_segments(name) if segments.unlink(seg)]
    path = socket_path or protocol.default_socket_path(name)
    try:
        path.unlink()
        removed.append(str(path))
    except FileNotFoundError:
        pass
    return removed
