"""The storage interface of the cloud service: one Protocol, row dataclasses, two backends.

Every time is an integer in nanoseconds since the Unix epoch. ``*_wall_ns`` fields named after
device observations (``ts_wall_ns``) are the DEVICE clock; ``received_wall_ns``, ``created_wall_ns``
and presence times are the CLOUD clock, always passed in by the caller (the store never reads the
clock). Queries over records are ordered by device time, then boot, then seq, and paginate with
an opaque keyset cursor (``Page.next_cursor``), stable while rows are inserted.

Transactions. ``ingest_batches`` commits several MQTT messages in ONE transaction: dedupe by
(device_id, boot_id, seq), typed rows for the new entries only, "latest by device time" live
state (order-independent: late history never moves it backwards), last_seen, and the stream
events returned by the caller's ``events_for`` callback for the new entries of each batch. The
caller acks the MQTT messages after it returns. State transitions only the store can see are
turned into stream events by the store itself in the same transaction: ``vehicle.online`` /
``vehicle.offline`` (record_birth, record_death, expire_presence) and ``command.acked``
(record_command_ack).

Errors: every driver error becomes ``fleetlink_cloud.errors.StoreError``; a lookup by id that
must exist raises ``NotFound``; a create whose id is taken raises ``AlreadyExists``; a malformed
pagination cursor raises ``BadCursor``.

Text. Free text from devices (event kinds, DTC codes, ack details, dead-letter reasons) is
stored as given, except NUL, which PostgreSQL text cannot hold: both backends store it as
U+FFFD. Values inside JSON columns (signal values, event data, counters, args) keep it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, Literal, Protocol, Self, TypeVar

from fleetlink_cloud.bus import StreamEvent
from fleetlink_cloud.dispatch.model import (
    Depot,
    Driver,
    Job,
    JobState,
    RouteStop,
    VehicleProfile,
)
from fleetlink_cloud.errors import StoreError
from fleetlink_protocols.records import Entry, SignalScalar

T = TypeVar("T")

Lane = Literal["live", "history", "events"]
LANES: tuple[Lane, ...] = ("live", "history", "events")

Scope = Literal["read", "dispatch", "maintenance", "admin"]
SCOPES: tuple[Scope, ...] = ("read", "dispatch", "maintenance", "admin")

CommandStatus = Literal["queued", "sent", "accepted", "done", "failed", "rejected"]
"""queued: waiting for the device; sent: published; the rest mirror protocol AckStatus names."""
COMMAND_STATUSES: tuple[CommandStatus, ...] = (
    "queued",
    "sent",
    "accepted",
    "done",
    "failed",
    "rejected",
)


class BadCursor(StoreError, ValueError):
    """A pagination cursor that this store did not produce (an API maps it to 400)."""


class AlreadyExists(StoreError):
    """A create with an id (or token hash) that is taken (an API maps it to 409)."""


class StaleVersion(StoreError):
    """``set_desired_config`` expected another version than the current one (an API maps it
    to 412). ``current`` is the version stored now, 0 when the device has no document."""

    def __init__(self, device_id: str, expected: int | None, current: int) -> None:
        super().__init__(
            f"{device_id}: the desired configuration is at version {current}, not {expected}"
        )
        self.device_id = device_id
        self.expected = expected
        self.current = current


# -- ingest ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IngestBatch:
    """The decoded entries of one MQTT message (one device, one boot), ready to commit."""

    device_id: str
    boot_id: int
    lane: Lane
    entries: Sequence[Entry]
    received_wall_ns: int  # cloud clock at receipt
    payload_bytes: int = 0  # size of the MQTT payload, for accounting


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What ``ingest_batches`` did with one batch: new entries (in batch order) and duplicates."""

    batch: IngestBatch
    new_entries: tuple[Entry, ...]
    duplicates: int


EventsFor = Callable[[IngestBatch, Sequence[Entry]], Sequence[StreamEvent]]
"""Called inside the ingest transaction with each batch's NEW entries; returns the stream events
to append (their ``id`` is ignored: the store assigns ascending ids). Must be pure and fast."""


# -- rows --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Device:
    id: str
    name: str
    created_wall_ns: int
    disabled: bool
    password_hash: str  # MQTT credential hash (the registry's format), never the password


@dataclass(frozen=True, slots=True)
class PositionRow:
    """A stored GNSS fix; ``mode`` is the FixMode number (gpsd TPV mode)."""

    device_id: str
    boot_id: int
    seq: int
    ts_wall_ns: int
    lat_deg: float
    lon_deg: float
    mode: int
    alt_msl_m: float | None
    speed_mps: float | None
    heading_deg: float | None
    hdop: float | None
    sats_used: int | None


@dataclass(frozen=True, slots=True)
class SignalRow:
    """One signal sample (VSS path, catalog SI unit). Also the latest value of a live signal."""

    device_id: str
    boot_id: int
    seq: int
    ts_wall_ns: int
    path: str
    value: SignalScalar


@dataclass(frozen=True, slots=True)
class DtcRow:
    """One DTC observation as reported (history); ``source`` is the DtcSource number."""

    device_id: str
    boot_id: int
    seq: int
    ts_wall_ns: int
    source: int
    code: str
    ecu: int
    active: bool
    spn: int | None
    fmi: int | None
    occurrences: int | None
    lamps: int | None


@dataclass(frozen=True, slots=True)
class DtcState:
    """Live state of one code per (source, ecu, code): the latest observation by device time.

    ``first_seen_wall_ns``/``last_seen_wall_ns`` span every observation of the code (device time).
    """

    device_id: str
    source: int
    ecu: int
    code: str
    active: bool
    spn: int | None
    fmi: int | None
    occurrences: int | None
    lamps: int | None
    ts_wall_ns: int  # device time of the observation that set ``active``
    first_seen_wall_ns: int
    last_seen_wall_ns: int


@dataclass(frozen=True, slots=True)
class EventRow:
    device_id: str
    boot_id: int
    seq: int
    ts_wall_ns: int
    kind: str
    data: Mapping[str, SignalScalar]


@dataclass(frozen=True, slots=True)
class HealthRow:
    device_id: str
    boot_id: int
    seq: int
    ts_wall_ns: int
    counters: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class Presence:
    """Connection state of a device: from birth/death (and heartbeat expiry), cloud clock."""

    online: bool
    boot_id: int | None  # the boot of the latest birth
    agent_version: str | None
    started_wall_ns: int | None  # device clock: when that boot started
    changed_wall_ns: int | None  # when ``online`` last changed
    last_seen_wall_ns: int | None  # last birth, batch or touch
    reason: str | None  # "birth", "death", "timeout", "data" (data from a timed-out device)


@dataclass(frozen=True, slots=True)
class VehicleState:
    """Live picture of one vehicle: presence, last position, latest signals, active DTCs."""

    device: Device
    presence: Presence
    position: PositionRow | None
    signals: Mapping[str, SignalRow]
    active_dtcs: tuple[DtcState, ...]


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a query; pass ``next_cursor`` back to get the next (None: no more rows)."""

    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    topic: str
    reason: str
    payload: bytes
    received_wall_ns: int
    device_id: str | None


@dataclass(frozen=True, slots=True)
class SeqGap:
    """Sequence numbers ``first..last`` (inclusive) of a boot never received."""

    first: int
    last: int

    @property
    def count(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True, slots=True)
class BootLedger:
    """What arrived from one boot, what is missing, and what the device says it evicted."""

    boot_id: int
    first_seq: int
    last_seq: int
    received: int  # distinct seqs stored
    gaps: tuple[SeqGap, ...]
    evicted: Mapping[str, int]  # "outbox.evicted_*" counters of the boot's latest Health record
    first_received_wall_ns: int
    last_received_wall_ns: int

    @property
    def missing(self) -> int:
        return sum(g.count for g in self.gaps)


@dataclass(frozen=True, slots=True)
class Ledger:
    """The loss ledger of a device: per boot (by first receipt), and time offline (cloud clock).

    ``offline_ns`` sums every offline interval of the presence log up to ``now_wall_ns``.
    """

    device_id: str
    boots: tuple[BootLedger, ...]
    offline_ns: int
    offline_periods: int

    @property
    def missing(self) -> int:
        return sum(b.missing for b in self.boots)

    @property
    def evicted(self) -> int:
        return sum(b.evicted.get("outbox.evicted_total", 0) for b in self.boots)


@dataclass(frozen=True, slots=True)
class CommandRow:
    command_id: str
    device_id: str
    name: str
    args: Mapping[str, Any]  # JSON-like (protocol ConfigValue)
    status: CommandStatus
    created_wall_ns: int
    expires_wall_ns: int | None  # device clock; the device ignores the command after it
    sent_wall_ns: int | None
    acked_wall_ns: int | None  # cloud clock of the latest ack
    detail: str  # from the latest ack


@dataclass(frozen=True, slots=True)
class DesiredConfigRow:
    """The configuration a device should run: a partial agent settings document (JSON-like).

    ``version`` starts at 1 and grows by one with every change; ``published_version`` is the
    newest version published retained on ``dn/config`` (None: none yet).
    """

    device_id: str
    version: int
    document: Mapping[str, Any]
    set_by: str  # token id (or "cli")
    set_wall_ns: int
    published_version: int | None
    published_wall_ns: int | None

    @property
    def published(self) -> bool:
        return self.published_version is not None and self.published_version >= self.version


@dataclass(frozen=True, slots=True)
class ReportedConfigRow:
    """What the device last said it runs (protocol ``ReportedConfig``), cloud clock of receipt.

    ``version``/``document``: the desired document it applied (0 and empty: none, it runs its
    local settings); ``pending_restart``: its keys that take effect at the next start;
    ``error``: why it refused the desired version ``refused_version``.
    """

    device_id: str
    version: int
    document: Mapping[str, Any]
    pending_restart: tuple[str, ...]
    refused_version: int | None
    error: str | None
    reported_wall_ns: int


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """Desired and reported configuration of one device; either may be absent."""

    device_id: str
    desired: DesiredConfigRow | None
    reported: ReportedConfigRow | None


@dataclass(frozen=True, slots=True)
class TokenRow:
    token_id: str
    name: str
    scope: Scope
    token_hash: str
    created_wall_ns: int
    revoked_wall_ns: int | None

    @property
    def active(self) -> bool:
        return self.revoked_wall_ns is None


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: int
    ts_wall_ns: int
    actor: str  # token id (or "cli")
    method: str
    path: str
    status: int
    detail: str


@dataclass(frozen=True, slots=True)
class Webhook:
    """A dispatch backend's subscription. ``cursor`` is the last stream event id delivered."""

    id: str
    url: str
    secret: str
    event_types: tuple[str, ...]
    created_wall_ns: int
    enabled: bool
    consecutive_failures: int
    cursor: int
    disabled_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    webhook_id: str
    event_id: int
    attempt: int
    ok: bool
    status_code: int | None
    error: str | None
    ts_wall_ns: int
    next_attempt_wall_ns: int | None


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Row counts, for health endpoints, benchmarks and tests."""

    counts: Mapping[str, int] = field(default_factory=dict)


# -- dispatch ----------------------------------------------------------------------------------

Actor = Literal["system", "dispatcher", "driver", "rule"]
"""Who caused a job event: the service itself, a dispatcher, a vehicle's driver, a rule."""
ACTORS: tuple[Actor, ...] = ("system", "dispatcher", "driver", "rule")

JobEventKind = Literal["created", "transition", "locked", "unlocked", "delayed", "announced"]
"""``created`` and ``transition`` change the state; the others record a change beside it."""
JOB_EVENT_KINDS: tuple[JobEventKind, ...] = (
    "created",
    "transition",
    "locked",
    "unlocked",
    "delayed",
    "announced",
)


class StaleJob(StoreError):
    """``update_job`` expected another version than the stored one (an API maps it to 412)."""

    def __init__(self, job_id: str, expected: int, current: int) -> None:
        super().__init__(f"job {job_id!r} is at version {current}, not {expected}")
        self.job_id = job_id
        self.expected = expected
        self.current = current


class InUse(StoreError):
    """A depot or driver that a vehicle profile still names cannot be deleted (API: 409)."""


@dataclass(frozen=True, slots=True)
class JobRow:
    """A stored job: the domain job, its version (starts at 1, +1 per change) and bookkeeping.

    ``explanation`` and ``unassigned_reasons`` are what the assigner last said about it (JSON).
    """

    job: Job
    version: int
    created_wall_ns: int
    updated_wall_ns: int
    idempotency_key: str | None = None
    request_hash: str = ""  # what makes a repeated creation the same request
    explanation: Mapping[str, Any] | None = None
    unassigned_reasons: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class JobEventRow:
    """One entry of a job's append-only log. ``from_state`` is None for the creation; the
    other kinds than ``transition`` keep the state (``from_state == to_state``)."""

    id: int
    job_id: str
    ts_wall_ns: int
    kind: JobEventKind
    from_state: JobState | None
    to_state: JobState
    reason_code: str
    reason_text: str = ""
    actor: Actor = "system"
    actor_id: str | None = None  # the token id of a dispatcher or driver app
    vehicle_before: str | None = None
    vehicle_after: str | None = None
    evidence: Mapping[str, Any] = field(default_factory=dict)


JobStreamFor = Callable[[JobRow, JobEventRow], Sequence[StreamEvent]]
"""Called inside a job write's transaction with the stored row and event (its id assigned);
returns the stream events to append in that same transaction. Must be pure and fast."""


@dataclass(frozen=True, slots=True)
class PlannedStop:
    """One stop of a vehicle's stored route: the plan, and the latest ETA (Unix seconds).

    ``eta`` is the expected arrival, ``early``/``late`` its range (None without speed data),
    ``lateness_s`` how far the service start misses the stop's windows (0: on time)."""

    stop: RouteStop
    eta: int | None = None
    early: int | None = None
    late: int | None = None
    lateness_s: int = 0


@dataclass(frozen=True, slots=True)
class RouteRow:
    """A vehicle's remaining stops in service order, as the dispatcher last planned them."""

    vehicle_id: str
    stops: tuple[PlannedStop, ...]
    updated_wall_ns: int  # cloud clock


# -- the interface -----------------------------------------------------------------------------


class Store(Protocol):
    """The storage interface. Use as ``async with open_store(url) as store``: connects, migrates.

    All methods are safe to call concurrently from tasks of one event loop, and from several
    processes on the same database (SQLite: one writer at a time; PostgreSQL: row locks).
    """

    url: str  # the URL it was opened with, password removed

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def schema_version(self) -> int:
        """The applied migration number."""
        ...

    async def stats(self) -> StoreStats:
        """Row counts per table."""
        ...

    # -- devices ---------------------------------------------------------------------------

    async def add_device(
        self, device_id: str, *, name: str, password_hash: str, created_wall_ns: int | None = None
    ) -> Device:
        """Register a device (created now when ``created_wall_ns`` is None, the only place the
        store reads the clock: a CLI registration has no other time). Raises AlreadyExists."""
        ...

    async def get_device(self, device_id: str) -> Device | None: ...

    async def list_devices(self) -> list[Device]:
        """Every device, ordered by id."""
        ...

    async def set_device_disabled(self, device_id: str, disabled: bool) -> Device:
        """Raises NotFound."""
        ...

    async def set_device_password(self, device_id: str, password_hash: str) -> Device:
        """Replace the MQTT credential hash (rotation). Raises NotFound."""
        ...

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
        """Store the boot and its alias extras, mark online, log it, append ``vehicle.online``.

        A birth of a boot other than the current one replaces it (a reboot). A repeated birth of
        the current boot (retained message redelivered) changes nothing but last_seen.
        """
        ...

    async def record_death(self, device_id: str, boot_id: int, *, received_wall_ns: int) -> bool:
        """Mark offline if ``boot_id`` is the current boot; append ``vehicle.offline``.

        Returns False (nothing changed) for a stale will of an older boot or an offline device.
        """
        ...

    async def expire_presence(self, *, cutoff_wall_ns: int, now_wall_ns: int) -> list[str]:
        """Heartbeat timeout: mark offline (reason "timeout") online devices last seen before
        ``cutoff_wall_ns``; append ``vehicle.offline`` for each. Returns their ids."""
        ...

    async def alias_extras(self, device_id: str, boot_id: int) -> dict[str, int] | None:
        """The alias extras declared by that boot's birth, None if no birth of it is stored."""
        ...

    async def touch(self, device_id: str, received_wall_ns: int) -> None:
        """Update last_seen (never backwards)."""
        ...

    async def presence(self, device_id: str) -> Presence | None: ...

    # -- ingest ------------------------------------------------------------------------------

    async def ingest_batches(
        self, batches: Sequence[IngestBatch], events_for: EventsFor | None = None
    ) -> list[IngestResult]:
        """Commit several batches in ONE transaction (see the module docstring); one result per
        batch, in order. Duplicates (also within the call) are counted, never stored twice. A
        batch of a timed-out device's current boot brings it back online (reason "data")."""
        ...

    async def ingest_batch(
        self, batch: IngestBatch, events_for: EventsFor | None = None
    ) -> IngestResult:
        """``ingest_batches`` for one batch."""
        ...

    async def append_stream_events(self, events: Sequence[StreamEvent]) -> list[int]:
        """Append events in their own transaction (ids ignored); returns the assigned ids."""
        ...

    async def stream_events_after(self, after_id: int, limit: int = 1000) -> list[StreamEvent]:
        """Committed events with id > after_id, ascending. Ids are assigned in commit order, so
        a tailer that remembers the last id it saw never misses one."""
        ...

    async def latest_stream_event_id(self) -> int:
        """The highest event id (0 if none)."""
        ...

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
        """Keep a message ingest refused, with the reason and the raw bytes; returns its id."""
        ...

    async def list_dead_letters(self, *, limit: int = 100, after_id: int = 0) -> list[DeadLetter]:
        """Ascending by id."""
        ...

    # -- queries -----------------------------------------------------------------------------

    async def vehicles(self) -> list[VehicleState]:
        """Live state of every device, ordered by id."""
        ...

    async def vehicle(self, device_id: str) -> VehicleState | None: ...

    async def positions(
        self,
        device_id: str,
        *,
        from_wall_ns: int | None = None,
        to_wall_ns: int | None = None,
        limit: int = 1000,
        cursor: str | None = None,
    ) -> Page[PositionRow]:
        """Fixes with from <= ts_wall_ns < to, by device time. Raises BadCursor."""
        ...

    async def signals_latest(self, device_id: str) -> dict[str, SignalRow]:
        """Latest value of every signal path (by device time)."""
        ...

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
        """Samples of one path with from <= ts_wall_ns < to, by device time."""
        ...

    async def dtc_states(self, device_id: str, *, active_only: bool = True) -> list[DtcState]:
        """Current state per code (active first, then by last seen, newest first)."""
        ...

    async def dtc_history(
        self,
        device_id: str,
        *,
        from_wall_ns: int | None = None,
        to_wall_ns: int | None = None,
        limit: int = 1000,
        cursor: str | None = None,
    ) -> Page[DtcRow]:
        """Every DTC observation with from <= ts_wall_ns < to, by device time."""
        ...

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
        """Edge events, optionally of one device/kind, by device time (then device, boot, seq)."""
        ...

    async def health_latest(self, device_id: str) -> HealthRow | None:
        """The newest Health record by device time."""
        ...

    async def ledger(self, device_id: str, *, now_wall_ns: int) -> Ledger:
        """The loss ledger (see Ledger). Raises NotFound for an unknown device."""
        ...

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
        """Queue a command (status "queued"). Idempotent: an existing id is returned unchanged.
        Raises NotFound for an unknown device."""
        ...

    async def get_command(self, command_id: str) -> CommandRow | None: ...

    async def list_commands(
        self, device_id: str, *, status: CommandStatus | None = None, limit: int = 100
    ) -> list[CommandRow]:
        """Newest first."""
        ...

    async def pending_commands(self, device_id: str) -> list[CommandRow]:
        """Queued, not yet sent, oldest first (what to publish when the device comes online)."""
        ...

    async def mark_command_sent(self, command_id: str, sent_wall_ns: int) -> CommandRow:
        """queued -> sent (a later status is kept). Raises NotFound."""
        ...

    async def record_command_ack(
        self,
        device_id: str,
        command_id: str,
        *,
        status: CommandStatus,
        detail: str,
        received_wall_ns: int,
    ) -> CommandRow | None:
        """Apply an ack of the device's own command and append ``command.acked``. Returns None
        (nothing stored) for a command id unknown for that device. An ack that would change
        nothing (redelivered, behind the current status, or after a final status: done, failed,
        rejected) returns the row unchanged and appends no event."""
        ...

    async def set_command_args(self, command_id: str, args: Mapping[str, Any]) -> CommandRow | None:
        """Replace a command's args, nothing else (credential rotation removes the password
        once used). Returns None for an unknown command id."""
        ...

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
        """Replace the device's desired document atomically, raising its version by one.

        ``expected_version``: the version the caller read (0: the device has no document yet),
        or None to replace whatever is there. A mismatch raises StaleVersion and changes
        nothing, also against concurrent writers. A device's first document gets
        ``first_version``. Raises NotFound for an unknown device."""
        ...

    async def get_config(self, device_id: str) -> DeviceConfig:
        """Desired and reported configuration (both None for a device without any)."""
        ...

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
        """Store the device's report, replacing the previous one (the device publishes it
        retained, so the newest one received is the one that holds)."""
        ...

    async def mark_config_published(
        self, device_id: str, version: int, published_wall_ns: int
    ) -> None:
        """Note that ``version`` went out retained (the published version never goes back)."""
        ...

    async def unpublished_configs(self, limit: int = 1000) -> list[DesiredConfigRow]:
        """Desired documents whose current version is not published yet, by device id."""
        ...

    # -- tokens ------------------------------------------------------------------------------

    async def create_token(
        self, token_id: str, *, name: str, scope: Scope, token_hash: str, created_wall_ns: int
    ) -> TokenRow:
        """Store a token by its hash only. Raises AlreadyExists if the id or hash exists."""
        ...

    async def token_by_hash(self, token_hash: str) -> TokenRow | None:
        """Revoked tokens are returned too (check ``active``)."""
        ...

    async def revoke_token(self, token_id: str, *, revoked_wall_ns: int) -> TokenRow:
        """Raises NotFound. Revoking twice keeps the first time."""
        ...

    async def list_tokens(self) -> list[TokenRow]:
        """Ordered by creation time, then id."""
        ...

    # -- audit -------------------------------------------------------------------------------

    async def add_audit(
        self, *, ts_wall_ns: int, actor: str, method: str, path: str, status: int, detail: str = ""
    ) -> int: ...

    async def list_audit(self, *, limit: int = 100, after_id: int = 0) -> list[AuditRow]:
        """Ascending by id."""
        ...

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
        """``cursor``: deliver events with ids above it (pass latest_stream_event_id() to start
        from now). Raises AlreadyExists."""
        ...

    async def get_webhook(self, webhook_id: str) -> Webhook | None: ...

    async def list_webhooks(self) -> list[Webhook]: ...

    async def delete_webhook(self, webhook_id: str) -> None:
        """Delete it and its delivery log. Raises NotFound."""
        ...

    async def set_webhook_enabled(
        self, webhook_id: str, enabled: bool, *, reason: str | None = None
    ) -> Webhook:
        """Enabling resets the failure count. Raises NotFound."""
        ...

    async def set_webhook_cursor(self, webhook_id: str, event_id: int) -> None:
        """Durable resume point: the last event id handled (delivered or given up). Never
        moves backwards. Raises NotFound."""
        ...

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
        """Log one attempt; success resets ``consecutive_failures``, failure increments it and,
        at ``disable_after`` failures, disables the webhook. Returns it updated. Raises NotFound."""
        ...

    async def deliveries(
        self, webhook_id: str, *, limit: int = 100, event_id: int | None = None
    ) -> list[Delivery]:
        """Newest first."""
        ...

    # -- dispatch: depots, drivers, vehicle profiles ------------------------------------------

    async def put_depot(self, depot: Depot) -> bool:
        """Create or replace a depot; True if it was created."""
        ...

    async def get_depot(self, depot_id: str) -> Depot | None: ...

    async def list_depots(self) -> list[Depot]:
        """Ordered by id."""
        ...

    async def delete_depot(self, depot_id: str) -> None:
        """Raises NotFound, or InUse while a vehicle profile names it."""
        ...

    async def put_driver(self, driver: Driver) -> bool:
        """Create or replace a driver; True if it was created."""
        ...

    async def get_driver(self, driver_id: str) -> Driver | None: ...

    async def list_drivers(self) -> list[Driver]:
        """Ordered by id."""
        ...

    async def delete_driver(self, driver_id: str) -> None:
        """Raises NotFound, or InUse while a vehicle profile names them."""
        ...

    async def put_vehicle_profile(self, profile: VehicleProfile) -> VehicleProfile:
        """Create or replace the dispatch profile of device ``profile.id``. Raises NotFound for
        an unknown device, depot or driver."""
        ...

    async def get_vehicle_profile(self, device_id: str) -> VehicleProfile | None:
        """None when none is stored (the vehicle then has the model's defaults)."""
        ...

    async def list_vehicle_profiles(self) -> list[VehicleProfile]:
        """Every stored profile, ordered by device id."""
        ...

    # -- dispatch: jobs -----------------------------------------------------------------------

    async def create_job(
        self, row: JobRow, event: JobEventRow, stream_for: JobStreamFor | None = None
    ) -> JobRow:
        """Store a new job (``row.version`` as given), its ``created`` event and the stream
        events of ``stream_for``, in ONE transaction. Raises AlreadyExists when the id or the
        idempotency key is taken."""
        ...

    async def get_job(self, job_id: str) -> JobRow | None: ...

    async def job_by_idempotency_key(self, key: str) -> JobRow | None: ...

    async def list_jobs(
        self,
        *,
        states: Sequence[JobState] | None = None,
        vehicle_id: str | None = None,
        customer_ref: str | None = None,
        limit: int = 1000,
        cursor: str | None = None,
    ) -> Page[JobRow]:
        """Jobs in any of ``states`` (all when None), by creation time then id. Raises
        BadCursor."""
        ...

    async def update_job(
        self,
        job: Job,
        *,
        expected_version: int,
        updated_wall_ns: int,
        event: JobEventRow,
        stream_for: JobStreamFor | None = None,
    ) -> JobRow:
        """Write the job's changeable fields (state, vehicle, lock, announced) if it is still at
        ``expected_version``, raising the version by one; append ``event`` and the stream events
        of ``stream_for``; all in ONE transaction. Raises NotFound, or StaleJob (nothing
        written) when another writer got there first."""
        ...

    async def set_job_explanation(
        self,
        job_id: str,
        *,
        explanation: Mapping[str, Any] | None,
        unassigned_reasons: Sequence[Mapping[str, Any]],
    ) -> JobRow:
        """Replace what the assigner last said about the job (the version stays). Raises
        NotFound."""
        ...

    async def job_events(
        self, job_id: str, *, after_id: int = 0, limit: int = 1000
    ) -> list[JobEventRow]:
        """The job's events with id > after_id, oldest first."""
        ...

    # -- dispatch: vehicle routes ------------------------------------------------------------

    async def put_vehicle_route(self, route: RouteRow) -> None:
        """Create or replace the vehicle's route (no stops: it has none). The vehicle need not
        be registered: a route outlives a device removed while it had work."""
        ...

    async def get_vehicle_route(self, vehicle_id: str) -> RouteRow | None:
        """None when no route was ever stored for it."""
        ...

    async def list_vehicle_routes(self) -> list[RouteRow]:
        """Every stored route, ordered by vehicle id."""
        ...
