"""Routers: the builtin great-circle model, OSRM and Valhalla request building and answer parsing
(bodies in their documented formats), and the HTTP router against a real local server.

The server (``asyncio.start_server`` + h11 on a free loopback port) records every request and
answers from a script: a fixed status and body, "hang" (never answer), or by default a matrix
computed from the request itself, in the server's format, so split requests can be checked.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import socket
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import h11
import pytest
from pydantic import ValidationError

from fleetlink_cloud.dispatch.model import Location
from fleetlink_cloud.dispatch.routing import (
    Matrix,
    RouterError,
    RouterRefused,
    RouterResponseError,
    RouterSettings,
    RouterTimeout,
    RouterUnavailable,
    builtin_model,
    open_router,
)
from fleetlink_cloud.dispatch.routing.greatcircle import (
    GreatCircleModel,
    chord_m,
    great_circle_m,
    unit,
)
from fleetlink_cloud.dispatch.routing.http import HttpRouter
from fleetlink_cloud.dispatch.routing.osrm import OsrmApi
from fleetlink_cloud.dispatch.routing.table import TableModel
from fleetlink_cloud.dispatch.routing.valhalla import ValhallaApi
from fleetlink_cloud.dispatch.speeds import SpeedLearner, SpeedSettings, SpeedTable
from fleetlink_cloud.live.derived import haversine_m
from fleetlink_protocols.records import Position

BT = Location(52.5163, 13.3777)  # Brandenburger Tor
ALEX = Location(52.5219, 13.4132)  # Alexanderplatz
KOTTI = Location(52.4990, 13.4180)  # Kottbusser Tor
SPANDAU = Location(52.5350, 13.2000)
KOEPENICK = Location(52.4450, 13.5750)
T = 1_704_096_000  # 2024-01-01T08:00:00Z, a Monday
FALLBACK = GreatCircleModel(SpeedTable.constant(10.0), 1.3)

# -- the builtin model ------------------------------------------------------------------------


def test_great_circle_is_haversine_and_the_chord_is_a_lower_bound() -> None:
    d = great_circle_m(BT, ALEX)
    assert d == pytest.approx(haversine_m(BT.lat, BT.lon, ALEX.lat, ALEX.lon), rel=1e-12)
    assert 2450 < d < 2500  # Brandenburger Tor to Alexanderplatz: about 2.5 km
    rng = random.Random(1)
    for _ in range(1000):
        a = Location(rng.uniform(-80, 80), rng.uniform(-180, 180))
        b = Location(rng.uniform(-80, 80), rng.uniform(-180, 180))
        assert chord_m(unit(a), unit(b)) <= great_circle_m(a, b) + 1e-6
    assert chord_m(unit(BT), unit(ALEX)) == pytest.approx(d, rel=1e-6)  # city scale: equal


def test_builtin_leg_is_distance_times_circuity_over_the_speed() -> None:
    model = builtin_model(RouterSettings(circuity=1.3, default_speed_mps=10.0))
    assert model.leg_s(BT, ALEX, T) == pytest.approx(great_circle_m(BT, ALEX) * 1.3 / 10.0)
    assert model.leg_s(BT, BT, T) == 0.0
    rng = model.leg_range_s(BT, ALEX, T)
    assert not rng.measured  # no data: no spread
    assert rng.early_s == rng.expected_s == rng.late_s
    assert model.min_s_per_m == pytest.approx(1.3 / 10.0)


def learned(seed: int = 5) -> SpeedTable:
    """Berlin: slow in the centre at 08:00 UTC, faster outside, from 20,000 synthetic fixes."""
    rng = random.Random(seed)
    learner = SpeedLearner(SpeedSettings(min_samples=10))
    for i in range(20_000):
        lat, lon = rng.uniform(52.40, 52.62), rng.uniform(13.15, 13.65)
        central = great_circle_m(Location(lat, lon), ALEX) < 5000
        speed = rng.uniform(3, 9) if central else rng.uniform(8, 20)
        learner.add(Position((T + i % 3600) * 1_000_000_000, lat, lon, speed_mps=speed))
    return learner.table(default_speed_mps=8.3)


def test_learned_speeds_time_legs_with_a_range_and_never_beat_the_bound() -> None:
    model = GreatCircleModel(learned(), 1.3)
    central = model.leg_range_s(BT, ALEX, T)
    assert central.measured
    assert central.early_s < central.expected_s < central.late_s
    outer = model.leg_range_s(SPANDAU, Location(52.5450, 13.2300), T)
    per_m_central = central.expected_s / great_circle_m(BT, ALEX)
    per_m_outer = outer.expected_s / great_circle_m(SPANDAU, Location(52.5450, 13.2300))
    assert per_m_central > 1.4 * per_m_outer  # the centre is slower
    rng = random.Random(2)
    for _ in range(3000):
        a = Location(rng.uniform(52.35, 52.65), rng.uniform(13.1, 13.7))
        b = Location(rng.uniform(52.35, 52.65), rng.uniform(13.1, 13.7))
        t = T + rng.randrange(7 * 86400)
        assert model.min_s_per_m * great_circle_m(a, b) <= model.leg_s(a, b, t) + 1e-9


async def test_builtin_router_answers_matrices_and_the_factory_needs_a_url_for_http() -> None:
    router = open_router(RouterSettings(default_speed_mps=10.0, circuity=1.0))
    m = await router.matrix([BT, ALEX], [ALEX, KOTTI, BT], T)
    assert m.durations_s[0][0] == pytest.approx(great_circle_m(BT, ALEX) / 10.0)
    assert m.distances_m[1][1] == pytest.approx(great_circle_m(ALEX, KOTTI))
    assert m.durations_s[0][2] == 0.0
    assert m.estimated == frozenset()
    await router.aclose()
    with pytest.raises(ValidationError, match="needs a url"):
        RouterSettings(kind="osrm")


# -- OSRM: request and answer (osrm-backend docs/http.md, table service) ------------------------

# The example response of the table service documentation (Berlin, annotations=distance,duration).
OSRM_DOC_EXAMPLE = {
    "code": "Ok",
    "sources": [
        {"location": [13.3888, 52.517033], "hint": "PAMAgEVJAoAU", "name": "Friedrichstraße"},
        {"location": [13.397631, 52.529432], "hint": "WIQBgL6mAoAE", "name": "Torstraße"},
        {"location": [13.428554, 52.523239], "hint": "7UcAgP___38f", "name": "Platz der V. N."},
    ],
    "destinations": [
        {"location": [13.3888, 52.517033], "hint": "PAMAgEVJAoAU", "name": "Friedrichstraße"},
        {"location": [13.397631, 52.529432], "hint": "WIQBgL6mAoAE", "name": "Torstraße"},
        {"location": [13.428554, 52.523239], "hint": "7UcAgP___38f", "name": "Platz der V. N."},
    ],
    "durations": [[0, 192.6, 382.8], [199, 0, 283.9], [344.7, 222.3, 0]],
    "distances": [[0, 1886.89, 3791.3], [1824, 0, 2838.09], [3275.36, 2361.73, 0]],
    "fallback_speed_cells": [[0, 1], [1, 0]],
}
OSRM_DOC_POINTS = [Location(52.517037, 13.388860), Location(52.529407, 13.397634)]


def test_osrm_request_lists_sources_then_destinations_lon_first() -> None:
    call = OsrmApi().call([BT], [ALEX, KOTTI])
    assert call.method == "GET"
    assert call.target == (
        "/table/v1/driving/13.377700,52.516300;13.413200,52.521900;13.418000,52.499000"
        "?sources=0&destinations=1;2&annotations=duration,distance"
    )
    assert OsrmApi("car").call([BT], [BT]).target.startswith("/table/v1/car/")


def test_osrm_parses_the_documented_example() -> None:
    body = json.dumps(OSRM_DOC_EXAMPLE).encode()
    durations, distances = OsrmApi().parse(200, body, 3, 3)
    assert durations[0] == [0.0, 192.6, 382.8]
    assert durations[2][1] == 222.3
    assert distances[1] == [1824.0, 0.0, 2838.09]


def test_osrm_null_means_no_route() -> None:
    body = {"code": "Ok", "durations": [[None, 5.5]], "distances": [[None, 40.0]]}
    durations, distances = OsrmApi().parse(200, json.dumps(body).encode(), 1, 2)
    assert durations == [[None, 5.5]]
    assert distances == [[None, 40.0]]


@pytest.mark.parametrize(
    ("status", "body", "error", "match"),
    [
        (
            400,
            {"code": "NoSegment", "message": "Could not find a matching segment for coordinate 0"},
            RouterRefused,
            "NoSegment",
        ),
        (400, {"code": "TooBig", "message": "Too many table coordinates"}, RouterRefused, "TooBig"),
        (
            400,
            {"code": "NotImplemented", "message": "distance annotations need CH"},
            RouterRefused,
            "NotImplemented",
        ),
        (200, {"code": "NoTable", "message": "No route found"}, RouterRefused, "NoTable"),
        (404, b"<html>not here</html>", RouterRefused, "HTTP 404"),
        (200, b"<html>proxy error</html>", RouterResponseError, "not JSON"),
        (200, [1, 2], RouterResponseError, "not a JSON object"),
        (200, {"code": "Ok", "durations": [[1.0]]}, RouterResponseError, "rows"),
        (
            200,
            {"code": "Ok", "durations": [[1.0, 2.0]], "distances": [[1.0, "x"]]},
            RouterResponseError,
            "number",
        ),
        (
            200,
            {"code": "Ok", "durations": [[1.0, -2.0]], "distances": [[1.0, 2.0]]},
            RouterResponseError,
            "non-negative",
        ),
        (302, b"", RouterResponseError, "HTTP 302"),
    ],
)
def test_osrm_errors_are_typed(
    status: int, body: object, error: type[RouterError], match: str
) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(error, match=match):
        OsrmApi().parse(status, raw, 1, 2)


# -- Valhalla: request and answer (docs/api/matrix/api-reference.md) ---------------------------


def valhalla_rows(times: list[list[float | None]], km: list[list[float | None]]) -> list[Any]:
    return [
        [
            {"from_index": i, "to_index": j, "time": t, "distance": d}
            for j, (t, d) in enumerate(zip(tr, dr, strict=True))
        ]
        for i, (tr, dr) in enumerate(zip(times, km, strict=True))
    ]


def test_valhalla_request_posts_sources_and_targets() -> None:
    call = ValhallaApi().call([BT], [ALEX, KOTTI])
    assert (call.method, call.target) == ("POST", "/sources_to_targets")
    assert call.json_body == {
        "sources": [{"lat": 52.5163, "lon": 13.3777}],
        "targets": [{"lat": 52.5219, "lon": 13.4132}, {"lat": 52.4990, "lon": 13.4180}],
        "costing": "auto",
        "units": "kilometers",
    }


def test_valhalla_parses_the_verbose_answer_in_its_units() -> None:
    body = {
        "sources_to_targets": valhalla_rows(
            [[0, 1191], [802, None]], [[0.0, 4.949], [3.415, None]]
        ),
        "units": "kilometers",
    }
    durations, distances = ValhallaApi().parse(200, json.dumps(body).encode(), 2, 2)
    assert durations == [[0.0, 1191.0], [802.0, None]]
    assert distances == [[0.0, pytest.approx(4949.0)], [pytest.approx(3415.0), None]]
    body["units"] = "miles"
    _, miles = ValhallaApi().parse(200, json.dumps(body).encode(), 2, 2)
    assert miles[0][1] == pytest.approx(4.949 * 1609.344)


@pytest.mark.parametrize(
    ("status", "body", "error", "match"),
    [
        (
            400,
            {
                "error_code": 171,
                "error": "No suitable edges near location",
                "status_code": 400,
                "status": "Bad Request",
            },
            RouterRefused,
            "171",
        ),
        (
            400,
            {"error_code": 154, "error": "Path distance exceeds the max distance limit"},
            RouterRefused,
            "154",
        ),
        (
            200,
            {"error_code": 442, "error": "No path could be found for input"},
            RouterRefused,
            "442",
        ),
        (200, {"sources_to_targets": [], "units": "kilometers"}, RouterResponseError, "rows"),
        (
            200,
            {"sources_to_targets": [[{"from_index": 0, "to_index": 5, "time": 1, "distance": 1}]]},
            RouterResponseError,
            "indices",
        ),
        (
            200,
            {
                "sources_to_targets": [
                    [{"from_index": 0, "to_index": 0, "time": 1, "distance": 1}]
                ],
                "units": "furlongs",
            },
            RouterResponseError,
            "units",
        ),
        (200, b"not json", RouterResponseError, "not JSON"),
    ],
)
def test_valhalla_errors_are_typed(
    status: int, body: object, error: type[RouterError], match: str
) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(error, match=match):
        ValhallaApi().parse(status, raw, 1, 1)


# -- a real local HTTP server -----------------------------------------------------------------

Answer = tuple[int, bytes] | Literal["hang"]


@dataclass(frozen=True)
class Received:
    method: str
    target: str
    body: bytes


def _points(coords: str) -> list[Location]:
    return [Location(float(p.split(",")[1]), float(p.split(",")[0])) for p in coords.split(";")]


def osrm_answer(req: Received) -> Answer:
    """What an OSRM server would say, with durations at 10 m/s over the great circle."""
    url = urlsplit(req.target)
    points = _points(url.path.split("/")[-1])
    q = {k: v[0] for k, v in parse_qs(url.query).items()}
    src = [points[int(i)] for i in q["sources"].split(";")]
    dst = [points[int(i)] for i in q["destinations"].split(";")]
    dist = [[round(great_circle_m(a, b), 2) for b in dst] for a in src]
    body = {"code": "Ok", "durations": [[d / 10 for d in r] for r in dist], "distances": dist}
    return 200, json.dumps(body).encode()


def valhalla_answer(req: Received) -> Answer:
    data = json.loads(req.body)
    src = [Location(p["lat"], p["lon"]) for p in data["sources"]]
    dst = [Location(p["lat"], p["lon"]) for p in data["targets"]]
    km = [[great_circle_m(a, b) / 1000 for b in dst] for a in src]
    times = [[round(d * 100) for d in r] for r in km]  # 10 m/s
    body = {"sources_to_targets": valhalla_rows(times, km), "units": "kilometers"}  # type: ignore[arg-type]
    return 200, json.dumps(body).encode()


class Server:
    """Answers ``plan``ned answers first, then ``default(request)``."""

    def __init__(self, default: Callable[[Received], Answer]) -> None:
        self.default = default
        self.requests: list[Received] = []
        self._plan: deque[Answer] = deque()
        self._server: asyncio.Server | None = None
        self._writers: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    def plan(self, *answers: Answer) -> None:
        self._plan.extend(answers)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers.values():
            writer.close()
        if self._writers:
            await asyncio.wait(self._writers, timeout=5)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._writers[task] = writer
        conn = h11.Connection(h11.SERVER)
        try:
            while (req := await self._read(conn, reader)) is not None:
                self.requests.append(req)
                answer = self._plan.popleft() if self._plan else self.default(req)
                if answer == "hang":
                    await reader.read()  # until the client gives up
                    return
                status, body = answer
                headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
                writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
                writer.write(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
                await writer.drain()
                conn.start_next_cycle()
        except (h11.ProtocolError, ConnectionError):
            pass
        finally:
            writer.close()
            del self._writers[task]

    @staticmethod
    async def _read(conn: h11.Connection, reader: asyncio.StreamReader) -> Received | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return Received(head.method.decode(), head.target.decode(), bytes(body))
            else:
                return None


@pytest.fixture
async def osrm() -> AsyncIterator[Server]:
    async with Server(osrm_answer) as s:
        yield s


@pytest.fixture
async def valhalla() -> AsyncIterator[Server]:
    async with Server(valhalla_answer) as s:
        yield s


def expected(sources: list[Location], destinations: list[Location]) -> list[list[float]]:
    return [[round(great_circle_m(a, b), 2) / 10 for b in destinations] for a in sources]


async def test_osrm_router_asks_the_server_and_splits_big_matrices(osrm: Server) -> None:
    settings = RouterSettings(kind="osrm", url=osrm.url, max_locations=4)
    router = open_router(settings)
    assert isinstance(router, HttpRouter)
    sources = [BT, ALEX, KOTTI, SPANDAU, KOEPENICK]
    destinations = [KOTTI, BT, KOEPENICK]
    async with router:
        m = await router.matrix(sources, destinations, T)
    # Blocks of 2 sources by 2 destinations (4 locations per request): 3 × 2 requests.
    assert len(osrm.requests) == 6
    assert all(r.method == "GET" for r in osrm.requests)
    assert osrm.requests[0].target == (
        "/table/v1/driving/13.377700,52.516300;13.413200,52.521900;13.418000,52.499000;"
        "13.377700,52.516300?sources=0;1&destinations=2;3&annotations=duration,distance"
    )
    for got, want in zip(m.durations_s, expected(sources, destinations), strict=True):
        assert got == pytest.approx(want, abs=1e-3)
    assert m.distances_m[3][2] == pytest.approx(great_circle_m(SPANDAU, KOEPENICK), abs=0.01)
    assert m.estimated == frozenset()
    assert router.counters["requests"] == 6
    assert router.counters["fallbacks"] == 0


async def test_valhalla_router_posts_json_and_answers_in_metres(valhalla: Server) -> None:
    router = open_router(RouterSettings(kind="valhalla", url=valhalla.url, profile="truck"))
    async with router:  # type: ignore[attr-defined]
        m = await router.matrix([BT, ALEX], [KOTTI], T)
    (req,) = valhalla.requests
    assert (req.method, req.target) == ("POST", "/sources_to_targets")
    assert json.loads(req.body) == ValhallaApi("truck").call([BT, ALEX], [KOTTI]).json_body
    assert m.distances_m[1][0] == pytest.approx(great_circle_m(ALEX, KOTTI), rel=1e-9)
    assert m.durations_s[0][0] == round(great_circle_m(BT, KOTTI) / 10)


FAILURES: list[tuple[Answer, type[RouterError], str]] = [
    (
        (400, json.dumps({"code": "NoSegment", "message": "no segment"}).encode()),
        RouterRefused,
        "refused",
    ),
    ((503, b"upstream down"), RouterUnavailable, "unavailable"),
    ((200, b"<html>captive portal</html>"), RouterResponseError, "bad_responses"),
    ("hang", RouterTimeout, "timeouts"),
]


@pytest.mark.parametrize(("answer", "error", "counter"), FAILURES)
async def test_server_failures_are_typed_errors_without_a_fallback(
    osrm: Server, answer: Answer, error: type[RouterError], counter: str
) -> None:
    osrm.plan(answer)
    async with HttpRouter(OsrmApi(), osrm.url, timeout_s=0.3) as router:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(error):
            await router.matrix([BT], [ALEX], T)
        assert loop.time() - started < 2.0
        assert router.counters[counter] == 1
        assert router.counters["fallbacks"] == 0


@pytest.mark.parametrize(("answer", "error", "counter"), FAILURES)
async def test_server_failures_fall_back_to_the_builtin_model(
    osrm: Server, answer: Answer, error: type[RouterError], counter: str
) -> None:
    osrm.plan(answer)
    async with HttpRouter(OsrmApi(), osrm.url, timeout_s=0.3, fallback=FALLBACK) as router:
        m = await router.matrix([BT, ALEX], [KOTTI], T)
        assert m.durations_s[1][0] == pytest.approx(FALLBACK.leg_s(ALEX, KOTTI, T))
        assert m.distances_m[0][0] == pytest.approx(FALLBACK.distance_m(BT, KOTTI))
        assert m.estimated == {(0, 0), (1, 0)}
        assert router.counters[counter] == 1
        assert router.counters["fallbacks"] == 1
        good = await router.matrix([BT], [KOTTI], T)  # the server is fine again
        assert good.estimated == frozenset()
        assert good.durations_s[0][0] == pytest.approx(expected([BT], [KOTTI])[0][0], abs=1e-3)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_a_refused_connection_is_unavailable() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    async with HttpRouter(ValhallaApi(), url, timeout_s=1.0) as router:
        with pytest.raises(RouterUnavailable):
            await router.matrix([BT], [ALEX], T)
    async with HttpRouter(ValhallaApi(), url, timeout_s=1.0, fallback=FALLBACK) as router:
        m = await router.matrix([BT], [ALEX], T)
        assert m.durations_s[0][0] == pytest.approx(FALLBACK.leg_s(BT, ALEX, T))
        assert router.counters["unavailable"] == 1


async def test_cells_without_a_route_are_estimated_by_the_fallback(osrm: Server) -> None:
    body = {"code": "Ok", "durations": [[None, 100.0]], "distances": [[None, 900.0]]}
    osrm.plan((200, json.dumps(body).encode()), (200, json.dumps(body).encode()))
    async with HttpRouter(OsrmApi(), osrm.url, fallback=FALLBACK) as router:
        m = await router.matrix([BT], [ALEX, KOTTI], T)
        assert m.durations_s == ((pytest.approx(FALLBACK.leg_s(BT, ALEX, T)), 100.0),)
        assert m.estimated == {(0, 0)}
        assert router.counters["estimated_cells"] == 1
    async with HttpRouter(OsrmApi(), osrm.url) as bare:
        m = await bare.matrix([BT], [ALEX, KOTTI], T)
        assert math.isinf(m.durations_s[0][0])


async def test_table_model_serves_legs_from_one_fetched_matrix(osrm: Server) -> None:
    async with HttpRouter(OsrmApi(), osrm.url, fallback=FALLBACK) as router:
        model = await TableModel.fetch(router, [BT, ALEX, KOTTI, ALEX], T, FALLBACK)
    assert len(osrm.requests) == 1  # one 3 × 3 matrix: the repeated location is asked once
    assert model.leg_s(BT, KOTTI, T) == pytest.approx(expected([BT], [KOTTI])[0][0], abs=1e-3)
    assert model.leg_s(BT, SPANDAU, T) == FALLBACK.leg_s(BT, SPANDAU, T)  # not in the table
    assert not model.leg_range_s(BT, ALEX, T).measured
    for a in (BT, ALEX, KOTTI, SPANDAU):
        for b in (BT, ALEX, KOTTI, SPANDAU):
            assert model.min_s_per_m * great_circle_m(a, b) <= model.leg_s(a, b, T) + 1e-9


def test_table_model_never_beats_its_bound_speed() -> None:
    zero = Matrix(((0.0, 0.0), (0.0, 0.0)), ((0.0, 0.0), (0.0, 0.0)))
    model = TableModel([BT, ALEX], zero, FALLBACK, bound_speed_mps=36.0)
    assert model.leg_s(BT, ALEX, T) == pytest.approx(great_circle_m(BT, ALEX) / 36.0)
    with pytest.raises(ValueError, match="2 by 2"):
        TableModel([BT, ALEX], Matrix(((0.0,),), ((0.0,),)), FALLBACK)
