"""``create_app``: the versioned REST/WebSocket API of fleetlink-cloud around one ApiContext.

Everything is under ``/v1`` except ``/healthz``, the OpenAPI document (``/openapi.json``) and
its browsable docs (``/docs``). The app holds no globals: the store, bus, settings and clock
come in ``ctx``; the caller (the service's composition root) opens the store, runs the
``StreamTailer`` that feeds the bus, and serves the app with uvicorn.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any, Final

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from pydantic.json_schema import models_json_schema

from fleetlink_cloud.api import errors
from fleetlink_cloud.api.audit import AuditMiddleware
from fleetlink_cloud.api.auth import document_scopes
from fleetlink_cloud.api.bodylimit import BodyLimitMiddleware
from fleetlink_cloud.api.deps import ApiContext
from fleetlink_cloud.api.routers import (
    ROUTERS,
    depots,
    dispatch_profiles,
    drivers,
    health,
    jobs,
    routes,
)
from fleetlink_cloud.api.schemas import PositionCollection
from fleetlink_cloud.commands import CommandService
from fleetlink_cloud.jobs import JobService
from fleetlink_cloud.planning import Planner
from fleetlink_cloud.store.base import SCOPES
from fleetlink_cloud.tokens import IMPLIES
from fleetlink_protocols.limits import MAX_PAYLOAD_BYTES

API_PREFIX: Final = "/v1"
MAX_BODY_BYTES: Final = MAX_PAYLOAD_BYTES  # a set_config or configuration body is the largest
DISPATCH_ROUTERS: Final = (
    jobs.router,
    depots.router,
    drivers.router,
    dispatch_profiles.router,
    routes.router,
)
# Models only named by ``$ref`` in alternative media types (GeoJSON), added to the components.
EXTRA_SCHEMAS: Final = (PositionCollection,)

_SCOPE_ROWS: Final = "\n".join(
    f"| `{scope}` | {', '.join(f'`{s}`' for s in SCOPES if s in IMPLIES[scope])} |"
    for scope in SCOPES
)
DESCRIPTION: Final = f"""
Telemetry, live state and downlink of the fleetlink fleet, for dispatch backends, dashboards
and maintenance tools. Times are integers, nanoseconds since the Unix epoch (`*_wall_ns`);
`ts_wall_ns` is the vehicle's clock. Errors are JSON `{{"detail": ...}}`. Lists page with an
opaque `cursor` (`next_cursor` of the previous page) or `after_id`.

Every route but `/healthz` needs `Authorization: Bearer <token>`; each operation names the
scope it requires, and a token's scope grants these:

| token scope | grants routes that need |
|---|---|
{_SCOPE_ROWS}

Every write is audited (who, what, when). The live stream is a WebSocket at `/v1/stream`.
"""


def _api_version() -> str:
    try:
        return version("fleetlink-cloud")
    except PackageNotFoundError:  # running from a source tree
        return "0"


class FleetlinkApi(FastAPI):
    """FastAPI with the GeoJSON models added to the OpenAPI components."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is not None:
            return self.openapi_schema
        schema = super().openapi()
        _, defs = models_json_schema(
            [(m, "serialization") for m in EXTRA_SCHEMAS],
            ref_template="#/components/schemas/{model}",
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, definition in defs.get("$defs", {}).items():
            components.setdefault(name, definition)
        self.openapi_schema = schema
        return schema


def create_app(
    ctx: ApiContext,
    *,
    commands: CommandService | None = None,
    jobs: JobService | None = None,
    planner: Planner | None = None,
) -> FastAPI:
    """The API app serving ``ctx``.

    ``commands`` sends downlink commands and, through its ``configs``, desired configurations;
    without one, the app makes a CommandService that has no MQTT publisher, so new commands and
    configurations wait in the store until a process with a broker link sends them.
    ``jobs`` writes job state (give it the assigner); without one, the app makes a JobService
    that assigns nothing.
    ``planner`` makes batch plans (give it the live dispatcher's ``apply``); without one, the
    app makes a Planner on the builtin travel model whose plans cannot be applied.
    """
    app = FleetlinkApi(
        title="fleetlink API",
        version=_api_version(),
        description=DESCRIPTION,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.ctx = ctx
    app.state.commands = commands or CommandService(ctx.store, None, clock=ctx.clock)
    app.state.configs = app.state.commands.configs
    app.state.jobs = jobs or JobService(ctx.store, clock=ctx.clock)
    app.state.planner = planner or Planner(ctx.store, clock=ctx.clock)
    errors.install(app)
    document_scopes(health.router.routes)
    app.include_router(health.router)
    for router in (*ROUTERS, *DISPATCH_ROUTERS):
        document_scopes(router.routes)
        app.include_router(router, prefix=API_PREFIX)
    # Innermost first: the body limit answers inside the audit log's view of the response.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=MAX_BODY_BYTES)
    app.add_middleware(AuditMiddleware, ctx=ctx)
    if ctx.settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=ctx.settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "If-Match"],
            expose_headers=["ETag"],
        )
    return app
