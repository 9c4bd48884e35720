"""``shmmap.Daemon``: run a map's daemon as a child process for as long as a
``with`` block lasts -- what tests, scripts and the demo use."""
from __future__ import annotations

import difflib
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Optional

from .cli.options import serve_options
from .client.map import SharedMap, connect
from .shared import protocol, segments
from .shared.errors import DaemonRunningError, DaemonStartError
from .shared.maplock import unserved
from .shared.protocol import READY

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# The child's working directory. Not the caller's: `python -m` puts the
# working directory first on sys.path, so from a clone's root the child
# would import the source tree (which has no compiled core) instead of the
# installed package. A daemon holds no directory busy either.
CHILD_CWD = "/"


class Daemon:
    """Starts ``shmmap serve NAME`` with options, waits until it accepts
    connections, and on exit stops it with SIGTERM: the daemon then removes
    the map (the clean stop). A daemon that has to be killed (no exit
    within STOP_TIMEOUT), or that died on its own, leaves the map for the
    next one to adopt: nothing here ever removes a map.

    Options are the ``serve`` command's long options with underscores:
    ``Daemon("m", max_value=1024, mode=0o660)``; an unknown one is a
    TypeError. A name already served raises DaemonRunningError; any other
    failure to start raises DaemonStartError with the daemon's message.
    """

    def __init__(self, name: str, **options: Any) -> None:
        self.name = segments.check_map_name(name)
        _check_options(options)
        self.options = options
        self.socket_path = Path(options.get("socket") or protocol.default_socket_path(name))
        self.socket_path = self.socket_path.absolute()     # the child runs in CHILD_CWD
        self.process: Optional[subprocess.Popen[bytes]] = None
        self._log: Optional[IO[bytes]] = tempfile.TemporaryFile()  # noqa: SIM115 (closed by _keep_log)
        self._final_log = ""

    def _command(self, ready_fd: int) -> list[str]:
        # -P (3.11+): no unsafe path (the working directory) on sys.path.
        safe_path = ["-P"] if sys.version_info >= (3, 11) else []
        cmd = [sys.executable, *safe_path, "-m", "shmmap", "serve", self.name,
               "--ready-fd", str(ready_fd)]
        for key, value in self.options.items():
            flag = "--" + key.replace("_", "-")
            if key == "socket":
                cmd += [flag, str(self.socket_path)]
            elif value is True:
                cmd.append(flag)
            elif isinstance(value, (list, tuple)):
                for v in value:
                    cmd += [flag, str(v)]
            elif key == "mode":
                cmd += [flag, oct(value)]
            elif value is not False and value is not None:
                cmd += [flag, str(value)]
        return cmd

    def start(self) -> Daemon:
        """Starts the daemon and returns once it serves the map (or raises
        DaemonRunningError, DaemonStartError with the daemon's own words)."""
        if self.process is not None or self._log is None:
            raise RuntimeError("a Daemon starts once; make another for a new daemon")
        ready_r, ready_w = os.pipe()
        try:
            # A session of its own: a terminal's Ctrl-C goes to the program
            # that owns the daemon, which stops it when it is done (a daemon
            # in its process group would stop and remove the map while the
            # program's processes still use it).
            self.process = subprocess.Popen(
                self._command(ready_w), pass_fds=(ready_w,), stdin=subprocess.DEVNULL,
                stdout=self._log, stderr=self._log, cwd=CHILD_CWD, start_new_session=True)
        finally:
            os.close(ready_w)
        try:
            said, timed_out = _read_ready_fd(ready_r, START_TIMEOUT)
        finally:
            os.close(ready_r)
        if said != READY:
            self._failed_start(said, timed_out)
        return self

    def _failed_start(self, said: bytes, timed_out: bool) -> None:
        """Stops what is left of the child and raises its reason."""
        assert self.process is not None
        if timed_out:           # still starting (adopting a huge map?): SIGTERM
            self.process.send_signal(signal.SIGTERM)
        status = self._wait_or_kill(STOP_TIMEOUT)
        self._keep_log()
        kind, _, message = said.decode(errors="replace").partition("\n")
        if kind == f"error {DaemonRunningError.__name__}":
            raise DaemonRunningError(message.strip())
        how = f"within {START_TIMEOUT:g} s" if timed_out else f"(exit status {status})"
        detail = self._final_log.strip() or message.strip() or "it wrote nothing"
        raise DaemonStartError(f"daemon for map {self.name!r} did not start {how}: {detail}")

    def log(self) -> str:
        """What the daemon wrote to stdout and stderr so far (all of it,
        after stop())."""
        if self._log is None:
            return self._final_log
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def _keep_log(self) -> None:
        if self._log is not None:
            self._final_log = self.log()
            self._log.close()
            self._log = None

    @property
    def pid(self) -> int:
        """The daemon's process id (once started)."""
        if self.process is None:
            raise RuntimeError("the daemon has not been started")
        return self.process.pid

    def connect(self, **kwargs: Any) -> SharedMap:
        """shmmap.connect() to this daemon's map, with connect()'s options."""
        return connect(self.name, **kwargs)

    def stop(self) -> int:
        """Stops the daemon with SIGTERM (it removes the map) and returns its
        exit status; if it does not exit within STOP_TIMEOUT it is killed,
        and the map stays. Safe to call again, and after a failed start."""
        code = 0
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
            code = self._wait_or_kill(STOP_TIMEOUT)
        self._keep_log()
        return code

    def _wait_or_kill(self, timeout: float) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _read_ready_fd(fd: int, timeout: float) -> tuple[bytes, bool]:
    """What the daemon wrote to its --ready-fd (READY, an error report, or
    nothing if it died), and whether timeout passed first."""
    deadline = time.monotonic() + timeout
    said = b""
    while said != READY:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return said, True
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        said += chunk
    return said, False


def _check_options(options: dict[str, Any]) -> None:
    """TypeError for an option ``shmmap serve`` does not have."""
    known = serve_options()
    for key in options:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"Daemon() got an unknown option {key!r}{hint}; the options are "
                            f"{', '.join(sorted(known))}")


def cleanup(name: str, socket_path: Optional[Path] = None) -> list[str]:
    """Removes the map a dead daemon left: its segments and socket; returns
    what it removed. DaemonRunningError if a daemon serves the map: the
    map's lock is held throughout, so none can start on it meanwhile."""
    with unserved(name):
        removed = [seg for seg in segments.map_segments(name) if segments.unlink(seg)]
    path = socket_path or protocol.default_socket_path(name)
    try:
        path.unlink()
        removed.append(str(path))
    except FileNotFoundError:
        pass
    return removed
