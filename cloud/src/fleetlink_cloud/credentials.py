"""Credential rotation: a device gets a new MQTT password over its existing connection, the
broker takes it only once the device has kept it, and the old password stops working.

1. ``start_rotation`` mints a password (``registry``) and queues a ``rotate_credentials``
   command carrying it. ``CommandService`` sends it like any command, when the device is online;
   it may wait queued for days.
2. The device keeps it on disk, offers it first from then on, and acks done.
3. ``CredentialRotation`` sees the ack (a ``command.acked`` event, or its sweep). It stores the
   new hash in the registry, replaces the device's line in the broker's password file and
   reloads the broker (``BrokerPasswords``), removes the password from the command's args, and
   queues ``reconnect`` so that the device switches now.
4. A rotation acked failed or rejected changes nothing, and its password is removed all the
   same. A rotation never acked changes nothing: the old password keeps working. Once a newer
   rotation of a device is done, older unfinished ones are superseded, never applied: the device
   offers the newer password first, and applying an older one after it would lock it out.

Each outcome is an audit row (actor ``rotation``) and is kept in the command's args
(``{"password": "<removed>", "outcome": "applied" | "refused" | "superseded"}``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from fleetlink_cloud.bus import EventBus, StreamEvent, follow
from fleetlink_cloud.commands import REMOVED, CommandService, command_id_for
from fleetlink_cloud.config import BrokerSettings
from fleetlink_cloud.errors import BrokerError
from fleetlink_cloud.registry import (
    generate_password,
    merge_passwd_line,
    mosquitto_hash,
    passwd_line,
)
from fleetlink_cloud.store.base import CommandRow, Store

log = logging.getLogger(__name__)

ROTATE: Final = "rotate_credentials"
RECONNECT: Final = "reconnect"
ACTOR: Final = "rotation"  # audit rows and commands of this service
HISTORY: Final = 1000  # a device's newest commands looked at for unfinished rotations
SWEEP_INTERVAL_S: Final = 30.0
RELOAD_TIMEOUT_S: Final = 30.0
FINAL: Final = frozenset({"done", "failed", "rejected"})
# The audit row's status of each outcome, in HTTP's terms.
AUDIT_STATUS: Final = {"applied": 200, "superseded": 409, "refused": 422}

Outcome = Literal["applied", "refused", "superseded"]
State = Literal["waiting", "applied", "refused", "superseded"]


# -- pure rules ------------------------------------------------------------------------------


def is_open(row: CommandRow) -> bool:
    """A rotation whose args still hold its password: not finished."""
    return row.name == ROTATE and row.args.get("password") != REMOVED


def state_of(row: CommandRow) -> State:
    """``waiting`` until the rotation is finished, then its outcome."""
    outcome = row.args.get("outcome")
    if is_open(row) or outcome not in ("applied", "refused", "superseded"):
        return "waiting"
    state: State = outcome
    return state


def closed_args(outcome: Outcome, at_wall_ns: int) -> dict[str, Any]:
    """What a finished rotation's args become: the marker instead of the password."""
    return {"password": REMOVED, "outcome": outcome, "at_wall_ns": at_wall_ns}


def reconnect_id(device_id: str, rotation_id: str) -> str:
    """The id of the ``reconnect`` after a rotation: derived, so finishing twice sends one."""
    return command_id_for(device_id, command_id=None, idempotency_key=f"{ROTATE} {rotation_id}")


@dataclass(frozen=True, slots=True)
class Plan:
    """What a device's acks allow now (``plan``)."""

    apply: CommandRow | None = None  # the newest rotation acked done and not applied yet
    superseded: tuple[CommandRow, ...] = ()  # unfinished ones older than a done one
    refused: tuple[CommandRow, ...] = ()  # acked failed or rejected


def plan(rows: Sequence[CommandRow]) -> Plan:
    """The plan for one device's commands, given newest first (``Store.list_commands``)."""
    apply: CommandRow | None = None
    newer_done = False  # a done rotation (applied or to apply) is newer than this row
    superseded: list[CommandRow] = []
    refused: list[CommandRow] = []
    for row in rows:
        if row.name != ROTATE:
            continue
        if not is_open(row):
            newer_done = newer_done or state_of(row) == "applied"
        elif newer_done:
            superseded.append(row)
        elif row.status == "done":
            apply, newer_done = row, True
        elif row.status in FINAL:
            refused.append(row)
    return Plan(apply, tuple(superseded), tuple(refused))


async def start_rotation(
    commands: CommandService, device_id: str, *, actor: str, expires_in_s: float | None = None
) -> CommandRow:
    """Queue a rotation with a fresh password (sent when the device is online); the password
    is not returned: it travels to the device only. Raises NotFound for an unknown device."""
    created = await commands.create(
        device_id, ROTATE, {"password": generate_password()}, expires_in_s=expires_in_s, actor=actor
    )
    return created.command


# -- the broker's password file ---------------------------------------------------------------


def replace_passwd_line(path: Path, line: str) -> None:
    """Replace one user's line of a Mosquitto password file, atomically: a temporary file with
    the old one's owner and mode, fsync, rename over. Raises OSError (nothing changed then)."""
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    st = path.stat() if path.exists() else None
    tmp = path.with_name(f".{path.name}.rotation")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        if st is not None:
            # The broker reads the file after dropping its privileges: keep who may read it.
            if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                os.fchown(fd, st.st_uid, st.st_gid)
            os.fchmod(fd, st.st_mode & 0o777)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(merge_passwd_line(existing, line))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class BrokerPasswords:
    """The password file of an external Mosquitto and how to make it read the file again."""

    def __init__(
        self,
        passwd_file: Path,
        *,
        reload_command: Sequence[str] | None = None,
        reload_pid_file: Path | None = None,
        timeout_s: float = RELOAD_TIMEOUT_S,
    ) -> None:
        if (reload_command is None) == (reload_pid_file is None):
            raise ValueError("exactly one of reload_command, reload_pid_file")
        self.passwd_file = passwd_file
        self._command = tuple(reload_command or ())
        self._pid_file = reload_pid_file
        self._timeout_s = timeout_s

    @classmethod
    def from_settings(cls, settings: BrokerSettings) -> BrokerPasswords | None:
        """None when the settings leave the broker's passwords alone (no ``passwd_file``)."""
        if settings.passwd_file is None:
            return None
        return cls(
            settings.passwd_file,
            reload_command=settings.reload_command,
            reload_pid_file=settings.reload_pid_file,
        )

    async def replace(self, device_id: str, password_hash: str) -> None:
        """Put the device's new hash in the file and reload the broker; raises BrokerError."""
        try:
            await asyncio.to_thread(
                replace_passwd_line, self.passwd_file, passwd_line(device_id, password_hash)
            )
        except OSError as exc:
            raise BrokerError(f"cannot rewrite {self.passwd_file}: {exc}") from exc
        await self.reload()

    async def reload(self) -> None:
        """Make the broker read its files again; raises BrokerError."""
        if self._pid_file is not None:
            try:
                text = await asyncio.to_thread(self._pid_file.read_text, encoding="ascii")
                os.kill(int(text.strip()), signal.SIGHUP)
            except (OSError, ValueError) as exc:
                raise BrokerError(f"cannot SIGHUP the broker of {self._pid_file}: {exc}") from exc
            return
        await self._run_reload_command()

    async def _run_reload_command(self) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
        except OSError as exc:
            raise BrokerError(f"cannot run {self._command[0]}: {exc}") from exc
        try:
            async with asyncio.timeout(self._timeout_s):
                output, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise BrokerError(
                f"{self._command[0]} still running after {self._timeout_s:g} s"
            ) from None
        if proc.returncode != 0:
            said = output.decode(errors="replace").strip()[-300:]
            raise BrokerError(f"{self._command[0]} exited {proc.returncode}: {said}")


# -- the service -----------------------------------------------------------------------------


class CredentialRotation:
    """Finishes rotations as their devices ack them. One per process that runs command
    delivery (the service); ``broker`` None leaves the broker's passwords to the operator."""

    def __init__(
        self,
        store: Store,
        commands: CommandService,
        broker: BrokerPasswords | None,
        *,
        clock: Callable[[], int] = time.time_ns,
        settle_s: float = 1.0,
        sweep_interval_s: float = SWEEP_INTERVAL_S,
    ) -> None:
        self._store = store
        self._commands = commands
        self._broker = broker
        self._clock = clock
        self._settle_s = settle_s
        self._sweep_interval_s = sweep_interval_s
        self._lock = asyncio.Lock()  # one device at a time: a sweep racing an ack event
        self.counters: dict[str, int] = {
            "applied": 0,
            "refused": 0,
            "superseded": 0,
            "broker_failures": 0,
        }

    async def finish(self, device_id: str) -> bool:
        """Do what the device's acks allow; True if a rotation was applied now.

        Raises StoreError; a broker failure is logged and counted, and the rotation keeps its
        password so that the next sweep tries again.
        """
        async with self._lock:
            todo = plan(await self._store.list_commands(device_id, limit=HISTORY))
            for row in todo.refused:
                await self._close(row, "refused", f"the device said {row.status}: {row.detail}")
            if todo.apply is None:
                return False
            # Superseded first: should we stop halfway, an older one must never be applied.
            for row in todo.superseded:
                await self._close(row, "superseded", f"{todo.apply.command_id} is newer")
            if not await self._apply(todo.apply):
                return False
        if self._broker is not None:
            await asyncio.sleep(self._settle_s)  # the broker reloads on its own time
            await self._commands.create(
                device_id,
                RECONNECT,
                command_id=reconnect_id(device_id, todo.apply.command_id),
                actor=ACTOR,
            )
        return True

    async def _apply(self, row: CommandRow) -> bool:
        password = str(row.args["password"])
        hashed = mosquitto_hash(password)
        await self._store.set_device_password(row.device_id, hashed)
        where = "registry only: reload the broker's password file yourself"
        if self._broker is not None:
            try:
                await self._broker.replace(row.device_id, hashed)
            except BrokerError as exc:
                self.counters["broker_failures"] += 1
                log.error("rotation %s of %s not applied: %s", row.command_id, row.device_id, exc)
                return False
            where = f"{self._broker.passwd_file}, broker reloaded"
        await self._close(row, "applied", where)
        return True

    async def _close(self, row: CommandRow, outcome: Outcome, why: str) -> None:
        now = self._clock()
        await self._store.set_command_args(row.command_id, closed_args(outcome, now))
        self.counters[outcome] += 1
        detail = f"rotation {row.command_id} {outcome} ({why})"
        log.info("device %s: %s", row.device_id, detail)
        await self._store.add_audit(
            ts_wall_ns=now,
            actor=ACTOR,
            method="ROTATE",
            path=f"/v1/vehicles/{row.device_id}/credentials",
            status=AUDIT_STATUS[outcome],
            detail=detail[:500],
        )

    async def sweep(self) -> int:
        """Finish every device's acked rotations; returns how many were applied."""
        applied = 0
        for device in await self._store.list_devices():
            applied += await self.finish(device.id)
        return applied

    async def on_event(self, event: StreamEvent) -> None:
        """A final ack of a rotation finishes it now rather than at the next sweep."""
        of_rotation = event.type == "command.acked" and event.data.get("name") == ROTATE
        if of_rotation and event.data.get("status") in FINAL:
            await self.finish(event.device_id)

    async def run(self, bus: EventBus | None = None) -> None:
        """Finish rotations on acks (from ``bus``) and in a periodic sweep, until cancelled."""
        await follow(
            bus,
            {"command.acked"},
            self.on_event,
            self.sweep,
            self._sweep_interval_s,
            what="credential rotation",
        )


@dataclass(frozen=True, slots=True)
class Rotation:
    """A device's latest rotation as operators see it, and the reconnect that followed it."""

    command: CommandRow
    state: State
    reconnect: CommandRow | None


async def latest_rotation(store: Store, device_id: str) -> Rotation | None:
    """The device's newest rotation, None if it never had one."""
    rows = await store.list_commands(device_id, limit=HISTORY)
    row = next((r for r in rows if r.name == ROTATE), None)
    if row is None:
        return None
    reconnect = await store.get_command(reconnect_id(device_id, row.command_id))
    return Rotation(row, state_of(row), reconnect)
