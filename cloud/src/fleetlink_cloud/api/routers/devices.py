"""Devices: the registry as operators see it. Registration stays in the CLI, which shows the
MQTT password once and renders the broker's password file."""

from __future__ import annotations

from fastapi import APIRouter, Request

from fleetlink_cloud.api.auth import Admin
from fleetlink_cloud.api.deps import Ctx
from fleetlink_cloud.api.errors import error_responses
from fleetlink_cloud.api.params import DeviceId
from fleetlink_cloud.api.schemas_admin import DeviceList, DeviceOut
from fleetlink_cloud.errors import NotFound

router = APIRouter(tags=["devices"], responses=error_responses(401, 403, 422))


@router.get("/devices")
async def list_devices(principal: Admin, ctx: Ctx) -> DeviceList:
    """Every registered device, by id."""
    return DeviceList(items=[DeviceOut.model_validate(d) for d in await ctx.store.list_devices()])


@router.get("/devices/{device_id}", responses=error_responses(404))
async def get_device(principal: Admin, device_id: DeviceId, ctx: Ctx) -> DeviceOut:
    """One registered device."""
    device = await ctx.store.get_device(device_id)
    if device is None:
        raise NotFound(f"no device {device_id!r}")
    return DeviceOut.model_validate(device)


async def _set_disabled(ctx: Ctx, request: Request, device_id: str, disabled: bool) -> DeviceOut:
    device = await ctx.store.set_device_disabled(device_id, disabled)
    request.state.audit_detail = f"device {device_id} {'disabled' if disabled else 'enabled'}"
    return DeviceOut.model_validate(device)


@router.post("/devices/{device_id}/disable", responses=error_responses(404))
async def disable_device(
    principal: Admin, device_id: DeviceId, request: Request, ctx: Ctx
) -> DeviceOut:
    """Refuse the device's data from now on (ingest drops it as DeviceDisabled)."""
    return await _set_disabled(ctx, request, device_id, True)


@router.post("/devices/{device_id}/enable", responses=error_responses(404))
async def enable_device(
    principal: Admin, device_id: DeviceId, request: Request, ctx: Ctx
) -> DeviceOut:
    """Accept the device's data again."""
    return await _set_disabled(ctx, request, device_id, False)
