"""Storage: ``open_store(url)`` picks the backend from the URL scheme, importing its driver lazily.

async with open_store("sqlite:///fleetlink.sqlite3") as store: ...
async with open_store("postgresql://user@host:5432/fleetlink") as store: ...
"""

from __future__ import annotations

import importlib
from typing import cast

from fleetlink_cloud.errors import ConfigError
from fleetlink_cloud.store.base import (
    BadCursor,
    BootLedger,
    CommandRow,
    DeadLetter,
    Delivery,
    DesiredConfigRow,
    Device,
    DeviceConfig,
    DtcRow,
    DtcState,
    EventRow,
    EventsFor,
    HealthRow,
    IngestBatch,
    IngestResult,
    Ledger,
    Page,
    PositionRow,
    Presence,
    ReportedConfigRow,
    SeqGap,
    SignalRow,
    StaleVersion,
    Store,
    TokenRow,
    VehicleState,
    Webhook,
)

# Backends by URL scheme, as "module:class"; imported only when used, so the SQLite default
# never loads the PostgreSQL driver.
BACKENDS: dict[str, str] = {
    "sqlite": "fleetlink_cloud.store.sqlite:SqliteStore",
    "postgresql": "fleetlink_cloud.store.postgres:PostgresStore",
    "postgres": "fleetlink_cloud.store.postgres:PostgresStore",
}

__all__ = [
    "BACKENDS",
    "BadCursor",
    "BootLedger",
    "CommandRow",
    "DeadLetter",
    "Delivery",
    "DesiredConfigRow",
    "Device",
    "DeviceConfig",
    "DtcRow",
    "DtcState",
    "EventRow",
    "EventsFor",
    "HealthRow",
    "IngestBatch",
    "IngestResult",
    "Ledger",
    "Page",
    "PositionRow",
    "Presence",
    "ReportedConfigRow",
    "SeqGap",
    "SignalRow",
    "StaleVersion",
    "Store",
    "TokenRow",
    "VehicleState",
    "Webhook",
    "open_store",
]


def open_store(url: str, *, pool_size: int = 10) -> Store:
    """A store for ``url`` (not yet connected: use it as an async context manager).

    Raises ConfigError for an unknown scheme or a driver that is not installed.
    """
    scheme = url.split(":", 1)[0].lower()
    target = BACKENDS.get(scheme)
    if target is None:
        raise ConfigError(f"unknown database url scheme {scheme!r} (known: {sorted(BACKENDS)})")
    module_name, _, cls_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"database backend {scheme!r} is not available: {exc}") from exc
    factory = getattr(module, cls_name)
    return cast(Store, factory(url, pool_size=pool_size))
