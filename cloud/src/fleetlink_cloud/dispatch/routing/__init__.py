"""Travel times: the router interface, its implementations, and the factory.

Two faces of one concept. A :class:`Router` answers duration/distance matrices (async; the HTTP
routers do I/O). A :class:`TravelModel` answers one leg at a time, synchronously and fast: the
insertion hot path and the ETA walk use it. Implementations, imported lazily from ``ROUTERS``:

=========  ====================================================================================
builtin    ``greatcircle.GreatCircleModel``: great-circle distance × circuity ÷ the speed learned
           for the leg's area and hour (:mod:`fleetlink_cloud.dispatch.speeds`); both faces
osrm       ``osrm.OsrmApi`` through ``http.HttpRouter``: OSRM's ``/table/v1`` service
valhalla   ``valhalla.ValhallaApi`` through ``http.HttpRouter``: Valhalla's ``/sources_to_targets``
=========  ====================================================================================

An HTTP router falls back to the builtin model when the server fails (logged and counted), and
``table.TableModel`` turns one fetched matrix into a :class:`TravelModel`. Errors::

    DispatchError
    └── RouterError             the router could not answer
        ├── RouterTimeout       no complete answer within ``timeout_s``
        ├── RouterUnavailable   connection refused or reset, HTTP 5xx
        ├── RouterRefused       the router said no: HTTP 4xx, an OSRM ``code`` other than "Ok",
        │                       a Valhalla ``error_code``
        └── RouterResponseError the answer is not in the documented format
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Final, Literal, NamedTuple, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleetlink_cloud.dispatch.model import DispatchError, Location

if TYPE_CHECKING:
    from fleetlink_cloud.dispatch.routing.greatcircle import GreatCircleModel
    from fleetlink_cloud.dispatch.speeds import SpeedTable

RouterKind = Literal["builtin", "osrm", "valhalla"]

# kind -> "module:factory"; a factory takes (RouterSettings, GreatCircleModel) -> Router.
ROUTERS: Final[dict[str, str]] = {
    "builtin": "fleetlink_cloud.dispatch.routing.greatcircle:from_settings",
    "osrm": "fleetlink_cloud.dispatch.routing.osrm:from_settings",
    "valhalla": "fleetlink_cloud.dispatch.routing.valhalla:from_settings",
}


class RouterError(DispatchError):
    """The router could not answer (see the module docstring for the subtypes)."""


class RouterTimeout(RouterError):
    pass


class RouterUnavailable(RouterError):
    pass


class RouterRefused(RouterError):
    pass


class RouterResponseError(RouterError):
    pass


class RouterSettings(BaseModel):
    """Which router gives travel times, and the builtin model's parameters (also the fallback)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: RouterKind = "builtin"
    url: str | None = None  # OSRM: http://host:5000, Valhalla: http://host:8002
    profile: str | None = None  # OSRM profile ("driving"), Valhalla costing ("auto")
    timeout_s: Annotated[float, Field(gt=0)] = 5.0  # whole request, connect to last byte
    max_locations: Annotated[int, Field(ge=2)] = 100  # per request; osrm-routed's default limit
    circuity: Annotated[float, Field(ge=1.0)] = 1.3  # road distance ÷ great-circle distance
    default_speed_mps: Annotated[float, Field(gt=0)] = 8.3  # 30 km/h where nothing was learned
    bound_speed_mps: Annotated[float, Field(gt=0)] = 36.0  # 130 km/h: no router leg is faster

    @model_validator(mode="after")
    def _url_for_http(self) -> RouterSettings:
        if self.kind != "builtin" and not self.url:
            raise ValueError(f"router kind {self.kind!r} needs a url")
        return self


@dataclass(frozen=True, slots=True)
class Matrix:
    """Durations (s) and distances (m), ``[source][destination]``.

    ``estimated`` lists the cells the router could not give (no route) or that came from the
    fallback model; they hold the builtin model's estimate instead.
    """

    durations_s: tuple[tuple[float, ...], ...]
    distances_m: tuple[tuple[float, ...], ...]
    estimated: frozenset[tuple[int, int]] = frozenset()


class LegRange(NamedTuple):
    """A leg's duration (s) at the fast, typical and slow speeds of its area and hour."""

    early_s: float
    expected_s: float
    late_s: float
    measured: bool  # False: no speed data, the three are equal and mean nothing more


class TravelModel(Protocol):
    """Synchronous single-leg travel times. ``depart_at`` is Unix seconds."""

    @property
    def min_s_per_m(self) -> float:
        """No leg is quicker than this many seconds per metre of great-circle distance."""
        ...

    def leg_s(self, a: Location, b: Location, depart_at: float) -> float: ...

    def leg_range_s(self, a: Location, b: Location, depart_at: float) -> LegRange: ...


class Router(Protocol):
    """Duration and distance matrices; HTTP routers hold a connection pool until closed."""

    async def matrix(
        self, sources: Sequence[Location], destinations: Sequence[Location], depart_at: int
    ) -> Matrix: ...

    async def aclose(self) -> None: ...


def builtin_model(settings: RouterSettings, speeds: SpeedTable | None = None) -> GreatCircleModel:
    """The builtin model: ``speeds`` if learned, else a constant ``default_speed_mps``."""
    from fleetlink_cloud.dispatch.routing.greatcircle import GreatCircleModel
    from fleetlink_cloud.dispatch.speeds import SpeedTable

    table = speeds if speeds is not None else SpeedTable.constant(settings.default_speed_mps)
    return GreatCircleModel(table, settings.circuity)


def open_router(settings: RouterSettings, speeds: SpeedTable | None = None) -> Router:
    """The router ``settings.kind`` names, falling back to the builtin model; close it after."""
    module_name, attr = ROUTERS[settings.kind].split(":")
    factory = getattr(importlib.import_module(module_name), attr)
    router: Router = factory(settings, builtin_model(settings, speeds))
    return router


__all__ = [
    "ROUTERS",
    "LegRange",
    "Matrix",
    "Router",
    "RouterError",
    "RouterRefused",
    "RouterResponseError",
    "RouterSettings",
    "RouterTimeout",
    "RouterUnavailable",
    "TravelModel",
    "builtin_model",
    "open_router",
]
