"""A travel model over one matrix fetched in advance: a router's times for the hot path. No I/O.

The insertion and ETA code want single legs synchronously; an OSRM or Valhalla router answers
matrices over the network. :meth:`TableModel.fetch` asks the router once for every pair of the
locations that matter (live positions, route stops, the new job) and serves legs from that
matrix; a leg between locations it was not given comes from the fallback model. Router times
are free-flow and carry no spread, so their ranges are not ``measured``.
"""

from __future__ import annotations

from collections.abc import Sequence

from fleetlink_cloud.dispatch.model import Location
from fleetlink_cloud.dispatch.routing import LegRange, Matrix, Router, TravelModel
from fleetlink_cloud.dispatch.routing.greatcircle import great_circle_m


class TableModel:
    """Legs between ``locations`` from ``matrix`` (square, in that order), others from fallback.

    Every duration is raised to at least the great-circle distance at ``bound_speed_mps``, so
    :attr:`min_s_per_m` is a true lower bound even where a router snapped two points together.
    """

    def __init__(
        self,
        locations: Sequence[Location],
        matrix: Matrix,
        fallback: TravelModel,
        bound_speed_mps: float = 36.0,
    ) -> None:
        n = len(locations)
        if len(matrix.durations_s) != n or any(len(r) != n for r in matrix.durations_s):
            raise ValueError(f"the matrix must be {n} by {n}, one row and column per location")
        self._index = {loc: i for i, loc in enumerate(locations)}
        self._fallback = fallback
        floor = 1.0 / bound_speed_mps
        self._durations = [
            [max(t, great_circle_m(a, b) * floor) for b, t in zip(locations, row, strict=True)]
            for a, row in zip(locations, matrix.durations_s, strict=True)
        ]
        self.min_s_per_m = min(floor, fallback.min_s_per_m)

    @classmethod
    async def fetch(
        cls,
        router: Router,
        locations: Sequence[Location],
        depart_at: int,
        fallback: TravelModel,
        bound_speed_mps: float = 36.0,
    ) -> TableModel:
        """Ask ``router`` for the full matrix of the distinct ``locations``."""
        distinct = list(dict.fromkeys(locations))
        matrix = await router.matrix(distinct, distinct, depart_at)
        return cls(distinct, matrix, fallback, bound_speed_mps)

    def leg_s(self, a: Location, b: Location, depart_at: float) -> float:
        i = self._index.get(a)
        j = self._index.get(b)
        if i is None or j is None:
            return self._fallback.leg_s(a, b, depart_at)
        return self._durations[i][j]

    def leg_range_s(self, a: Location, b: Location, depart_at: float) -> LegRange:
        i = self._index.get(a)
        j = self._index.get(b)
        if i is None or j is None:
            return self._fallback.leg_range_s(a, b, depart_at)
        t = self._durations[i][j]
        return LegRange(t, t, t, False)
