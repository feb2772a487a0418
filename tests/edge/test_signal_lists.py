"""Signal lists changed at run time: the rules a desired document's lists must meet, the CAN
decoders' selection on a real capture, the OBD poller taking a new interval, and the whole agent
on a python-can virtual bus with a simulated ECU and J1939 traffic, taking new PIDs and a new
signal selection while it runs (checked on what reaches its outbox)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import can
import pytest

from fleetlink_edge.app import Agent
from fleetlink_edge.config import CanSettings, EdgeSettings, ObdSettings
from fleetlink_edge.decode.can import CanDecoder
from fleetlink_edge.errors import ConfigError
from fleetlink_edge.remote_config import effective
from fleetlink_edge.sim.ecu import EcuState, SimulatedEcu
from fleetlink_edge.sources.can import CanPort
from fleetlink_edge.sources.obd import ObdPoller
from fleetlink_edge.sources.replay import read_log
from fleetlink_protocols.codec import decode_record
from fleetlink_protocols.messages import ConfigDocument
from fleetlink_protocols.records import Dtc, Record, SignalValue
from tests.edge.test_remote_config import Vehicle, remote, running, until
from tests.peers import free_port

IDLE = "can/j1939/css_matlab-basics_11111111_00000012_00000001.candump.log"
J1939_DBC = "can/j1939/CSS-Electronics-SAE-J1939-DEMO.dbc"
ENGINE_SPEED = "Vehicle.Powertrain.CombustionEngine.Speed"  # J1939 SPN 190
COOLANT = "Vehicle.Powertrain.CombustionEngine.EngineCoolant.Temperature"  # J1939 SPN 110
OBD_RPM, OBD_SPEED, OBD_FUEL = (
    "Vehicle.OBD.EngineSpeed",
    "Vehicle.OBD.Speed",
    "Vehicle.OBD.FuelLevel",
)
VIN = "Vehicle.VehicleIdentification.VIN"  # read once, at discovery
CAN_ON = EdgeSettings.model_validate(
    {
        "can": {
            "enabled": True,
            "j1939": {"enabled": True},
            "dbc": [{"file": "/nonexistent.dbc", "signals": {"EEC1.EngineSpeed": OBD_RPM}}],
        }
    }
)  # the rules read the mapping only; the file is loaded when the agent builds its decoders


def refusal(local: EdgeSettings, document: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        effective(local, document)
    return str(info.value)


def test_pids_must_be_decodable_distinct_and_a_bounded_nonempty_list() -> None:
    local = EdgeSettings()
    got = effective(local, {"can": {"obd": {"pids": [0x0C, 0x5E], "poll_interval_s": 0.5}}})
    assert (got.can.obd.pids, got.can.obd.poll_interval_s) == ([0x0C, 0x5E], 0.5)
    assert got.can.obd.dtc_interval_s == local.can.obd.dtc_interval_s  # the rest stays local
    assert refusal(local, {"can": {"obd": {"pids": [0x0C, 0x10, 0x01]}}}) == (
        "can.obd.pids: 0x10, 0x01 not among the SAE J1979 PIDs this agent decodes "
        "(0x04, 0x05, 0x0C, 0x0D, 0x11, 0x1F, 0x21, 0x2F, 0x5E, 0xA6)"
    )
    assert refusal(local, {"can": {"obd": {"pids": [0x0C, 0x0D, 0x0C]}}}) == (
        "can.obd.pids: 0x0C listed more than once"
    )
    assert refusal(local, {"can": {"obd": {"pids": []}}}).startswith(
        "can.obd.pids: name at least one PID"
    )
    assert refusal(local, {"can": {"obd": {"pids": [0x0C] * 65}}}) == (
        "can.obd.pids: List should have at most 64 items after validation, not 65"
    )
    assert refusal(local, {"can": {"obd": {"pids": [256]}}}).startswith("can.obd.pids.0: Input")
    assert refusal(local, {"can": {"obd": {"pids": "0C"}}}).startswith("can.obd.pids: Input")
    assert refusal(local, {"can": {"obd": {"pids": [12], "enabled": True}, "channel": "x"}}) == (
        "can.obd.enabled: cannot be set remotely; can.channel: cannot be set remotely"
    )
    assert refusal(local, {"can": {"obd": [12]}}) == "can.obd: must be a map of settings"
    assert refusal(local, {"can": {"dbc": []}}) == "can.dbc: cannot be set remotely"


def test_kept_signals_must_be_ones_the_vehicles_decoders_produce() -> None:
    got = effective(CAN_ON, {"can": {"signals": [ENGINE_SPEED, OBD_RPM]}})
    assert got.can.signals == [ENGINE_SPEED, OBD_RPM]
    assert effective(got, {"can": {"signals": None}}).can.signals is None  # null: keep all
    assert refusal(CAN_ON, {"can": {"signals": [ENGINE_SPEED, "Vehicle.Cabin.Door"]}}) == (
        "can.signals: Vehicle.Cabin.Door: produced by neither J1939 nor a DBC mapping of this "
        "vehicle"
    )
    no_j1939 = EdgeSettings.model_validate(
        {"can": CAN_ON.can.model_dump() | {"j1939": {"enabled": False}}}
    )
    assert refusal(no_j1939, {"can": {"signals": [ENGINE_SPEED]}}) == (
        f"can.signals: {ENGINE_SPEED}: produced by neither J1939 (off) nor a DBC mapping of "
        "this vehicle"
    )
    assert refusal(CAN_ON, {"can": {"signals": [OBD_RPM, OBD_RPM]}}) == (
        f"can.signals: {OBD_RPM} listed more than once"
    )
    assert refusal(CAN_ON, {"can": {"signals": []}}).startswith(
        "can.signals: List should have at least 1 item"
    )
    assert refusal(EdgeSettings(), {"can": {"signals": [ENGINE_SPEED]}}) == (
        "can.signals: CAN is off on this vehicle (can.enabled = false)"
    )


async def test_a_bad_list_refuses_the_whole_document_and_nothing_changes(tmp_path: Path) -> None:
    vehicle = Vehicle()
    config, reports = remote(tmp_path, vehicle)
    good: dict[str, Any] = {"can": {"obd": {"pids": [0x0C, 0x2F]}}}
    result = await config.on_desired(ConfigDocument(1, good))
    assert result is not None
    assert result.applied == ("can.obd.pids=[12, 47]",)
    assert [section for section, _ in vehicle.calls] == ["can"]
    vehicle.calls.clear()
    bad: dict[str, Any] = {
        "sampling": {"signal_interval_s": 5},
        "can": {"obd": {"pids": [0x0C, 0x10]}},
    }
    assert await config.on_desired(ConfigDocument(2, bad)) is None
    assert vehicle.calls == []
    assert config.applied.document == good
    report = reports[-1]
    assert (report.version, report.refused_version) == (1, 2)
    assert report.error is not None
    assert report.error.startswith("can.obd.pids: 0x10 not among the SAE J1979 PIDs")


# -- the CAN decoders' selection --------------------------------------------------------------


def test_the_decoders_keep_only_the_selected_signals_and_every_dtc(shared_data: Path) -> None:
    settings = CanSettings.model_validate(
        {
            "j1939": {"enabled": True},
            "dbc": [{"file": shared_data / J1939_DBC, "signals": {"EEC1.EngineSpeed": OBD_RPM}}],
        }
    )
    frames = list(read_log(shared_data / IDLE))[:20_000]

    def decode(*select: list[str] | None) -> tuple[dict[str, int], int, CanDecoder]:
        """Signals per path and DTCs from the frames, through a decoder given ``select``."""
        decoder = CanDecoder.from_settings(settings)
        for paths in select:
            decoder.select(paths)
        records = [r for f in frames for r in decoder.feed(f)]
        signals = [r.path for r in records if isinstance(r, SignalValue)]
        dtcs = sum(isinstance(r, Dtc) for r in records)
        return {p: signals.count(p) for p in set(signals)}, dtcs, decoder

    every, dtcs, _ = decode()
    assert {ENGINE_SPEED, COOLANT, OBD_RPM} <= every.keys()
    assert dtcs > 0
    kept, kept_dtcs, decoder = decode([ENGINE_SPEED])
    assert (kept, kept_dtcs) == ({ENGINE_SPEED: every[ENGINE_SPEED]}, dtcs)
    dbc = decoder.dbc[0].counters
    assert (dbc["matched"], dbc["signals"]) == (0, 0)  # cantools was spared every EEC1 frame
    assert decode([OBD_RPM])[:2] == ({OBD_RPM: every[OBD_RPM]}, dtcs)
    assert decode([COOLANT], None)[:2] == (every, dtcs)  # None: everything again


def test_a_local_selection_of_signals_no_decoder_produces_is_refused_at_start(
    shared_data: Path,
) -> None:
    settings = CanSettings.model_validate({"signals": [ENGINE_SPEED]})  # J1939 off, no DBC
    with pytest.raises(ConfigError, match=r"can\.signals: .*CombustionEngine\.Speed: produced"):
        CanDecoder.from_settings(settings)


# -- the OBD poller on a virtual bus ---------------------------------------------------------


@pytest.fixture
def channel() -> str:
    return f"lists-{uuid.uuid4().hex}"


@contextlib.asynccontextmanager
async def ecu(channel: str) -> AsyncIterator[EcuState]:
    bus = can.Bus(interface="virtual", channel=channel)
    state = EcuState(speed_kmh=42, rpm=1500, fuel_level_pct=62)
    try:
        async with SimulatedEcu(bus, state):
            yield state
    finally:
        bus.shutdown()


async def test_a_shorter_poll_interval_takes_effect_at_once(channel: str) -> None:
    slow = ObdSettings(pids=[0x0D], poll_interval_s=30, response_timeout_s=0.1, dtc_interval_s=60)
    records: list[Record] = []
    async with (
        ecu(channel),
        CanPort(CanSettings(interface="virtual", channel=channel)) as port,
    ):
        poller = ObdPoller(port, slow)

        async def pump() -> None:
            async for record in poller.records():
                records.append(record)

        def speeds() -> int:
            return sum(isinstance(r, SignalValue) and r.path == OBD_SPEED for r in records)

        async with running(pump()):
            await until(lambda: speeds() == 1)
            await asyncio.sleep(0.3)
            assert speeds() == 1  # the next poll is 30 s away
            poller.reconfigure(slow.model_copy(update={"poll_interval_s": 0.05}))
            started = time.monotonic()
            await until(lambda: speeds() >= 6, timeout_s=5)
    assert time.monotonic() - started < 5


# -- the whole agent ---------------------------------------------------------------------------


def agent_settings(tmp_path: Path, channel: str) -> EdgeSettings:
    """An agent on the virtual bus, offline (nothing listens on its broker port), recording
    every poll: values repeat after 50 ms of silence."""
    return EdgeSettings.model_validate(
        {
            "device": {"id": "veh-lists"},
            "gnss": {"source": "none"},
            "can": {
                "enabled": True,
                "interface": "virtual",
                "channel": channel,
                "obd": {
                    "enabled": True,
                    "pids": [0x0C, 0x0D],
                    "poll_interval_s": 0.05,
                    "response_timeout_s": 0.1,
                    "dtc_interval_s": 3600,
                },
                "j1939": {"enabled": True},
            },
            "sampling": {"signal_interval_s": 0, "signal_max_silence_s": 0.05},
            "outbox": {"path": tmp_path / "outbox.sqlite3"},
            "uplink": {"port": free_port(), "backoff_initial_s": 0.05, "backoff_max_s": 0.1},
        }
    )


async def broadcast_j1939(bus: can.BusABC) -> None:
    """An engine ECU (source address 0) sending EEC1 and ET1 every 20 ms (J1939-71 layouts)."""
    eec1 = bytes([0xFF, 0xFF, 0xFF, *(1500 * 8).to_bytes(2, "little"), 0xFF, 0xFF, 0xFF])
    et1 = bytes([90 + 40, *[0xFF] * 7])
    while True:
        for can_id, data in ((0x0CF00400, eec1), (0x18FEEE00, et1)):
            bus.send(can.Message(arbitration_id=can_id, data=data, is_extended_id=True))
        await asyncio.sleep(0.02)


def paths(rows: list[tuple[int, str]]) -> set[str]:
    return {path for _, path in rows}


def outbox_signals(path: Path) -> list[tuple[int, str]]:
    """(seq, path) of every signal record in a closed outbox file (the agent holds it
    exclusively while it runs), in sequence order."""
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT seq, body FROM records ORDER BY seq").fetchall()
    finally:
        db.close()
    decoded = [(seq, decode_record(body)) for seq, body in rows]
    return [(seq, r.path) for seq, r in decoded if isinstance(r, SignalValue)]


async def test_the_running_agent_polls_and_keeps_the_new_lists(
    tmp_path: Path, channel: str
) -> None:
    settings = agent_settings(tmp_path, channel)
    agent_bus = can.Bus(interface="virtual", channel=channel)
    engine_bus = can.Bus(interface="virtual", channel=channel)
    agent = Agent(settings, can_bus=agent_bus)
    stop = asyncio.Event()

    def counter(name: str) -> int:
        return agent.counters().get(name, 0)

    try:
        async with ecu(channel), running(broadcast_j1939(engine_bus)):
            agent_run = asyncio.create_task(agent.run(stop))
            await until(lambda: counter("obd.responses") > 20 and counter("capture.appended") > 40)
            assert agent.remote_config is not None
            document: dict[str, Any] = {
                "can": {"obd": {"pids": [0x0C, 0x2F]}, "signals": [ENGINE_SPEED]}
            }
            result = await agent.remote_config.on_desired(ConfigDocument(1, document))
            assert result is not None
            assert result.applied == ("can.obd.pids=[12, 47]", f"can.signals=['{ENGINE_SPEED}']")
            answered = counter("obd.responses")
            await until(lambda: counter("obd.responses") > answered + 40)  # 20 cycles or more
            stop.set()
            await asyncio.wait_for(agent_run, 10)
    finally:
        agent_bus.shutdown()
        engine_bus.shutdown()
    assert counter("config.applied") == 1
    rows = await asyncio.to_thread(outbox_signals, settings.outbox.path)
    # The first fuel level was polled with the new list, so after the selection changed too
    # (one live setter takes both, before any later frame is decoded).
    first = next(seq for seq, p in rows if p == OBD_FUEL)
    before = [p for seq, p in rows if seq < first]
    after = [p for seq, p in rows if seq > first]
    assert set(before) == {VIN, OBD_RPM, OBD_SPEED, ENGINE_SPEED, COOLANT}
    assert set(after) == {OBD_RPM, OBD_FUEL, ENGINE_SPEED}  # speed and coolant stopped
    assert min(after.count(p) for p in (OBD_RPM, OBD_FUEL, ENGINE_SPEED)) >= 10
