"""The broker password the agent connects with, and the rotated ones it has been sent.

The cloud rotates a device's MQTT password in two steps: it sends the new one over the existing
connection (``rotate_credentials``), and only after the device acknowledged it does it replace
the password in the broker. The agent keeps what it was sent in a file beside the outbox
(``outbox.credentials.json``, mode 0600, written atomically): ``current``, the rotated password
that last worked, and ``pending``, rotated passwords not yet taken by the broker, oldest first.

On every connect the agent offers them newest first: the pending ones, then ``current``, then
the password of its settings, the fallback of last resort. The broker holds one password per
user, so the first one it takes is the only one that works: a pending one becomes ``current``
(and older ones are dropped); newer pending ones stay, their rotation may still be applied. A
refused password is never dropped, so a rotation the broker has not applied yet (not reloaded,
the ack still on its way) costs one refused CONNECT and never the working credential.
``Kept`` holds the rules (pure); ``CredentialFile`` keeps them on disk.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final, Literal

from fleetlink_edge.config import EdgeSettings
from fleetlink_edge.errors import ConfigError
from fleetlink_edge.statefile import write_atomically

log = logging.getLogger(__name__)

FORMAT_VERSION: Final = 1
# Rotations that may wait for the broker at once; beyond this the oldest goes (counted). Four
# covers rotations queued while the vehicle was offline, each acked before the next arrives.
MAX_PENDING: Final = 4
# MQTT passwords are binary data up to 65535 bytes (MQTT 5 §3.1.3.6); the cloud mints 43
# characters, and a password is never that long in practice.
MAX_PASSWORD_LEN: Final = 256

Source = Literal["rotated", "current", "configured"]


@dataclass(frozen=True, slots=True)
class Attempt:
    """One password to offer in a CONNECT, and where it came from."""

    password: str | None
    source: Source

    def __repr__(self) -> str:  # never the password itself, not even in a traceback
        return f"Attempt(source={self.source!r})"


@dataclass(frozen=True, slots=True)
class Kept:
    """What the agent keeps of rotations: ``current`` (None: the configured password) and
    ``pending``, oldest first."""

    current: str | None = None
    pending: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"Kept(current={self.current is not None}, pending={len(self.pending)})"

    def with_rotation(self, password: str) -> tuple[Kept, int]:
        """``password`` added as the newest pending one; returns the result and how many old
        pending ones it pushed out (``MAX_PENDING``)."""
        pending = (*[p for p in self.pending if p != password], password)
        dropped = max(0, len(pending) - MAX_PENDING)
        return replace(self, pending=pending[dropped:]), dropped

    def attempts(self, configured: str | None) -> list[Attempt]:
        """The passwords to offer, in order: pending newest first, current, configured."""
        out = [Attempt(p, "rotated") for p in reversed(self.pending)]
        if self.current is not None and self.current not in self.pending:
            out.append(Attempt(self.current, "current"))
        if not any(a.password == configured for a in out):
            out.append(Attempt(configured, "configured"))
        return out

    def after_connect(self, attempt: Attempt) -> Kept:
        """What to keep once the broker took ``attempt``: every older password is dead."""
        if attempt.source == "rotated" and attempt.password in self.pending:
            newer = self.pending[self.pending.index(attempt.password) + 1 :]
            return Kept(attempt.password, newer)
        if attempt.source == "configured":
            return replace(self, current=None)  # it was refused, or there was none
        return self


def check_password(password: object) -> str:
    """``password`` if it can be an MQTT password here; raises ValueError saying why not."""
    if not isinstance(password, str) or not password:
        raise ValueError("password must be a non-empty string")
    if len(password) > MAX_PASSWORD_LEN:
        raise ValueError(f"password longer than {MAX_PASSWORD_LEN} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in password):
        raise ValueError("password holds control characters")
    return password


def encode_kept(kept: Kept) -> str:
    return json.dumps(
        {"version": FORMAT_VERSION, "current": kept.current, "pending": list(kept.pending)}
    )


def decode_kept(text: str) -> Kept:
    """The file's content; raises ValueError when it is not one this agent wrote."""
    doc = json.loads(text)
    if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
        raise ValueError("not a credentials document of version 1")
    current, pending = doc.get("current"), doc.get("pending")
    if current is not None:
        check_password(current)
    if not isinstance(pending, list):
        raise ValueError("pending must be a list")
    return Kept(current, tuple(check_password(p) for p in pending[-MAX_PENDING:]))


def credentials_file(settings: EdgeSettings) -> Path:
    """Where rotated credentials are kept: beside the outbox (``outbox.credentials.json``)."""
    return settings.outbox.path.with_suffix(".credentials.json")


class CredentialFile:
    """The kept credentials of one agent, on disk and in memory. Built by the composition root;
    the uplink asks it what to offer, the ``rotate_credentials`` command adds to it.

    ``configured`` is the settings' password (``uplink.password``).
    """

    def __init__(self, path: Path, configured: str | None) -> None:
        self.path = path
        self._configured = configured
        self._kept = Kept()
        self.in_use: Source | None = None  # what the current or last connection used
        self.counters: dict[str, int] = dict.fromkeys(
            ("rotations", "switches", "pending_dropped", "write_failures", "unreadable"), 0
        )

    @property
    def kept(self) -> Kept:
        return self._kept

    async def load(self) -> None:
        """Read the file once at start. Missing: nothing kept. Unreadable or malformed: logged
        and counted, the configured password only (the file is left for inspection)."""
        try:
            text = await asyncio.to_thread(self.path.read_text, encoding="utf-8")
        except FileNotFoundError:
            return
        except OSError as exc:
            self.counters["unreadable"] += 1
            log.error("kept credentials %s unreadable (%s); using uplink.password", self.path, exc)
            return
        try:
            self._kept = decode_kept(text)
        except ValueError as exc:
            self.counters["unreadable"] += 1
            log.error("kept credentials %s malformed (%s); using uplink.password", self.path, exc)

    def attempts(self) -> list[Attempt]:
        return self._kept.attempts(self._configured)

    async def rotate(self, password: str) -> None:
        """Keep ``password`` as the newest pending one, durably, before returning.

        Raises ValueError for a password that cannot be one, ConfigError when the file cannot
        be written (nothing changes then).
        """
        kept, dropped = self._kept.with_rotation(check_password(password))
        await self._save(kept)
        self.counters["rotations"] += 1
        if dropped:
            self.counters["pending_dropped"] += dropped
            log.warning("%d rotated credential(s) never taken by the broker dropped", dropped)
        log.info("rotated credential kept (%d waiting for the broker)", len(kept.pending))

    async def connected(self, attempt: Attempt) -> None:
        """The broker took ``attempt``: promote it and forget older ones. A failed write is
        logged only: the file still offers the password that works, one CONNECT later."""
        self.in_use = attempt.source
        kept = self._kept.after_connect(attempt)
        if kept == self._kept:
            return
        if attempt.source == "rotated":
            self.counters["switches"] += 1
            log.info("the broker took the rotated credential: it is current from now on")
        try:
            await self._save(kept)
        except ConfigError as exc:
            log.error("%s; the new credential is used until the agent restarts", exc)
            self._kept = kept

    async def _save(self, kept: Kept) -> None:
        try:
            await asyncio.to_thread(write_private, self.path, encode_kept(kept))
        except OSError as exc:
            self.counters["write_failures"] += 1
            raise ConfigError(f"cannot write kept credentials {self.path}: {exc}") from exc
        self._kept = kept


def write_private(path: Path, text: str) -> None:
    """Write ``text`` as ``path``, mode 0600 from the first byte, replaced atomically."""
    write_atomically(path, text, mode=0o600)


def describe_connection(attempt: Attempt, kept: Kept) -> str:
    """What a connection uses, for the ``reconnect`` ack: ``kept`` is after ``attempt`` won."""
    text = f"connected with the {attempt.source} credential"
    if kept.pending:  # newer than the one taken, so offered first and refused
        text += (
            f"; the broker refused {len(kept.pending)} newer rotated credential(s),"
            " kept for the next connection"
        )
    return text
