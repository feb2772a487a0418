"""Shared pieces of the doctor tests: agent TOML files, a pty receiver, findings by check."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fleetlink_edge.doctor.findings import Finding

Sections = Mapping[str, Mapping[str, Any]]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def write_config(path: Path, sections: Sections) -> Path:
    """An agent TOML file; section names may be dotted (``gnss.serial``)."""
    lines: list[str] = []
    for name, keys in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in keys.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def quiet_config(tmp: Path, **sections: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Sections for a device with every hardware source off and its outbox under ``tmp``;
    ``sections`` replace whole sections (``uplink=...``)."""
    base: dict[str, Mapping[str, Any]] = {
        "device": {"id": "veh001"},
        "gnss": {"source": "none"},
        "can": {"enabled": False},
        "outbox": {"path": tmp / "state" / "outbox.sqlite3"},
        "uplink": {"host": "127.0.0.1", "port": 1},
    }
    base.update(sections)
    return base


def by_check(findings: Iterable[Finding]) -> dict[str, Finding]:
    out: dict[str, Finding] = {}
    for f in findings:
        assert f.check not in out, f"two findings for {f.check}"
        out[f.check] = f
    return out


class Pty:
    """A pty pair standing in for a USB receiver: the doctor opens ``path`` like the agent."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)

    async def play(self, data: bytes, chunk: int = 256, pause_s: float = 0.0) -> None:
        """Write ``data`` in chunks, waiting whenever the pty buffer is full."""
        i = 0
        while i < len(data):
            try:
                i += os.write(self.master, data[i : i + chunk])
            except BlockingIOError:
                await asyncio.sleep(0.005)
                continue
            await asyncio.sleep(pause_s)

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


def receiver_bytes(log: Path) -> bytes:
    """A gpsd test log as its receiver sent it: without the '#' header lines."""
    lines = log.read_bytes().splitlines(keepends=True)
    return b"".join(line for line in lines if not line.startswith(b"#"))
