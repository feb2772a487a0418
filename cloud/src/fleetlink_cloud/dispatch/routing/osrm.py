"""OSRM's table service (``/table/v1``), as documented in osrm-backend ``docs/http.md``. No I/O.

Request: ``GET /table/v1/{profile}/{lon},{lat};...?sources=0;1&destinations=2;3&
annotations=duration,distance``: sources first, then destinations, in one coordinate list
(longitude first), with ``sources``/``destinations`` indexing into it.

Answer: HTTP 200 with ``{"code": "Ok", "durations": [[s, ...]], "distances": [[m, ...]], ...}``,
row per source, ``null`` where no route exists; or HTTP 400 with ``{"code": "NoSegment",
"message": "..."}`` (``InvalidQuery``, ``InvalidValue``, ``TooBig``, ``NoTable``,
``NotImplemented``...). Distances need the CH algorithm: an MLD server answers
``NotImplemented``. OSRM has no departure time: its durations are free-flow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fleetlink_cloud.dispatch.model import Location
from fleetlink_cloud.dispatch.routing import RouterRefused, RouterResponseError, RouterSettings
from fleetlink_cloud.dispatch.routing.api import Cells, HttpCall, json_object, rows
from fleetlink_cloud.dispatch.routing.greatcircle import GreatCircleModel
from fleetlink_cloud.dispatch.routing.http import HttpRouter, open_http_router

DEFAULT_PROFILE = "driving"


@dataclass(frozen=True, slots=True)
class OsrmApi:
    profile: str = DEFAULT_PROFILE
    name: str = "osrm"

    def call(self, sources: Sequence[Location], destinations: Sequence[Location]) -> HttpCall:
        coords = ";".join(f"{p.lon:.6f},{p.lat:.6f}" for p in [*sources, *destinations])
        n = len(sources)
        src = ";".join(str(i) for i in range(n))
        dst = ";".join(str(n + j) for j in range(len(destinations)))
        query = f"sources={src}&destinations={dst}&annotations=duration,distance"
        return HttpCall("GET", f"/table/v1/{self.profile}/{coords}?{query}")

    def parse(
        self, status: int, body: bytes, n_sources: int, n_destinations: int
    ) -> tuple[Cells, Cells]:
        if 400 <= status < 500:
            raise RouterRefused(_refusal(status, body))
        if status != 200:
            raise RouterResponseError(f"osrm: unexpected HTTP {status}")
        data = json_object(self.name, body)
        if data.get("code") != "Ok":
            raise RouterRefused(f"osrm: {data.get('code')}: {data.get('message', '')}")
        durations = rows("osrm durations", data.get("durations"), n_sources, n_destinations)
        distances = rows("osrm distances", data.get("distances"), n_sources, n_destinations)
        return durations, distances


def _refusal(status: int, body: bytes) -> str:
    try:
        data = json_object("osrm", body)
    except RouterResponseError:
        return f"osrm: HTTP {status}"
    return f"osrm: HTTP {status}: {data.get('code')}: {data.get('message', '')}"


def from_settings(settings: RouterSettings, builtin: GreatCircleModel) -> HttpRouter:
    """The ``osrm`` entry of :data:`~fleetlink_cloud.dispatch.routing.ROUTERS`."""
    return open_http_router(OsrmApi(settings.profile or DEFAULT_PROFILE), settings, builtin)
