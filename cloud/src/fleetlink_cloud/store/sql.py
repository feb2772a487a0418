"""SqlStore: the Store interface over any ``Conn``; backends supply connections and transactions.

Every method opens one transaction (writes) or one connection (reads) and delegates to the
functions of ``write``, ``presence``, ``read``, ``admin`` and ``stream``.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Self

from fleetlink_cloud.bus import StreamEvent
from fleetlink_cloud.dispatch.model import Depot, Driver, Job, JobState, VehicleProfile
from fleetlink_cloud.store import admin, configs, jobs, presence, read, routes, stream, write
from fleetlink_cloud.store.base import (
    AuditRow,
    CommandRow,
    CommandStatus,
    DeadLetter,
    Delivery,
    DesiredConfigRow,
    Device,
    DeviceConfig,
    DtcRow,
    DtcState,
    EventRow,
    EventsFor,
    HealthRow,
    IngestBatch,
    IngestResult,
    JobEventRow,
    JobRow,
    JobStreamFor,
    Ledger,
    Page,
    PositionRow,
    Presence,
    ReportedConfigRow,
    RouteRow,
    Scope,
    SignalRow,
    StoreStats,
    TokenRow,
    VehicleState,
    Webhook,
)
from fleetlink_cloud.store.conn import LOCK_MIGRATIONS, Conn, dumps
from fleetlink_cloud.store.schema import MIGRATIONS, VERSION_TABLE, Dialect, render

TABLES = (
    "devices",
    "seen",
    "positions",
    "signals",
    "dtcs",
    "events",
    "health",
    "stream_events",
    "dead_letters",
    "commands",
    "tokens",
    "audit",
    "webhooks",
    "deliveries",
    "desired_config",
    "reported_config",
    "depots",
    "drivers",
    "vehicle_profiles",
    "jobs",
    "job_events",
    "vehicle_routes",
)


class SqlStore(abc.ABC):
    """Implements fleetlink_cloud.store.base.Store; subclasses provide the connections."""

    dialect: Dialect
    url: str

    @abc.abstractmethod
    async def _connect(self) -> None: ...

    @abc.abstractmethod
    async def _disconnect(self) -> None: ...

    @abc.abstractmethod
    def _write(self) -> AbstractAsyncContextManager[Conn]:
        """A connection inside a write transaction: committed on exit, rolled back on error."""

    @abc.abstractmethod
    def _read(self) -> AbstractAsyncContextManager[Conn]:
        """A connection for reads (each statement sees committed data)."""

    async def __aenter__(self) -> Self:
        await self._connect()
        try:
            await self._migrate()
        except BaseException:
            await self._disconnect()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._disconnect()

    async def _migrate(self) -> None:
        """Apply missing migrations in one transaction, under a lock (idempotent)."""
        async with self._write() as c:
            await c.lock(LOCK_MIGRATIONS)
            await c.execute(VERSION_TABLE.format(bigint=self.dialect.bigint))
            done = {r[0] for r in await c.fetchall("SELECT version FROM schema_version")}
            for number, template in MIGRATIONS:
                if number in done:
                    continue
                for statement in render(template, self.dialect):
                    await c.execute(statement)
                await c.execute(
                    "INSERT INTO schema_version (version, applied_wall_ns) VALUES (?, ?)",
                    (number, time.time_ns()),
                )

    async def schema_version(self) -> int:
        async with self._read() as c:
            row = await c.fetchone("SELECT max(version) FROM schema_version")
        return int(row[0]) if row and row[0] is not None else 0

    async def stats(self) -> StoreStats:
        counts = {}
        async with self._read() as c:
            for table in TABLES:
                row = await c.fetchone(f"SELECT count(*) FROM {table}")
                counts[table] = int(row[0]) if row else 0
        return StoreStats(counts)

    # -- devices ---------------------------------------------------------------------------

    async def add_device(
        self, device_id: str, *, name: str, password_hash: str, created_wall_ns: int | None = None
    ) -> Device:
        created = time.time_ns() if created_wall_ns is None else created_wall_ns
        async with self._write() as c:
            return await admin.add_device(c, device_id, name, password_hash, created)

    async def get_device(self, device_id: str) -> Device | None:
        async with self._read() as c:
            return await admin.get_device(c, device_id)

    async def list_devices(self) -> list[Device]:
        async with self._read() as c:
            return await admin.list_devices(c)

    async def set_device_disabled(self, device_id: str, disabled: bool) -> Device:
        async with self._write() as c:
            return await admin.update_device(c, device_id, "disabled", disabled)

    async def set_device_password(self, device_id: str, password_hash: str) -> Device:
        async with self._write() as c:
            return await admin.update_device(c, device_id, "password_hash", password_hash)

    # -- births, presence --------------------------------------------------------------------

    async def record_birth(
        self,
        device_id: str,
        boot_id: int,
        *,
        agent_version: str,
        started_wall_ns: int,
        alias_extras: Mapping[str, int],
        received_wall_ns: int,
    ) -> Presence:
        async with self._write() as c:
            return await presence.record_birth(
                c,
                device_id,
                boot_id,
                agent_version,
                started_wall_ns,
                alias_extras,
                received_wall_ns,
            )

    async def record_death(self, device_id: str, boot_id: int, *, received_wall_ns: int) -> bool:
        async with self._write() as c:
            return await presence.record_death(c, device_id, boot_id, received_wall_ns)

    async def expire_presence(self, *, cutoff_wall_ns: int, now_wall_ns: int) -> list[str]:
        async with self._write() as c:
            return await presence.expire_presence(c, cutoff_wall_ns, now_wall_ns)

    async def alias_extras(self, device_id: str, boot_id: int) -> dict[str, int] | None:
        async with self._read() as c:
            return await presence.alias_extras(c, device_id, boot_id)

    async def touch(self, device_id: str, received_wall_ns: int) -> None:
        async with self._write() as c:
            await presence.touch_many(c, [(device_id, received_wall_ns)])

    async def presence(self, device_id: str) -> Presence | None:
        async with self._read() as c:
            return await presence.get_presence(c, device_id)

    # -- ingest, stream ----------------------------------------------------------------------

    async def ingest_batches(
        self, batches: Sequence[IngestBatch], events_for: EventsFor | None = None
    ) -> list[IngestResult]:
        if not batches:
            return []
        async with self._write() as c:
            return await write.ingest(c, batches, events_for)

    async def ingest_batch(
        self, batch: IngestBatch, events_for: EventsFor | None = None
    ) -> IngestResult:
        return (await self.ingest_batches([batch], events_for))[0]

    async def append_stream_events(self, events: Sequence[StreamEvent]) -> list[int]:
        if not events:
            return []
        async with self._write() as c:
            return await stream.insert_stream_events(c, events)

    async def stream_events_after(self, after_id: int, limit: int = 1000) -> list[StreamEvent]:
        async with self._read() as c:
            return await stream.events_after(c, after_id, max(1, limit))

    async def latest_stream_event_id(self) -> int:
        async with self._read() as c:
            return await stream.latest_id(c)

    # -- dead letters ------------------------------------------------------------------------

    async def add_dead_letter(
        self,
        *,
        topic: str,
        reason: str,
        payload: bytes,
        received_wall_ns: int,
        device_id: str | None,
    ) -> int:
        async with self._write() as c:
            return await admin.add_dead_letter(
                c, topic, reason, payload, received_wall_ns, device_id
            )

    async def list_dead_letters(self, *, limit: int = 100, after_id: int = 0) -> list[DeadLetter]:
        async with self._read() as c:
            return await admin.list_dead_letters(c, limit, after_id)

    # -- queries -----------------------------------------------------------------------------

    async def vehicles(self) -> list[VehicleState]:
        async with self._read() as c:
            return await read.vehicles(c, None)

    async def vehicle(self, device_id: str) -> VehicleState | None:
        async with self._read() as c:
            found = await read.vehicles(c, device_id)
        return found[0] if found else None

    async def positions(
        self,
        device_id: str,
        *,
        from_wall_ns: int | None = None,
        to_wall_ns: int | None = None,
        limit: int = 1000,
        cursor: str | None = None,
    ) -> Page[PositionRow]:
        async with self._read() as c:
            return await read.positions(c, device_id, from_wall_ns, to_wall_ns, limit, cursor)

    async def signals_latest(self, device_id: str) -> dict[str, SignalRow]:
        async with self._read() as c:
            return await read.signals_latest(c, device_id)

    async def signal_history(
        self,
        device_id: str,
        path: str,
        *,
        from_wall_ns: int | None = None,
        to_wall_ns: int | None = None,
        limit: int = 1000,
        cursor: str | None = None,
    ) -> Page[SignalRow]:
        async with self._read() as c:
            return await read.signal_history(
                c, device_id, path, from_wall_ns, to_wall_ns, limit, cursor
            )

    async def dtc_states(self, device_id: str, *, active_only: bool = True) -> list[DtcState]:
        async with self._read() as c:
            return await read.dtc_states(c, device_id, active_only)

    async def dtc_history(
        self,
        device_id: str,
        *,
        from_wall_ns: int | None = None,
        to_wall_ns: int | None = None,
        limit: int = 1000,
        cursor: str | None = None,
    ) -> Page[DtcRow]:
        async with self._read() as c:
            return await read.dtc_history(c, device_id, from_wall_ns, to_wall_ns, limit, cursor)

    async def events(
        self,
        *,
        device_id: str | None = None,
        kind: str | None = None,
        from_wall_ns: int | None = None,
        to_wall_ns: int | None = None,
        limit: int = 1000,
        cursor: str | None = None,
    ) -> Page[EventRow]:
        async with self._read() as c:
            return await read.events(c, device_id, kind, from_wall_ns, to_wall_ns, limit, cursor)

    async def health_latest(self, device_id: str) -> HealthRow | None:
        async with self._read() as c:
            return await read.health_latest(c, device_id)

    async def ledger(self, device_id: str, *, now_wall_ns: int) -> Ledger:
        async with self._read() as c:
            return await read.ledger(c, device_id, now_wall_ns)

    # -- commands ----------------------------------------------------------------------------

    async def create_command(
        self,
        device_id: str,
        command_id: str,
        name: str,
        args: Mapping[str, Any],
        *,
        created_wall_ns: int,
        expires_wall_ns: int | None = None,
    ) -> CommandRow:
        async with self._write() as c:
            return await admin.create_command(
                c, device_id, command_id, name, args, created_wall_ns, expires_wall_ns
            )

    async def get_command(self, command_id: str) -> CommandRow | None:
        async with self._read() as c:
            return await admin.get_command(c, command_id)

    async def list_commands(
        self, device_id: str, *, status: CommandStatus | None = None, limit: int = 100
    ) -> list[CommandRow]:
        async with self._read() as c:
            return await admin.list_commands(c, device_id, status, limit, oldest_first=False)

    async def pending_commands(self, device_id: str) -> list[CommandRow]:
        async with self._read() as c:
            return await admin.list_commands(c, device_id, "queued", 10_000, oldest_first=True)

    async def mark_command_sent(self, command_id: str, sent_wall_ns: int) -> CommandRow:
        async with self._write() as c:
            return await admin.mark_command_sent(c, command_id, sent_wall_ns)

    async def record_command_ack(
        self,
        device_id: str,
        command_id: str,
        *,
        status: CommandStatus,
        detail: str,
        received_wall_ns: int,
    ) -> CommandRow | None:
        async with self._write() as c:
            return await admin.record_command_ack(
                c, device_id, command_id, status, detail, received_wall_ns
            )

    async def set_command_args(self, command_id: str, args: Mapping[str, Any]) -> CommandRow | None:
        async with self._write() as c:
            await c.execute(
                "UPDATE commands SET args = ? WHERE command_id = ?", (dumps(dict(args)), command_id)
            )
            return await admin.get_command(c, command_id)

    # -- remote configuration ----------------------------------------------------------------

    async def set_desired_config(
        self,
        device_id: str,
        document: Mapping[str, Any],
        *,
        expected_version: int | None,
        set_by: str,
        set_wall_ns: int,
        first_version: int = 1,
    ) -> DesiredConfigRow:
        async with self._write() as c:
            return await configs.set_desired(
                c, device_id, document, expected_version, set_by, set_wall_ns, first_version
            )

    async def get_config(self, device_id: str) -> DeviceConfig:
        async with self._read() as c:
            return await configs.get_config(c, device_id)

    async def record_reported_config(
        self,
        device_id: str,
        *,
        version: int,
        document: Mapping[str, Any],
        pending_restart: Sequence[str],
        refused_version: int | None,
        error: str | None,
        received_wall_ns: int,
    ) -> ReportedConfigRow:
        async with self._write() as c:
            return await configs.record_reported(
                c,
                device_id,
                version,
                document,
                pending_restart,
                refused_version,
                error,
                received_wall_ns,
            )

    async def mark_config_published(
        self, device_id: str, version: int, published_wall_ns: int
    ) -> None:
        async with self._write() as c:
            await configs.mark_published(c, device_id, version, published_wall_ns)

    async def unpublished_configs(self, limit: int = 1000) -> list[DesiredConfigRow]:
        async with self._read() as c:
            return await configs.unpublished(c, limit)

    # -- tokens, audit -----------------------------------------------------------------------

    async def create_token(
        self, token_id: str, *, name: str, scope: Scope, token_hash: str, created_wall_ns: int
    ) -> TokenRow:
        async with self._write() as c:
            return await admin.create_token(c, token_id, name, scope, token_hash, created_wall_ns)

    async def token_by_hash(self, token_hash: str) -> TokenRow | None:
        async with self._read() as c:
            return await admin.token_by(c, "token_hash", token_hash)

    async def revoke_token(self, token_id: str, *, revoked_wall_ns: int) -> TokenRow:
        async with self._write() as c:
            return await admin.revoke_token(c, token_id, revoked_wall_ns)

    async def list_tokens(self) -> list[TokenRow]:
        async with self._read() as c:
            return await admin.list_tokens(c)

    async def add_audit(
        self, *, ts_wall_ns: int, actor: str, method: str, path: str, status: int, detail: str = ""
    ) -> int:
        async with self._write() as c:
            return await admin.add_audit(c, ts_wall_ns, actor, method, path, status, detail)

    async def list_audit(self, *, limit: int = 100, after_id: int = 0) -> list[AuditRow]:
        async with self._read() as c:
            return await admin.list_audit(c, limit, after_id)

    # -- webhooks ----------------------------------------------------------------------------

    async def create_webhook(
        self,
        webhook_id: str,
        *,
        url: str,
        secret: str,
        event_types: Sequence[str],
        created_wall_ns: int,
        cursor: int = 0,
    ) -> Webhook:
        async with self._write() as c:
            return await admin.create_webhook(
                c, webhook_id, url, secret, event_types, created_wall_ns, cursor
            )

    async def get_webhook(self, webhook_id: str) -> Webhook | None:
        async with self._read() as c:
            return await admin.get_webhook(c, webhook_id)

    async def list_webhooks(self) -> list[Webhook]:
        async with self._read() as c:
            return await admin.list_webhooks(c)

    async def delete_webhook(self, webhook_id: str) -> None:
        async with self._write() as c:
            await admin.delete_webhook(c, webhook_id)

    async def set_webhook_enabled(
        self, webhook_id: str, enabled: bool, *, reason: str | None = None
    ) -> Webhook:
        async with self._write() as c:
            return await admin.set_webhook_enabled(c, webhook_id, enabled, reason)

    async def set_webhook_cursor(self, webhook_id: str, event_id: int) -> None:
        async with self._write() as c:
            await admin.set_webhook_cursor(c, webhook_id, event_id)

    async def record_delivery(
        self,
        webhook_id: str,
        *,
        event_id: int,
        attempt: int,
        ok: bool,
        status_code: int | None,
        error: str | None,
        ts_wall_ns: int,
        next_attempt_wall_ns: int | None,
        disable_after: int | None = None,
    ) -> Webhook:
        d = Delivery(
            0, webhook_id, event_id, attempt, ok, status_code, error, ts_wall_ns,
            next_attempt_wall_ns,
        )  # fmt: skip
        async with self._write() as c:
            return await admin.record_delivery(c, webhook_id, d, disable_after)

    async def deliveries(
        self, webhook_id: str, *, limit: int = 100, event_id: int | None = None
    ) -> list[Delivery]:
        async with self._read() as c:
            return await admin.deliveries(c, webhook_id, limit, event_id)

    # -- dispatch: depots, drivers, vehicle profiles ------------------------------------------

    async def put_depot(self, depot: Depot) -> bool:
        async with self._write() as c:
            return await jobs.put_depot(c, depot)

    async def get_depot(self, depot_id: str) -> Depot | None:
        async with self._read() as c:
            return await jobs.get_depot(c, depot_id)

    async def list_depots(self) -> list[Depot]:
        async with self._read() as c:
            return await jobs.list_depots(c)

    async def delete_depot(self, depot_id: str) -> None:
        async with self._write() as c:
            await jobs.delete_referenced(c, "depots", "depot_id", depot_id)

    async def put_driver(self, driver: Driver) -> bool:
        async with self._write() as c:
            return await jobs.put_driver(c, driver)

    async def get_driver(self, driver_id: str) -> Driver | None:
        async with self._read() as c:
            return await jobs.get_driver(c, driver_id)

    async def list_drivers(self) -> list[Driver]:
        async with self._read() as c:
            return await jobs.list_drivers(c)

    async def delete_driver(self, driver_id: str) -> None:
        async with self._write() as c:
            await jobs.delete_referenced(c, "drivers", "driver_id", driver_id)

    async def put_vehicle_profile(self, profile: VehicleProfile) -> VehicleProfile:
        async with self._write() as c:
            return await jobs.put_profile(c, profile)

    async def get_vehicle_profile(self, device_id: str) -> VehicleProfile | None:
        async with self._read() as c:
            return await jobs.get_profile(c, device_id)

    async def list_vehicle_profiles(self) -> list[VehicleProfile]:
        async with self._read() as c:
            return await jobs.list_profiles(c)

    # -- dispatch: jobs -----------------------------------------------------------------------

    async def create_job(
        self, row: JobRow, event: JobEventRow, stream_for: JobStreamFor | None = None
    ) -> JobRow:
        async with self._write() as c:
            return await jobs.create_job(c, row, event, stream_for)

    async def get_job(self, job_id: str) -> JobRow | None:
        async with self._read() as c:
            return await jobs.get_job(c, job_id)

    async def job_by_idempotency_key(self, key: str) -> JobRow | None:
        async with self._read() as c:
            return await jobs.job_by_key(c, key)

    async def list_jobs(
        self,
        *,
        states: Sequence[JobState] | None = None,
        vehicle_id: str | None = None,
        customer_ref: str | None = None,
        limit: int = 1000,
        cursor: str | None = None,
    ) -> Page[JobRow]:
        async with self._read() as c:
            return await jobs.list_jobs(c, states, vehicle_id, customer_ref, limit, cursor)

    async def update_job(
        self,
        job: Job,
        *,
        expected_version: int,
        updated_wall_ns: int,
        event: JobEventRow,
        stream_for: JobStreamFor | None = None,
    ) -> JobRow:
        async with self._write() as c:
            return await jobs.update_job(
                c, job, expected_version, updated_wall_ns, event, stream_for
            )

    async def set_job_explanation(
        self,
        job_id: str,
        *,
        explanation: Mapping[str, Any] | None,
        unassigned_reasons: Sequence[Mapping[str, Any]],
    ) -> JobRow:
        async with self._write() as c:
            return await jobs.set_explanation(c, job_id, explanation, unassigned_reasons)

    async def job_events(
        self, job_id: str, *, after_id: int = 0, limit: int = 1000
    ) -> list[JobEventRow]:
        async with self._read() as c:
            return await jobs.job_events(c, job_id, after_id, limit)

    # -- dispatch: vehicle routes ------------------------------------------------------------

    async def put_vehicle_route(self, route: RouteRow) -> None:
        async with self._write() as c:
            await routes.put_route(c, route)

    async def get_vehicle_route(self, vehicle_id: str) -> RouteRow | None:
        async with self._read() as c:
            return await routes.get_route(c, vehicle_id)

    async def list_vehicle_routes(self) -> list[RouteRow]:
        async with self._read() as c:
            return await routes.list_routes(c)
