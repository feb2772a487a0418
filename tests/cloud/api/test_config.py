"""Remote configuration over the API: If-Match, the size limit, the group form, scopes, audit,
and publishing retained on dn/config."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from fleetlink_cloud.api import create_app
from fleetlink_cloud.bus import StreamEvent
from fleetlink_cloud.commands import CommandService
from fleetlink_cloud.configs import ConfigService
from fleetlink_protocols.limits import MAX_DESIRED_CONFIG_BYTES
from fleetlink_protocols.messages import ConfigDocument, decode_command, decode_config
from tests.cloud.api.harness import NOW_NS, Api, client_for

URL = "/v1/vehicles/veh-1/config"
DOC = {"sampling": {"position_interval_s": 5}, "health": {"interval_s": 30}}


class Recorder:
    """An MQTT publisher that keeps what it was given."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bool]] = []

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.sent.append((topic, payload, retain))


async def put(
    client: httpx.AsyncClient, api: Api, body: Any, if_match: str | None = None, **kw: Any
) -> httpx.Response:
    headers = api.auth(kw.get("scope", "dispatch"))
    if if_match is not None:
        headers["If-Match"] = if_match
    return await client.put(kw.get("url", URL), json=body, headers=headers)


async def test_a_vehicle_without_configuration(api: Api, client: httpx.AsyncClient) -> None:
    r = await client.get(URL, headers=api.auth("read"))
    assert r.status_code == 200
    assert r.json() == {"device_id": "veh-1", "desired": None, "reported": None, "in_sync": True}
    assert "etag" not in r.headers


async def test_versions_and_if_match(api: Api, client: httpx.AsyncClient) -> None:
    first = await put(client, api, {"document": DOC})
    assert first.status_code == 200, first.text
    assert first.headers["etag"] == '"1"'
    desired = first.json()["desired"]
    assert desired == {
        "version": 1,
        "document": DOC,
        "set_by": api.token_ids["dispatch"],
        "set_wall_ns": NOW_NS,
        "published": False,  # this app has no MQTT link: a sweep elsewhere publishes it
        "published_wall_ns": None,
    }
    assert first.json()["in_sync"] is False
    missing = await put(client, api, {"document": {}})
    assert missing.status_code == 428
    assert "version 1" in missing.json()["detail"]
    second = await put(client, api, {"document": {}}, '"1"', scope="admin")
    assert (second.status_code, second.headers["etag"]) == (200, '"2"')
    stale = await put(client, api, {"document": DOC}, "1")
    assert (stale.status_code, stale.headers["etag"]) == (412, '"2"')
    assert "version 2, not 1" in stale.json()["detail"]
    bare = await put(client, api, {"document": DOC}, "2")
    assert bare.json()["desired"]["version"] == 3
    anything = await put(client, api, {"document": {"log": {"level": "debug"}}}, "*")
    assert anything.json()["desired"]["version"] == 4
    got = await client.get(URL, headers=api.auth("read"))
    assert (got.headers["etag"], got.json()["desired"]["document"]) == (
        '"4"',
        {"log": {"level": "debug"}},
    )


@pytest.mark.parametrize("if_match", ['W/"1"', "one", '"1", "2"', "-1", ""])
async def test_an_unreadable_if_match_is_400(
    api: Api, client: httpx.AsyncClient, if_match: str
) -> None:
    await put(client, api, {"document": DOC})
    r = await put(client, api, {"document": {}}, if_match)
    assert r.status_code == 400, r.text


async def test_if_match_over_no_document_is_412(api: Api, client: httpx.AsyncClient) -> None:
    for tag in ("*", '"3"'):
        r = await put(client, api, {"document": DOC}, tag)
        assert r.status_code == 412, r.text
        assert "etag" not in r.headers
    assert (await put(client, api, {"document": DOC}, '"0"')).status_code == 200


async def test_documents_over_8_kib_are_413(api: Api, client: httpx.AsyncClient) -> None:
    fits = {"s": {"k": "x" * (MAX_DESIRED_CONFIG_BYTES - 100)}}
    assert (await put(client, api, {"document": fits})).status_code == 200
    too_big = {"s": {"k": "x" * MAX_DESIRED_CONFIG_BYTES}}
    r = await put(client, api, {"document": too_big}, '"1"')
    assert r.status_code == 413
    assert f"more than {MAX_DESIRED_CONFIG_BYTES}" in r.json()["detail"]
    assert (await client.get(URL, headers=api.auth("read"))).json()["desired"]["version"] == 1


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"document": {"sampling": 5}},
        {"document": {"sampling": {"k" * 65: 1}}},
        {"document": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": {}}}}}}}}}}},
        {"document": {}, "extra": 1},
    ],
)
async def test_malformed_documents_are_422(api: Api, client: httpx.AsyncClient, body: Any) -> None:
    r = await put(client, api, body)
    assert r.status_code == 422, r.text
    assert (await api.store.get_config("veh-1")).desired is None


async def test_unknown_vehicle_is_404(api: Api, client: httpx.AsyncClient) -> None:
    assert (
        await put(client, api, {"document": DOC}, url="/v1/vehicles/veh-9/config")
    ).status_code == 404
    assert (
        await client.get("/v1/vehicles/veh-9/config", headers=api.auth("read"))
    ).status_code == 404


async def test_only_dispatch_and_admin_may_set(api: Api, client: httpx.AsyncClient) -> None:
    for scope in ("read", "maintenance"):
        for url in (URL, "/v1/config"):
            r = await put(client, api, {"document": DOC, "devices": "all"}, url=url, scope=scope)
            assert r.status_code == 403, (scope, url)
    for scope in ("read", "maintenance", "dispatch", "admin"):
        assert (await client.get(URL, headers=api.auth(scope))).status_code == 200


async def test_puts_are_audited_refusals_too(api: Api, client: httpx.AsyncClient) -> None:
    await put(client, api, {"document": DOC})
    await put(client, api, {"document": DOC}, '"7"')
    await put(client, api, {"document": DOC, "devices": ["veh-2"]}, url="/v1/config")
    rows = [(a.actor, a.method, a.path, a.status, a.detail) for a in await api.store.list_audit()]
    who = api.token_ids["dispatch"]
    assert rows == [
        (who, "PUT", URL, 200, "config version 1"),
        (who, "PUT", URL, 412, ""),
        (who, "PUT", "/v1/config", 200, "config for 1 vehicles: 1 set, 0 stale, 0 unknown"),
    ]


async def test_the_group_form_reports_per_vehicle(api: Api, client: httpx.AsyncClient) -> None:
    await put(client, api, {"document": DOC})  # veh-1 at version 1
    body = {"devices": ["veh-2", "veh-none", "veh-1"], "document": {}, "if_match": {"veh-1": 5}}
    r = await put(client, api, body, url="/v1/config")
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [(x["device_id"], x["status"], x["version"]) for x in results] == [
        ("veh-1", 412, 1),
        ("veh-2", 200, 1),
        ("veh-none", 404, None),
    ]
    assert "version 1, not 5" in results[0]["detail"]
    everyone = await put(client, api, {"devices": "all", "document": DOC}, url="/v1/config")
    assert [(x["device_id"], x["status"], x["version"]) for x in everyone.json()["results"]] == [
        ("veh-1", 200, 2),
        ("veh-2", 200, 2),
    ]
    too_big = {"devices": "all", "document": {"s": {"k": "x" * MAX_DESIRED_CONFIG_BYTES}}}
    assert (await put(client, api, too_big, url="/v1/config")).status_code == 413


async def test_the_report_shows_beside_the_desired_document(
    api: Api, client: httpx.AsyncClient
) -> None:
    await put(client, api, {"document": DOC})
    await api.store.record_reported_config(
        "veh-1",
        version=1,
        document=DOC,
        pending_restart=["uplink.batch_max_records"],
        refused_version=None,
        error=None,
        received_wall_ns=NOW_NS + 5,
    )
    got = (await client.get(URL, headers=api.auth("read"))).json()
    assert got["in_sync"] is True
    assert got["reported"] == {
        "version": 1,
        "document": DOC,
        "pending_restart": ["uplink.batch_max_records"],
        "refused_version": None,
        "error": None,
        "reported_wall_ns": NOW_NS + 5,
    }


def published(recorder: Recorder) -> list[tuple[str, ConfigDocument | str, bool]]:
    return [
        (t, decode_config(p) if t.endswith("dn/config") else decode_command(p).name, r)
        for t, p, r in recorder.sent
    ]


async def test_with_a_broker_link_documents_go_out_retained(api: Api) -> None:
    recorder = Recorder()
    service = CommandService(api.store, recorder, clock=api.ctx.clock)
    app = create_app(api.ctx, commands=service)
    async with client_for(type(api)(api.store, api.ctx, app)) as client:
        r = await put(client, api, {"document": DOC})
        assert r.json()["desired"]["published"] is True
        # set_config patches the desired document: a new version, retained, then the command.
        values = {"health": {"interval_s": 10}}
        cmd = await client.post(
            "/v1/vehicles/veh-1/commands",
            json={"name": "set_config", "args": {"values": values}},
            headers=api.auth("dispatch"),
        )
        assert cmd.status_code == 201, cmd.text
        assert cmd.json()["args"] == {"values": values, "version": 2}
    patched = {"sampling": {"position_interval_s": 5}, "health": {"interval_s": 10}}
    assert published(recorder) == [
        ("fleet/veh-1/dn/config", ConfigDocument(1, DOC), True),
        ("fleet/veh-1/dn/config", ConfigDocument(2, patched), True),
        ("fleet/veh-1/dn/cmd", "set_config", False),
    ]
    desired = (await api.store.get_config("veh-1")).desired
    assert desired is not None
    assert (desired.version, desired.set_by) == (2, api.token_ids["dispatch"])


async def test_a_sweep_publishes_what_an_api_without_mqtt_stored(
    api: Api, client: httpx.AsyncClient
) -> None:
    await put(client, api, {"document": DOC})
    recorder = Recorder()
    configs = ConfigService(api.store, recorder, clock=api.ctx.clock)
    assert (await configs.sweep(), await configs.sweep()) == (1, 0)
    assert published(recorder) == [("fleet/veh-1/dn/config", ConfigDocument(1, DOC), True)]


async def test_a_birth_publishes_again_what_the_vehicle_does_not_report(
    api: Api, client: httpx.AsyncClient
) -> None:
    await put(client, api, {"document": DOC})
    recorder = Recorder()
    configs = ConfigService(api.store, recorder, clock=api.ctx.clock)
    await configs.sweep()
    online = StreamEvent(0, "vehicle.online", "veh-1", NOW_NS, {})
    await configs.on_event(online)  # no report yet: again
    for version, refused in ((0, 1), (1, None)):  # refused it, then applied it: known
        await api.store.record_reported_config(
            "veh-1", version=version, document={}, pending_restart=[],
            refused_version=refused, error=None, received_wall_ns=NOW_NS,
        )  # fmt: skip
        await configs.on_event(online)
    await configs.on_event(StreamEvent(0, "vehicle.online", "veh-2", NOW_NS, {}))  # none
    assert len(recorder.sent) == 2


async def test_a_first_document_starts_above_older_set_config_versions(api: Api) -> None:
    legacy_version = NOW_NS // 1_000_000  # what set_config used to assign
    await api.store.create_command(
        "veh-2", "cfg-old", "set_config", {"values": {}, "version": legacy_version},
        created_wall_ns=NOW_NS,
    )  # fmt: skip
    configs = ConfigService(api.store, None, clock=api.ctx.clock)
    row = await configs.put("veh-2", DOC, expected_version=0, set_by="t")
    assert row.version == legacy_version + 1
