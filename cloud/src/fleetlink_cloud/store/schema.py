"""Schema migrations, written once and rendered for each SQL dialect.

Migrations are numbered and append-only: a released one is never edited, a change is a new
one. ``schema_version`` records every applied number; startup applies the missing ones in order
inside one transaction, under a lock, so concurrent processes starting together are safe.

Record tables are keyed (device_id, ts_wall_ns, boot_id, seq): the query order, so a time range
of one vehicle is one index range scan (SQLite clusters them: WITHOUT ROWID). ``seen`` is the
dedupe and loss-ledger table, keyed (device_id, boot_id, seq). Integer columns are as wide as
the wire allows (DTC occurrences and lamps are 32-bit unsigned: 64-bit columns).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between SQLite and PostgreSQL in the SQL this package writes."""

    name: str
    bigint: str
    double: str
    boolean: str
    blob: str
    autoid: str  # an ascending integer primary key column definition
    clustered: str  # table suffix for tables whose primary key is the access path
    greatest: str  # two-argument maximum
    least: str


SQLITE = Dialect(
    name="sqlite",
    bigint="INTEGER",
    double="REAL",
    boolean="INTEGER",
    blob="BLOB",
    autoid="INTEGER PRIMARY KEY AUTOINCREMENT",
    clustered=" WITHOUT ROWID",
    greatest="max",
    least="min",
)

POSTGRES = Dialect(
    name="postgresql",
    bigint="BIGINT",
    double="DOUBLE PRECISION",
    boolean="BOOLEAN",
    blob="BYTEA",
    autoid="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    clustered="",
    greatest="GREATEST",
    least="LEAST",
)

_RECORD_KEY = "device_id TEXT NOT NULL, ts_wall_ns {bigint} NOT NULL, boot_id {bigint} NOT NULL, "
_RECORD_KEY += "seq {bigint} NOT NULL"

_V1 = f"""
CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_wall_ns {{bigint}} NOT NULL,
    disabled {{boolean}} NOT NULL DEFAULT FALSE,
    password_hash TEXT NOT NULL
);
CREATE TABLE presence (
    device_id TEXT PRIMARY KEY,
    online {{boolean}} NOT NULL DEFAULT FALSE,
    boot_id {{bigint}},
    agent_version TEXT,
    started_wall_ns {{bigint}},
    changed_wall_ns {{bigint}},
    last_seen_wall_ns {{bigint}},
    reason TEXT
);
CREATE TABLE presence_log (
    id {{autoid}},
    device_id TEXT NOT NULL,
    boot_id {{bigint}},
    online {{boolean}} NOT NULL,
    reason TEXT NOT NULL,
    ts_wall_ns {{bigint}} NOT NULL
);
CREATE INDEX presence_log_device ON presence_log (device_id, id);
CREATE TABLE boots (
    device_id TEXT NOT NULL,
    boot_id {{bigint}} NOT NULL,
    agent_version TEXT NOT NULL,
    started_wall_ns {{bigint}} NOT NULL,
    alias_extras TEXT NOT NULL,
    first_birth_wall_ns {{bigint}} NOT NULL,
    last_birth_wall_ns {{bigint}} NOT NULL,
    PRIMARY KEY (device_id, boot_id)
){{clustered}};
CREATE TABLE seen (
    device_id TEXT NOT NULL,
    boot_id {{bigint}} NOT NULL,
    seq {{bigint}} NOT NULL,
    lane SMALLINT NOT NULL,
    received_wall_ns {{bigint}} NOT NULL,
    PRIMARY KEY (device_id, boot_id, seq)
){{clustered}};
CREATE TABLE positions (
    {_RECORD_KEY},
    lat_deg {{double}} NOT NULL,
    lon_deg {{double}} NOT NULL,
    mode SMALLINT NOT NULL,
    alt_msl_m {{double}},
    speed_mps {{double}},
    heading_deg {{double}},
    hdop {{double}},
    sats_used INTEGER,
    PRIMARY KEY (device_id, ts_wall_ns, boot_id, seq)
){{clustered}};
CREATE TABLE last_position (
    {_RECORD_KEY},
    lat_deg {{double}} NOT NULL,
    lon_deg {{double}} NOT NULL,
    mode SMALLINT NOT NULL,
    alt_msl_m {{double}},
    speed_mps {{double}},
    heading_deg {{double}},
    hdop {{double}},
    sats_used INTEGER,
    PRIMARY KEY (device_id)
);
CREATE TABLE signals (
    device_id TEXT NOT NULL,
    path TEXT NOT NULL,
    ts_wall_ns {{bigint}} NOT NULL,
    boot_id {{bigint}} NOT NULL,
    seq {{bigint}} NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (device_id, path, ts_wall_ns, boot_id, seq)
){{clustered}};
CREATE TABLE signal_latest (
    device_id TEXT NOT NULL,
    path TEXT NOT NULL,
    ts_wall_ns {{bigint}} NOT NULL,
    boot_id {{bigint}} NOT NULL,
    seq {{bigint}} NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (device_id, path)
){{clustered}};
CREATE TABLE dtcs (
    {_RECORD_KEY},
    source SMALLINT NOT NULL,
    code TEXT NOT NULL,
    ecu INTEGER NOT NULL,
    active {{boolean}} NOT NULL,
    spn INTEGER,
    fmi INTEGER,
    occurrences {{bigint}},
    lamps {{bigint}},
    PRIMARY KEY (device_id, ts_wall_ns, boot_id, seq)
){{clustered}};
CREATE TABLE dtc_state (
    device_id TEXT NOT NULL,
    source SMALLINT NOT NULL,
    ecu INTEGER NOT NULL,
    code TEXT NOT NULL,
    active {{boolean}} NOT NULL,
    spn INTEGER,
    fmi INTEGER,
    occurrences {{bigint}},
    lamps {{bigint}},
    ts_wall_ns {{bigint}} NOT NULL,
    boot_id {{bigint}} NOT NULL,
    seq {{bigint}} NOT NULL,
    first_seen_wall_ns {{bigint}} NOT NULL,
    last_seen_wall_ns {{bigint}} NOT NULL,
    PRIMARY KEY (device_id, source, ecu, code)
){{clustered}};
CREATE TABLE events (
    {_RECORD_KEY},
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (device_id, ts_wall_ns, boot_id, seq)
){{clustered}};
CREATE INDEX events_by_time ON events (ts_wall_ns, device_id, boot_id, seq);
CREATE INDEX events_by_kind ON events (kind, ts_wall_ns, device_id, boot_id, seq);
CREATE TABLE health (
    {_RECORD_KEY},
    counters TEXT NOT NULL,
    PRIMARY KEY (device_id, ts_wall_ns, boot_id, seq)
){{clustered}};
CREATE INDEX health_by_boot ON health (device_id, boot_id, ts_wall_ns, seq);
CREATE TABLE stream_events (
    id {{autoid}},
    type TEXT NOT NULL,
    device_id TEXT NOT NULL,
    ts_wall_ns {{bigint}} NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE dead_letters (
    id {{autoid}},
    topic TEXT NOT NULL,
    reason TEXT NOT NULL,
    payload {{blob}} NOT NULL,
    received_wall_ns {{bigint}} NOT NULL,
    device_id TEXT
);
CREATE TABLE commands (
    command_id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    name TEXT NOT NULL,
    args TEXT NOT NULL,
    status TEXT NOT NULL,
    created_wall_ns {{bigint}} NOT NULL,
    expires_wall_ns {{bigint}},
    sent_wall_ns {{bigint}},
    acked_wall_ns {{bigint}},
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX commands_by_device ON commands (device_id, created_wall_ns);
CREATE TABLE tokens (
    token_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    scope TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_wall_ns {{bigint}} NOT NULL,
    revoked_wall_ns {{bigint}}
);
CREATE TABLE audit (
    id {{autoid}},
    ts_wall_ns {{bigint}} NOT NULL,
    actor TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    status INTEGER NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    event_types TEXT NOT NULL,
    created_wall_ns {{bigint}} NOT NULL,
    enabled {{boolean}} NOT NULL DEFAULT TRUE,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    last_event_id {{bigint}} NOT NULL DEFAULT 0,
    disabled_reason TEXT
);
CREATE TABLE deliveries (
    id {{autoid}},
    webhook_id TEXT NOT NULL,
    event_id {{bigint}} NOT NULL,
    attempt INTEGER NOT NULL,
    ok {{boolean}} NOT NULL,
    status_code INTEGER,
    error TEXT,
    ts_wall_ns {{bigint}} NOT NULL,
    next_attempt_wall_ns {{bigint}}
);
CREATE INDEX deliveries_by_webhook ON deliveries (webhook_id, id);
"""

# Remote configuration: one desired document per device (versioned: optimistic concurrency,
# and the version the device echoes), whether it is published yet, and the device's report.
_V2 = """
CREATE TABLE desired_config (
    device_id TEXT PRIMARY KEY,
    version {bigint} NOT NULL,
    document TEXT NOT NULL,
    set_by TEXT NOT NULL,
    set_wall_ns {bigint} NOT NULL,
    published_version {bigint},
    published_wall_ns {bigint}
);
CREATE TABLE reported_config (
    device_id TEXT PRIMARY KEY,
    version {bigint} NOT NULL,
    document TEXT NOT NULL,
    pending_restart TEXT NOT NULL,
    refused_version {bigint},
    error TEXT,
    reported_wall_ns {bigint} NOT NULL
);
"""

# Dispatch: depots, drivers, vehicles' dispatch profiles, jobs and their append-only event log.
# Skills, capacities, demands, stops and shifts are JSON (read whole, never queried inside);
# ``version`` is the job's optimistic-concurrency counter, ``request_hash`` what makes a replayed
# creation the same request. Times are cloud-clock ns.
_V3 = """
CREATE TABLE depots (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    lat_deg {double} NOT NULL,
    lon_deg {double} NOT NULL
);
CREATE TABLE drivers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    skills TEXT NOT NULL
);
CREATE TABLE vehicle_profiles (
    device_id TEXT PRIMARY KEY,
    skills TEXT NOT NULL,
    capacity TEXT NOT NULL,
    depot_id TEXT,
    shifts TEXT NOT NULL,
    driver_id TEXT,
    dispatchable {boolean} NOT NULL
);
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    idempotency_key TEXT UNIQUE,
    request_hash TEXT NOT NULL,
    stop TEXT NOT NULL,
    pickup TEXT,
    skills TEXT NOT NULL,
    demand TEXT NOT NULL,
    priority INTEGER NOT NULL,
    customer_ref TEXT,
    state TEXT NOT NULL,
    vehicle_id TEXT,
    locked_vehicle_id TEXT,
    announced {boolean} NOT NULL,
    version {bigint} NOT NULL,
    created_wall_ns {bigint} NOT NULL,
    updated_wall_ns {bigint} NOT NULL,
    explanation TEXT,
    unassigned_reasons TEXT NOT NULL
);
CREATE INDEX jobs_by_created ON jobs (created_wall_ns, id);
CREATE INDEX jobs_by_state ON jobs (state, created_wall_ns, id);
CREATE INDEX jobs_by_vehicle ON jobs (vehicle_id, created_wall_ns, id);
CREATE INDEX jobs_by_customer ON jobs (customer_ref, created_wall_ns, id);
CREATE TABLE job_events (
    id {autoid},
    job_id TEXT NOT NULL,
    ts_wall_ns {bigint} NOT NULL,
    kind TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    reason_code TEXT NOT NULL,
    reason_text TEXT NOT NULL,
    actor TEXT NOT NULL,
    actor_id TEXT,
    vehicle_before TEXT,
    vehicle_after TEXT,
    evidence TEXT NOT NULL
);
CREATE INDEX job_events_by_job ON job_events (job_id, id);
"""

# The live dispatcher's plan: each vehicle's remaining stops in order, with the planned arrival
# and the latest ETA and its range (JSON, read whole), so a restart resumes the same routes.
_V4 = """
CREATE TABLE vehicle_routes (
    vehicle_id TEXT PRIMARY KEY,
    stops TEXT NOT NULL,
    updated_wall_ns {bigint} NOT NULL
);
"""

MIGRATIONS: tuple[tuple[int, str], ...] = ((1, _V1), (2, _V2), (3, _V3), (4, _V4))
"""(number, DDL template) in order; ``{bigint}``-style names are Dialect fields."""

VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_wall_ns "
    "{bigint} NOT NULL)"
)


def render(template: str, dialect: Dialect) -> list[str]:
    """The statements of one migration for ``dialect``, split on ';'."""
    sql = template.format(
        bigint=dialect.bigint,
        double=dialect.double,
        boolean=dialect.boolean,
        blob=dialect.blob,
        autoid=dialect.autoid,
        clustered=dialect.clustered,
    )
    return [s.strip() for s in sql.split(";") if s.strip()]


def latest_version() -> int:
    return MIGRATIONS[-1][0]
