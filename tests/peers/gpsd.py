"""A real gpsd replaying an NMEA log on a private loopback port, through gpsfake.

``Gpsfake(log, port)`` runs ``gpsfake -1 -q -P PORT -c CYCLE -W 5 LOG`` (see ../shared/PEERS.md
section 1 B): gpsfake starts its own gpsd listening on PORT and feeds it the log through a pty.
It is stopped by its own pid (SIGTERM also ends the gpsd child), and its control socket, which
gpsfake leaves behind as ``$TMPDIR/gpsfake-<pid>.sock``, goes with a private TMPDIR.
A missing gpsd or gpsfake skips the test loudly (fails under CI=true), via ``require_binary``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from tests.peers import require_binary

HOST = "127.0.0.1"
START_TIMEOUT_S = 10.0


class Gpsfake:
    """One gpsfake run; ``start()``, ``stop()``; also a context manager."""

    def __init__(self, log: Path, port: int, *, cycle_s: float = 0.1) -> None:
        self.binary = require_binary("gpsfake", "gpsd-clients")
        require_binary("gpsd", "gpsd")  # gpsfake runs it from PATH or /usr/sbin
        self.log = log
        self.port = port
        self.cycle_s = cycle_s
        self.dir = Path(tempfile.mkdtemp(prefix="fleetlink-gpsfake-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: BinaryIO | None = None

    def start(self) -> None:
        """Start gpsfake; return once its gpsd accepts connections on ``port``."""
        env = dict(os.environ, TMPDIR=str(self.dir), PATH=os.environ.get("PATH", "") + ":/usr/sbin")
        cmd = [self.binary, "-1", "-q", "-P", str(self.port), "-c", str(self.cycle_s), "-W", "5"]
        self._stderr = (self.dir / "gpsfake.err").open("ab")
        self._proc = subprocess.Popen(
            [*cmd, str(self.log)], env=env, stdout=subprocess.DEVNULL, stderr=self._stderr
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"gpsfake exited with {self._proc.returncode}: {self.errors()}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 0.2):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gpsd did not listen on {HOST}:{self.port}: {self.errors()}")

    def stop(self) -> None:
        """SIGTERM by pid (gpsd goes with it), SIGKILL if it lingers; remove its files."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.dir / f"gpsfake-{proc.pid}.sock").unlink()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def errors(self) -> str:
        path = self.dir / "gpsfake.err"
        return path.read_text(errors="replace").strip() if path.exists() else ""

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Gpsfake:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
