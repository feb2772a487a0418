"""What the store-administration commands (``devices``, ``tokens``) share: options and a runner."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fleetlink_cloud.config import CloudSettings, load_settings
from fleetlink_cloud.errors import CloudError
from fleetlink_cloud.store import Store, open_store

Work = Callable[[Store, CloudSettings], Awaitable[int]]


def add_store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, help="cloud config file (TOML)")
    parser.add_argument("--database", help="database URL (overrides the config)")


def settings_from(args: argparse.Namespace) -> CloudSettings:
    overrides: dict[str, Any] = {}
    if args.database:
        overrides["database"] = {"url": args.database}
    return load_settings(args.config, **overrides)


def run_with_store(args: argparse.Namespace, work: Work) -> int:
    """Open the configured store and run ``work``; a failure is one line on stderr, exit 1."""

    async def main() -> int:
        settings = settings_from(args)
        async with open_store(settings.database.url) as store:
            return await work(store, settings)

    try:
        return asyncio.run(main())
    except (CloudError, OSError) as exc:  # OSError: an unwritable passwd or ACL file
        print(f"fleetlink-cloud: {exc}", file=sys.stderr)
        return 1


async def audit_cli(
    store: Store, command: str, detail: str, *, now_wall_ns: int, status: int
) -> None:
    """The audit row of a write made from the command line (actor ``cli``)."""
    await store.add_audit(
        ts_wall_ns=now_wall_ns,
        actor="cli",
        method="CLI",
        path=command,
        status=status,
        detail=detail,
    )
