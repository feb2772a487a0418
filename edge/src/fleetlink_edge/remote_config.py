"""Remote configuration on the device: check the desired document, apply it, keep it, report it.

The cloud publishes a desired document retained on ``{prefix}/{device}/dn/config``: a partial
settings document (``{section: {key: value}}``, nested where settings are:
``{"can": {"obd": {"pids": [12, 13]}}}``) and a version. ``RemoteConfig`` checks it with
the agent's own settings model, merged over the local settings (TOML file and environment), so
a key left out takes its local value again. Of ``REMOTE_KEYS`` it applies at once what the
running agent can change (``live``) and keeps the rest for the next start (``restart``); any
other key refuses the whole document, and so does a version older than the applied one. Nothing
changes on a refusal. An applied document is first written atomically next to the outbox
(``config_file``); the next start merges it in again before anything connects, which applies
what was pending. Every outcome goes out retained on ``config`` (``ReportedConfig``) through
``config_report.ConfigReporter``. docs/protocol.md ("How the agent handles configuration") has
the rules.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from pydantic import BaseModel

from fleetlink_edge.config import EdgeSettings, with_changes
from fleetlink_edge.errors import ConfigError
from fleetlink_edge.signal_lists import RULES
from fleetlink_edge.statefile import write_atomically
from fleetlink_protocols.limits import MAX_TEXT_LEN
from fleetlink_protocols.messages import ConfigDocument, ReportedConfig

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

Apply = Literal["live", "restart"]
# What a desired document may set, and when the agent applies it. Live keys need a setter from
# the composition root (checked at start); restart keys are read once when the agent is built.
REMOTE_KEYS: Final[Mapping[str, Apply]] = {
    "sampling.position_interval_s": "live",
    "sampling.signal_interval_s": "live",
    "sampling.signal_max_silence_s": "live",
    "sampling.dtc_clear_after_s": "live",
    "health.interval_s": "live",
    "log.level": "live",
    "outbox.max_bytes": "live",
    "can.obd.pids": "live",
    "can.obd.poll_interval_s": "live",
    "can.signals": "live",
    "uplink.batch_max_records": "restart",
    "uplink.batch_max_delay_s": "restart",
    "uplink.max_inflight_batches": "restart",
    "uplink.keepalive_s": "restart",
}

LiveSetter = Callable[[EdgeSettings], Awaitable[None]]
"""Makes the running agent use the new settings for its keys (one setter may serve several)."""
Reporter = Callable[[ReportedConfig], None]


class ConfigRefused(Exception):
    """A desired document (or set_config) the agent will not apply; the message says why."""

    def __init__(self, version: int, reason: str) -> None:
        super().__init__(clip(reason))
        self.version = version


def clip(text: str, limit: int = MAX_TEXT_LEN) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def config_file(settings: EdgeSettings) -> Path:
    """Where the applied document is kept: beside the outbox (``outbox.config.json``)."""
    return settings.outbox.path.with_suffix(".config.json")


def value_of(settings: EdgeSettings, key: str) -> Any:
    """The value of a dotted key (``sampling.signal_interval_s``, ``can.obd.pids``)."""
    value: Any = settings
    for name in key.split("."):
        value = getattr(value, name)
    return value


def effective(local: EdgeSettings, document: Mapping[str, Any]) -> EdgeSettings:
    """``local`` with ``document`` merged in; raises ConfigError naming every key it refuses:
    keys outside REMOTE_KEYS, values the settings model refuses, then lists that break the
    rules of ``signal_lists`` (checked only for the keys the document sets)."""
    problems: list[str] = []
    named: list[str] = []
    for section, keys in document.items():
        model = getattr(local, section, None) if section in EdgeSettings.model_fields else None
        if not isinstance(model, BaseModel):
            problems.append(f"{section}: no such settings section")
        else:
            _check_keys(model, section, keys, problems, named)
    if problems:
        raise ConfigError("; ".join(problems))
    settings = with_changes(local, document)
    problems = [p for key in named if key in RULES for p in RULES[key](settings)]
    if problems:
        raise ConfigError("; ".join(problems))
    return settings


def _check_keys(
    model: BaseModel, prefix: str, keys: object, problems: list[str], named: list[str]
) -> None:
    """Check the keys a document sets in ``model`` (at ``prefix``) against REMOTE_KEYS; append
    what is wrong to ``problems`` and the remote keys it sets to ``named``."""
    if not isinstance(keys, Mapping):
        problems.append(f"{prefix}: must be a map of settings")
        return
    fields = type(model).model_fields
    for key, value in keys.items():
        name = f"{prefix}.{key}"
        if key not in fields:
            problems.append(f"{name}: no such setting")
        elif name in REMOTE_KEYS:
            named.append(name)
        elif isinstance(inner := getattr(model, key), BaseModel) and any(
            k.startswith(f"{name}.") for k in REMOTE_KEYS
        ):
            _check_keys(inner, name, value, problems, named)
        else:
            problems.append(f"{name}: cannot be set remotely")


def merged(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` merged in section by section (``set_config``)."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in base.items()}
    for section, keys in changes.items():
        current = out.get(section)
        if isinstance(keys, Mapping) and isinstance(current, dict):
            current.update(keys)
        else:
            out[section] = keys
    return out


@dataclass(frozen=True, slots=True)
class Applied:
    """The desired document in force (version 0, empty: none, the local settings only)."""

    version: int = 0
    document: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ConfigResult:
    """What applying one document did: ``section.key=value`` changed now, or at the next start."""

    version: int
    applied: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()  # live setters that raised: their keys wait for a restart

    def describe(self) -> str:
        parts = []
        if self.applied:
            parts.append("applied " + ", ".join(self.applied))
        if self.pending:
            parts.append("pending a restart: " + ", ".join(self.pending))
        if self.failed:
            parts.append("applying live failed: " + ", ".join(self.failed))
        return clip("; ".join(parts) or "nothing to change")


@dataclass(frozen=True, slots=True)
class Restored:
    """What ``restore`` found: the document kept at the last run, and the settings it gives."""

    applied: Applied
    settings: EdgeSettings
    refused: ConfigRefused | None = None


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


async def restore(local: EdgeSettings, path: Path) -> Restored:
    """The document applied last time, merged over ``local``. A missing file means none; an
    unreadable one, or one this agent no longer accepts, is logged and ignored (refused)."""
    try:
        kept = await asyncio.to_thread(_read, path)
    except (OSError, ValueError) as exc:
        log.error("remote configuration %s is unreadable (%s); using local settings", path, exc)
        return Restored(Applied(), local)
    if kept is None:
        return Restored(Applied(), local)
    version = kept.get("version") if isinstance(kept, dict) else None
    document = kept.get("document") if isinstance(kept, dict) else None
    if type(version) is not int or version < 0 or not isinstance(document, dict):
        log.error("remote configuration %s is malformed; using local settings", path)
        return Restored(Applied(), local)
    try:
        settings = effective(local, document)
    except ConfigError as exc:
        log.error("kept configuration version %d no longer applies: %s", version, exc)
        return Restored(Applied(), local, ConfigRefused(version, str(exc)))
    log.info("remote configuration version %d applied from %s", version, path)
    return Restored(Applied(version, document), settings)


class RemoteConfig:
    """The desired configuration on the running agent. Built by the composition root with the
    settings it started with (``restore``); ``live`` has a setter for every live key."""

    def __init__(
        self,
        local: EdgeSettings,
        start: Restored,
        path: Path,
        *,
        live: Mapping[str, LiveSetter],
        report: Reporter,
    ) -> None:
        missing = sorted(k for k, how in REMOTE_KEYS.items() if how == "live" and k not in live)
        if missing:
            raise ValueError(f"no live setter for {', '.join(missing)}")
        self._local = local
        self._applied = start.applied
        self._running = start.settings  # what is in effect: live changes included
        self._wanted = start.settings  # what the applied document asks for
        self._path = path
        self._live = dict(live)
        self._report = report
        self._refused = start.refused
        self._last = ConfigResult(start.applied.version)
        self.counters: dict[str, int] = dict.fromkeys(
            ("applied", "refused", "unchanged", "live_failures", "persist_failures"), 0
        )

    @property
    def applied(self) -> Applied:
        return self._applied

    @property
    def pending(self) -> tuple[str, ...]:
        """Keys the applied document sets that are not in effect yet (next start)."""
        return tuple(
            k for k in REMOTE_KEYS if value_of(self._wanted, k) != value_of(self._running, k)
        )

    def report(self) -> None:
        """Offer the current state to the reporter (at start, and after every outcome)."""
        refused = self._refused
        self._report(
            ReportedConfig(
                self._applied.version,
                dict(self._applied.document),
                None if refused is None else str(refused),
                self.pending,
                None if refused is None else refused.version,
            )
        )

    async def on_desired(self, doc: ConfigDocument) -> ConfigResult | None:
        """A desired document from ``dn/config``; None when it was refused (and reported)."""
        current = self._applied
        if doc.version == current.version and doc.values == current.document:
            self.counters["unchanged"] += 1  # redelivered, or again after a reconnect
            self.report()
            return self._last
        try:
            if doc.version < current.version:
                raise ConfigRefused(
                    doc.version,
                    f"version {doc.version} is older than the applied {current.version}",
                )
            wanted = self.check(doc.version, doc.values)
        except ConfigRefused as exc:
            self.refuse(exc)
            return None
        try:
            return await self.apply(doc.version, doc.values, wanted)
        except ConfigRefused:
            return None  # could not be kept: refused and reported

    def check(self, version: int, document: Mapping[str, Any]) -> EdgeSettings:
        """The settings ``document`` asks for; raises ConfigRefused. Changes nothing."""
        try:
            return effective(self._local, document)
        except ConfigError as exc:
            raise ConfigRefused(version, str(exc)) from None

    def plan_patch(
        self, values: Mapping[str, Any], version: int | None
    ) -> tuple[int, dict[str, Any], EdgeSettings]:
        """``set_config``: ``values`` merged into the applied document, as ``version`` (default:
        the applied one). Raises ConfigRefused for an older version or a refused document."""
        current = self._applied.version
        if version is not None and version < current:
            raise ConfigRefused(version, f"version {version} is older than the applied {current}")
        target = current if version is None else version
        document = merged(self._applied.document, values)
        return target, document, self.check(target, document)

    def refuse(self, exc: ConfigRefused) -> None:
        """Keep the applied document and report why ``exc.version`` was refused."""
        log.warning("configuration version %d refused: %s", exc.version, exc)
        self.counters["refused"] += 1
        self._refused = exc
        self.report()

    async def apply(
        self, version: int, document: Mapping[str, Any], wanted: EdgeSettings
    ) -> ConfigResult:
        """Keep ``document``, then apply its live keys and report. Raises ConfigRefused (and
        reports it) when the document cannot be written: applied, it would not survive a
        restart."""
        if version == self._applied.version and document == self._applied.document:
            return self._last  # set_config of the version dn/config brought already
        kept = json.dumps({"version": version, "document": document})
        try:
            await asyncio.to_thread(write_atomically, self._path, kept)
        except OSError as exc:
            self.counters["persist_failures"] += 1
            refused = ConfigRefused(version, f"cannot keep it in {self._path}: {exc}")
            self.refuse(refused)
            raise refused from exc
        self._applied, self._wanted, self._refused = Applied(version, dict(document)), wanted, None
        changed = [k for k in REMOTE_KEYS if value_of(wanted, k) != value_of(self._running, k)]
        now = [k for k in changed if REMOTE_KEYS[k] == "live"]
        failed = await self._set_live(now)
        self._running = _with_keys(self._running, wanted, [k for k in now if k not in failed])
        self._last = ConfigResult(
            version,
            tuple(f"{k}={value_of(wanted, k)!r}" for k in now if k not in failed),
            tuple(f"{k}={value_of(wanted, k)!r}" for k in self.pending if k not in failed),
            tuple(failed.values()),
        )
        self.counters["applied"] += 1
        log.info("configuration version %d: %s", version, self._last.describe())
        self.report()
        return self._last

    async def _set_live(self, keys: list[str]) -> dict[str, str]:
        """Run each setter of ``keys`` once; returns the keys whose setter raised, and why."""
        failed: dict[str, str] = {}
        done: dict[LiveSetter, BaseException | None] = {}
        for key in keys:
            setter = self._live[key]
            if setter not in done:
                try:
                    await setter(_with_keys(self._running, self._wanted, keys))
                    done[setter] = None
                except Exception as exc:  # a bug must not lose the document: it waits
                    log.exception("applying %s live failed; it takes effect at the next start", key)
                    self.counters["live_failures"] += 1
                    done[setter] = exc
            if (error := done[setter]) is not None:
                failed[key] = f"{key} ({error!r})"
        return failed


def _with_keys(base: EdgeSettings, source: EdgeSettings, keys: list[str]) -> EdgeSettings:
    """``base`` with the values of ``keys`` taken from ``source``."""
    for key in keys:
        base = _replaced(base, key.split("."), value_of(source, key))
    return base


def _replaced(model: M, names: list[str], value: Any) -> M:
    """A copy of ``model`` with the setting at ``names`` (outermost first) set to ``value``."""
    name, *inner = names
    new = _replaced(getattr(model, name), inner, value) if inner else value
    return model.model_copy(update={name: new})
