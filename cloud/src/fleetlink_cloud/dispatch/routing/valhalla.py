"""Valhalla's matrix service (``/sources_to_targets``), per its matrix API reference. No I/O.

Request: ``POST /sources_to_targets`` with ``{"sources": [{"lat": .., "lon": ..}], "targets":
[...], "costing": "auto", "units": "kilometers"}``.

Answer (the default ``verbose`` form): HTTP 200 with ``{"sources_to_targets": [[{"from_index":
0, "to_index": 0, "time": s, "distance": km}, ...], ...], "units": "kilometers", ...}``, one row
per source, ``time``/``distance`` null where no route exists; distances are in ``units``
(kilometers or miles). Errors: HTTP 4xx with ``{"error_code": 171, "error": "No suitable edges
near location", "status_code": 400, "status": "Bad Request"}``. The departure time is not sent:
Valhalla refuses time-dependent matrices for many source/target shapes and wants local time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from fleetlink_cloud.dispatch.model import Location
from fleetlink_cloud.dispatch.routing import RouterRefused, RouterResponseError, RouterSettings
from fleetlink_cloud.dispatch.routing.api import Cells, HttpCall, json_object, number
from fleetlink_cloud.dispatch.routing.greatcircle import GreatCircleModel
from fleetlink_cloud.dispatch.routing.http import HttpRouter, open_http_router

DEFAULT_COSTING = "auto"
_M_PER_UNIT: Final = {"kilometers": 1000.0, "km": 1000.0, "miles": 1609.344, "mi": 1609.344}


@dataclass(frozen=True, slots=True)
class ValhallaApi:
    costing: str = DEFAULT_COSTING
    name: str = "valhalla"

    def call(self, sources: Sequence[Location], destinations: Sequence[Location]) -> HttpCall:
        body = {
            "sources": [{"lat": p.lat, "lon": p.lon} for p in sources],
            "targets": [{"lat": p.lat, "lon": p.lon} for p in destinations],
            "costing": self.costing,
            "units": "kilometers",
        }
        return HttpCall("POST", "/sources_to_targets", body)

    def parse(
        self, status: int, body: bytes, n_sources: int, n_destinations: int
    ) -> tuple[Cells, Cells]:
        if 400 <= status < 500:
            raise RouterRefused(_refusal(status, body))
        if status != 200:
            raise RouterResponseError(f"valhalla: unexpected HTTP {status}")
        data = json_object(self.name, body)
        if "error_code" in data:
            raise RouterRefused(f"valhalla: error {data['error_code']}: {data.get('error', '')}")
        scale = _M_PER_UNIT.get(str(data.get("units", "kilometers")))
        if scale is None:
            raise RouterResponseError(f"valhalla: unknown units {data.get('units')!r}")
        table = data.get("sources_to_targets")
        if not isinstance(table, list) or len(table) != n_sources:
            raise RouterResponseError(f"valhalla: expected {n_sources} rows of sources_to_targets")
        durations: Cells = [[None] * n_destinations for _ in range(n_sources)]
        distances: Cells = [[None] * n_destinations for _ in range(n_sources)]
        for i, row in enumerate(table):
            if not isinstance(row, list) or len(row) != n_destinations:
                raise RouterResponseError(f"valhalla: expected rows of {n_destinations} cells")
            if len({_index(cell, i, n_destinations) for cell in row}) != n_destinations:
                raise RouterResponseError(f"valhalla: row {i} repeats a target")
            for cell in row:
                j = _index(cell, i, n_destinations)
                durations[i][j] = number("valhalla time", cell.get("time"))
                distances[i][j] = number("valhalla distance", cell.get("distance"), scale)
        return durations, distances


def _index(cell: object, i: int, n_destinations: int) -> int:
    """The cell's target index, checked against its row (indices count sources and targets)."""
    if not isinstance(cell, dict):
        raise RouterResponseError("valhalla: a matrix cell is not an object")
    frm, to = cell.get("from_index"), cell.get("to_index")
    if frm != i or not isinstance(to, int) or isinstance(to, bool) or not 0 <= to < n_destinations:
        raise RouterResponseError(f"valhalla: bad cell indices from={frm!r} to={to!r} in row {i}")
    return to


def _refusal(status: int, body: bytes) -> str:
    try:
        data = json_object("valhalla", body)
    except RouterResponseError:
        return f"valhalla: HTTP {status}"
    return f"valhalla: HTTP {status}: error {data.get('error_code')}: {data.get('error', '')}"


def from_settings(settings: RouterSettings, builtin: GreatCircleModel) -> HttpRouter:
    """The ``valhalla`` entry of :data:`~fleetlink_cloud.dispatch.routing.ROUTERS`."""
    return open_http_router(ValhallaApi(settings.profile or DEFAULT_COSTING), settings, builtin)
