"""The composition root: builds the cloud service from settings and runs it until told to stop.

``serve`` runs everything one machine needs: the API (uvicorn), one ingest worker, the store ->
bus tail that feeds WebSocket clients, command downlink, credential rotation, webhooks and the
live dispatcher (assignment, offers, ETAs, geofences, reallocation; its ``JobService`` is the
API's, and batch plans are applied through it). With
``broker.embedded`` it first starts an in-process MQTT broker (amqtt, MQTT 3.1.1), so nothing
else has to be installed. ``ingest`` runs one more ingest worker against the configured broker;
N of them share the load through an MQTT 5 shared subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import uvicorn

from fleetlink_cloud.broker import EmbeddedBroker
from fleetlink_cloud.bus import EventBus
from fleetlink_cloud.commands import CommandService
from fleetlink_cloud.config import BrokerSettings, CloudSettings
from fleetlink_cloud.credentials import BrokerPasswords, CredentialRotation
from fleetlink_cloud.dispatch.model import RouteStop
from fleetlink_cloud.dispatch.routing import builtin_model
from fleetlink_cloud.dispatcher import Dispatcher
from fleetlink_cloud.errors import ConfigError
from fleetlink_cloud.ingest.consumer import MqttConsumer
from fleetlink_cloud.ingest.pipeline import Pipeline
from fleetlink_cloud.ingest.worker import IngestWorker
from fleetlink_cloud.jobs import JobService
from fleetlink_cloud.planning import Apply, Planner
from fleetlink_cloud.replan import ApplyResult
from fleetlink_cloud.store import open_store
from fleetlink_cloud.store.base import Store
from fleetlink_cloud.webhooks import WebhookDispatcher

log = logging.getLogger(__name__)

# Reconnect to the broker soon after an outage: vehicles hold their records until a member of
# the shared subscription is back (Mosquitto answers "No matching subscribers" until then).
BROKER_BACKOFF_S = (0.2, 5.0)
STREAM_POLL_S = 0.05  # store -> WebSocket: the poll interval bounds the added latency


@dataclass(frozen=True, slots=True)
class Running:
    """Where a started service can be reached (handed to ``on_ready``)."""

    api_url: str
    broker_host: str
    broker_port: int
    broker_embedded: bool
    database_url: str
    store: Store


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: this process stops through ``stop``."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(host: str, port: int) -> socket.socket:
    """The API's listening socket, bound here so that a taken port is a clear ConfigError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"API cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def client_id(settings: BrokerSettings, role: str, worker: str | None = None) -> str:
    """A stable MQTT client id per host and worker, so the persistent session survives restarts."""
    if settings.client_id:
        return settings.client_id if worker is None else f"{settings.client_id}-{worker}"
    suffix = worker if worker is not None else str(os.getpid())
    return f"fleetlink-{role}-{socket.gethostname()}-{suffix}"[:64]


@contextlib.asynccontextmanager
async def _broker(settings: BrokerSettings) -> AsyncIterator[tuple[BrokerSettings, bool]]:
    """The broker settings ingest uses: the embedded broker's address when it is embedded."""
    if not settings.embedded:
        yield settings, False
        return
    async with EmbeddedBroker(settings.host, settings.port) as broker:
        # amqtt speaks 3.1.1 only and has no shared subscriptions: one plain subscriber.
        yield (
            settings.model_copy(
                update={"host": broker.host, "port": broker.port, "protocol": "3.1.1"}
            ),
            True,
        )


def _consumer(settings: CloudSettings, broker: BrokerSettings, worker: str | None) -> MqttConsumer:
    return MqttConsumer(
        broker,
        client_id=client_id(broker, "ingest", worker),
        queue_size=settings.ingest.queue_size,
        backoff_s=BROKER_BACKOFF_S,
    )


async def _run_until(
    stop: asyncio.Event,
    work: dict[str, Coroutine[Any, Any, None]],
    server: _Server | None = None,
    grace_s: float = 10.0,
) -> None:
    """Run ``work`` until ``stop`` is set or a task ends (a failure is raised). The API server,
    if any, is asked to finish its requests first; the rest is cancelled."""
    tasks = {name: asyncio.create_task(coro, name=name) for name, coro in work.items()}
    stopper = asyncio.create_task(stop.wait(), name="stop")
    try:
        await asyncio.wait([stopper, *tasks.values()], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        api = tasks.pop("api", None)
        if server is not None and api is not None:
            server.should_exit = True
            await asyncio.wait([api], timeout=grace_s)
            api.cancel()
            tasks["api"] = api
        for task in tasks.values():
            task.cancel()
        results = await asyncio.gather(*tasks.values(), return_exceptions=True)
    for name, result in zip(tasks, results, strict=True):
        if isinstance(result, Exception):
            raise result
        if result is None and not stop.is_set() and not tasks[name].cancelled():
            log.error("%s ended on its own", name)


def _applier(dispatcher: Dispatcher) -> Apply:
    """The planner's hook onto the live dispatcher."""

    async def apply(routes: Mapping[str, Sequence[RouteStop]], reason: str) -> ApplyResult:
        return await dispatcher.apply_plan(routes, reason=reason)

    return apply


async def serve(
    settings: CloudSettings, stop: asyncio.Event, on_ready: Callable[[Running], None] | None = None
) -> None:
    """API + ingest + stream tail + downlink + webhooks + dispatch until ``stop`` is set."""
    from fleetlink_cloud.api.app import create_app
    from fleetlink_cloud.api.deps import ApiContext
    from fleetlink_cloud.api.tailer import StreamTailer

    async with contextlib.AsyncExitStack() as stack:
        broker, embedded = await stack.enter_async_context(_broker(settings.broker))
        store = await stack.enter_async_context(
            open_store(settings.database.url, pool_size=settings.database.pool_size)
        )
        bus = EventBus()
        consumer = _consumer(settings, broker, None)
        pipeline = Pipeline(store, settings.ingest, topic_prefix=broker.topic_prefix)
        worker = IngestWorker(consumer, pipeline, store, settings.ingest)
        commands = CommandService(store, consumer, prefix=broker.topic_prefix)
        rotation = CredentialRotation(
            store,
            commands,
            BrokerPasswords.from_settings(settings.broker),
            settle_s=settings.broker.reload_settle_s,
        )
        webhooks = await stack.enter_async_context(WebhookDispatcher(store, settings.webhooks))
        ctx = ApiContext(store=store, bus=bus, settings=settings.api)
        dispatcher = Dispatcher(store, commands, settings.dispatch)
        dispatching = settings.dispatch.enabled
        planner = Planner(
            store,
            settings=settings.dispatch.planning,
            router=builtin_model(settings.dispatch.router),
            apply=_applier(dispatcher) if dispatching else None,
            routes=dispatcher.current_routes if dispatching else None,
            faulted=dispatcher.faulted_vehicles if dispatching else None,
        )
        jobs = dispatcher.jobs if dispatching else JobService(store)
        app = create_app(ctx, commands=commands, jobs=jobs, planner=planner)
        api = settings.api
        server = _Server(
            uvicorn.Config(
                app, host=api.host, port=api.port, log_level="warning", lifespan="on", ws="auto"
            )
        )

        listener = _listen(api.host, api.port)
        stack.callback(listener.close)
        port = listener.getsockname()[1]
        running = Running(
            f"http://{api.host}:{port}",
            broker.host,
            broker.port,
            embedded,
            settings.database.url,
            store,
        )
        log.info("API on %s (docs %s/docs)", running.api_url, running.api_url)
        work = {
            "api": server.serve(sockets=[listener]),
            "ingest": worker.run(),
            "tail": StreamTailer(store, bus, poll_interval_s=STREAM_POLL_S).run(),
            "commands": commands.run(bus),
            "credentials": rotation.run(bus),
            "webhooks": webhooks.run(bus),
        }
        if dispatching:
            work["dispatch"] = dispatcher.run(bus)
        if on_ready is not None:
            on_ready(running)  # connections wait in the listen backlog until uvicorn accepts
        try:
            await _run_until(stop, work, server)
        finally:
            bus.close()


async def ingest(settings: CloudSettings, stop: asyncio.Event, worker_id: str) -> None:
    """One more ingest worker on the configured (non-embedded) broker, until ``stop``."""
    async with open_store(settings.database.url, pool_size=settings.database.pool_size) as store:
        consumer = _consumer(settings, settings.broker, worker_id)
        pipeline = Pipeline(store, settings.ingest, topic_prefix=settings.broker.topic_prefix)
        worker = IngestWorker(consumer, pipeline, store, settings.ingest)
        log.info("ingest worker %s on %s:%d", worker_id, settings.broker.host, settings.broker.port)
        await _run_until(stop, {"ingest": worker.run()})
