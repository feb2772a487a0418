"""Cloud settings: one typed model, read once from TOML plus FLEETLINK_CLOUD_* environment.

Source order (highest wins): init arguments, environment (``FLEETLINK_CLOUD_DATABASE__URL=...``,
nested with ``__``), the TOML file, then the defaults below. Only ``app.py`` loads it; each
component receives its own sub-model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from fleetlink_cloud.dispatch.settings import DispatchSettings
from fleetlink_cloud.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsSettings(_Section):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


class BrokerSettings(_Section):
    """The MQTT broker ingest reads from. ``embedded`` runs amqtt in-process (MQTT 3.1.1 only)."""

    embedded: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, lt=65536)] = 1883  # 0 with embedded: pick a free port
    username: str | None = None
    password: str | None = None
    tls: TlsSettings | None = None
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    topic_prefix: str = "fleet"
    shared_group: str = "ingest"  # MQTT 5 $share/<group>/...; empty: plain subscription
    client_id: str | None = None  # default: fleetlink-ingest-<hostname>-<pid>
    keepalive_s: Annotated[int, Field(ge=5)] = 30
    session_expiry_s: Annotated[int, Field(ge=0)] = 3600
    # Credential rotation (docs/provisioning.md): the external Mosquitto's password_file, which
    # this service rewrites once a device has acked its new password, and how the broker is
    # made to read it again: a command (["systemctl", "reload", "mosquitto"]) or SIGHUP to the
    # pid in reload_pid_file (Mosquitto's pid_file). Unset: rotations update the registry only.
    passwd_file: Path | None = None
    reload_command: Annotated[list[str], Field(min_length=1)] | None = None
    reload_pid_file: Path | None = None
    # After the reload, before the device is told to reconnect: the broker reads the file then.
    reload_settle_s: Annotated[float, Field(ge=0, le=60)] = 1.0

    @field_validator("topic_prefix")
    @classmethod
    def _plain_prefix(cls, v: str) -> str:
        if not v or any(c in v for c in "#+") or v.startswith("/") or v.endswith("/"):
            raise ValueError("topic_prefix must be plain MQTT topic levels without wildcards")
        return v

    @model_validator(mode="after")
    def _rotation(self) -> Self:
        reloads = (self.reload_command is not None) + (self.reload_pid_file is not None)
        if self.passwd_file is None:
            if reloads:
                raise ValueError("reload_command and reload_pid_file go with passwd_file")
            return self
        if self.embedded:
            raise ValueError("passwd_file belongs to an external Mosquitto: set embedded = false")
        if reloads != 1:
            raise ValueError("passwd_file needs exactly one of reload_command, reload_pid_file")
        if self.reload_command is not None and not self.reload_command[0]:
            raise ValueError("reload_command: the program first, then its arguments")
        return self


class DatabaseSettings(_Section):
    """``sqlite:///path/to/file.sqlite3`` (embedded default) or ``postgresql://...``."""

    url: str = "sqlite:///fleetlink.sqlite3"
    pool_size: Annotated[int, Field(gt=0)] = 10

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        if not v.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("database url must start with sqlite:/// or postgresql://")
        return v


class IngestSettings(_Section):
    heartbeat_timeout_s: Annotated[float, Field(gt=0)] = 180.0
    max_clock_skew_s: Annotated[float, Field(gt=0)] = 300.0  # device time this far ahead: flagged
    accept_unknown_devices: bool = False
    queue_size: Annotated[int, Field(gt=0)] = 1000  # unacked messages held (MQTT 5 Receive Max)
    group_max_messages: Annotated[int, Field(gt=0)] = 200  # messages per commit (group commit)
    device_cache_s: Annotated[float, Field(ge=0)] = 10.0  # registry lookups are cached this long
    presence_check_s: Annotated[float, Field(gt=0)] = 5.0  # heartbeat-timeout sweep interval
    retry_initial_s: Annotated[float, Field(gt=0)] = 0.5  # store failure: retry the group after
    retry_max_s: Annotated[float, Field(gt=0)] = 30.0


class ApiSettings(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, lt=65536)] = 8080
    page_size_max: Annotated[int, Field(gt=0)] = 1000
    cors_origins: list[str] = []


class WebhookSettings(_Section):
    timeout_s: Annotated[float, Field(gt=0)] = 5.0
    max_attempts: Annotated[int, Field(gt=0)] = 8
    backoff_initial_s: Annotated[float, Field(gt=0)] = 1.0
    backoff_max_s: Annotated[float, Field(gt=0)] = 600.0
    disable_after_failures: Annotated[int, Field(gt=0)] = 20
    signature_tolerance_s: Annotated[int, Field(gt=0)] = 300


class CloudSettings(BaseSettings):
    """Everything the cloud service reads at start."""

    model_config = SettingsConfigDict(
        env_prefix="FLEETLINK_CLOUD_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    toml_file: ClassVar[Path | None] = None

    broker: BrokerSettings = BrokerSettings()
    database: DatabaseSettings = DatabaseSettings()
    ingest: IngestSettings = IngestSettings()
    api: ApiSettings = ApiSettings()
    webhooks: WebhookSettings = WebhookSettings()
    dispatch: DispatchSettings = DispatchSettings()

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


def load_settings(path: Path | None, **overrides: Any) -> CloudSettings:
    """Read and validate settings; raise ConfigError with every problem listed."""
    if path is not None and not path.is_file():
        raise ConfigError(f"config file not found: {path}")

    class _FromFile(CloudSettings):
        toml_file = path

    try:
        settings = _FromFile(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration ({path or 'defaults'}): {problems}") from exc
    except ValueError as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc}") from exc
    return CloudSettings.model_validate(settings.model_dump())
