"""``fleetlink-edge doctor``: check a device's setup in order and say what is wrong and the fix.

    config   the agent's own load_settings; an invalid file is the first and only finding
    gnss     gnss.py: serial receiver (device, NMEA, checksums, fix) or gpsd (TPVs, fix)
    can      can.py: interface, bitrate, traffic, errors and drops, OBD-II 01 00
    broker   broker.py: DNS, TCP, TLS, MQTT CONNECT with the passwords the agent would offer
    clock    system.py: after the build time, and against the GNSS fix's time
    disk     system.py: room for outbox.max_bytes; outbox: the backlog, read-only

Each family runs under its own deadline, and a probe that breaks becomes a FAIL finding of its
own instead of ending the run. docs/doctor.md explains every check and verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TextIO

from fleetlink_edge.config import EdgeSettings, load_settings
from fleetlink_edge.credentials import CredentialFile, credentials_file
from fleetlink_edge.doctor import broker, can, gnss, system
from fleetlink_edge.doctor.findings import (
    Finding,
    Status,
    exit_code,
    fail,
    ok,
    render_json,
    render_text,
)
from fleetlink_edge.errors import ConfigError

__all__ = ["Finding", "Status", "exit_code", "main", "render_json", "render_text", "run"]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
# A family runs several probes of up to timeout_s each (the broker: DNS, TCP, TLS, CONNECT,
# CONNACK, a TLS sniff); past this many it is stuck.
_FAMILY_BUDGET = 6


def config_finding(path: Path | None) -> tuple[Finding, EdgeSettings | None]:
    """The agent's own validation of ``path``; blocking (reads the file)."""
    where = str(path) if path is not None else "defaults"
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        fix = (
            "correct the keys listed (or the FLEETLINK_EDGE_* variables that set them); "
            "firmware-config/agent.toml is a commented example; the other checks need a "
            "valid configuration"
        )
        if path is not None and not path.is_file():
            fix = "pass the agent's configuration: --config /etc/fleetlink/agent.toml"
        return fail("config", str(exc), fix, path=where), None
    summary = f"{where} is valid (device {settings.device.id})"
    return ok("config", summary, path=where, device=settings.device.id), settings


async def run(config: Path | None, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[Finding]:
    """Every check in order; ``timeout_s`` bounds each listening window and connection."""
    first, settings = await asyncio.to_thread(config_finding, config)
    if settings is None:
        return [first]
    findings = [first]
    fix_sample: gnss.FixSample | None = None
    budget_s = timeout_s * _FAMILY_BUDGET + 5

    async def gnss_family() -> list[Finding]:
        nonlocal fix_sample
        found, fix_sample = await gnss.check(settings.gnss, timeout_s)
        return found

    client_id = settings.uplink.client_id or settings.device.id
    o = settings.outbox
    families: list[tuple[str, Callable[[], Awaitable[list[Finding]]]]] = [
        ("gnss", gnss_family),
        ("can", lambda: can.check(settings.can, timeout_s)),
        ("broker", lambda: _broker(settings, client_id, timeout_s)),
        # The clock is compared with the fix the GNSS checks found, so it comes after them.
        ("clock", lambda: _one(system.check_clock(fix_sample))),
        ("disk", lambda: system.check_storage(o.path, o.max_bytes, timeout_s)),
    ]
    for name, probe in families:
        findings += await _guarded(name, probe, budget_s)
    return findings


async def _broker(settings: EdgeSettings, client_id: str, timeout_s: float) -> list[Finding]:
    """The broker checks with the passwords the agent would offer (rotated ones first)."""
    kept = CredentialFile(credentials_file(settings), settings.uplink.password)
    await kept.load()  # read only: a missing or malformed file leaves the configured password
    return await broker.check(settings.uplink, client_id, timeout_s, kept.attempts())


async def _one(finding: Awaitable[Finding]) -> list[Finding]:
    return [await finding]


async def _guarded(
    name: str, probe: Callable[[], Awaitable[list[Finding]]], budget_s: float
) -> list[Finding]:
    """The family's findings; a hang or a crash becomes one FAIL finding named ``name``."""
    try:
        async with asyncio.timeout(budget_s):
            return await probe()
    except TimeoutError:
        fix = "a device or peer does not answer and the probe cannot be interrupted: run with -v"
        return [fail(name, f"the {name} checks did not finish in {budget_s:g} s", fix)]
    except Exception as exc:  # one broken probe must not hide the other checks
        log.debug("%s checks failed", name, exc_info=True)
        fix = "a fault in the doctor itself: run with -v and report the traceback"
        return [fail(name, f"the {name} checks failed: {exc!r}", fix)]


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """The sources log every retry; the findings already say it. -v keeps the log."""
    loggers = [logging.getLogger(name) for name in ("fleetlink_edge", "can")]
    levels = [logger.level for logger in loggers]
    if not verbose:
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def main(
    config: Path | None, *, timeout_s: float, as_json: bool, verbose: bool, out: TextIO
) -> int:
    """Run, print the findings to ``out`` and return the exit code (0 ok, 1 warn, 2 fail)."""
    with _quiet(verbose):
        findings = asyncio.run(run(config, timeout_s=timeout_s))
    out.write(render_json(findings) if as_json else render_text(findings))
    return exit_code(findings)
