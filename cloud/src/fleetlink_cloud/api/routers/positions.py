"""Position history, as JSON pages or as a GeoJSON FeatureCollection."""

from __future__ import annotations

from typing import Annotated, Final, Literal

from fastapi import APIRouter, Query, Request
from starlette.responses import JSONResponse, Response

from fleetlink_cloud.api.auth import Reader
from fleetlink_cloud.api.deps import Ctx
from fleetlink_cloud.api.errors import error_responses
from fleetlink_cloud.api.params import KnownDevice, TimeWindow
from fleetlink_cloud.api.schemas import (
    PositionCollection,
    PositionOut,
    PositionPage,
    position_feature,
)

GEOJSON: Final = "application/geo+json"

router = APIRouter(tags=["positions"], responses=error_responses(401, 403, 422))


def _quality(accept: str, media_type: str) -> float:
    """The q value ``accept`` gives exactly ``media_type`` (0 when not listed)."""
    best = 0.0
    for part in accept.split(","):
        kind, *params = (p.strip() for p in part.split(";"))
        if kind.lower() != media_type:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        best = max(best, q)
    return best


def wants_geojson(accept: str | None, fmt: str | None) -> bool:
    """``?format=`` wins; otherwise GeoJSON when Accept prefers application/geo+json."""
    if fmt is not None:
        return fmt == "geojson"
    if not accept:
        return False
    geo = _quality(accept, GEOJSON)
    return geo > 0 and geo >= _quality(accept, "application/json")


@router.get(
    "/vehicles/{device_id}/positions",
    response_model=PositionPage,
    responses={
        **error_responses(400, 404),
        200: {
            "description": "A page of fixes (JSON), or a GeoJSON FeatureCollection",
            "content": {GEOJSON: {"schema": {"$ref": "#/components/schemas/PositionCollection"}}},
        },
    },
)
async def list_positions(
    principal: Reader,
    device_id: KnownDevice,
    window: TimeWindow,
    request: Request,
    ctx: Ctx,
    format: Annotated[
        Literal["json", "geojson"] | None,
        Query(description="Overrides the Accept header"),
    ] = None,
) -> Response:
    """Fixes with `from <= ts < to` (device time), oldest first, one keyset page at a time.

    GeoJSON (RFC 7946) with `Accept: application/geo+json` or `?format=geojson`: one Point
    feature per fix, `[lon, lat(, alt)]`, and `next_cursor` as a foreign member.
    """
    page = await ctx.store.positions(
        device_id,
        from_wall_ns=window.from_wall_ns,
        to_wall_ns=window.to_wall_ns,
        limit=window.limit,
        cursor=window.cursor,
    )
    vary = {"Vary": "Accept"}
    if wants_geojson(request.headers.get("accept"), format):
        doc = PositionCollection(
            features=[position_feature(r) for r in page.items], next_cursor=page.next_cursor
        )
        return JSONResponse(doc.model_dump(mode="json"), media_type=GEOJSON, headers=vary)
    body = PositionPage(
        items=[PositionOut.model_validate(r) for r in page.items], next_cursor=page.next_cursor
    )
    return JSONResponse(body.model_dump(mode="json"), headers=vary)
