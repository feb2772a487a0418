"""Vehicles: the live picture of the fleet, one vehicle, its loss ledger and agent health."""

from __future__ import annotations

from fastapi import APIRouter

from fleetlink_cloud.api.auth import Reader
from fleetlink_cloud.api.deps import Ctx
from fleetlink_cloud.api.errors import error_responses
from fleetlink_cloud.api.params import KnownDevice
from fleetlink_cloud.api.schemas import (
    HealthCountersOut,
    LedgerOut,
    VehicleList,
    VehicleOut,
    ledger_out,
    vehicle_out,
)
from fleetlink_cloud.errors import NotFound

router = APIRouter(tags=["vehicles"], responses=error_responses(401, 403, 422))


@router.get("/vehicles")
async def list_vehicles(principal: Reader, ctx: Ctx) -> VehicleList:
    """Every vehicle with its presence, last position, latest signals and active DTCs."""
    return VehicleList(items=[vehicle_out(v) for v in await ctx.store.vehicles()])


@router.get("/vehicles/{device_id}", responses=error_responses(404))
async def get_vehicle(principal: Reader, device_id: KnownDevice, ctx: Ctx) -> VehicleOut:
    """One vehicle's live state."""
    state = await ctx.store.vehicle(device_id)
    if state is None:
        raise NotFound(f"no vehicle {device_id!r}")
    return vehicle_out(state)


@router.get("/vehicles/{device_id}/ledger", responses=error_responses(404))
async def get_ledger(principal: Reader, device_id: KnownDevice, ctx: Ctx) -> LedgerOut:
    """The loss ledger: per boot, the sequence numbers received, the gaps (never received),
    what the device reports it evicted from its outbox, and the time it spent offline."""
    return ledger_out(await ctx.store.ledger(device_id, now_wall_ns=ctx.clock()))


@router.get("/vehicles/{device_id}/health", responses=error_responses(404))
async def get_agent_health(
    principal: Reader, device_id: KnownDevice, ctx: Ctx
) -> HealthCountersOut:
    """The newest health counters the vehicle's agent reported (404 until one arrives)."""
    row = await ctx.store.health_latest(device_id)
    if row is None:
        raise NotFound(f"no health record from {device_id!r} yet")
    return HealthCountersOut.model_validate(row)
