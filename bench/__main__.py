"""Benchmarks: ``uv run python -m bench [scenario ...] [--json FILE]``.

Prints one line per figure and a JSON summary at the end (also written to bench/results/).
Scenarios: can_capture, outbox_append, payload, agent_rss (edge); ingest, stream_latency
(cloud). Figures are measured on the machine that runs this; nothing here asserts a goal, it
reports against it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import (
    agent_rss,
    assign,
    capture,
    dynamic,
    ingest,
    payload,
    replan,
    solomon,
    stream_latency,
)

SCENARIOS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "can_capture": lambda a: asyncio.run(capture.can_capture(a.data)),
    "outbox_append": lambda a: asyncio.run(capture.outbox_append()),
    "payload": lambda a: payload.bytes_per_position(),
    "agent_rss": lambda a: agent_rss.agent_rss(a.data, a.rss_seconds),
    "ingest": lambda a: ingest.ingest(),
    "stream_latency": lambda a: stream_latency.stream_latency(),
    "solomon": lambda a: solomon.solomon(a.data),
    "replan": lambda a: replan.replan_latency(),
    "assign_latency": lambda a: assign.assign_latency(),
    "dynamic": lambda a: dynamic.dynamic(a.data),
}

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("scenarios", nargs="*", choices=[*SCENARIOS, []], default=[])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--rss-seconds", type=float, default=60.0)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    args = parser.parse_args()
    chosen = args.scenarios or list(SCENARIOS)
    summary: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "cpu": platform.processor() or "?",
            "platform": platform.platform(),
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": {},
    }
    for name in chosen:
        print(f"== {name}", flush=True)
        result = SCENARIOS[name](args)
        summary["results"][name] = result
        for key, value in result.items():
            print(f"   {key}: {value}", flush=True)
    text = json.dumps(summary, indent=2, sort_keys=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
