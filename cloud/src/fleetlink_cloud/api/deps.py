"""What route handlers receive: the API context (store, bus, settings, clock) and the caller.

``create_app`` puts one ``ApiContext`` on ``app.state.ctx``; handlers take it as ``ctx: Ctx``
instead of reaching for globals, so a test builds an app around any store and a fixed clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from fleetlink_cloud.bus import EventBus
from fleetlink_cloud.commands import CommandService
from fleetlink_cloud.config import ApiSettings
from fleetlink_cloud.configs import ConfigService
from fleetlink_cloud.store.base import Scope, Store

Clock = Callable[[], int]
"""The cloud's wall clock in ns since the Unix epoch (``time.time_ns``; fixed in tests)."""


@dataclass(slots=True)
class ApiCounters:
    """Counted rejections and drops, for health output and tests."""

    unauthenticated: int = 0  # 401: no, malformed, unknown or revoked token
    forbidden: int = 0  # 403: a valid token without the scope
    audit_failures: int = 0  # an audit row the store refused (the write itself went through)
    stream_dropped: int = 0  # events a slow WebSocket client lost (oldest first)


@dataclass(slots=True)
class ApiContext:
    store: Store
    bus: EventBus
    settings: ApiSettings
    clock: Clock = time.time_ns
    counters: ApiCounters = field(default_factory=ApiCounters)


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: the token's id, name and scope."""

    token_id: str
    name: str
    scope: Scope


def context(conn: HTTPConnection) -> ApiContext:
    """The app's context (HTTP requests and WebSockets alike)."""
    ctx: ApiContext = conn.app.state.ctx
    return ctx


Ctx = Annotated[ApiContext, Depends(context)]


def command_service(conn: HTTPConnection) -> CommandService:
    """The app's command service (``create_app`` makes one without MQTT if none is given)."""
    service: CommandService = conn.app.state.commands
    return service


Commands = Annotated[CommandService, Depends(command_service)]


def config_service(conn: HTTPConnection) -> ConfigService:
    """The app's configuration service (the command service's, unless one was given)."""
    service: ConfigService = conn.app.state.configs
    return service


Configs = Annotated[ConfigService, Depends(config_service)]
