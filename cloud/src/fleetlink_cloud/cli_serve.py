"""``fleetlink-cloud serve`` (API with ingest) and ``fleetlink-cloud ingest`` (one more worker)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from fleetlink_cloud.config import CloudSettings, load_settings
from fleetlink_cloud.errors import CloudError

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    serve = subparsers.add_parser("serve", help="run the API with ingest (embedded broker default)")
    serve.add_argument("-c", "--config", type=Path, help="cloud config file (TOML)")
    serve.add_argument("--database", help="database URL (overrides the config)")
    serve.add_argument("--host", help="API address (overrides the config)")
    serve.add_argument("--port", type=int, help="API port (overrides the config)")
    serve.set_defaults(func=_cmd_serve)

    ingest = subparsers.add_parser("ingest", help="run one more ingest worker")
    ingest.add_argument("-c", "--config", type=Path, help="cloud config file (TOML)")
    ingest.add_argument("--database", help="database URL (overrides the config)")
    ingest.add_argument("--worker-id", default="1", help="names the worker's MQTT session")
    ingest.set_defaults(func=_cmd_ingest)


def load(args: argparse.Namespace, **extra: Any) -> CloudSettings:
    overrides: dict[str, Any] = dict(extra)
    if getattr(args, "database", None):
        overrides["database"] = {"url": args.database}
    api = {
        k: v
        for k, v in (("host", args.__dict__.get("host")), ("port", args.__dict__.get("port")))
        if v is not None
    }
    if api:
        overrides["api"] = api
    return load_settings(args.config, **overrides)


def run_until_signalled(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> int:
    """Run ``main(stop)``; SIGTERM and SIGINT set ``stop``. A CloudError is one line, exit 1."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    try:
        asyncio.run(runner())
    except CloudError as exc:
        print(f"fleetlink-cloud: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from fleetlink_cloud.app import serve

    try:
        settings = load(args)
    except CloudError as exc:
        print(f"fleetlink-cloud: {exc}", file=sys.stderr)
        return 2
    return run_until_signalled(lambda stop: serve(settings, stop))


def _cmd_ingest(args: argparse.Namespace) -> int:
    from fleetlink_cloud.app import ingest

    try:
        settings = load(args)
    except CloudError as exc:
        print(f"fleetlink-cloud: {exc}", file=sys.stderr)
        return 2
    if settings.broker.embedded:
        print(
            "fleetlink-cloud: ingest workers need a shared broker: set [broker] embedded = false "
            "with its host and port (the embedded broker lives inside `serve`)",
            file=sys.stderr,
        )
        return 2
    return run_until_signalled(lambda stop: ingest(settings, stop, args.worker_id))
