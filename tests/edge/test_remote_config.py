"""Remote configuration on the device: checking, applying live or at the next start, refusing,
keeping the document across restarts, and reporting it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from fleetlink_edge.app import AGENT_LOGGER, Agent
from fleetlink_edge.backoff import Backoff
from fleetlink_edge.config import EdgeSettings, SamplingSettings
from fleetlink_edge.config_report import ConfigReporter
from fleetlink_edge.errors import ConfigError, NotDelivered, PublishRejected, UplinkError
from fleetlink_edge.remote_config import (
    REMOTE_KEYS,
    Applied,
    ConfigRefused,
    RemoteConfig,
    Restored,
    config_file,
    effective,
    restore,
)
from fleetlink_protocols.messages import ConfigDocument, ReportedConfig, decode_reported_config
from tests.peers import free_port

LOCAL = EdgeSettings()
DOC: dict[str, Any] = {
    "sampling": {"position_interval_s": 5, "signal_interval_s": 2},
    "health": {"interval_s": 30},
    "uplink": {"batch_max_records": 50},
}


class Vehicle:
    """Live setters that record what the running agent was told."""

    def __init__(self, broken: str = "") -> None:
        self.calls: list[tuple[str, Any]] = []
        self.broken = broken

    def setters(self) -> dict[str, Callable[[EdgeSettings], Any]]:
        def setter(section: str) -> Callable[[EdgeSettings], Any]:
            async def apply(s: EdgeSettings) -> None:
                if section == self.broken:
                    raise RuntimeError("boom")
                self.calls.append((section, getattr(s, section)))

            return apply

        made = {name: setter(name) for name in ("sampling", "health", "log", "outbox", "can")}
        return {k: made[k.split(".")[0]] for k, how in REMOTE_KEYS.items() if how == "live"}


def remote(
    tmp_path: Path, vehicle: Vehicle, start: Restored | None = None
) -> tuple[RemoteConfig, list[ReportedConfig]]:
    reports: list[ReportedConfig] = []
    config = RemoteConfig(
        LOCAL,
        start or Restored(Applied(), LOCAL),
        tmp_path / "outbox.config.json",
        live=vehicle.setters(),
        report=reports.append,
    )
    return config, reports


def test_only_remote_keys_of_the_right_type_pass() -> None:
    with pytest.raises(ConfigError) as info:
        effective(
            LOCAL,
            {
                "gps": {"rate_hz": 5},
                "sampling": {"speed": 1, "position_interval_s": -1},
                "uplink": {"host": "evil.example"},
                "health": 30,
            },
        )
    problems = str(info.value).split("; ")
    assert problems == [
        "gps: no such settings section",
        "sampling.speed: no such setting",
        "uplink.host: cannot be set remotely",
        "health: must be a map of settings",
    ]
    with pytest.raises(ConfigError, match=r"position_interval_s: Input should be greater"):
        effective(LOCAL, {"sampling": {"position_interval_s": -1}})
    with pytest.raises(ConfigError, match=r"health\.interval_s: Input should be a valid number"):
        effective(LOCAL, {"health": {"interval_s": "30"}})
    with pytest.raises(ConfigError, match=r"log\.level: Input should be"):
        effective(LOCAL, {"log": {"level": "loud"}})
    got = effective(LOCAL, DOC)
    assert (got.sampling.position_interval_s, got.uplink.batch_max_records) == (5.0, 50)
    assert got.sampling.dtc_clear_after_s == LOCAL.sampling.dtc_clear_after_s


async def test_live_keys_apply_at_once_and_the_rest_waits_for_a_restart(tmp_path: Path) -> None:
    vehicle = Vehicle()
    config, reports = remote(tmp_path, vehicle)
    result = await config.on_desired(ConfigDocument(3, DOC))
    assert result is not None
    assert result.describe() == (
        "applied sampling.position_interval_s=5.0, sampling.signal_interval_s=2.0, "
        "health.interval_s=30.0; pending a restart: uplink.batch_max_records=50"
    )
    assert [section for section, _ in vehicle.calls] == ["sampling", "health"]  # one call each
    sampling = vehicle.calls[0][1]
    assert isinstance(sampling, SamplingSettings)
    assert (sampling.position_interval_s, sampling.signal_interval_s) == (5.0, 2.0)
    assert reports[-1] == ReportedConfig(3, DOC, None, ("uplink.batch_max_records",), None)
    kept = json.loads((tmp_path / "outbox.config.json").read_text())
    assert kept == {"version": 3, "document": DOC}
    assert config.applied == Applied(3, DOC)


async def test_a_key_left_out_takes_its_local_value_again(tmp_path: Path) -> None:
    vehicle = Vehicle()
    config, reports = remote(tmp_path, vehicle)
    await config.on_desired(ConfigDocument(1, DOC))
    vehicle.calls.clear()
    result = await config.on_desired(ConfigDocument(2, {"health": {"interval_s": 30}}))
    assert result is not None
    assert result.applied == ("sampling.position_interval_s=1.0", "sampling.signal_interval_s=1.0")
    assert result.pending == ()  # uplink.batch_max_records is back at what runs
    assert vehicle.calls == [("sampling", LOCAL.sampling)]
    assert reports[-1].pending_restart == ()


async def test_an_invalid_document_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    vehicle = Vehicle()
    config, reports = remote(tmp_path, vehicle)
    await config.on_desired(ConfigDocument(1, DOC))
    vehicle.calls.clear()
    bad = {"sampling": {"position_interval_s": -1}}
    assert await config.on_desired(ConfigDocument(2, bad)) is None
    assert vehicle.calls == []
    assert config.applied == Applied(1, DOC)
    assert json.loads((tmp_path / "outbox.config.json").read_text())["version"] == 1
    report = reports[-1]
    assert (report.version, report.values, report.refused_version) == (1, DOC, 2)
    assert report.error is not None
    assert report.error.startswith("sampling.position_interval_s: Input should be greater")
    assert report.pending_restart == ("uplink.batch_max_records",)  # still what version 1 wants
    # The next good version clears the refusal.
    await config.on_desired(ConfigDocument(3, DOC | {"health": {"interval_s": 10}}))
    assert (reports[-1].version, reports[-1].error, reports[-1].refused_version) == (3, None, None)
    assert config.counters["refused"] == 1


async def test_versions_only_move_forward(tmp_path: Path) -> None:
    vehicle = Vehicle()
    config, reports = remote(tmp_path, vehicle)
    await config.on_desired(ConfigDocument(5, DOC))
    assert await config.on_desired(ConfigDocument(4, {})) is None
    assert reports[-1].error == "version 4 is older than the applied 5"
    assert reports[-1].refused_version == 4
    calls = len(vehicle.calls)
    again = await config.on_desired(ConfigDocument(5, DOC))  # retained, after a reconnect
    assert again is not None
    assert (config.counters["unchanged"], len(vehicle.calls)) == (1, calls)
    assert reports[-1] == ReportedConfig(5, DOC, "version 4 is older than the applied 5",
                                         ("uplink.batch_max_records",), 4)  # fmt: skip
    # The same version with another document: the cloud's document holds.
    other = await config.on_desired(ConfigDocument(5, {"log": {"level": "debug"}}))
    assert other is not None
    assert config.applied == Applied(5, {"log": {"level": "debug"}})


async def test_set_config_patches_the_applied_document(tmp_path: Path) -> None:
    vehicle = Vehicle()
    config, _ = remote(tmp_path, vehicle)
    await config.on_desired(ConfigDocument(2, DOC))
    version, document, wanted = config.plan_patch({"health": {"interval_s": 9}}, 3)
    assert (version, wanted.health.interval_s) == (3, 9.0)
    assert document == DOC | {"health": {"interval_s": 9}}
    result = await config.apply(version, document, wanted)
    assert result.describe() == (
        "applied health.interval_s=9.0; pending a restart: uplink.batch_max_records=50"
    )
    with pytest.raises(ConfigRefused, match="version 1 is older than the applied 3"):
        config.plan_patch({}, 1)
    with pytest.raises(ConfigRefused, match=r"uplink\.host: cannot be set remotely"):
        config.plan_patch({"uplink": {"host": "x"}}, None)
    # The dn/config document of version 3 arrives after the command: nothing new, same story.
    assert await config.on_desired(ConfigDocument(3, document)) == result


async def test_a_failing_live_setter_leaves_its_keys_for_the_restart(tmp_path: Path) -> None:
    vehicle = Vehicle(broken="health")
    config, reports = remote(tmp_path, vehicle)
    result = await config.on_desired(ConfigDocument(1, DOC))
    assert result is not None
    assert result.failed == ("health.interval_s (RuntimeError('boom'))",)
    assert "health.interval_s" not in ",".join(result.applied)
    assert reports[-1].pending_restart == ("health.interval_s", "uplink.batch_max_records")
    assert config.counters["live_failures"] == 1


async def test_a_document_that_cannot_be_kept_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    reports: list[ReportedConfig] = []
    vehicle = Vehicle()
    config = RemoteConfig(
        LOCAL, Restored(Applied(), LOCAL), blocker / "c.json", live=vehicle.setters(),
        report=reports.append,
    )  # fmt: skip
    assert await config.on_desired(ConfigDocument(1, DOC)) is None
    assert vehicle.calls == []
    assert reports[-1].refused_version == 1
    assert reports[-1].error is not None
    assert reports[-1].error.startswith("cannot keep it in")


def test_every_live_key_needs_a_setter(tmp_path: Path) -> None:
    setters = Vehicle().setters()
    del setters["outbox.max_bytes"]
    with pytest.raises(ValueError, match=r"no live setter for outbox\.max_bytes"):
        RemoteConfig(LOCAL, Restored(Applied(), LOCAL), tmp_path / "c.json", live=setters,
                     report=lambda _: None)  # fmt: skip


async def test_restore_merges_the_kept_document_or_ignores_a_bad_one(tmp_path: Path) -> None:
    path = tmp_path / "outbox.config.json"
    assert await restore(LOCAL, path) == Restored(Applied(), LOCAL)
    config, _ = remote(tmp_path, Vehicle())
    await config.on_desired(ConfigDocument(4, DOC))
    start = await restore(LOCAL, path)
    assert start.applied == Applied(4, DOC)
    assert start.settings == effective(LOCAL, DOC)
    assert start.refused is None
    # After a restart nothing is pending: the whole document is in effect.
    again, reports = remote(tmp_path, Vehicle(), start)
    again.report()
    assert reports == [ReportedConfig(4, DOC)]
    for junk in ("{not json", "[1, 2]", '{"version": -1, "document": {}}'):
        path.write_text(junk)
        assert await restore(LOCAL, path) == Restored(Applied(), LOCAL)
    path.write_text(json.dumps({"version": 6, "document": {"uplink": {"host": "x"}}}))
    refused = await restore(LOCAL, path)
    assert (refused.applied, refused.settings) == (Applied(), LOCAL)
    assert refused.refused is not None
    assert refused.refused.version == 6


# -- the reporter -------------------------------------------------------------------------------


class FakeLink:
    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.published: list[tuple[str, bytes, bool]] = []
        self.failures: list[Exception] = []

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        require_subscriber: bool = False,
    ) -> None:
        assert (qos, require_subscriber) == (1, True)
        await asyncio.sleep(0)
        if self.failures:
            raise self.failures.pop(0)
        self.published.append((topic, payload, retain))


@contextlib.asynccontextmanager
async def running(coro: Any) -> AsyncIterator[None]:
    task = asyncio.create_task(coro)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.01)


async def test_the_reporter_sends_only_the_newest_report_retained() -> None:
    link = FakeLink()
    reporter = ConfigReporter(
        link, "fleet/veh-1/config", Backoff(0.01, 0.02, lambda: 0.5), require_subscriber=True
    )
    async with running(reporter.run()):
        reporter.offer(ReportedConfig(1, {}))
        reporter.offer(ReportedConfig(2, {}))
        await asyncio.sleep(0.05)
        assert link.published == []  # offline: it waits
        link.failures = [UplinkError("lost"), NotDelivered("no subscriber")]
        link.connected.set()
        await until(lambda: not reporter.pending)
        reporter.offer(ReportedConfig(3, {}))
        link.failures = [PublishRejected("not authorized")]
        await until(lambda: not reporter.pending)
    assert [(t, decode_reported_config(p).version, r) for t, p, r in link.published] == [
        ("fleet/veh-1/config", 2, True)
    ]
    counters = reporter.counters
    assert (counters["replaced"], counters["retries"], counters["refused"]) == (1, 2, 1)


# -- the agent keeps its configuration across restarts ----------------------------------------


def offline_agent_settings(tmp_path: Path) -> EdgeSettings:
    return EdgeSettings.model_validate(
        {
            "device": {"id": "veh-restart"},
            "gnss": {"source": "none"},
            "outbox": {"path": tmp_path / "outbox.sqlite3"},
            "uplink": {"port": free_port(), "backoff_initial_s": 0.05, "backoff_max_s": 0.1},
        }
    )


async def test_the_kept_document_holds_from_the_start_before_any_connection(
    tmp_path: Path,
) -> None:
    local = offline_agent_settings(tmp_path)
    document = {"sampling": {"position_interval_s": 7}, "log": {"level": "warning"}}
    config_file(local).write_text(json.dumps({"version": 9, "document": document}))
    agent_logger = logging.getLogger(AGENT_LOGGER)
    before = agent_logger.level
    agent = Agent(local)
    stop = asyncio.Event()
    async with running(agent.run(stop)):
        await until(lambda: agent.counters().get("uplink.connect_failures", 0) > 0)
        assert agent.settings.sampling.position_interval_s == 7.0
        assert agent_logger.level == logging.WARNING
        assert agent.counters()["config_report.offered"] == 1  # its state, sent once connected
        stop.set()
    assert agent_logger.level == before
    assert config_file(local) == tmp_path / "outbox.config.json"
