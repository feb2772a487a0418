"""Remote configuration: a vehicle's desired document (versioned, If-Match) and its report.

``PUT`` stores a new desired document and publishes it retained on the vehicle's ``dn/config``;
the vehicle applies it (at once where it can, else at its next start) or refuses it, and reports
either on ``config``, which ``GET`` shows beside the desired one. Versions are the ETags: a
``PUT`` over an existing document must name the version it replaces in ``If-Match``.
"""

from __future__ import annotations

from typing import Annotated, Final

from fastapi import APIRouter, Header, HTTPException, Request, Response

from fleetlink_cloud.api.auth import Dispatcher, Reader
from fleetlink_cloud.api.deps import Configs, Ctx
from fleetlink_cloud.api.errors import error_responses
from fleetlink_cloud.api.params import KnownDevice
from fleetlink_cloud.api.schemas_config import (
    ConfigIn,
    ConfigOut,
    GroupConfigIn,
    GroupConfigOut,
    GroupResultOut,
    config_out,
)
from fleetlink_cloud.store.base import StaleVersion

router = APIRouter(tags=["configuration"], responses=error_responses(401, 403, 422))

IF_MATCH_HELP: Final = (
    'The version being replaced, as given in the ETag (`"3"` or `3`), or `*` for any. '
    "Required once the vehicle has a desired document."
)


def etag(version: int) -> str:
    return f'"{version}"'


def expected_version(device_id: str, if_match: str | None, current: int) -> int | None:
    """What ``If-Match`` asks ``set_desired_config`` to expect (RFC 9110 section 13.1.1).

    Raises HTTPException 428 when it is missing over an existing document, 400 when it is not
    one version, and StaleVersion (412) for ``*`` when there is no document.
    """
    if if_match is None:
        if current:
            raise HTTPException(
                428, f"If-Match is required: the desired configuration is at version {current}"
            )
        return 0
    tag = if_match.strip()
    if tag == "*":
        if not current:
            raise StaleVersion(device_id, None, 0)
        return None
    number = tag[1:-1] if len(tag) >= 2 and tag[0] == tag[-1] == '"' else tag
    if not (number.isascii() and number.isdigit() and len(number) <= 19):
        raise HTTPException(400, 'If-Match: expected one version such as "3", or *')
    return int(number)


@router.get("/vehicles/{device_id}/config", responses=error_responses(404))
async def get_config(
    principal: Reader, device_id: KnownDevice, ctx: Ctx, response: Response
) -> ConfigOut:
    """The vehicle's desired configuration (ETag: its version) and what the vehicle reports."""
    config = await ctx.store.get_config(device_id)
    if config.desired is not None:
        response.headers["ETag"] = etag(config.desired.version)
    return config_out(config)


@router.put(
    "/vehicles/{device_id}/config",
    responses=error_responses(400, 404, 412, 413, 428),
    description=(
        "Replace the vehicle's desired configuration; the new version is one more than the old. "
        "Keys left out of the document take the vehicle's local value. The vehicle picks it up "
        "when it is next online and reports the outcome (see GET). Audited."
    ),
)
async def put_config(
    principal: Dispatcher,
    device_id: KnownDevice,
    body: ConfigIn,
    request: Request,
    response: Response,
    ctx: Ctx,
    configs: Configs,
    if_match: Annotated[str | None, Header(alias="If-Match", description=IF_MATCH_HELP)] = None,
) -> ConfigOut:
    """Set the desired configuration (see the route's description)."""
    current = (await ctx.store.get_config(device_id)).desired
    expected = expected_version(device_id, if_match, 0 if current is None else current.version)
    row = await configs.put(
        device_id, body.document, expected_version=expected, set_by=principal.token_id
    )
    request.state.audit_detail = f"config version {row.version}"
    response.headers["ETag"] = etag(row.version)
    return config_out(await ctx.store.get_config(device_id))


@router.put(
    "/config",
    responses=error_responses(400, 413),
    description=(
        'Set one desired configuration on several vehicles (or "all"), each getting its own next '
        "version. Vehicles named in `if_match` must be at that version; the others are replaced. "
        "Answers 200 with one result per vehicle, in id order. Audited."
    ),
)
async def put_group_config(
    principal: Dispatcher, body: GroupConfigIn, request: Request, configs: Configs
) -> GroupConfigOut:
    """Set a configuration on a group of vehicles (see the route's description)."""
    devices = None if body.devices == "all" else body.devices
    results = await configs.put_many(
        devices, body.document, expected=body.if_match, set_by=principal.token_id
    )
    counts = {code: sum(r.status == code for r in results) for code in (200, 412, 404)}
    request.state.audit_detail = (
        f"config for {len(results)} vehicles: {counts[200]} set, {counts[412]} stale,"
        f" {counts[404]} unknown"
    )
    return GroupConfigOut(results=[GroupResultOut.model_validate(r) for r in results])
