"""Credential rotation in the cloud: the rules (pure), the broker's password file, the service on
a real store with a recording publisher, the settings, the CLI and the API routes. The whole
trip through a real Mosquitto and a real agent is tests/cloud/test_rotation_e2e.py."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import stat
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fleetlink_cloud import cli
from fleetlink_cloud.api.schemas_admin import CommandOut
from fleetlink_cloud.commands import REDACTED, REMOVED, CommandService, InvalidCommand
from fleetlink_cloud.config import BrokerSettings, load_settings
from fleetlink_cloud.credentials import (
    RECONNECT,
    ROTATE,
    BrokerPasswords,
    CredentialRotation,
    closed_args,
    latest_rotation,
    plan,
    replace_passwd_line,
    start_rotation,
)
from fleetlink_cloud.errors import ConfigError
from fleetlink_cloud.registry import add_device, passwd_line, verify_mosquitto_hash
from fleetlink_cloud.store import Store, open_store
from fleetlink_cloud.store.base import CommandRow, CommandStatus
from fleetlink_protocols.messages import decode_command
from tests.cloud.api.harness import Api, api_for, client_for
from tests.peers.postgres import TestDatabase

DEV = "veh-rot-1"
NOW_NS = 1_717_243_200_000_000_000


# -- the rules ----------------------------------------------------------------------------------


def row(
    cid: str, status: CommandStatus = "sent", *, args: dict[str, object] | None = None
) -> CommandRow:
    return CommandRow(cid, DEV, ROTATE, args or {"password": "p-" + cid}, status, 0, None, None,
                      None, "")  # fmt: skip


def test_plan_applies_the_newest_done_and_supersedes_what_is_older() -> None:
    rows = [row("r5", "queued"), row("r4", "done"), row("r3", "sent"), row("r2", "done"),
            row("r1", "rejected")]  # fmt: skip
    p = plan(rows)
    assert p.apply is not None
    assert p.apply.command_id == "r4"
    assert [r.command_id for r in p.superseded] == ["r3", "r2", "r1"]
    assert p.refused == ()  # r5 waits: the device has not answered yet


def test_plan_never_applies_what_is_older_than_an_applied_rotation() -> None:
    applied = row("r3", "done", args=closed_args("applied", 1))
    late = row("r2", "done")  # its ack came after r3 was applied
    p = plan([row("r4", "failed"), applied, late])
    assert p.apply is None
    assert [r.command_id for r in p.superseded] == ["r2"]
    assert [r.command_id for r in p.refused] == ["r4"]
    assert plan([row("r9", "accepted")]) == plan([])  # nothing to do while it waits


# -- the password file --------------------------------------------------------------------------


def test_replace_passwd_line_keeps_other_users_owner_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_text("backend:$7$b\nveh-rot-1:$7$old\nveh-2:$7$two\n")
    path.chmod(0o640)
    if os.geteuid() == 0:
        os.chown(path, 1, 1)  # a broker user: the rewritten file must stay readable to it
    replace_passwd_line(path, passwd_line(DEV, "$7$new"))
    assert path.read_text() == "backend:$7$b\nveh-2:$7$two\nveh-rot-1:$7$new\n"
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o640
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (1, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["passwd"]


# -- the service --------------------------------------------------------------------------------


@dataclass
class Recorder:
    """A publisher that keeps what it was given (the broker side is the e2e test's)."""

    sent: list[tuple[str, bytes]] = field(default_factory=list)

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.sent.append((topic, payload))

    def commands(self) -> list[tuple[str, dict[str, object]]]:
        return [(c.name, dict(c.args)) for c in (decode_command(p) for t, p in self.sent
                                                 if t.endswith("/dn/cmd"))]  # fmt: skip


BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cloud.sqlite3'}"
        return
    db = TestDatabase.create()
    try:
        yield db.url_for_schema()
    finally:
        db.drop()


@dataclass
class Clock:
    now: int = NOW_NS

    def __call__(self) -> int:
        return self.now


@dataclass
class World:
    clock: Clock
    store: Store
    commands: CommandService
    publisher: Recorder
    passwd: Path
    reloads: Path  # one line per reload the broker got
    old_password: str

    def rotation(self, reload_ok: bool = True) -> CredentialRotation:
        script = "import sys; open(sys.argv[1], 'a').write('reload\\n'); sys.exit(int(sys.argv[2]))"
        broker = BrokerPasswords(
            self.passwd,
            reload_command=[sys.executable, "-c", script, str(self.reloads), str(1 - reload_ok)],
        )
        return CredentialRotation(self.store, self.commands, broker, clock=lambda: NOW_NS,
                                  settle_s=0.0)  # fmt: skip

    def reload_count(self) -> int:
        return len(self.reloads.read_text().splitlines()) if self.reloads.exists() else 0

    async def ack(self, command_id: str, status: CommandStatus, detail: str = "") -> None:
        await self.store.record_command_ack(
            DEV, command_id, status=status, detail=detail, received_wall_ns=NOW_NS
        )

    async def password_of(self, command_id: str) -> str:
        got = await self.store.get_command(command_id)
        assert got is not None
        return str(got.args["password"])


@pytest.fixture
async def world(store_url: str, tmp_path: Path) -> AsyncIterator[World]:
    async with open_store(store_url) as store:
        creds = await add_device(store, DEV)
        await store.record_birth(DEV, 1, agent_version="1", started_wall_ns=NOW_NS,
                                 alias_extras={}, received_wall_ns=NOW_NS)  # fmt: skip
        passwd = tmp_path / "passwd"
        passwd.write_text(f"backend:$7$b\n{creds.passwd_line}\n")
        publisher, clock = Recorder(), Clock()
        commands = CommandService(store, publisher, prefix="fleet", clock=clock)
        yield World(clock, store, commands, publisher, passwd, tmp_path / "reloads", creds.password)


async def test_an_acked_rotation_updates_the_broker_and_forgets_the_password(world: World) -> None:
    rotation = world.rotation()
    started = await start_rotation(world.commands, DEV, actor="tok-admin")
    password = await world.password_of(started.command_id)
    assert world.publisher.commands() == [(ROTATE, {"password": password})]  # sent: online
    assert CommandOut.model_validate(started).args == {"password": REDACTED}
    assert await rotation.sweep() == 0  # sent, not acked: nothing changes
    assert world.reload_count() == 0

    await world.ack(started.command_id, "accepted")
    await world.ack(started.command_id, "done", "new credential kept")
    assert await rotation.finish(DEV) is True
    device = await world.store.get_device(DEV)
    assert device is not None
    assert verify_mosquitto_hash(password, device.password_hash)
    lines = world.passwd.read_text().splitlines()
    assert lines[0] == "backend:$7$b"
    assert lines[1].startswith(f"{DEV}:$7$")
    assert verify_mosquitto_hash(password, lines[1].split(":", 1)[1])
    assert not verify_mosquitto_hash(world.old_password, lines[1].split(":", 1)[1])
    assert world.reload_count() == 1
    done = await world.store.get_command(started.command_id)
    assert done is not None
    assert done.args == closed_args("applied", NOW_NS)
    assert CommandOut.model_validate(done).args["password"] == REMOVED
    # The device is told to switch now, once: a second finish finds nothing to do.
    assert [name for name, _ in world.publisher.commands()] == [ROTATE, RECONNECT]
    assert await rotation.finish(DEV) is False
    assert world.reload_count() == 1
    latest = await latest_rotation(world.store, DEV)
    assert latest is not None
    assert latest.state == "applied"
    assert latest.reconnect is not None
    assert latest.reconnect.status == "sent"
    audit = await world.store.list_audit()
    assert [(a.actor, a.method, a.status) for a in audit] == [("rotation", "ROTATE", 200)]
    assert started.command_id in audit[0].detail
    everything = [c.args for c in await world.store.list_commands(DEV)]
    assert password not in json.dumps(everything)


async def test_a_refused_rotation_changes_nothing_and_forgets_the_password(world: World) -> None:
    before = world.passwd.read_text()
    started = await start_rotation(world.commands, DEV, actor="cli")
    await world.ack(started.command_id, "rejected", "unknown command 'rotate_credentials'")
    assert await world.rotation().finish(DEV) is False
    assert world.passwd.read_text() == before
    assert world.reload_count() == 0
    device = await world.store.get_device(DEV)
    assert device is not None
    assert verify_mosquitto_hash(world.old_password, device.password_hash)
    latest = await latest_rotation(world.store, DEV)
    assert latest is not None
    assert (latest.state, latest.command.args["password"], latest.reconnect) == (
        "refused",
        REMOVED,
        None,
    )


async def test_a_newer_rotation_supersedes_an_older_one_even_when_its_ack_is_late(
    world: World,
) -> None:
    rotation = world.rotation()
    first = await start_rotation(world.commands, DEV, actor="cli")
    world.clock.now += 1  # created later: ordered after the first
    second = await start_rotation(world.commands, DEV, actor="cli")
    newer = await world.password_of(second.command_id)
    await world.ack(second.command_id, "done")
    assert await rotation.finish(DEV) is True
    await world.ack(first.command_id, "done")  # late: the device has the second one too
    assert await rotation.finish(DEV) is False
    device = await world.store.get_device(DEV)
    assert device is not None
    assert verify_mosquitto_hash(newer, device.password_hash)
    states = {r.command_id: r.args.get("outcome") for r in await world.store.list_commands(DEV)}
    assert states[first.command_id] == "superseded"
    assert states[second.command_id] == "applied"
    assert world.reload_count() == 1


async def test_a_failing_reload_keeps_the_rotation_open_for_the_next_sweep(world: World) -> None:
    started = await start_rotation(world.commands, DEV, actor="cli")
    password = await world.password_of(started.command_id)
    await world.ack(started.command_id, "done")
    failing = world.rotation(reload_ok=False)
    assert await failing.finish(DEV) is False
    assert failing.counters["broker_failures"] == 1
    assert await world.password_of(started.command_id) == password  # kept to try again
    assert [name for name, _ in world.publisher.commands()] == [ROTATE]  # no reconnect yet
    assert await world.rotation().sweep() == 1
    assert await world.password_of(started.command_id) == REMOVED


async def test_set_command_args_replaces_args_only(world: World) -> None:
    started = await start_rotation(world.commands, DEV, actor="cli")
    updated = await world.store.set_command_args(started.command_id, {"password": REMOVED})
    assert updated is not None
    assert updated.args == {"password": REMOVED}
    assert (updated.status, updated.sent_wall_ns) == (started.status, started.sent_wall_ns)
    assert await world.store.set_command_args("no-such-command", {}) is None


async def test_rotation_args_are_checked(world: World) -> None:
    for args in ({}, {"password": "short"}, {"password": "x" * 40, "user": "y"},
                 {"password": "has space" + "x" * 40}):  # fmt: skip
        with pytest.raises(InvalidCommand):
            await world.commands.create(DEV, ROTATE, args)


# -- settings, CLI, API -------------------------------------------------------------------------


def test_broker_settings_check_the_rotation_keys(tmp_path: Path) -> None:
    ok = BrokerSettings(embedded=False, passwd_file=tmp_path / "p", reload_pid_file=tmp_path / "m")
    assert BrokerPasswords.from_settings(ok) is not None
    assert BrokerPasswords.from_settings(BrokerSettings()) is None
    bad = [
        {"embedded": True, "passwd_file": "p", "reload_command": ["true"]},
        {"embedded": False, "passwd_file": "p"},
        {"embedded": False, "passwd_file": "p", "reload_command": ["x"], "reload_pid_file": "m"},
        {"embedded": False, "reload_command": ["systemctl", "reload", "mosquitto"]},
        {"embedded": False, "passwd_file": "p", "reload_command": []},
        {"embedded": False, "passwd_file": "p", "reload_command": [""]},
    ]
    for broker in bad:
        with pytest.raises(ConfigError, match="broker"):
            load_settings(None, broker=broker)


def test_cli_rotate_queues_a_rotation_and_never_prints_the_password(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'cloud.sqlite3'}"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert cli.main(["devices", "add", DEV, "--database", db, "--json"]) == 0
        out.truncate(0)
        out.seek(0)
        assert cli.main(["devices", "rotate", DEV, "--database", db, "--json"]) == 0
        assert cli.main(["devices", "rotate", "nope", "--database", db]) == 1
    shown = json.loads(out.getvalue())
    assert "no device nope" in err.getvalue()

    async def check() -> None:
        async with open_store(db) as store:
            got = await store.get_command(shown["command_id"])
            assert got is not None
            assert (got.name, got.status) == (ROTATE, "queued")  # the service sends it
            assert str(got.args["password"]) not in out.getvalue()
            audit = await store.list_audit()
            assert [a.path for a in audit] == ["devices add", "devices rotate"]

    asyncio.run(check())


async def test_api_rotate_is_admin_only_and_shows_no_password(api: Api) -> None:
    url = "/v1/vehicles/veh-1/credentials/rotate"
    status_url = "/v1/vehicles/veh-1/credentials/rotation"
    async with client_for(api) as client:
        assert (await client.post(url, headers=api.auth("dispatch"))).status_code == 403
        none = await client.get(status_url, headers=api.auth("admin"))
        assert none.status_code == 404
        r = await client.post(url, json={"expires_in_s": 3600}, headers=api.auth("admin"))
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["state"] == "waiting"
        assert body["command"]["args"] == {"password": REDACTED}
        assert body["command"]["expires_wall_ns"] is not None
        cid = body["command"]["command_id"]
        stored = await api.store.get_command(cid)
        assert stored is not None
        password = str(stored.args["password"])
        listed = await client.get("/v1/vehicles/veh-1/commands", headers=api.auth("read"))
        one = await client.get(f"/v1/commands/{cid}", headers=api.auth("read"))
        got = await client.get(status_url, headers=api.auth("admin"))
        for response in (r, listed, one, got):
            assert password not in response.text
        assert got.json()["command"]["command_id"] == cid
        missing = await client.post(url.replace("veh-1", "nope"), headers=api.auth("admin"))
        assert missing.status_code == 404
    audit = await api.store.list_audit()
    assert any(a.detail == f"credential rotation {cid}" and a.status == 201 for a in audit)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with api_for(tmp_path) as world:
        yield world
