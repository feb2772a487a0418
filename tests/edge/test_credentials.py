"""Rotated credentials on the device: the rules (pure), the file, the two commands, then the
uplink against a real Mosquitto whose password changes under it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleetlink_edge.commands import CommandHandler
from fleetlink_edge.config import CommandSettings, OutboxSettings, UplinkSettings
from fleetlink_edge.credentials import (
    MAX_PENDING,
    Attempt,
    CredentialFile,
    Kept,
    check_password,
    decode_kept,
    describe_connection,
    encode_kept,
)
from fleetlink_edge.errors import ConfigError, UplinkError
from fleetlink_edge.mqtt import CredentialsRefused, Message, MqttClient
from fleetlink_edge.outbox import Outbox
from fleetlink_edge.uplink import Uplink
from fleetlink_protocols.codec import decode_batch
from fleetlink_protocols.messages import AckStatus, Birth, Command, CommandAck, encode_command
from fleetlink_protocols.records import Position
from fleetlink_protocols.topics import Topics, mosquitto_acl_entries
from tests.peers import require_binary
from tests.peers.mosquitto import Mosquitto

DEVICE = "veh-rot-01"
TOPICS = Topics("fleet", DEVICE)
OLD, NEW, NEWER = "old-password-0", "new-password-1", "newer-password-2"
BACKEND_PASSWORD = "backend-secret"
NOW_NS = 1_717_243_200_000_000_000
BOOT = 3
WAIT_S = 30.0

A, D, F, R = AckStatus.ACCEPTED, AckStatus.DONE, AckStatus.FAILED, AckStatus.REJECTED


# -- the rules ----------------------------------------------------------------------------------


def test_attempts_offer_pending_newest_first_then_current_then_configured() -> None:
    kept = Kept(current=OLD, pending=(NEW, NEWER))
    assert [(a.password, a.source) for a in kept.attempts("from-toml")] == [
        (NEWER, "rotated"),
        (NEW, "rotated"),
        (OLD, "current"),
        ("from-toml", "configured"),
    ]
    # The configured password is not offered twice, and None (no password) is still offered.
    assert [a.source for a in Kept(current=OLD).attempts(OLD)] == ["current"]
    assert Kept().attempts(None) == [Attempt(None, "configured")]


def test_after_connect_promotes_the_taken_password_and_keeps_only_newer_ones() -> None:
    kept = Kept(current=OLD, pending=(NEW, NEWER))
    assert kept.after_connect(Attempt(NEW, "rotated")) == Kept(NEW, (NEWER,))
    assert kept.after_connect(Attempt(NEWER, "rotated")) == Kept(NEWER, ())
    assert kept.after_connect(Attempt(OLD, "current")) == kept  # the rotations may still come
    # The broker took the configured password: the kept current one is dead.
    assert kept.after_connect(Attempt("toml", "configured")) == Kept(None, (NEW, NEWER))


def test_rotations_are_bounded_and_never_doubled() -> None:
    kept, dropped = Kept(OLD).with_rotation(NEW)
    assert (kept, dropped) == (Kept(OLD, (NEW,)), 0)
    kept, dropped = kept.with_rotation(NEW)  # a redelivered command after a restart
    assert (kept.pending, dropped) == ((NEW,), 0)
    for i in range(MAX_PENDING):
        kept, dropped = kept.with_rotation(f"p-{i}")
    assert kept.pending == tuple(f"p-{i}" for i in range(MAX_PENDING))
    assert dropped == 1


def test_the_file_format_round_trips_and_refuses_what_it_did_not_write() -> None:
    kept = Kept(OLD, (NEW, NEWER))
    assert decode_kept(encode_kept(kept)) == kept
    assert decode_kept(encode_kept(Kept())) == Kept()
    for bad in ("", "[]", '{"version": 2}', '{"version": 1, "pending": "x"}',
                '{"version": 1, "current": "", "pending": []}'):  # fmt: skip
        with pytest.raises(ValueError, match=r"."):
            decode_kept(bad)
    assert OLD not in repr(kept)  # never in a log line or a traceback
    assert NEW not in repr(Attempt(NEW, "rotated"))


def test_check_password() -> None:
    assert check_password(NEW) == NEW
    for bad in ("", None, 42, "x" * 257, "tab\there"):
        with pytest.raises(ValueError, match=r"."):
            check_password(bad)


def test_describe_connection() -> None:
    assert describe_connection(Attempt(NEW, "rotated"), Kept(NEW)) == (
        "connected with the rotated credential"
    )
    assert describe_connection(Attempt(OLD, "current"), Kept(OLD, (NEW,))) == (
        "connected with the current credential; the broker refused 1 newer rotated "
        "credential(s), kept for the next connection"
    )


# -- the file ---------------------------------------------------------------------------------


async def test_a_rotation_is_on_disk_0600_before_rotate_returns(tmp_path: Path) -> None:
    path = tmp_path / "state" / "outbox.credentials.json"
    creds = CredentialFile(path, OLD)
    await creds.load()  # missing: nothing kept
    assert creds.attempts() == [Attempt(OLD, "configured")]
    await creds.rotate(NEW)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"version": 1, "current": None, "pending": [NEW]}
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    await creds.connected(Attempt(NEW, "rotated"))
    assert json.loads(path.read_text())["current"] == NEW
    again = CredentialFile(path, OLD)  # the next start of the agent
    await again.load()
    assert again.kept == Kept(NEW)
    assert [a.source for a in again.attempts()] == ["current", "configured"]
    assert creds.counters["rotations"] == creds.counters["switches"] == 1


async def test_an_unwritable_file_fails_the_rotation_and_changes_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    creds = CredentialFile(blocker / "outbox.credentials.json", OLD)
    with pytest.raises(ConfigError, match="cannot write kept credentials"):
        await creds.rotate(NEW)
    assert creds.kept == Kept()
    assert creds.counters["write_failures"] == 1


async def test_a_malformed_file_leaves_the_configured_password(tmp_path: Path) -> None:
    path = tmp_path / "outbox.credentials.json"
    path.write_text('{"version": 1, "current": 7}')
    creds = CredentialFile(path, OLD)
    await creds.load()
    assert creds.attempts() == [Attempt(OLD, "configured")]
    assert creds.counters["unreadable"] == 1
    assert path.read_text() == '{"version": 1, "current": 7}'  # left for inspection


# -- the commands -----------------------------------------------------------------------------


class FakeAcks:
    def __init__(self) -> None:
        self.sent: list[CommandAck] = []

    def of(self, command_id: str) -> list[tuple[AckStatus, str]]:
        return [(a.status, a.detail) for a in self.sent if a.command_id == command_id]

    def send(self, ack: CommandAck) -> None:
        self.sent.append(ack)


def handler(
    acks: FakeAcks,
    credentials: CredentialFile | None,
    reconnect: Callable[[float], asyncio.Future[str]] | None = None,
) -> CommandHandler:
    return CommandHandler(
        CommandSettings(),
        TOPICS,
        acks,
        agent_version="1.2.3",
        now_wall_ns=lambda: NOW_NS,
        uptime_s=lambda: 1.0,
        credentials=credentials,
        reconnect=reconnect,
    )


async def send(h: CommandHandler, command: Command) -> None:
    await h.handle(Message(TOPICS.cmd, encode_command(command)))


async def test_rotate_credentials_is_done_once_the_password_is_kept(tmp_path: Path) -> None:
    acks = FakeAcks()
    creds = CredentialFile(tmp_path / "outbox.credentials.json", OLD)
    h = handler(acks, creds)
    await send(h, Command("rot-1", "rotate_credentials", {"password": NEW}))
    assert acks.of("rot-1") == [(A, ""), (D, "new credential kept; offered first from now on")]
    assert creds.kept == Kept(None, (NEW,))
    await send(h, Command("rot-2", "rotate_credentials", {"password": NEW, "user": "x"}))
    await send(h, Command("rot-3", "rotate_credentials", {"password": ""}))
    await send(h, Command("rot-4", "rotate_credentials", {}))
    assert [acks.of(f"rot-{i}")[0][0] for i in (2, 3, 4)] == [R, R, R]
    assert acks.of("rot-3") == [(R, "password must be a non-empty string")]
    assert all(NEW not in a.detail for a in acks.sent)  # the password never goes back


async def test_rotate_credentials_fails_when_it_cannot_be_kept(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    acks = FakeAcks()
    await send(handler(acks, CredentialFile(blocker / "c.json", OLD)),
               Command("rot-1", "rotate_credentials", {"password": NEW}))  # fmt: skip
    (_, (status, detail)) = acks.of("rot-1")
    assert status == F
    assert detail.startswith("cannot write kept credentials"), detail
    acks = FakeAcks()  # an agent without a user name has nothing to rotate
    await send(handler(acks, None), Command("rot-2", "rotate_credentials", {"password": NEW}))
    assert acks.of("rot-2") == [
        (R, "this agent connects without a user name: no password to rotate")
    ]


async def test_reconnect_reports_what_the_new_connection_uses() -> None:
    asked: list[float] = []

    def reconnect(timeout_s: float) -> asyncio.Future[str]:
        asked.append(timeout_s)
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        if len(asked) == 1:
            done.set_result("connected with the rotated credential")
        else:
            done.set_exception(UplinkError("not connected again within 60 s"))
        return done

    acks = FakeAcks()
    h = handler(acks, None, reconnect)
    await send(h, Command("rc-1", "reconnect"))
    await send(h, Command("rc-2", "reconnect"))
    await send(h, Command("rc-3", "reconnect", {"now": True}))
    assert acks.of("rc-1") == [(A, ""), (D, "connected with the rotated credential")]
    assert acks.of("rc-2") == [(A, ""), (F, "not connected again within 60 s")]
    assert acks.of("rc-3")[0][0] == R
    assert asked == [60.0, 60.0]


# -- the uplink against Mosquitto -------------------------------------------------------------


@dataclass
class Broker:
    mosquitto: Mosquitto
    pid_file: Path

    @property
    def port(self) -> int:
        return self.mosquitto.port

    def set_password(self, password: str, *, reload: bool) -> None:
        """What the cloud's rotation does to the broker: the device's line, then SIGHUP."""
        tool = require_binary("mosquitto_passwd", "mosquitto")
        passwd = self.mosquitto.dir / "passwd"
        subprocess.run([tool, "-b", str(passwd), DEVICE, password], check=True)
        if reload:
            os.kill(int(self.pid_file.read_text()), signal.SIGHUP)


@pytest.fixture
def broker() -> Iterator[Broker]:
    # The pid file must be writable by the user the broker drops to; pytest's tmp_path is not.
    piddir = Path(tempfile.mkdtemp(prefix="fleetlink-pid-"))
    piddir.chmod(0o777)
    pid_file = piddir / "mosquitto.pid"
    users = {DEVICE: OLD, "backend": BACKEND_PASSWORD}
    acl = mosquitto_acl_entries("fleet").splitlines()
    try:
        with Mosquitto(users, acl, extra_config=[f"pid_file {pid_file}"]) as b:
            yield Broker(b, pid_file)
    finally:
        shutil.rmtree(piddir, ignore_errors=True)


def settings(port: int) -> UplinkSettings:
    return UplinkSettings(
        host="127.0.0.1",
        port=port,
        username=DEVICE,
        password=OLD,
        keepalive_s=5,
        connect_timeout_s=5.0,
        batch_max_delay_s=0.05,
        backoff_initial_s=0.1,
        backoff_max_s=0.5,
        poll_interval_s=0.02,
    )


async def backend_seqs(port: int, seqs: set[int]) -> None:
    """Collect the seqs of every batch the device publishes, until cancelled."""
    s = settings(port).model_copy(update={"username": "backend", "password": BACKEND_PASSWORD})
    client = MqttClient(s, "backend-rotation-test")
    try:
        while True:
            try:
                await client.connect()
                await client.subscribe(f"fleet/{DEVICE}/+", qos=1)
            except UplinkError:
                await asyncio.sleep(0.1)
                continue
            async for m in client.messages():
                if m.topic in (TOPICS.live, TOPICS.history, TOPICS.events):
                    seqs.update(e.seq for e in decode_batch(m.payload).batch.entries)
    finally:
        await client.disconnect()


@contextlib.asynccontextmanager
async def streaming(
    tmp_path: Path, port: int, creds: CredentialFile
) -> AsyncIterator[tuple[Uplink, Outbox, set[int]]]:
    """An uplink streaming a position every 50 ms from a real outbox, and a backend."""
    seqs: set[int] = set()
    async with Outbox(OutboxSettings(path=tmp_path / "outbox.sqlite3"), boot_id=BOOT) as outbox:
        uplink = Uplink(
            settings(port), DEVICE, outbox, Birth(DEVICE, BOOT, "0.1.0", NOW_NS), credentials=creds
        )

        async def produce() -> None:
            i = 0
            while True:
                await outbox.append([Position(NOW_NS + i * 50_000_000, 52.5, 13.4)])
                i += 1
                await asyncio.sleep(0.05)

        tasks = [asyncio.create_task(c) for c in
                 (backend_seqs(port, seqs), uplink.run(), produce())]  # fmt: skip
        try:
            yield uplink, outbox, seqs
        finally:
            tasks[2].cancel()
            await asyncio.gather(tasks[2], return_exceptions=True)
            await until_async(lambda: drained(outbox, seqs))  # everything reached the backend
            for task in tasks[:2]:
                task.cancel()
            await asyncio.gather(*tasks[:2], return_exceptions=True)


async def drained(outbox: Outbox, seqs: set[int]) -> bool:
    return await outbox.pending_count() == 0 and seqs == set(range(outbox.next_seq))


async def until_async(check: Callable[[], object], timeout_s: float = WAIT_S) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.05)


@pytest.mark.mosquitto
async def test_a_rotation_the_broker_lacks_falls_back_then_switches_on_reload(
    tmp_path: Path, broker: Broker
) -> None:
    creds = CredentialFile(tmp_path / "outbox.credentials.json", OLD)
    await creds.rotate(NEW)  # kept, but the broker still has OLD (not reloaded yet)
    async with streaming(tmp_path, broker.port, creds) as (uplink, _outbox, seqs):
        await until_async(lambda: uplink.client.is_connected and len(seqs) > 10)
        assert creds.in_use == "configured"
        assert uplink.counters.credentials_refused == 1
        assert creds.kept == Kept(None, (NEW,))  # refused, never dropped
        # The reconnect command finds the broker still without it: the same fallback.
        said = await uplink.reconnect(10.0)
        assert said == (
            "connected with the configured credential; the broker refused 1 newer rotated "
            "credential(s), kept for the next connection"
        )
        broker.set_password(NEW, reload=False)  # written, not yet read by the broker
        assert "configured credential" in await uplink.reconnect(10.0)
        before = uplink.counters.connects
        broker.set_password(NEW, reload=True)
        # Mosquitto 2.0 drops a connection whose password it no longer has when it reloads.
        await until_async(lambda: uplink.counters.connects > before and uplink.client.is_connected)
        assert creds.in_use == "rotated"
        assert creds.kept == Kept(NEW, ())
        assert json.loads(creds.path.read_text())["current"] == NEW
        assert await uplink.reconnect(10.0) == "connected with the current credential"
        n = len(seqs)
        await until_async(lambda: len(seqs) > n + 10)  # streaming on with the new password
    # streaming() waited until every committed record reached the backend.
    old = MqttClient(settings(broker.port), "veh-rot-old")
    with pytest.raises(CredentialsRefused):
        await old.connect()
    await old.disconnect()
