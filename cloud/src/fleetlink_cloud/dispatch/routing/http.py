"""Matrices from an HTTP routing server; the only module of the routing package importing httpx.

The server's own language lives in an ``api.RouterApi`` (``osrm``, ``valhalla``): it builds the
request and parses the answer, without I/O. :class:`HttpRouter` sends the requests, splits big
matrices into blocks of at most ``max_locations // 2`` sources by as many destinations (OSRM
counts both towards its table limit), maps every httpx failure onto the routing error tree, and,
when given a fallback model, answers from it instead of failing: each failure is logged and
counted in :attr:`HttpRouter.counters`. Cells the server has no route for are estimated by the
fallback too (and listed in :attr:`Matrix.estimated`).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence

import httpx

from fleetlink_cloud.dispatch.model import Location
from fleetlink_cloud.dispatch.routing import (
    Matrix,
    RouterError,
    RouterRefused,
    RouterResponseError,
    RouterSettings,
    RouterTimeout,
    RouterUnavailable,
)
from fleetlink_cloud.dispatch.routing.api import Cells, HttpCall, RouterApi
from fleetlink_cloud.dispatch.routing.greatcircle import GreatCircleModel

log = logging.getLogger(__name__)

USER_AGENT = "fleetlink-dispatch/1"

_COUNTED: tuple[tuple[type[RouterError], str], ...] = (
    (RouterTimeout, "timeouts"),
    (RouterUnavailable, "unavailable"),
    (RouterRefused, "refused"),
    (RouterResponseError, "bad_responses"),
)


class HttpRouter:
    """A :class:`~fleetlink_cloud.dispatch.routing.Router` over HTTP; close it after use."""

    def __init__(
        self,
        api: RouterApi,
        base_url: str,
        *,
        timeout_s: float = 5.0,
        max_locations: int = 100,
        fallback: GreatCircleModel | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.api = api
        self._timeout_s = timeout_s
        self._block = max(1, max_locations // 2)
        self._fallback = fallback
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=timeout_s,
            transport=transport,
            follow_redirects=False,
            headers={"user-agent": USER_AGENT},
        )
        self.counters: dict[str, int] = {
            "requests": 0,
            "timeouts": 0,
            "unavailable": 0,
            "refused": 0,
            "bad_responses": 0,
            "fallbacks": 0,
            "estimated_cells": 0,
        }

    async def __aenter__(self) -> HttpRouter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def matrix(
        self, sources: Sequence[Location], destinations: Sequence[Location], depart_at: int
    ) -> Matrix:
        """The server's matrix, or the fallback's when the server fails (if there is one)."""
        if not sources or not destinations:
            return Matrix(tuple(() for _ in sources), tuple(() for _ in sources))
        try:
            durations, distances = await self._fetch(sources, destinations)
        except RouterError as exc:
            self._count(exc)
            if self._fallback is None:
                raise
            self.counters["fallbacks"] += 1
            log.warning("%s router failed, using the builtin model: %s", self.api.name, exc)
            m = await self._fallback.matrix(sources, destinations, depart_at)
            every = frozenset((i, j) for i in range(len(sources)) for j in range(len(destinations)))
            return Matrix(m.durations_s, m.distances_m, every)
        return self._complete(durations, distances, sources, destinations, depart_at)

    def _count(self, exc: RouterError) -> None:
        for kind, name in _COUNTED:
            if isinstance(exc, kind):
                self.counters[name] += 1

    async def _fetch(
        self, sources: Sequence[Location], destinations: Sequence[Location]
    ) -> tuple[Cells, Cells]:
        n, m, b = len(sources), len(destinations), self._block
        durations: Cells = [[None] * m for _ in range(n)]
        distances: Cells = [[None] * m for _ in range(n)]
        for i0 in range(0, n, b):
            for j0 in range(0, m, b):
                src, dst = sources[i0 : i0 + b], destinations[j0 : j0 + b]
                dur, dist = await self._send(self.api.call(src, dst), len(src), len(dst))
                for i in range(len(src)):
                    durations[i0 + i][j0 : j0 + len(dst)] = dur[i]
                    distances[i0 + i][j0 : j0 + len(dst)] = dist[i]
        return durations, distances

    async def _send(self, call: HttpCall, n_src: int, n_dst: int) -> tuple[Cells, Cells]:
        self.counters["requests"] += 1
        name = self.api.name
        try:
            async with asyncio.timeout(self._timeout_s):
                response = await self._client.request(call.method, call.target, json=call.json_body)
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise RouterTimeout(f"{name}: no answer within {self._timeout_s} s") from exc
        except httpx.HTTPError as exc:
            raise RouterUnavailable(f"{name}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 500:
            raise RouterUnavailable(f"{name}: HTTP {response.status_code}")
        return self.api.parse(response.status_code, response.content, n_src, n_dst)

    def _complete(
        self,
        durations: Cells,
        distances: Cells,
        sources: Sequence[Location],
        destinations: Sequence[Location],
        depart_at: int,
    ) -> Matrix:
        """Fill the cells without a route from the fallback (or with infinity, without one)."""
        estimated: set[tuple[int, int]] = set()
        dur_rows: list[tuple[float, ...]] = []
        dist_rows: list[tuple[float, ...]] = []
        for i, a in enumerate(sources):
            dur_row: list[float] = []
            dist_row: list[float] = []
            for j, b in enumerate(destinations):
                t, d = durations[i][j], distances[i][j]
                if t is None or d is None:
                    estimated.add((i, j))
                    fb = self._fallback
                    t = math.inf if fb is None else fb.leg_s(a, b, depart_at)
                    d = math.inf if fb is None else fb.distance_m(a, b)
                dur_row.append(t)
                dist_row.append(d)
            dur_rows.append(tuple(dur_row))
            dist_rows.append(tuple(dist_row))
        self.counters["estimated_cells"] += len(estimated)
        return Matrix(tuple(dur_rows), tuple(dist_rows), frozenset(estimated))


def open_http_router(
    api: RouterApi, settings: RouterSettings, fallback: GreatCircleModel | None
) -> HttpRouter:
    """An :class:`HttpRouter` for ``api`` configured from ``settings``."""
    assert settings.url is not None  # RouterSettings requires it for HTTP kinds
    return HttpRouter(
        api,
        settings.url,
        timeout_s=settings.timeout_s,
        max_locations=settings.max_locations,
        fallback=fallback,
    )
