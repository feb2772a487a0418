"""Bodies of the management routes: commands, webhooks, devices, tokens, audit, dead letters.

Secrets (a webhook's signing secret, a new API token) appear in exactly one response, the one
that creates them (``WebhookCreated``, ``TokenCreated``); every other model leaves them out.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    ValidationInfo,
    field_validator,
)

from fleetlink_cloud.api.schemas import Out
from fleetlink_cloud.bus import EVENT_TYPES
from fleetlink_cloud.commands import COMMAND_NAMES, public_args
from fleetlink_cloud.store.base import CommandStatus, DeadLetter, Scope

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
COMMAND_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,63}$"
MAX_EXPIRY_S = 30 * 86_400


class In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- commands ----------------------------------------------------------------------------------


class CommandIn(In):
    """A downlink command. ``set_config`` takes ``{"values": {...}}``; the version is assigned."""

    name: str = Field(json_schema_extra={"enum": list(COMMAND_NAMES)}, max_length=64)
    args: dict[str, Any] = Field(default_factory=dict)
    command_id: str | None = Field(
        default=None,
        pattern=COMMAND_ID_PATTERN,
        description="Client-chosen id: repeating a request with it returns the same command",
    )
    expires_in_s: float | None = Field(
        default=None, gt=0, le=MAX_EXPIRY_S, description="The device ignores it after this"
    )


class CommandOut(Out):
    """A command and its delivery/ack status (queued, sent, accepted, done, failed, rejected)."""

    command_id: str
    device_id: str
    name: str
    args: dict[str, Any]
    status: CommandStatus
    created_wall_ns: int
    expires_wall_ns: int | None = Field(description="device clock")
    sent_wall_ns: int | None
    acked_wall_ns: int | None
    detail: str = Field(description="from the latest ack")

    @field_validator("args")
    @classmethod
    def _no_secrets(cls, args: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # A rotate_credentials password travels to the device only, never to an API caller.
        return public_args(str(info.data.get("name", "")), args)


class CommandList(Out):
    items: list[CommandOut]


# -- webhooks ----------------------------------------------------------------------------------


def _known_types(types: list[str]) -> list[str]:
    unknown = sorted(set(types) - set(EVENT_TYPES))
    if unknown:
        raise ValueError(f"unknown event types {unknown}; known: {', '.join(EVENT_TYPES)}")
    return sorted(set(types), key=EVENT_TYPES.index)


EventTypes = Annotated[
    list[Annotated[str, Field(json_schema_extra={"enum": list(EVENT_TYPES)})]],
    Field(min_length=1, max_length=len(EVENT_TYPES) * 2),
    AfterValidator(_known_types),
]


class WebhookIn(In):
    url: HttpUrl = Field(description="http(s) URL the events are POSTed to")
    event_types: EventTypes
    id: str | None = Field(default=None, pattern=ID_PATTERN, description="default: generated")


class WebhookOut(Out):
    """A subscription; ``cursor`` is the last stream event id it handled."""

    id: str
    url: str
    event_types: list[str]
    created_wall_ns: int
    enabled: bool
    consecutive_failures: int
    cursor: int
    disabled_reason: str | None


class WebhookCreated(WebhookOut):
    secret: str = Field(description="HMAC signing secret: shown once, in this response only")


class WebhookList(Out):
    items: list[WebhookOut]


class DeliveryOut(Out):
    """One delivery attempt (event id 0: a test ping)."""

    id: int
    webhook_id: str
    event_id: int
    attempt: int
    ok: bool
    status_code: int | None
    error: str | None
    ts_wall_ns: int
    next_attempt_wall_ns: int | None


class DeliveryList(Out):
    items: list[DeliveryOut]


# -- devices, tokens, audit, dead letters, status ----------------------------------------------


class DeviceOut(Out):
    """A registered device (its MQTT credential hash is never shown)."""

    id: str
    name: str
    created_wall_ns: int
    disabled: bool


class DeviceList(Out):
    items: list[DeviceOut]


class TokenIn(In):
    name: str = Field(min_length=1, max_length=100)
    scope: Scope


class TokenOut(Out):
    token_id: str
    name: str
    scope: Scope
    created_wall_ns: int
    revoked_wall_ns: int | None
    active: bool


class TokenCreated(TokenOut):
    token: str = Field(description="The bearer token: shown once, in this response only")


class TokenList(Out):
    items: list[TokenOut]


class AuditOut(Out):
    id: int
    ts_wall_ns: int
    actor: str = Field(description="token id (or 'cli')")
    method: str
    path: str
    status: int
    detail: str


class AuditList(Out):
    items: list[AuditOut]


class DeadLetterOut(Out):
    """A message ingest refused, with the reason and the raw payload (base64)."""

    id: int
    topic: str
    reason: str
    payload_b64: str
    payload_bytes: int
    received_wall_ns: int
    device_id: str | None


def dead_letter_out(row: DeadLetter) -> DeadLetterOut:
    return DeadLetterOut(
        id=row.id,
        topic=row.topic,
        reason=row.reason,
        payload_b64=base64.b64encode(row.payload).decode("ascii"),
        payload_bytes=len(row.payload),
        received_wall_ns=row.received_wall_ns,
        device_id=row.device_id,
    )


class DeadLetterList(Out):
    items: list[DeadLetterOut]


class StatusOut(Out):
    """Operator view: store row counts and the API's and bus's counters."""

    schema_version: int
    counts: dict[str, int]
    api: dict[str, int]
    bus: dict[str, int]
    stream_subscribers: int


class HealthOut(Out):
    status: str
    schema_version: int
