"""``fleetlink-edge``: run the agent, simulate hardware, decode captures."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("fleetlink_edge")


def _print_json_lines(rows: Iterable[dict[str, Any]]) -> int:
    out = sys.stdout
    try:
        for row in rows:
            out.write(json.dumps(row, separators=(",", ":")) + "\n")
    except BrokenPipeError:  # `| head` closed the pipe: not an error
        sys.stderr.close()
    return 0


def _cmd_decode_nmea(args: argparse.Namespace) -> int:
    from fleetlink_edge.decode.nmea import tpv_lines

    path: Path = args.file
    if not path.is_file():
        print(f"fleetlink-edge: no such file: {path}", file=sys.stderr)
        return 2
    return _print_json_lines(tpv_lines(path.read_bytes()))


def _cmd_decode_can(args: argparse.Namespace) -> int:
    from fleetlink_edge.can_report import decoded_lines

    path: Path = args.file
    for p in (path, args.dbc):
        if p is not None and not p.is_file():
            print(f"fleetlink-edge: no such file: {p}", file=sys.stderr)
            return 2
    return _print_json_lines(decoded_lines(path, args.dbc))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleetlink-edge", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    decode = sub.add_parser("decode", help="decode a capture file and print JSON lines")
    dsub = decode.add_subparsers(dest="what", required=True)
    nmea = dsub.add_parser("nmea", help="NMEA 0183 log -> one gpsd-style TPV object per fix")
    nmea.add_argument("file", type=Path)
    nmea.set_defaults(func=_cmd_decode_nmea)
    can = dsub.add_parser("can", help="CAN log (candump, ASC, BLF...) -> decoded signals")
    can.add_argument("file", type=Path)
    can.add_argument("--dbc", type=Path, default=None, help="DBC file for non-J1939 frames")
    can.set_defaults(func=_cmd_decode_can)
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
