"""Agent settings: one typed model, read once from TOML plus FLEETLINK_EDGE_* environment.

Source order (highest wins): init arguments, environment (``FLEETLINK_EDGE_UPLINK__HOST=...``,
nested with ``__``), the TOML file, then the defaults below. Only ``app.py`` loads it; every
component receives its own sub-model.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from fleetlink_edge.errors import ConfigError

DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
# Bounds on the signal lists: a poll cycle asks each PID in turn, so a long list slows them all.
MAX_OBD_PIDS = 64
MAX_CAN_SIGNALS = 256


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceSettings(_Section):
    id: Annotated[str, Field(pattern=DEVICE_ID_PATTERN)] = "veh-demo-001"


class SerialGnssSettings(_Section):
    port: str = "/dev/ttyACM0"
    baudrate: Annotated[int, Field(gt=0)] = 9600
    reopen_delay_s: Annotated[float, Field(gt=0)] = 1.0
    # No byte for this long: the receiver hung or its adapter wedged; close and reopen it.
    idle_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    # Receiver dates before this are 1024-week GPS rollover victims (IS-GPS-200) and get 1024
    # weeks added; the default is gpsd 3.20-3.22's, so our fixes agree with gpsd's.
    rollover_reference: date = date(2017, 1, 1)


class GpsdSettings(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(gt=0, lt=65536)] = 2947
    reconnect_delay_s: Annotated[float, Field(gt=0)] = 1.0
    connect_timeout_s: Annotated[float, Field(gt=0)] = 5.0


class GnssSettings(_Section):
    source: Literal["serial", "gpsd", "none"] = "gpsd"
    serial: SerialGnssSettings = SerialGnssSettings()
    gpsd: GpsdSettings = GpsdSettings()


class ObdSettings(_Section):
    enabled: bool = False
    request_id: Annotated[int, Field(ge=0, le=0x7FF)] = 0x7DF  # J1979 functional address
    poll_interval_s: Annotated[float, Field(gt=0)] = 1.0
    # J1979 mode 01 PIDs to poll; unsupported ones are dropped after discovery. Remote
    # configuration may change the list while running (signal_lists has its rules).
    pids: Annotated[list[Annotated[int, Field(ge=0, le=0xFF)]], Field(max_length=MAX_OBD_PIDS)] = [
        0x04,
        0x05,
        0x0C,
        0x0D,
        0x11,
        0x1F,
        0x21,
        0x2F,
        0xA6,
    ]
    dtc_interval_s: Annotated[float, Field(gt=0)] = 60.0
    response_timeout_s: Annotated[float, Field(gt=0)] = 0.2
    # SAE J1979 allows up to six PIDs in one service 01 request; 1 suits every ECU.
    pids_per_request: Annotated[int, Field(ge=1, le=6)] = 1
    # After 7F xx 78 (response pending) wait up to P2*CAN, 5 s in ISO 15765-4.
    response_pending_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    # ISO-TP N_Cr: longest gap between consecutive frames of one answer (ISO 15765-2: 1 s).
    isotp_timeout_s: Annotated[float, Field(gt=0)] = 1.0
    # ISO 15765-4 sends 8-byte frames; the filler byte is free (ISO 15765-2 suggests 0xCC).
    padding_byte: Annotated[int, Field(ge=0, le=0xFF)] = 0xCC
    # Response frames waiting for the poller; more are dropped and counted.
    queue_size: Annotated[int, Field(gt=0)] = 256
    # No ECU answered discovery (ignition off): ask again after this long.
    discovery_retry_s: Annotated[float, Field(gt=0)] = 5.0
    # Poll cycles without any answer before the poller assumes the ECUs are gone.
    rediscover_after_silent_cycles: Annotated[int, Field(ge=1)] = 3


class J1939Settings(_Section):
    enabled: bool = False
    # J1939-21 transport timeout T1: at most 750 ms between two TP.DT packets.
    session_timeout_s: Annotated[float, Field(gt=0)] = 0.75
    # Concurrent transport sessions (one per sender and kind); more are rejected and counted.
    max_sessions: Annotated[int, Field(gt=0, le=1024)] = 32


class DbcSettings(_Section):
    file: Path
    # "MESSAGE.SIGNAL" -> catalog (VSS) path.
    signals: dict[str, str]
    # "exact": 11/29-bit id lookup; "pgn": J1939 PGN match whatever the priority and source
    # address; "auto": "pgn" for extended ids of a DBC that declares ProtocolType J1939.
    match: Literal["auto", "exact", "pgn"] = "auto"


class CanFilterSettings(_Section):
    """A kernel/hardware acceptance filter: passes when ``id & mask == can_id & mask``."""

    can_id: Annotated[int, Field(ge=0, le=0x1FFFFFFF)]
    can_mask: Annotated[int, Field(ge=0, le=0x1FFFFFFF)]
    extended: bool | None = None


class CanSettings(_Section):
    enabled: bool = False
    interface: Literal["socketcan", "virtual"] = "socketcan"
    channel: str = "can0"
    bitrate: Annotated[int, Field(gt=0)] = 500_000
    queue_size: Annotated[int, Field(gt=0)] = 4096
    # Empty: receive everything. Applied in the kernel on socketcan.
    filters: list[CanFilterSettings] = []
    # The receive thread's poll interval: bounds how long closing the port waits.
    receive_timeout_s: Annotated[float, Field(gt=0, le=5)] = 0.1
    send_timeout_s: Annotated[float, Field(gt=0, le=5)] = 0.1
    obd: ObdSettings = ObdSettings()
    j1939: J1939Settings = J1939Settings()
    dbc: list[DbcSettings] = []
    # Catalog paths kept from the J1939 and DBC decoders (DTCs always pass); unset keeps every
    # signal they decode. Remote configuration may change it while running.
    signals: Annotated[list[str], Field(min_length=1, max_length=MAX_CAN_SIGNALS)] | None = None


class SamplingSettings(_Section):
    position_interval_s: Annotated[float, Field(ge=0)] = 1.0
    signal_interval_s: Annotated[float, Field(ge=0)] = 1.0
    signal_max_silence_s: Annotated[float, Field(gt=0)] = 60.0
    dtc_clear_after_s: Annotated[float, Field(gt=0)] = 30.0


class OutboxSettings(_Section):
    path: Path = Path("/var/lib/fleetlink-edge/outbox.sqlite3")
    max_bytes: Annotated[int, Field(ge=1 << 20)] = 256 << 20
    # A file that fails its integrity check: rename it to <name>.corrupt-<UTC time> and start
    # empty (logged at CRITICAL, counted as corrupt_recovered), or refuse to start.
    on_corrupt: Literal["move_aside", "fail"] = "move_aside"


class TlsSettings(_Section):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False


class UplinkSettings(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(gt=0, lt=65536)] = 1883
    username: str | None = None
    password: str | None = None
    tls: TlsSettings | None = None
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    keepalive_s: Annotated[int, Field(ge=5)] = 30
    session_expiry_s: Annotated[int, Field(ge=0)] = 7 * 24 * 3600
    topic_prefix: str = "fleet"
    batch_max_records: Annotated[int, Field(gt=0)] = 200
    batch_max_delay_s: Annotated[float, Field(ge=0)] = 1.0
    max_inflight_batches: Annotated[int, Field(gt=0)] = 4
    backoff_initial_s: Annotated[float, Field(gt=0)] = 0.5
    backoff_max_s: Annotated[float, Field(gt=0)] = 60.0
    # MQTT client id; empty means the device id (ACLs may match it with %c).
    client_id: str = ""
    connect_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    # Downlink messages waiting for the agent; more are dropped and counted.
    incoming_queue_size: Annotated[int, Field(gt=0)] = 256
    # How long batches already sent may still wait for their PUBACK when a session ends.
    shutdown_drain_s: Annotated[float, Field(ge=0)] = 2.0
    # How often an idle uplink looks for new records in the outbox.
    poll_interval_s: Annotated[float, Field(gt=0)] = 0.1
    # MQTT 5: a PUBACK "No matching subscribers" (0x10) means the broker dropped the batch, so
    # its records stay in the outbox and the uplink tries again with backoff. Turn off only for a
    # broker that answers 0x10 while it still forwards the message (none known).
    require_subscriber: bool = True

    @field_validator("topic_prefix")
    @classmethod
    def _no_wildcards(cls, v: str) -> str:
        if not v or any(c in v for c in "#+") or v.startswith("/") or v.endswith("/"):
            raise ValueError("topic_prefix must be a plain MQTT topic level without wildcards")
        return v


class HealthSettings(_Section):
    interval_s: Annotated[float, Field(gt=0)] = 60.0
    watchdog: bool = True


class LogSettings(_Section):
    # Level of the agent's own loggers (fleetlink_edge.*). Unset: as the command line set it
    # (--verbose: debug, else info). Remote configuration may change it while running.
    level: Literal["debug", "info", "warning", "error"] | None = None


class CommandSettings(_Section):
    """Downlink commands (``dn/cmd``) and their acks (``ack``)."""

    enabled: bool = True
    # Command ids remembered to drop redelivered copies (MQTT QoS 1 is at least once).
    remember_ids: Annotated[int, Field(gt=0, le=100_000)] = 1024
    # Acks waiting for the broker while the link is down; beyond this the oldest go (counted).
    ack_queue_size: Annotated[int, Field(gt=0, le=100_000)] = 256
    # How long read_dtcs waits for the OBD poller's next turn and the ECUs' answers.
    read_dtcs_timeout_s: Annotated[float, Field(gt=0)] = 10.0


class JobSettings(_Section):
    """Job offers on the device (``offer_job`` commands) and the driver's local interface."""

    enabled: bool = True
    # The kept board (JSON); unset: beside the outbox (outbox.jobs.json).
    path: Path | None = None
    # The driver interface's Unix socket (mode 0660); unset: beside the outbox
    # (outbox.driver.sock). At most 107 bytes long (sun_path).
    socket: Path | None = None
    # Jobs on the board at once; beyond, the oldest finished go, else a new offer fails.
    max_jobs: Annotated[int, Field(gt=0, le=1000)] = 32
    # Finished jobs, and offers unanswered past respond_by, leave the board after this long.
    keep_finished_s: Annotated[float, Field(gt=0)] = 12 * 3600.0


class EdgeSettings(BaseSettings):
    """Everything the agent reads at start; see firmware-config/agent.toml for an example."""

    model_config = SettingsConfigDict(
        env_prefix="FLEETLINK_EDGE_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    toml_file: ClassVar[Path | None] = None

    device: DeviceSettings = DeviceSettings()
    gnss: GnssSettings = GnssSettings()
    can: CanSettings = CanSettings()
    sampling: SamplingSettings = SamplingSettings()
    outbox: OutboxSettings = OutboxSettings()
    uplink: UplinkSettings = UplinkSettings()
    health: HealthSettings = HealthSettings()
    commands: CommandSettings = CommandSettings()
    jobs: JobSettings = JobSettings()
    log: LogSettings = LogSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls.toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls.toml_file))
        return tuple(sources)


def load_settings(path: Path | None, **overrides: Any) -> EdgeSettings:
    """Read and validate settings; raise ConfigError with every problem listed."""
    if path is not None and not path.is_file():
        raise ConfigError(f"config file not found: {path}")

    class _FromFile(EdgeSettings):
        toml_file = path

    try:
        settings = _FromFile(**overrides)
    except ValidationError as exc:
        raise ConfigError(
            f"invalid configuration ({path or 'defaults'}): {_problems(exc)}"
        ) from exc
    except ValueError as exc:  # TOML syntax errors surface as ValueError subclasses
        raise ConfigError(f"cannot read configuration {path}: {exc}") from exc
    return EdgeSettings.model_validate(settings.model_dump())


def with_changes(settings: EdgeSettings, changes: Mapping[str, Any]) -> EdgeSettings:
    """``settings`` with a partial document (section -> key -> value) merged in and validated.

    Strictly: a remote document is JSON, so a value must have its setting's type (no "30" for
    30, no true for 1). Raises ConfigError listing every problem. Remote configuration checks
    desired documents with it; nothing is written anywhere.
    """
    updates: dict[str, BaseModel] = {}
    problems: list[str] = []
    for section, values in changes.items():
        current = (
            getattr(settings, section, None) if section in type(settings).model_fields else None
        )
        if not isinstance(current, BaseModel) or not isinstance(values, Mapping):
            problems.append(f"{section}: not a settings section of key/value pairs")
            continue
        merged = _merged(current.model_dump(), values)
        try:
            updates[section] = type(current).model_validate(merged, strict=True)
        except ValidationError as exc:
            problems.append(_problems(exc, section))
    if problems:
        raise ConfigError("; ".join(problems))
    return settings.model_copy(update=updates)


def _merged(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def _problems(exc: ValidationError, *within: str) -> str:
    """A pydantic ValidationError as ``section.key: message; ...``."""
    return "; ".join(
        f"{'.'.join([*within, *(str(p) for p in err['loc'])]) or '<root>'}: {err['msg']}"
        for err in exc.errors()
    )
