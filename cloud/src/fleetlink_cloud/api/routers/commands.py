"""Downlink commands: create one for a vehicle (idempotently), list them, read one's status.

A command is stored ``queued`` and sent when the device is online (``CommandService``); its
status follows the device's acks: sent, accepted, done, failed or rejected.
"""

from __future__ import annotations

from typing import Annotated, Final

from fastapi import APIRouter, Header, Path, Query, Request, Response

from fleetlink_cloud.api.auth import AuthFailed, Commander, Reader
from fleetlink_cloud.api.deps import Commands, Ctx, Principal
from fleetlink_cloud.api.errors import error_responses
from fleetlink_cloud.api.params import KnownDevice, Limit, clamp
from fleetlink_cloud.api.schemas_admin import (
    COMMAND_ID_PATTERN,
    CommandIn,
    CommandList,
    CommandOut,
)
from fleetlink_cloud.commands import COMMAND_SCOPES
from fleetlink_cloud.errors import NotFound
from fleetlink_cloud.store.base import CommandStatus

router = APIRouter(tags=["commands"], responses=error_responses(401, 403, 422))

_WHO_MAY: Final = "; ".join(
    f"`{name}`: {' or '.join(scopes)}" for name, scopes in COMMAND_SCOPES.items()
)


def _check_command_scope(principal: Principal, name: str) -> None:
    """Some commands need a narrower scope than the route (admin may send any)."""
    allowed = COMMAND_SCOPES.get(name)
    if allowed is None or principal.scope == "admin" or principal.scope in allowed:
        return  # unknown names are refused as 422 by the command service
    raise AuthFailed(
        403,
        f"token scope {principal.scope!r} may not send {name!r} (needs {' or '.join(allowed)})",
        f'Bearer error="insufficient_scope", scope="{" ".join(allowed)}"',
    )


@router.post(
    "/vehicles/{device_id}/commands",
    status_code=201,
    responses={
        **error_responses(400, 404, 409, 413),
        200: {"model": CommandOut, "description": "A repeated request: the existing command"},
    },
    description=(
        "Queue a downlink command (ping, read_dtcs, set_config) and send it if the vehicle is "
        "online. Idempotent with `command_id` in the body or an `Idempotency-Key` header: a "
        "repeat answers 200 with the existing command; the same id with other content is a "
        f"409. Who may send which command: {_WHO_MAY}; admin: all."
    ),
)
async def create_command(
    principal: Commander,
    device_id: KnownDevice,
    body: CommandIn,
    request: Request,
    response: Response,
    service: Commands,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=255,
            description="Repeating a request with the same key returns the same command",
        ),
    ] = None,
) -> CommandOut:
    """Queue a downlink command (see the route's description)."""
    _check_command_scope(principal, body.name)
    result = await service.create(
        device_id,
        body.name,
        body.args,
        command_id=body.command_id,
        idempotency_key=idempotency_key,
        expires_in_s=body.expires_in_s,
        actor=principal.token_id,
    )
    row = result.command
    request.state.audit_detail = f"command {row.command_id} {row.name}" + (
        "" if result.created else " (repeat)"
    )
    if not result.created:
        response.status_code = 200
    return CommandOut.model_validate(row)


@router.get("/vehicles/{device_id}/commands", responses=error_responses(404))
async def list_commands(
    principal: Reader,
    device_id: KnownDevice,
    ctx: Ctx,
    status: Annotated[CommandStatus | None, Query(description="Only commands in it")] = None,
    limit: Limit = 100,
) -> CommandList:
    """The vehicle's commands, newest first."""
    rows = await ctx.store.list_commands(device_id, status=status, limit=clamp(ctx, limit))
    return CommandList(items=[CommandOut.model_validate(r) for r in rows])


@router.get("/commands/{command_id}", responses=error_responses(404))
async def get_command(
    principal: Reader,
    command_id: Annotated[str, Path(pattern=COMMAND_ID_PATTERN, max_length=64)],
    ctx: Ctx,
) -> CommandOut:
    """One command and its ack status."""
    row = await ctx.store.get_command(command_id)
    if row is None:
        raise NotFound(f"no command {command_id!r}")
    return CommandOut.model_validate(row)
