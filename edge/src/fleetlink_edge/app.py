"""The composition root: builds the agent from settings and runs its loops until told to stop.

Two loops meet only at the outbox: capture (sources -> decode -> sample -> outbox) and uplink
(outbox -> MQTT -> ack). Downlink commands arrive on the uplink's connection (``dn/#``) and are
answered through an in-memory ack queue on the same connection; so does the desired
configuration, which ``RemoteConfig`` applies through the setters made here and reports on
``config``. The configuration kept from the last run is merged into the settings before
anything is built, so it holds before the agent connects. Shutdown order keeps every
accepted record: stop the sources and the command handler, flush the capture queue into the
outbox, send the acks still queued, let the uplink settle its in-flight publishes, close the
outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import asdict
from typing import Any, Protocol

from fleetlink_edge import __version__
from fleetlink_edge.backoff import Backoff
from fleetlink_edge.capture import Capture
from fleetlink_edge.commands import AckQueue, CommandHandler, DtcReader
from fleetlink_edge.config import CanSettings, EdgeSettings
from fleetlink_edge.config_report import ConfigReporter
from fleetlink_edge.credentials import CredentialFile, credentials_file
from fleetlink_edge.driver_socket import DriverSocket, DriverSocketError, socket_path
from fleetlink_edge.errors import ConfigError
from fleetlink_edge.health import Heartbeats, SystemdNotifier, collect_counters
from fleetlink_edge.jobs import JobBoard, jobs_file
from fleetlink_edge.outbox import Outbox
from fleetlink_edge.remote_config import (
    REMOTE_KEYS,
    Applied,
    LiveSetter,
    RemoteConfig,
    Restored,
    config_file,
    restore,
)
from fleetlink_edge.sample import Sampler
from fleetlink_edge.uplink import Uplink
from fleetlink_protocols.catalog import AliasTable
from fleetlink_protocols.messages import Birth
from fleetlink_protocols.records import Health, Position, Record
from fleetlink_protocols.topics import Topics

log = logging.getLogger(__name__)
AGENT_LOGGER = "fleetlink_edge"  # the parent of every agent logger: what [log] level sets

# GNSS source plugins: config name -> "module:class", imported only when chosen.
GNSS_SOURCES: dict[str, str] = {
    "serial": "fleetlink_edge.sources.nmea_serial:NmeaSerialSource",
    "gpsd": "fleetlink_edge.sources.gpsd:GpsdSource",
}


class GnssSource(Protocol):
    counters: dict[str, int]

    def positions(self) -> AsyncIterator[Position]: ...


def load_gnss_source(settings: EdgeSettings) -> GnssSource | None:
    name = settings.gnss.source
    if name == "none":
        return None
    module_name, _, attr = GNSS_SOURCES[name].partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except ImportError as exc:
        raise ConfigError(f"GNSS source {name!r} cannot be loaded: {exc}") from exc
    section = settings.gnss.serial if name == "serial" else settings.gnss.gpsd
    source: GnssSource = cls(section)
    return source


def set_log_level(level: str | None) -> None:
    """The agent loggers' level; None: inherit the root logger's (the command line's)."""
    logging.getLogger(AGENT_LOGGER).setLevel(logging.NOTSET if level is None else level.upper())


def signal_paths(settings: EdgeSettings) -> list[str]:
    """Catalog paths the configured DBC mappings produce (extras get declared aliases)."""
    return sorted({path for dbc in settings.can.dbc for path in dbc.signals.values()})


class Agent:
    """One agent process. ``can_bus`` lets a simulator share python-can's in-process virtual bus.

    ``settings`` are the local ones until ``run`` starts, then what the agent runs with: the
    local settings with the kept remote configuration merged in.
    """

    def __init__(
        self,
        settings: EdgeSettings,
        *,
        can_bus: object | None = None,
        notifier: SystemdNotifier | None = None,
        watchdog_interval_s: float | None = None,
        now_wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.settings = settings
        self._local = settings
        self.boot_id = secrets.randbits(63)
        self._can_bus = can_bus
        self._notifier = notifier or SystemdNotifier(None)
        self._watchdog_s = watchdog_interval_s
        self._now = now_wall_ns
        self._counter_sources: dict[str, Callable[[], dict[str, int]]] = {}
        self._heartbeats = Heartbeats(max_silence_s=30.0)
        self._health_interval_s = settings.health.interval_s
        self._health_changed = asyncio.Event()
        self._read_dtcs: DtcReader | None = None  # the OBD poller's, once it exists
        self._jobs: JobBoard | None = None  # once it exists, unless jobs.enabled is off
        # The CAN decoder's and OBD poller's ways to take can.* remote keys, once they exist.
        self._can_live: dict[str, Callable[[CanSettings], None]] = {}
        self.remote_config: RemoteConfig | None = None  # while running, unless commands are off

    def counters(self) -> dict[str, int]:
        """Every component's counters, flattened as ``component.name``."""
        return collect_counters(self._counter_sources)

    def _count(self, name: str, read: Callable[[], dict[str, int]]) -> None:
        self._counter_sources[name] = read

    def set_health_interval(self, interval_s: float) -> None:
        """Change the Health record period while running (remote health.interval_s)."""
        self._health_interval_s = interval_s
        self._health_changed.set()

    async def _start(self, stack: contextlib.AsyncExitStack) -> Restored:
        """Merge in the configuration kept from the last run; set the log level (restored when
        the agent stops)."""
        local = self._local
        if local.commands.enabled:
            start = await restore(local, config_file(local))
        else:  # remote configuration rides on the downlink
            start = Restored(Applied(), local)
        self.settings = start.settings
        self._health_interval_s = start.settings.health.interval_s
        agent_logger = logging.getLogger(AGENT_LOGGER)
        stack.callback(agent_logger.setLevel, agent_logger.level)
        set_log_level(start.settings.log.level)
        return start

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set or a loop fails (then raise, so systemd restarts us)."""
        async with contextlib.AsyncExitStack() as stack:
            start = await self._start(stack)
            s = self.settings
            outbox = await stack.enter_async_context(Outbox(s.outbox, boot_id=self.boot_id))
            await self._job_board(stack, outbox)
            sampler = Sampler(s.sampling)
            capture = Capture(
                sampler,
                outbox,
                now_wall_ns=self._now,
                on_commit=lambda: self._heartbeats.beat("capture", time.monotonic_ns()),
            )
            credentials = CredentialFile(credentials_file(s), s.uplink.password)
            await credentials.load()  # before the first connect: it offers what was rotated
            uplink = self._uplink(outbox, credentials)
            self._count("credentials", lambda: credentials.counters)
            self._count("outbox", lambda: dict(outbox.counters))
            self._count("sampler", lambda: sampler.counters)
            self._count("capture", lambda: capture.counters)
            self._count("uplink", lambda: {k: int(v) for k, v in asdict(uplink.counters).items()})
            producers = await self._producers(stack, capture)
            self._heartbeats.register("capture", time.monotonic_ns())
            core = {
                "capture": asyncio.create_task(capture.run(), name="capture"),
                "uplink": asyncio.create_task(uplink.run(), name="uplink"),
            }
            acks, handlers = self._downlink(uplink, start, self._live_setters(sampler, outbox))
            sources = [asyncio.create_task(c, name=n) for n, c in producers.items()]
            health = asyncio.create_task(self._health(capture), name="health")
            log.info(
                "agent %s started: device %s, boot %d, %s",
                __version__,
                s.device.id,
                self.boot_id,
                ", ".join(producers) or "no sources",
            )
            self._notifier.ready(f"device {s.device.id} boot {self.boot_id}")
            failure = await self._wait(stop, [*core.values(), *handlers, *sources, health])
            self._notifier.stopping()
            await _cancel([*sources, *handlers])
            await _cancel([core["capture"]])
            if acks is not None:
                await acks.flush(s.uplink.shutdown_drain_s)
            await _cancel([core["uplink"], health])
            log.info("agent stopped; counters: %s", self.counters())
            if failure is not None:
                raise failure

    def _uplink(self, outbox: Outbox, credentials: CredentialFile) -> Uplink:
        s = self.settings
        birth = Birth(
            device_id=s.device.id,
            boot_id=self.boot_id,
            agent_version=__version__,
            started_wall_ns=self._now(),
            aliases=AliasTable.for_paths(signal_paths(s)),
        )
        topics = Topics(s.uplink.topic_prefix, s.device.id)
        subscribe = [topics.downlink_filter] if s.commands.enabled else []
        return Uplink(
            s.uplink, s.device.id, outbox, birth, subscribe=subscribe, credentials=credentials
        )

    def _live_setters(self, sampler: Sampler, outbox: Outbox) -> dict[str, LiveSetter]:
        """How the running agent takes each live remote key (``REMOTE_KEYS``)."""

        async def sampling(s: EdgeSettings) -> None:
            sampler.reconfigure(s.sampling)

        async def health(s: EdgeSettings) -> None:
            self.set_health_interval(s.health.interval_s)

        async def log_level(s: EdgeSettings) -> None:
            set_log_level(s.log.level)

        async def budget(s: EdgeSettings) -> None:
            await outbox.set_budget(s.outbox.max_bytes)

        async def can_lists(s: EdgeSettings) -> None:
            for take in self._can_live.values():  # none with CAN off: nothing to change
                take(s.can)

        by_section = {
            "sampling": sampling,
            "health": health,
            "log": log_level,
            "outbox": budget,
            "can": can_lists,
        }
        return {
            key: by_section[key.partition(".")[0]]
            for key, how in REMOTE_KEYS.items()
            if how == "live"
        }

    def _downlink(
        self, uplink: Uplink, start: Restored, live: dict[str, LiveSetter]
    ) -> tuple[AckQueue | None, list[asyncio.Task[None]]]:
        """The command handler on the uplink's messages, its ack queue and the configuration
        reporter, as running tasks."""
        s = self.settings
        if not s.commands.enabled:
            return None, []
        acks = AckQueue(
            uplink.client,
            uplink.topics.ack,
            s.commands.ack_queue_size,
            self._retry(),
            require_subscriber=s.uplink.require_subscriber,
        )
        config, reporter = self._remote_config(uplink, start, live)
        started_s = time.monotonic()
        handler = CommandHandler(
            s.commands,
            uplink.topics,
            acks,
            agent_version=__version__,
            now_wall_ns=self._now,
            uptime_s=lambda: time.monotonic() - started_s,
            read_dtcs=self._read_dtcs,
            config=config,
            # Without a user name there is no password to rotate (the broker allows anonymous).
            credentials=uplink.credentials if s.uplink.username is not None else None,
            reconnect=uplink.reconnect,
            jobs=self._jobs,
        )
        self._count("commands", lambda: handler.counters)
        self._count("acks", lambda: acks.counters)
        self._count("config", lambda: config.counters)
        self._count("config_report", lambda: reporter.counters)
        return acks, [
            asyncio.create_task(handler.run(uplink.client.messages()), name="commands"),
            asyncio.create_task(acks.run(), name="acks"),
            asyncio.create_task(reporter.run(), name="config-report"),
        ]

    def _retry(self) -> Backoff:
        u = self.settings.uplink
        return Backoff(u.backoff_initial_s, u.backoff_max_s, random.random)

    def _remote_config(
        self, uplink: Uplink, start: Restored, live: dict[str, LiveSetter]
    ) -> tuple[RemoteConfig, ConfigReporter]:
        """Remote configuration from ``start`` on, and the reporter of its outcomes."""
        reporter = ConfigReporter(
            uplink.client,
            uplink.topics.config,
            self._retry(),
            require_subscriber=self.settings.uplink.require_subscriber,
        )
        local = self._local
        config = RemoteConfig(local, start, config_file(local), live=live, report=reporter.offer)
        config.report()  # what this start runs: the cloud learns a restart applied the pending
        self.remote_config = config
        return config, reporter

    async def _job_board(self, stack: contextlib.AsyncExitStack, outbox: Outbox) -> None:
        """The job board (answers go to ``outbox``) and the driver's socket, unless jobs are off.
        A socket that cannot be served is logged, and telemetry goes on without it."""
        s = self.settings
        if not s.jobs.enabled:
            return
        board = JobBoard(s.jobs, jobs_file(s), outbox, now_wall_ns=self._now)
        await board.load()
        self._jobs = board
        self._count("jobs", lambda: board.counters)
        try:
            driver = await stack.enter_async_context(DriverSocket(board, socket_path(s)))
        except DriverSocketError as exc:
            log.error("no driver interface: %s", exc)
            return
        self._count("driver", lambda: driver.counters)

    async def _producers(
        self, stack: contextlib.AsyncExitStack, capture: Capture
    ) -> dict[str, Coroutine[Any, Any, None]]:
        s = self.settings
        producers: dict[str, Coroutine[Any, Any, None]] = {}
        gnss = load_gnss_source(s)
        if gnss is not None:
            self._count("gnss", lambda: gnss.counters)
            producers["gnss"] = _pump(gnss.positions(), capture)
        if s.can.enabled:
            from fleetlink_edge.decode.can import CanDecoder
            from fleetlink_edge.sources.can import CanPort
            from fleetlink_edge.sources.obd import ObdPoller

            port = await stack.enter_async_context(CanPort(s.can, bus=self._can_bus))  # type: ignore[arg-type]
            self._count("can", lambda: port.counters)
            decoder = CanDecoder.from_settings(s.can)
            self._can_live["decoder"] = lambda c: decoder.select(c.signals)
            if decoder.j1939 is not None or decoder.dbc:
                self._count("can_decode", lambda: decoder.counters)
                producers["can"] = _pump_frames(port, decoder, capture, s.can.queue_size)
            if s.can.obd.enabled:
                poller = ObdPoller(port, s.can.obd)
                self._count("obd", lambda: poller.counters)
                self._read_dtcs = poller.request_dtc_read
                self._can_live["obd"] = lambda c: poller.reconfigure(c.obd)
                producers["obd"] = _pump(poller.records(), capture)
        return producers

    async def _health(self, capture: Capture) -> None:
        """Periodic Health record; watchdog pings only while the capture loop is beating."""
        next_health = time.monotonic() + self._health_interval_s
        while True:
            interval_s = self._health_interval_s
            await self._nap(min(interval_s, self._watchdog_s or interval_s))
            if self._health_interval_s != interval_s:  # set_config: the new period starts now
                next_health = time.monotonic() + self._health_interval_s
            stale = self._heartbeats.stale(time.monotonic_ns())
            if stale:
                log.error("loops not beating: %s; withholding the watchdog ping", ", ".join(stale))
            elif self._watchdog_s is not None:
                self._notifier.watchdog()
            if time.monotonic() >= next_health:
                next_health += self._health_interval_s
                capture.submit(Health(ts_wall_ns=self._now(), counters=self.counters()))

    async def _nap(self, delay_s: float) -> None:
        """Sleep ``delay_s``, or less if the health interval changes meanwhile."""
        self._health_changed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay_s):
                await self._health_changed.wait()

    @staticmethod
    async def _wait(stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> BaseException | None:
        stopper = asyncio.create_task(stop.wait(), name="stop")
        done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        for task in done:
            if task is not stopper and not task.cancelled() and task.exception() is not None:
                log.error("loop %s failed: %r", task.get_name(), task.exception())
                return task.exception()
            if task is not stopper:
                log.error("loop %s ended unexpectedly", task.get_name())
                return RuntimeError(f"loop {task.get_name()} ended")
        return None


async def _pump(records: AsyncIterator[Record], capture: Capture) -> None:
    async for record in records:
        capture.submit(record)


async def _pump_frames(port: Any, decoder: Any, capture: Capture, maxsize: int) -> None:
    """CAN frames -> decoder -> capture; drains what is queued in one go to stay cheap per frame."""
    queue = port.listen(maxsize=maxsize)
    try:
        while True:
            frame = await queue.get()
            while frame is not None:
                for record in decoder.feed(frame):
                    capture.submit(record)
                frame = queue.get_nowait()
    finally:
        queue.close()


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for task, result in zip(tasks, results, strict=True):
        if isinstance(result, Exception):
            log.error("loop %s failed while stopping: %r", task.get_name(), result)
