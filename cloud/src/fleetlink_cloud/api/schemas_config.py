"""Bodies of the configuration routes: desired documents in, desired and reported state out.

A document is a partial agent settings document, ``{section: {key: value}}``, such as
``{"sampling": {"position_interval_s": 5}}``. The cloud checks only its shape and size; the
vehicle checks keys and values against its own settings model and reports the outcome.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from fleetlink_cloud.api.schemas import Out
from fleetlink_cloud.api.schemas_admin import ID_PATTERN, In
from fleetlink_cloud.store.base import DeviceConfig
from fleetlink_protocols.limits import MAX_DESIRED_CONFIG_BYTES

MAX_GROUP_DEVICES = 10_000

Document = Annotated[
    dict[str, dict[str, Any]],
    Field(
        description=(
            "Partial agent settings, `{section: {key: value}}`; keys left out take the "
            f"vehicle's local value. At most {MAX_DESIRED_CONFIG_BYTES} bytes encoded."
        ),
        examples=[{"sampling": {"position_interval_s": 5}, "health": {"interval_s": 30}}],
    ),
]


class ConfigIn(In):
    document: Document


class GroupConfigIn(In):
    devices: (
        Annotated[
            list[Annotated[str, Field(pattern=ID_PATTERN)]],
            Field(min_length=1, max_length=MAX_GROUP_DEVICES),
        ]
        | Literal["all"]
    ) = Field(description='Device ids, or "all" for every registered device')
    document: Document
    if_match: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict,
        description=(
            "Device id -> the version it must be at (0: no document yet); a device at another "
            "version is left alone (412 in its result). Devices not named here are replaced."
        ),
    )


class DesiredOut(Out):
    version: int = Field(description="1 for the first document, one more for every change")
    document: dict[str, Any]
    set_by: str = Field(description="token id (or 'cli')")
    set_wall_ns: int
    published: bool = Field(description="this version went out retained on dn/config")
    published_wall_ns: int | None


class ReportedOut(Out):
    version: int = Field(description="the desired version applied; 0: none, local settings only")
    document: dict[str, Any] = Field(description="the desired document applied")
    pending_restart: list[str] = Field(description="its keys that take effect at the next start")
    refused_version: int | None = Field(description="the desired version the vehicle refused")
    error: str | None = Field(description="why it refused it (validation error)")
    reported_wall_ns: int


class ConfigOut(Out):
    device_id: str
    desired: DesiredOut | None
    reported: ReportedOut | None
    in_sync: bool = Field(description="no desired document, or the vehicle runs its version")


def config_out(config: DeviceConfig) -> ConfigOut:
    desired, reported = config.desired, config.reported
    return ConfigOut(
        device_id=config.device_id,
        desired=None if desired is None else DesiredOut.model_validate(desired),
        reported=None if reported is None else ReportedOut.model_validate(reported),
        in_sync=desired is None or (reported is not None and reported.version == desired.version),
    )


class GroupResultOut(Out):
    device_id: str
    status: int = Field(description="200 stored, 404 no such device, 412 not at if_match")
    version: int | None = Field(description="the stored version, or the current one (412)")
    detail: str


class GroupConfigOut(Out):
    results: list[GroupResultOut]
