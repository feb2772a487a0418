"""``fleetlink-cloud``: serve the API with ingest, run ingest workers, manage devices and tokens."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

log = logging.getLogger("fleetlink_cloud")

# Command groups living in their own modules: name -> module with ``register(subparsers)``.
COMMAND_MODULES: tuple[str, ...] = (
    "fleetlink_cloud.cli_serve",
    "fleetlink_cloud.cli_tokens",
    "fleetlink_cloud.cli_devices",
    "fleetlink_cloud.cli_demo",
    "fleetlink_cloud.cli_plan",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleetlink-cloud", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
