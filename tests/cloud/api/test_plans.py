"""Batch plans over the API: dry runs, applying through the live dispatcher's hook, the churn
limit's default, reading a plan back, and the refusals."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from fleetlink_cloud.api import create_app
from fleetlink_cloud.dispatch.model import RouteStop
from fleetlink_cloud.planning import APPLY_REASON, Planner, PlanSettings
from fleetlink_cloud.store.base import Scope
from tests.cloud.api.harness import NOW_NS, Api

NOW = NOW_NS // 1_000_000_000
NEAR = {"lat_deg": 52.53, "lon_deg": 13.41}  # veh-1's last fix is at 52.524, 13.4


def job_body(job_id: str, lat: float, lon: float, **kw: Any) -> dict[str, Any]:
    return {"id": job_id, "stop": {"location": {"lat_deg": lat, "lon_deg": lon}}, **kw}


async def add_jobs(api: Api, client: httpx.AsyncClient, *bodies: dict[str, Any]) -> None:
    for body in bodies:
        r = await client.post("/v1/jobs", json=body, headers=api.auth("dispatch"))
        assert r.status_code == 201, r.text


async def plan(
    api: Api, client: httpx.AsyncClient, body: dict[str, Any], scope: Scope = "dispatch"
) -> httpx.Response:
    return await client.post("/v1/plans", json=body, headers=api.auth(scope))


async def test_a_dry_run_plans_the_open_jobs_and_changes_nothing(
    api: Api, client: httpx.AsyncClient
) -> None:
    window = {"start_unix_s": NOW + 3600, "end_unix_s": NOW + 5400}
    await add_jobs(
        api,
        client,
        job_body("j1", 52.53, 13.41, demand=[1]),
        job_body("j2", 52.51, 13.39, stop={"location": NEAR, "windows": [window]}),
        job_body("crane", 52.52, 13.40, skills=["crane"]),
    )
    r = await plan(api, client, {})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["applied"] is False
    assert out["planned_from_unix_s"] == NOW
    assert out["churn_limit"] == PlanSettings().churn_limit
    assert (out["vehicles"], out["jobs"]) == (2, 3)
    assert out["unassigned"] == [{"job_id": "crane", "reason": "skills"}]
    routes = {route["vehicle_id"]: route for route in out["routes"]}
    assert routes["veh-2"]["stops"] == []  # never seen: no position, no depot
    stops = routes["veh-1"]["stops"]
    assert sorted(s["job_id"] for s in stops) == ["j1", "j2"]
    j2 = next(s for s in stops if s["job_id"] == "j2")
    assert window["start_unix_s"] <= j2["service_start_unix_s"] <= window["end_unix_s"]
    assert j2["location"] == NEAR
    assert all(s["arrival_unix_s"] >= NOW and not s["fixed"] for s in stops)
    for job_id in ("j1", "j2"):
        job = (await client.get(f"/v1/jobs/{job_id}", headers=api.auth("read"))).json()
        assert (job["state"], job["vehicle_id"]) == ("new", None)
    again = await client.get(f"/v1/plans/{out['id']}", headers=api.auth("read"))
    assert again.status_code == 200
    assert again.json() == out
    audited = [a.detail for a in await api.store.list_audit() if a.path == "/v1/plans"]
    assert audited == [f"{out['id']} dry run"]


async def test_applying_without_a_live_dispatcher_is_a_409(
    api: Api, client: httpx.AsyncClient
) -> None:
    r = await plan(api, client, {"apply": True})
    assert r.status_code == 409
    assert "no live dispatcher" in r.json()["detail"]


async def test_applying_hands_the_routes_to_the_dispatcher(api: Api) -> None:
    calls: list[tuple[dict[str, list[str]], str]] = []

    async def apply(routes: Mapping[str, Sequence[RouteStop]], reason: str) -> None:
        calls.append(({v: [s.job_id for s in stops] for v, stops in routes.items()}, reason))

    planner = Planner(api.store, clock=api.ctx.clock, apply=apply)
    app = create_app(api.ctx, planner=planner)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://test"
    ) as client:
        await add_jobs(api, client, job_body("j1", 52.53, 13.41))
        r = await plan(api, client, {"apply": True, "churn_limit": None})
        assert r.status_code == 200, r.text
        assert r.json()["applied"] is True
        assert r.json()["churn_limit"] is None
    assert calls == [({"veh-1": ["j1"], "veh-2": []}, APPLY_REASON)]


async def test_a_plan_of_some_vehicles_and_the_churn_limit_asked_for(
    api: Api, client: httpx.AsyncClient
) -> None:
    await add_jobs(api, client, job_body("j1", 52.53, 13.41))
    r = await plan(api, client, {"vehicles": ["veh-2"], "churn_limit": 3, "time_limit_s": 1.5})
    assert r.status_code == 200, r.text
    out = r.json()
    assert [route["vehicle_id"] for route in out["routes"]] == ["veh-2"]
    assert (out["churn_limit"], out["time_limit_s"]) == (3, 1.5)
    assert out["unassigned"] == [{"job_id": "j1", "reason": "no_vehicles"}]


async def test_refusals(api: Api, client: httpx.AsyncClient) -> None:
    assert (await plan(api, client, {}, scope="read")).status_code == 403
    assert (await plan(api, client, {}, scope="maintenance")).status_code == 403
    for body in ({"churn_limit": -1}, {"time_limit_s": 0}, {"apply": "maybe"}, {"other": 1}):
        assert (await plan(api, client, body)).status_code == 422, body
    nothing = await plan(api, client, {"vehicles": []})  # no vehicle, no job: an empty plan
    assert nothing.status_code == 200, nothing.text
    assert (nothing.json()["routes"], nothing.json()["unassigned"]) == ([], [])
    ghost = await plan(api, client, {"vehicles": ["veh-1", "ghost"]})
    assert ghost.status_code == 404
    assert "ghost" in ghost.json()["detail"]
    unknown = await client.get("/v1/plans/plan_0123456789abcdef", headers=api.auth("read"))
    assert unknown.status_code == 404
    bad = await client.get("/v1/plans/nope", headers=api.auth("read"))
    assert bad.status_code == 422
