"""Live dispatch end to end: a job created by REST is offered to a vehicle, the offer reaches the
real agent's board, the driver accepts it there, the job is assigned in the cloud; the agent is
killed and the job is reallocated to the other vehicle once the offline and grace times pass.

Peers: Mosquitto (Debian ``mosquitto``, started here with the registry's ACL and the devices'
and the backend's passwords) and a SQLite store. The cloud is the whole ``serve`` stack
in-process (API, ingest, tail, downlink, webhooks, dispatch). The vehicles are two real edge
agents on simulated hardware (``fleetlink-edge simulate``, one process each), driving loops
about 6 km apart; the driver is ``fleetlink-edge jobs`` on the agent's socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetlink_cloud import tokens
from fleetlink_cloud.app import Running, serve
from fleetlink_cloud.config import (
    ApiSettings,
    BrokerSettings,
    CloudSettings,
    DatabaseSettings,
    IngestSettings,
)
from fleetlink_cloud.dispatch.rules import OfflineSettings, RuleSettings
from fleetlink_cloud.dispatch.settings import DispatchSettings
from fleetlink_cloud.registry import add_device
from fleetlink_cloud.store import open_store
from fleetlink_protocols.topics import mosquitto_acl_entries
from tests.peers.mosquitto import Mosquitto

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]

BACKEND_PASSWORD = "backend-dispatch-secret"
CENTRES = {"veh-disp-1": (52.520, 13.405), "veh-disp-2": (52.560, 13.470)}
WAIT_S = 60.0
OFFLINE_S, GRACE_S = 2, 4


def settings(port: int, db: Path) -> CloudSettings:
    return CloudSettings(
        broker=BrokerSettings(embedded=False, host="127.0.0.1", port=port, username="backend",
                              password=BACKEND_PASSWORD, protocol="5", keepalive_s=5),
        database=DatabaseSettings(url=f"sqlite:///{db}"),
        ingest=IngestSettings(group_max_messages=50, retry_initial_s=0.05, retry_max_s=0.5),
        api=ApiSettings(port=0),
        dispatch=DispatchSettings(
            rules_interval_s=0.5,
            rules=RuleSettings(offline=OfflineSettings(offline_for_s=OFFLINE_S, grace_s=GRACE_S)),
        ),
    )  # fmt: skip


def start_vehicle(device_id: str, password: str, port: int, state: Path) -> subprocess.Popen[bytes]:
    lat, lon = CENTRES[device_id]
    cmd = [sys.executable, "-m", "fleetlink_edge.cli", "simulate", "--device", device_id,
           "--broker", f"127.0.0.1:{port}", "--state-dir", str(state), "--gnss-hz", "2",
           "--lat", str(lat), "--lon", str(lon), "--report-every", "60"]  # fmt: skip
    env = {
        **os.environ,
        "FLEETLINK_EDGE_UPLINK__USERNAME": device_id,
        "FLEETLINK_EDGE_UPLINK__PASSWORD": password,
        "FLEETLINK_EDGE_UPLINK__BACKOFF_INITIAL_S": "0.2",
        "FLEETLINK_EDGE_UPLINK__BACKOFF_MAX_S": "1.0",
    }
    state.mkdir(parents=True, exist_ok=True)
    with (state / "agent.log").open("ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


async def driver(state: Path, *args: str) -> tuple[int, Any]:
    """``fleetlink-edge jobs --json ARGS`` on the agent's driver socket: (exit status, JSON)."""
    cmd = [sys.executable, "-m", "fleetlink_edge.cli", "jobs", "--socket",
           str(state / "outbox.driver.sock"), "--json", *args]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, json.loads(out) if out.strip() else None


async def eventually(check: Callable[[], Awaitable[Any]], timeout_s: float = WAIT_S) -> Any:
    """The first truthy result of ``check``, polled."""
    async with asyncio.timeout(timeout_s):
        while True:
            found = await check()
            if found:
                return found
            await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def service(config: CloudSettings) -> AsyncIterator[Running]:
    ready: asyncio.Future[Running] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(config, stop, on_ready=ready.set_result))
    await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():
        await task  # raises what stopped it
    try:
        yield ready.result()
    finally:
        stop.set()
        await task


async def test_offer_accept_then_reallocation_when_the_vehicle_dies(tmp_path: Path) -> None:
    db = tmp_path / "cloud.sqlite3"
    async with open_store(f"sqlite:///{db}") as store:
        passwords = {vid: (await add_device(store, vid)).password for vid in CENTRES}
        new = tokens.generate()
        await store.create_token(
            new.token_id,
            name="e2e",
            scope="dispatch",
            token_hash=new.secret_hash,
            created_wall_ns=time.time_ns(),
        )
    users = {**passwords, "backend": BACKEND_PASSWORD}
    states = {vid: tmp_path / vid for vid in CENTRES}
    agents: dict[str, subprocess.Popen[bytes]] = {}
    with Mosquitto(users, mosquitto_acl_entries("fleet").splitlines()) as broker:
        async with service(settings(broker.port, db)) as running:
            auth = {"Authorization": f"Bearer {new.token}"}
            async with httpx.AsyncClient(base_url=running.api_url, headers=auth) as api:
                try:
                    for vid in CENTRES:
                        agents[vid] = start_vehicle(vid, passwords[vid], broker.port, states[vid])
                    await eventually(lambda: positioned(api))
                    await scenario(api, agents, states)
                finally:
                    for proc in agents.values():
                        if proc.poll() is None:
                            proc.send_signal(signal.SIGTERM)
                    for vid, proc in agents.items():
                        code = await asyncio.to_thread(proc.wait, 30)
                        assert code in (0, -signal.SIGKILL), (states[vid] / "agent.log").read_text()


async def positioned(api: httpx.AsyncClient) -> bool:
    """Both vehicles online with a position in the cloud."""
    answer = await api.get("/v1/vehicles")
    items = answer.json()["items"]
    return sum(1 for v in items if v["presence"]["online"] and v["position"]) == len(CENTRES)


async def scenario(
    api: httpx.AsyncClient, agents: dict[str, subprocess.Popen[bytes]], states: dict[str, Path]
) -> None:
    lat, lon = CENTRES["veh-disp-1"]
    body = {"id": "job-e2e-1", "stop": {"location": {"lat_deg": lat, "lon_deg": lon},
                                        "service_s": 120}}  # fmt: skip
    created = await api.post("/v1/jobs", json=body)
    assert created.status_code == 201, created.text
    job = created.json()
    assert job["state"] == "offered", job
    first = job["vehicle_id"]
    assert first == "veh-disp-1"  # its loop is around the stop; the other's is 6 km away
    other = next(v for v in CENTRES if v != first)

    async def on_board(vid: str) -> dict[str, Any] | None:
        code, listed = await driver(states[vid], "list")
        jobs = listed["jobs"] if code == 0 and listed else []
        return next((j for j in jobs if j["job_id"] == "job-e2e-1"), None)

    offered = await eventually(lambda: on_board(first))
    assert (offered["state"], offered["version"]) == ("offered", job["version"])
    code, answered = await driver(states[first], "accept", "job-e2e-1")
    assert code == 0, answered
    assert answered["job"]["state"] == "accepted"

    async def taken() -> dict[str, Any] | None:
        got = (await api.get("/v1/jobs/job-e2e-1")).json()
        return got if got["state"] in ("assigned", "en_route") else None

    assigned = await eventually(taken)
    assert assigned["vehicle_id"] == first
    log = (await api.get("/v1/jobs/job-e2e-1/events")).json()["items"]
    assert [e["reason"] for e in log][:3] == ["created", "instant_assignment", "driver_accepted"]
    route = (await api.get(f"/v1/vehicles/{first}/route")).json()
    assert [s["job_id"] for s in route["stops"]] == ["job-e2e-1"]

    killed_at = time.monotonic()
    agents[first].kill()  # no goodbye: the broker publishes the agent's will

    async def moved() -> dict[str, Any] | None:
        got = (await api.get("/v1/jobs/job-e2e-1")).json()
        return got if got["vehicle_id"] == other else None

    reallocated = await eventually(moved)
    assert time.monotonic() - killed_at >= OFFLINE_S + GRACE_S - 2  # not before the grace
    assert reallocated["state"] == "offered"
    log = (await api.get("/v1/jobs/job-e2e-1/events")).json()["items"]
    last = log[-1]
    assert (last["reason"], last["actor"], last["vehicle_before"]) == ("reallocated", "rule", first)
    assert last["evidence"]["rule"] == "offline"
    assert (await eventually(lambda: on_board(other)))["state"] == "offered"
    commands = (await api.get(f"/v1/vehicles/{first}/commands")).json()["items"]
    assert "withdraw_job" in [c["name"] for c in commands]
