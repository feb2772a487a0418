"""``/healthz``: unauthenticated liveness for load balancers and systemd checks."""

from __future__ import annotations

from fastapi import APIRouter

from fleetlink_cloud.api.deps import Ctx
from fleetlink_cloud.api.errors import error_responses
from fleetlink_cloud.api.schemas_admin import HealthOut

router = APIRouter(tags=["health"])


@router.get("/healthz", responses=error_responses(503))
async def healthz(ctx: Ctx) -> HealthOut:
    """200 while the store answers; 503 when it does not. Reveals nothing else."""
    return HealthOut(status="ok", schema_version=await ctx.store.schema_version())
