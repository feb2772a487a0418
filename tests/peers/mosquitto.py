"""A real Mosquitto on a free loopback port, and a TCP proxy in front of it to inject faults.

``Mosquitto`` writes a config with a password file, an ACL file and persistence into its own
temporary directory, and can be stopped (SIGTERM: session state saved), killed (SIGKILL) and
restarted on the same port. ``MqttProxy`` forwards a client to the broker and can cut every
connection without a DISCONNECT (the broker then publishes the will), or play a broker that
speaks only MQTT 3.1.1 by refusing MQTT 5 CONNECTs the way such brokers do.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType

from tests.peers import free_port, require_binary

HOST = "127.0.0.1"
START_TIMEOUT_S = 10.0


class Mosquitto:
    """One broker process: start, stop (SIGTERM), kill, restart; ``close()`` removes its files."""

    def __init__(
        self,
        users: Mapping[str, str],
        acl_lines: Iterable[str],
        *,
        tls: bool = False,
        extra_config: Iterable[str] = (),
    ) -> None:
        self.binary = require_binary("mosquitto", "mosquitto")
        passwd_tool = require_binary("mosquitto_passwd", "mosquitto")
        # Not pytest's tmp_path: its parents are mode 0700 and the broker drops root privileges
        # to the mosquitto user before it reads the password and ACL files.
        self.dir = Path(tempfile.mkdtemp(prefix="fleetlink-mosquitto-"))
        self.port = free_port()
        self.tls_port: int | None = None
        self.ca_file: Path | None = None
        self.log_file = self.dir / "broker.log"
        self._proc: subprocess.Popen[bytes] | None = None
        (self.dir / "data").mkdir()
        (self.dir / "acl").write_text("\n".join(acl_lines) + "\n")
        passwd = self.dir / "passwd"
        passwd.touch()
        for user, password in users.items():
            subprocess.run([passwd_tool, "-b", str(passwd), user, password], check=True)
        lines = [
            f"listener {self.port} {HOST}",
            "allow_anonymous false",
            f"password_file {passwd}",
            f"acl_file {self.dir / 'acl'}",
            "persistence true",
            f"persistence_location {self.dir / 'data'}/",
            # Queue generously for offline persistent sessions: the tests count every message.
            "max_queued_messages 100000",
            "log_dest stdout",
            "log_type all",
        ]
        if tls:
            lines += self._tls_listener()
        lines += list(extra_config)
        (self.dir / "mosquitto.conf").write_text("\n".join(lines) + "\n")
        self._give_to_broker_user()

    def _tls_listener(self) -> list[str]:
        """A second listener with a throwaway CA and a server certificate for 127.0.0.1."""
        openssl = require_binary("openssl", "openssl")
        d = self.dir
        self.tls_port = free_port()
        self.ca_file = d / "ca.crt"

        def run(command: str, subject: str | None = None) -> None:
            # Paths come from mkdtemp: no spaces, so a split command line is safe.
            args = [openssl, *command.split()] + (["-subj", subject] if subject else [])
            subprocess.run(args, check=True, capture_output=True)

        ca, ca_key = self.ca_file, d / "ca.key"
        key, csr, crt, ext = d / "server.key", d / "server.csr", d / "server.crt", d / "san.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        run(f"req -x509 -newkey rsa:2048 -nodes -days 2 -keyout {ca_key} -out {ca}", "/CN=test CA")
        run(f"req -newkey rsa:2048 -nodes -keyout {key} -out {csr}", "/CN=127.0.0.1")
        run(
            f"x509 -req -in {csr} -CA {ca} -CAkey {ca_key} -CAcreateserial -days 2 -extfile {ext}"
            f" -out {crt}"
        )
        return [
            f"listener {self.tls_port} {HOST}",
            f"cafile {self.ca_file}",
            f"certfile {crt}",
            f"keyfile {key}",
        ]

    def _give_to_broker_user(self) -> None:
        if os.geteuid() != 0:
            return
        try:
            entry = pwd.getpwnam("mosquitto")
        except KeyError:
            return
        for path in [self.dir, *self.dir.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the broker and return once it accepts TCP connections."""
        if self.running:
            return
        with self.log_file.open("ab") as log:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.dir / "mosquitto.conf")],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited {self._proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 0.2):
                return
            time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on {self.port}:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM: the broker disconnects everyone and saves persistent sessions to disk."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: no DISCONNECT, no save; state since the last autosave is lost."""
        self._end(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _end(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# MQTT 3.1.1 CONNACK, return code 1 "unacceptable protocol version" (MQTT 3.1.1 §3.2.2.3):
# what a 3.1.1-only broker answers to an MQTT 5 CONNECT.
CONNACK_BAD_PROTOCOL = bytes([0x20, 0x02, 0x00, 0x01])


class MqttProxy:
    """An asyncio TCP proxy to a broker: ``cut()`` drops every connection with a TCP reset."""

    def __init__(self, upstream_port: int, *, refuse_mqtt5: bool = False) -> None:
        self.upstream_port = upstream_port
        self.refuse_mqtt5 = refuse_mqtt5
        self.port = 0
        self.connections = 0
        self.refused_mqtt5 = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> MqttProxy:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def cut(self) -> None:
        """Abort every proxied connection on both sides, as a dead mobile link would."""
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def _serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(c_writer)
        first = await _read_packet(c_reader)
        if first is None:
            c_writer.transport.abort()
            return
        if self.refuse_mqtt5 and _connect_level(first) == 5:
            self.refused_mqtt5 += 1
            c_writer.write(CONNACK_BAD_PROTOCOL)
            with contextlib.suppress(ConnectionError):
                await c_writer.drain()
            c_writer.close()
            return
        try:
            u_reader, u_writer = await asyncio.open_connection(HOST, self.upstream_port)
        except OSError:
            c_writer.transport.abort()
            return
        self._writers.add(u_writer)
        u_writer.write(first)
        for src, dst in ((c_reader, u_writer), (u_reader, c_writer)):
            task = asyncio.create_task(_pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


async def _read_packet(reader: asyncio.StreamReader) -> bytes | None:
    """One whole MQTT control packet (fixed header + remaining length), or None at EOF."""
    try:
        head = await reader.readexactly(1)
        length, multiplier, raw_len = 0, 1, b""
        for _ in range(4):  # remaining length: at most 4 bytes (MQTT 3.1.1 §2.2.3)
            b = await reader.readexactly(1)
            raw_len += b
            length += (b[0] & 0x7F) * multiplier
            multiplier *= 128
            if not b[0] & 0x80:
                break
        return head + raw_len + await reader.readexactly(length)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


def _connect_level(packet: bytes) -> int | None:
    """The protocol level of a CONNECT packet (4 = 3.1.1, 5 = MQTT 5), else None."""
    if not packet or packet[0] != 0x10:
        return None
    i = 1
    while packet[i] & 0x80:
        i += 1
    name_len = int.from_bytes(packet[i + 1 : i + 3], "big")
    level_at = i + 3 + name_len
    return packet[level_at] if level_at < len(packet) else None


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        dst.transport.abort()
