"""Jobs over the API: idempotent creation, the state machine with its event log, locks, driver
answers, If-Match, filters, validation, scopes, and the job.* stream events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from fleetlink_cloud.api import ApiContext, StreamTailer, create_app
from fleetlink_cloud.bus import make_filter
from fleetlink_cloud.dispatch.model import JobState
from fleetlink_cloud.jobs import JobConflict, JobService
from fleetlink_cloud.store.base import JobRow
from tests.cloud.api.harness import NOW_NS, Api, client_for

DAY0 = NOW_NS // 1_000_000_000  # dispatch times are Unix seconds


def body(**fields: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "stop": {
            "location": {"lat_deg": 52.52, "lon_deg": 13.405},
            "windows": [{"start_unix_s": DAY0, "end_unix_s": DAY0 + 3600}],
            "service_s": 300,
        },
        "skills": ["fridge"],
        "demand": [120, 2],
        "priority": 40,
        "customer_ref": "order-17",
    }
    spec.update(fields)
    return spec


async def create(api: Api, client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    r = await client.post("/v1/jobs", json=body(**fields), headers=api.auth("dispatch"))
    assert r.status_code == 201, r.text
    job: dict[str, Any] = r.json()
    return job


async def answer(
    api: Api, client: httpx.AsyncClient, job_id: str, what: str, **extra: Any
) -> httpx.Response:
    return await client.post(
        f"/v1/jobs/{job_id}/answers", json={"answer": what, **extra}, headers=api.auth("dispatch")
    )


async def events(api: Api, client: httpx.AsyncClient, job_id: str) -> list[dict[str, Any]]:
    r = await client.get(f"/v1/jobs/{job_id}/events", headers=api.auth("read"))
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def job_stream(api: Api) -> list[tuple[str, str, str]]:
    """(type, job id, device id) of every job.* stream event stored so far."""
    got = await api.store.stream_events_after(0, 10_000)
    return [(e.type, e.data["job_id"], e.device_id) for e in got if e.type.startswith("job.")]


class OfferNearest:
    """A stand-in assigner: offers every job it is shown to one vehicle, as the real one would
    through ``JobService.transition``."""

    def __init__(self, vehicle_id: str) -> None:
        self.vehicle_id = vehicle_id
        self.service: JobService | None = None
        self.seen: list[str] = []

    async def __call__(self, row: JobRow) -> None:
        assert self.service is not None
        self.seen.append(row.job.id)
        if row.job.state is JobState.NEW:
            vehicle = row.job.locked_vehicle_id or self.vehicle_id
            await self.service.transition(
                row.job.id, JobState.OFFERED, "nearest", "system", vehicle, {"eta_s": 420}
            )


@pytest.fixture
async def assigning(api: Api) -> AsyncIterator[tuple[httpx.AsyncClient, OfferNearest]]:
    """The harness's world, with an app whose job service runs ``OfferNearest``."""
    offer = OfferNearest("veh-1")
    service = JobService(api.store, clock=lambda: NOW_NS, assign=offer)
    offer.service = service
    ctx = ApiContext(api.store, api.ctx.bus, api.ctx.settings, clock=lambda: NOW_NS)
    async with client_for(Api(api.store, ctx, create_app(ctx, jobs=service))) as c:
        yield c, offer


async def test_create_then_read_it_its_log_and_its_stream_event(
    api: Api, client: httpx.AsyncClient
) -> None:
    job = await create(api, client)
    assert job["state"] == "new"
    assert job["version"] == 1
    assert job["vehicle_id"] is None
    assert job["created_wall_ns"] == job["updated_wall_ns"] == NOW_NS
    assert (job["skills"], job["demand"], job["stop"]["service_s"]) == (["fridge"], [120, 2], 300)
    got = await client.get(f"/v1/jobs/{job['id']}", headers=api.auth("maintenance"))
    assert got.status_code == 200
    assert got.json() == job
    assert got.headers["ETag"] == '"1"'
    [created] = await events(api, client, job["id"])
    assert (created["kind"], created["from_state"], created["to_state"]) == ("created", None, "new")
    assert (created["reason"], created["actor"]) == ("created", "dispatcher")
    assert created["actor_id"] == api.token_ids["dispatch"]
    assert await job_stream(api) == [("job.created", job["id"], "")]
    [row] = [a for a in await api.store.list_audit() if a.path == "/v1/jobs"]
    assert (row.status, row.detail) == (201, f"job {job['id']}")


async def test_idempotency_key_replays_and_refuses_other_content(
    api: Api, client: httpx.AsyncClient
) -> None:
    headers = {**api.auth("dispatch"), "Idempotency-Key": "order-17-delivery"}
    first = await client.post("/v1/jobs", json=body(), headers=headers)
    again = await client.post("/v1/jobs", json=body(), headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json() == again.json()
    other = await client.post("/v1/jobs", json=body(priority=99), headers=headers)
    assert other.status_code == 409
    assert "Idempotency-Key" in other.json()["detail"]
    assert len((await api.store.list_jobs()).items) == 1
    assert len(await events(api, client, first.json()["id"])) == 1


async def test_a_client_chosen_id_is_idempotent_too(api: Api, client: httpx.AsyncClient) -> None:
    first = await create(api, client, id="order-17")
    again = await client.post("/v1/jobs", json=body(id="order-17"), headers=api.auth("dispatch"))
    assert (again.status_code, again.json()) == (200, first)
    clash = await client.post(
        "/v1/jobs", json=body(id="order-17", demand=[1]), headers=api.auth("dispatch")
    )
    assert clash.status_code == 409


async def test_the_whole_life_of_a_job_is_in_its_log_and_the_stream(
    api: Api, assigning: tuple[httpx.AsyncClient, OfferNearest]
) -> None:
    client, offer = assigning
    job = await create(api, client)
    assert (job["state"], job["vehicle_id"], job["version"]) == ("offered", "veh-1", 2)
    assert offer.seen == [job["id"]]
    for what, state in (("accept", "assigned"), ("arrived", "arrived"), ("completed", "completed")):
        r = await answer(api, client, job["id"], what, vehicle_id="veh-1")
        assert r.status_code == 200, r.text
        assert r.json()["state"] == state
    log = await events(api, client, job["id"])
    assert [(e["from_state"], e["to_state"], e["reason"], e["actor"]) for e in log] == [
        (None, "new", "created", "dispatcher"),
        ("new", "offered", "nearest", "system"),
        ("offered", "assigned", "driver_accepted", "driver"),
        ("assigned", "arrived", "driver_arrived", "driver"),
        ("arrived", "completed", "driver_completed", "driver"),
    ]
    assert log[1]["evidence"] == {"eta_s": 420}
    assert [(e["vehicle_before"], e["vehicle_after"]) for e in log[1:3]] == [
        (None, "veh-1"),
        ("veh-1", "veh-1"),
    ]
    assert [t for t, _, _ in await job_stream(api)] == [
        "job.created",
        "job.state_changed",
        "job.state_changed",
        "job.assigned",
        "job.state_changed",
        "job.state_changed",
    ]
    assert {d for _, _, d in (await job_stream(api))[1:]} == {"veh-1"}


async def test_invalid_moves_are_409_naming_both_states(
    api: Api, client: httpx.AsyncClient
) -> None:
    job = await create(api, client)
    early = await answer(api, client, job["id"], "completed")
    assert early.status_code == 409
    assert "is new" in early.json()["detail"]
    assert "arrived" in early.json()["detail"]
    cancelled = await client.post(f"/v1/jobs/{job['id']}/cancel", headers=api.auth("dispatch"))
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled"
    again = await client.post(
        f"/v1/jobs/{job['id']}/cancel", json={"reason": "duplicate"}, headers=api.auth("dispatch")
    )
    assert again.status_code == 409
    assert again.json()["detail"] == (f"job {job['id']!r} is cancelled; it cannot become cancelled")
    assert [e["to_state"] for e in await events(api, client, job["id"])] == ["new", "cancelled"]


async def test_a_rejected_offer_goes_back_to_new_and_to_the_assigner(
    api: Api, assigning: tuple[httpx.AsyncClient, OfferNearest]
) -> None:
    client, offer = assigning
    job = await create(api, client)
    offer.vehicle_id = "veh-2"
    r = await answer(api, client, job["id"], "reject", reason="tyre puncture", vehicle_id="veh-1")
    assert r.status_code == 200, r.text
    assert (r.json()["state"], r.json()["vehicle_id"]) == ("offered", "veh-2")
    assert offer.seen == [job["id"], job["id"]]
    log = await events(api, client, job["id"])
    rejected = log[2]
    assert (rejected["from_state"], rejected["to_state"]) == ("offered", "new")
    assert (rejected["reason"], rejected["reason_text"]) == ("driver_rejected", "tyre puncture")
    assert rejected["evidence"] == {"rejected_by": "veh-1"}
    assert (rejected["vehicle_before"], rejected["vehicle_after"]) == ("veh-1", None)
    assert ("job.unassigned", job["id"], "veh-1") in await job_stream(api)


async def test_an_answer_from_another_vehicle_is_409(
    api: Api, assigning: tuple[httpx.AsyncClient, OfferNearest]
) -> None:
    client, _ = assigning
    job = await create(api, client)
    r = await answer(api, client, job["id"], "accept", vehicle_id="veh-2")
    assert r.status_code == 409
    assert "veh-1" in r.json()["detail"]


async def test_delayed_logs_the_delay_without_a_state_change(
    api: Api, assigning: tuple[httpx.AsyncClient, OfferNearest]
) -> None:
    client, _ = assigning
    job = await create(api, client)
    assert (await answer(api, client, job["id"], "accept")).status_code == 200
    r = await answer(api, client, job["id"], "delayed", delay_s=900, reason="traffic jam A100")
    assert r.status_code == 200, r.text
    assert (r.json()["state"], r.json()["version"]) == ("assigned", 4)
    delay = (await events(api, client, job["id"]))[-1]
    assert (delay["kind"], delay["from_state"], delay["to_state"]) == (
        "delayed",
        "assigned",
        "assigned",
    )
    assert (delay["reason"], delay["reason_text"]) == ("driver_delayed", "traffic jam A100")
    assert delay["evidence"] == {"delay_s": 900}
    assert (await job_stream(api))[-1] == ("job.updated", job["id"], "veh-1")


async def test_racing_answers_apply_once_and_the_losers_are_told_why(
    api: Api, assigning: tuple[httpx.AsyncClient, OfferNearest]
) -> None:
    client, offer = assigning
    job = await create(api, client)
    results = await asyncio.gather(*(answer(api, client, job["id"], "accept") for _ in range(3)))
    assert sorted(r.status_code for r in results) == [200, 409, 409], [r.text for r in results]
    assert offer.service is not None
    assert offer.service.counters["races"] >= 1  # the losers re-read and re-checked
    log = await events(api, client, job["id"])
    assert [e["reason"] for e in log].count("driver_accepted") == 1
    for r in results:
        if r.status_code == 409:
            assert "is assigned" in r.json()["detail"]


@pytest.mark.parametrize(
    "extra",
    [{}, {"delay_s": 60}, {"reason": "traffic"}, {"delay_s": 0, "reason": "x"}],
    ids=["nothing", "no-reason", "no-delay", "zero-delay"],
)
async def test_delayed_needs_a_delay_and_a_reason(
    api: Api, client: httpx.AsyncClient, extra: dict[str, Any]
) -> None:
    job = await create(api, client)
    r = await answer(api, client, job["id"], "delayed", **extra)
    assert r.status_code == 422, r.text


async def test_a_lock_binds_the_job_to_one_vehicle(
    api: Api, assigning: tuple[httpx.AsyncClient, OfferNearest]
) -> None:
    client, _ = assigning
    job = await create(api, client, locked_vehicle_id="veh-2")
    assert (job["vehicle_id"], job["locked_vehicle_id"]) == ("veh-2", "veh-2")
    service = JobService(api.store, clock=lambda: NOW_NS)
    with pytest.raises(JobConflict, match="locked to veh-2"):
        await service.transition(job["id"], JobState.OFFERED, "nearest", "system", "veh-1")
    url = f"/v1/jobs/{job['id']}/lock"
    moved = await client.put(url, json={"vehicle_id": "veh-1"}, headers=api.auth("dispatch"))
    assert moved.status_code == 200, moved.text
    assert moved.json()["locked_vehicle_id"] == "veh-1"
    unlocked = await client.delete(url, headers=api.auth("dispatch"))
    assert unlocked.json()["locked_vehicle_id"] is None
    same = await client.delete(url, headers=api.auth("dispatch"))
    assert same.json()["version"] == unlocked.json()["version"]  # nothing to lift: no change
    kinds = [(e["kind"], e["reason"]) for e in await events(api, client, job["id"])]
    assert kinds[-2:] == [("locked", "locked"), ("unlocked", "unlocked")]
    ghost = await client.put(url, json={"vehicle_id": "veh-9"}, headers=api.auth("dispatch"))
    assert ghost.status_code == 404


async def test_announcing_the_eta_marks_the_job_for_re_plans(
    api: Api, client: httpx.AsyncClient, assigning: tuple[httpx.AsyncClient, OfferNearest]
) -> None:
    plain, (client, _) = client, assigning
    job = await create(api, client)
    url = f"/v1/jobs/{job['id']}/announce"
    said = await client.post(url, json={"eta_unix_s": 1_800_000_000}, headers=api.auth("dispatch"))
    assert said.status_code == 200, said.text
    assert said.json()["announced"] is True
    again = await client.post(url, headers=api.auth("dispatch"))
    assert again.json()["version"] == said.json()["version"]  # already announced: no change
    [last] = (await events(api, client, job["id"]))[-1:]
    assert (last["kind"], last["reason"]) == ("announced", "announced")
    assert last["evidence"] == {"eta": 1_800_000_000, "vehicle_id": "veh-1"}
    row = await api.store.get_job(job["id"])
    assert row is not None
    assert row.job.announced
    assert ("job.updated", job["id"], "veh-1") in await job_stream(api)
    unrouted = await create(api, plain)  # no assigner here: it stays new
    refused = await client.post(f"/v1/jobs/{unrouted['id']}/announce", headers=api.auth("dispatch"))
    assert refused.status_code == 409
    assert "on no vehicle" in refused.text


async def test_if_match_refuses_a_stale_version(api: Api, client: httpx.AsyncClient) -> None:
    job = await create(api, client)
    url = f"/v1/jobs/{job['id']}/cancel"
    stale = await client.post(url, headers={**api.auth("dispatch"), "If-Match": '"7"'})
    assert stale.status_code == 412
    assert stale.headers["ETag"] == '"1"'
    bad = await client.post(url, headers={**api.auth("dispatch"), "If-Match": "W/x"})
    assert bad.status_code == 400
    ok = await client.post(url, headers={**api.auth("dispatch"), "If-Match": '"1"'})
    assert ok.status_code == 200
    assert ok.headers["ETag"] == '"2"'


async def test_list_filters_and_pages(api: Api, client: httpx.AsyncClient) -> None:
    ids = [(await create(api, client, customer_ref=f"c{i % 2}"))["id"] for i in range(5)]
    await client.post(f"/v1/jobs/{ids[2]}/cancel", headers=api.auth("dispatch"))
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/jobs", params=params, headers=api.auth("read"))).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids)
    assert len(seen) == 5

    async def ids_for(**params: Any) -> set[str]:
        r = await client.get("/v1/jobs", params=params, headers=api.auth("read"))
        assert r.status_code == 200, r.text
        return {j["id"] for j in r.json()["items"]}

    assert await ids_for(state="cancelled") == {ids[2]}
    assert await ids_for(state=["new", "cancelled"]) == set(ids)
    assert await ids_for(customer_ref="c1") == {ids[1], ids[3]}
    assert await ids_for(vehicle_id="veh-1") == set()
    bad = await client.get("/v1/jobs", params={"cursor": "nope"}, headers=api.auth("read"))
    assert bad.status_code == 400
    unknown = await client.get("/v1/jobs", params={"state": "lost"}, headers=api.auth("read"))
    assert unknown.status_code == 422


async def test_read_shows_the_latest_explanation(api: Api, client: httpx.AsyncClient) -> None:
    job = await create(api, client)
    reasons = ({"vehicle_id": "veh-2", "reason": "skills"},)
    await api.store.set_job_explanation(
        job["id"], explanation={"chosen": None, "tried": 2}, unassigned_reasons=reasons
    )
    got = (await client.get(f"/v1/jobs/{job['id']}", headers=api.auth("read"))).json()
    assert got["explanation"] == {"chosen": None, "tried": 2}
    assert got["unassigned_reasons"] == [{"vehicle_id": "veh-2", "reason": "skills"}]


def _window(start: int, end: int) -> dict[str, int]:
    return {"start_unix_s": start, "end_unix_s": end}


def _stop(**fields: Any) -> dict[str, Any]:
    return {"location": {"lat_deg": 52.5, "lon_deg": 13.4}, **fields}


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"stop": {"location": {"lat_deg": 91, "lon_deg": 0}}}, "lat_deg"),
        ({"stop": {"location": {"lat_deg": 0, "lon_deg": -180.5}}}, "lon_deg"),
        ({"stop": _stop(windows=[_window(DAY0 + 10, DAY0)])}, "end before it starts"),
        ({"stop": _stop(windows=[_window(DAY0, DAY0 + 1)] * 9)}, "windows"),
        ({"stop": _stop(service_s=86_401)}, "service_s"),
        ({"pickup": _stop(service_s=-1)}, "service_s"),
        ({"demand": [1, -2]}, "demand"),
        ({"demand": [1] * 9}, "demand"),
        ({"skills": ["Fridge Unit"]}, "skills"),
        ({"priority": 101}, "priority"),
        ({"customer_ref": ""}, "customer_ref"),
        ({"locked_vehicle_id": "no spaces"}, "locked_vehicle_id"),
        ({"state": "completed"}, "state"),
    ],
)
async def test_invalid_bodies_are_422_naming_the_field(
    api: Api, client: httpx.AsyncClient, fields: dict[str, Any], names: str
) -> None:
    r = await client.post("/v1/jobs", json=body(**fields), headers=api.auth("dispatch"))
    assert r.status_code == 422, r.text
    assert names in r.text
    assert (await api.store.list_jobs()).items == []


async def test_scopes_read_for_everyone_writes_for_dispatch(
    api: Api, client: httpx.AsyncClient
) -> None:
    job = await create(api, client)
    for scope in ("read", "maintenance"):
        assert (await client.get("/v1/jobs", headers=api.auth(scope))).status_code == 200
        refused = await client.post("/v1/jobs", json=body(), headers=api.auth(scope))
        assert refused.status_code == 403
        cancel = await client.post(f"/v1/jobs/{job['id']}/cancel", headers=api.auth(scope))
        assert cancel.status_code == 403
    assert (
        await client.post("/v1/jobs", json=body(), headers=api.auth("admin"))
    ).status_code == 201
    assert (await client.get("/v1/jobs")).status_code == 401


async def test_unknown_jobs_are_404(api: Api, client: httpx.AsyncClient) -> None:
    for method, path in (
        ("GET", "/v1/jobs/nope"),
        ("GET", "/v1/jobs/nope/events"),
        ("POST", "/v1/jobs/nope/cancel"),
        ("DELETE", "/v1/jobs/nope/lock"),
    ):
        r = await client.request(method, path, headers=api.auth("dispatch"))
        assert r.status_code == 404, (method, path)


async def test_job_events_reach_bus_subscribers(api: Api, client: httpx.AsyncClient) -> None:
    tailer = StreamTailer(api.store, api.ctx.bus)
    await tailer.poll()  # starts from the newest event
    _, sub = api.ctx.bus.subscribe(make_filter(None, {"job.created", "job.state_changed"}))
    job = await create(api, client)
    await client.post(f"/v1/jobs/{job['id']}/cancel", headers=api.auth("dispatch"))
    assert await tailer.poll() == 2
    got = [await anext(aiter(sub)) for _ in range(2)]
    assert [(e.type, e.data["to_state"]) for e in got] == [
        ("job.created", "new"),
        ("job.state_changed", "cancelled"),
    ]
    assert got[1].data["from_state"] == "new"
    assert got[1].data["reason"] == "cancelled"


async def test_the_openapi_document_lists_the_dispatch_routes(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert set(paths["/v1/jobs"]) == {"get", "post"}
    assert set(paths["/v1/jobs/{job_id}/lock"]) == {"put", "delete"}
    for path in (
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/events",
        "/v1/jobs/{job_id}/cancel",
        "/v1/jobs/{job_id}/answers",
        "/v1/depots/{depot_id}",
        "/v1/drivers/{driver_id}",
        "/v1/vehicles/{device_id}/dispatch",
    ):
        assert path in paths
    answers = paths["/v1/jobs/{job_id}/answers"]["post"]
    assert answers["x-required-scopes"] == ["dispatch"]
    assert {"409", "412", "422"} <= set(answers["responses"])
