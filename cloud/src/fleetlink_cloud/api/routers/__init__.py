"""One router per resource; ``ROUTERS`` lists the ones mounted under ``/v1``."""

from __future__ import annotations

from fastapi import APIRouter

from fleetlink_cloud.api.routers import (
    admin,
    commands,
    config,
    credentials,
    devices,
    dtcs,
    events,
    plans,
    positions,
    signals,
    stream,
    summary,
    vehicles,
    webhooks,
)

ROUTERS: tuple[APIRouter, ...] = (
    vehicles.router,
    summary.router,
    positions.router,
    signals.router,
    dtcs.router,
    events.router,
    commands.router,
    config.router,
    stream.router,
    webhooks.router,
    devices.router,
    credentials.router,
    admin.router,
    plans.router,
)
