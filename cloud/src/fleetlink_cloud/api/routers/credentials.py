"""A vehicle's MQTT credentials: start a rotation, read how the latest one went.

The new password never appears in a response: it travels to the device only, in the
``rotate_credentials`` command, and the store drops it once the rotation is finished
(``fleetlink_cloud.credentials``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Request
from pydantic import Field

from fleetlink_cloud.api.auth import Admin
from fleetlink_cloud.api.deps import Commands, Ctx
from fleetlink_cloud.api.errors import error_responses
from fleetlink_cloud.api.params import KnownDevice
from fleetlink_cloud.api.schemas import Out
from fleetlink_cloud.api.schemas_admin import MAX_EXPIRY_S, CommandOut, In
from fleetlink_cloud.credentials import Rotation, State, latest_rotation, start_rotation, state_of
from fleetlink_cloud.errors import NotFound

router = APIRouter(tags=["credentials"], responses=error_responses(401, 403, 422))


class RotateIn(In):
    expires_in_s: float | None = Field(
        None,
        gt=0,
        le=MAX_EXPIRY_S,
        description="The device ignores the rotation after this long (device clock)",
    )


class RotationOut(Out):
    """A rotation: its command (password redacted), how far it got, and the reconnect after it."""

    state: State = Field(
        description="waiting: not acked done yet, or the broker not updated yet; applied: the "
        "broker takes the new password only; refused: the device failed or rejected it; "
        "superseded: a newer rotation was done first"
    )
    command: CommandOut
    reconnect: CommandOut | None = Field(
        description="Sent once applied; its detail says which credential the device now uses"
    )


def _out(rotation: Rotation) -> RotationOut:
    reconnect = rotation.reconnect
    return RotationOut(
        state=rotation.state,
        command=CommandOut.model_validate(rotation.command),
        reconnect=None if reconnect is None else CommandOut.model_validate(reconnect),
    )


@router.post(
    "/vehicles/{device_id}/credentials/rotate",
    status_code=201,
    responses=error_responses(400, 404, 413),
)
async def rotate_credentials(
    principal: Admin,
    device_id: KnownDevice,
    request: Request,
    service: Commands,
    body: Annotated[RotateIn | None, Body()] = None,
) -> RotationOut:
    """Give the vehicle a new MQTT password: queued, sent when it is online, applied in the
    broker once the vehicle acked it; the old password works until then."""
    expires = None if body is None else body.expires_in_s
    row = await start_rotation(service, device_id, actor=principal.token_id, expires_in_s=expires)
    request.state.audit_detail = f"credential rotation {row.command_id}"
    return _out(Rotation(row, state_of(row), None))


@router.get("/vehicles/{device_id}/credentials/rotation", responses=error_responses(404))
async def latest(principal: Admin, device_id: KnownDevice, ctx: Ctx) -> RotationOut:
    """The vehicle's latest credential rotation."""
    rotation = await latest_rotation(ctx.store, device_id)
    if rotation is None:
        raise NotFound(f"vehicle {device_id!r} never had its credentials rotated")
    return _out(rotation)
