"""What the doctor found, sans-I/O: the Finding and Status types, the broker verdicts, rendering.

A probe module gathers observations and turns them into Findings; this module maps the broker's
connection outcomes (which stage failed, and how) to a verdict with its fix, and renders a list
of Findings for people (one line per check) or scripts (JSON). Nothing here does I/O.
"""

from __future__ import annotations

import enum
import json
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


class Status(enum.StrEnum):
    """How bad a finding is; SKIP (not checked: not configured, or an earlier step failed)
    counts as OK for the exit code."""

    OK = "ok"
    SKIP = "skip"
    WARN = "warn"
    FAIL = "fail"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Status.OK: 0, Status.SKIP: 0, Status.WARN: 1, Status.FAIL: 2}


@dataclass(frozen=True, slots=True)
class Finding:
    """One check's result: ``summary`` says what was found, ``fix`` what to do (WARN/FAIL).

    ``detail`` holds the measured facts for scripts; its values are JSON types.
    """

    check: str
    status: Status
    summary: str
    fix: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "status": str(self.status),
            "summary": self.summary,
            "detail": dict(self.detail),
            "fix": self.fix,
        }


def ok(check: str, summary: str, **detail: Any) -> Finding:
    return Finding(check, Status.OK, summary, None, detail)


def skip(check: str, summary: str, **detail: Any) -> Finding:
    return Finding(check, Status.SKIP, summary, None, detail)


def warn(check: str, summary: str, fix: str, **detail: Any) -> Finding:
    return Finding(check, Status.WARN, summary, fix, detail)


def fail(check: str, summary: str, fix: str, **detail: Any) -> Finding:
    return Finding(check, Status.FAIL, summary, fix, detail)


def exit_code(findings: Iterable[Finding]) -> int:
    """0 when everything is OK (or skipped), 1 with a warning, 2 with a failure."""
    return max((f.status.rank for f in findings), default=0)


def render_text(findings: Sequence[Finding], columns: int = 100) -> str:
    """One line per check (status, check, summary); below WARN and FAIL the fix, wrapped to
    ``columns`` and indented under the summary."""
    width = max((len(f.check) for f in findings), default=0)
    indent = " " * (width + 8)
    lines = []
    for f in findings:
        lines.append(f"{f.status.upper():<4}  {f.check:<{width}}  {f.summary}")
        if f.fix and f.status.rank > 0:
            lines += textwrap.wrap(
                f"fix: {f.fix}",
                max(columns, len(indent) + 40),
                initial_indent=indent,
                subsequent_indent=indent + "     ",
                break_on_hyphens=False,
            )
    counts = {s: sum(1 for f in findings if f.status is s) for s in Status}
    worst = max((f.status for f in findings), key=lambda s: s.rank, default=Status.OK)
    verdict = {0: "OK", 1: "WARN", 2: "FAIL"}[worst.rank]
    lines.append(
        f"doctor: {verdict} ({len(findings)} checks: {counts[Status.OK]} ok, "
        f"{counts[Status.WARN]} warn, {counts[Status.FAIL]} fail, {counts[Status.SKIP]} skipped)"
    )
    return "\n".join(lines) + "\n"


def render_json(findings: Sequence[Finding]) -> str:
    """A JSON list of {check, status, summary, detail, fix}."""
    return json.dumps([f.to_json() for f in findings], indent=2) + "\n"


# -- the broker: which stage failed, and how, decides the verdict -------------------------------


class Stage(enum.StrEnum):
    """The steps of reaching the broker, in order; each needs the one before it."""

    DNS = "dns"
    TCP = "tcp"
    TLS = "tls"
    MQTT = "mqtt"


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one stage ended: ``kind`` is a key of VERDICTS, ``text`` says it in words."""

    stage: Stage
    kind: str
    text: str
    elapsed_s: float
    facts: Mapping[str, Any] = field(default_factory=dict)


_UNREACHABLE_FIX = (
    "check uplink.host and uplink.port against the broker's address, that the broker runs, and "
    "that this device is online (modem data link, `ip route`)"
)
_TLS_PORT_FIX = (
    "use the broker's TLS port (usually 8883) or, for a plain listener (usually 1883), remove "
    "[uplink.tls]; a broker that demands a client certificate also ends the handshake: set "
    "uplink.tls.cert_file and key_file"
)

# kind -> (status, verdict, fix). The verdict is the stable word scripts match on (detail.verdict):
# "unreachable", "tls", "credentials", "refused", "no_mqtt"; "ok" when the stage passed.
VERDICTS: dict[str, tuple[Status, str, str | None]] = {
    "resolved": (Status.OK, "ok", None),
    "address": (Status.OK, "ok", None),
    "dns_failed": (
        Status.FAIL,
        "unreachable",
        "check uplink.host ({host}) for a typo; the device needs a working network and DNS "
        "(/etc/resolv.conf, the modem's data link)",
    ),
    "connected": (Status.OK, "ok", None),
    "tcp_refused": (
        Status.FAIL,
        "unreachable",
        "nothing listens on {host}:{port}: the broker is down or uplink.port is wrong",
    ),
    "tcp_timeout": (
        Status.FAIL,
        "unreachable",
        "no answer from {host}:{port} within {timeout_s:g} s: a firewall drops the packets, "
        "or the route is down; " + _UNREACHABLE_FIX,
    ),
    "tcp_failed": (Status.FAIL, "unreachable", _UNREACHABLE_FIX),
    "tls_ok": (Status.OK, "ok", None),
    "tls_expiring": (
        Status.WARN,
        "tls",
        "the broker's certificate expires soon: renew it on the broker before the fleet "
        "loses its uplink",
    ),
    "tls_files": (
        Status.FAIL,
        "tls",
        "uplink.tls.ca_file, cert_file and key_file must name readable PEM files",
    ),
    "tls_untrusted": (
        Status.FAIL,
        "tls",
        "uplink.tls.ca_file must hold the CA that signed the broker's certificate, and "
        "uplink.host ({host}) must be a name or address the certificate lists; a certificate "
        "'not yet valid' or 'expired' can also mean the system clock is wrong (see clock)",
    ),
    "tls_handshake": (Status.FAIL, "tls", "{host}:{port} does not complete TLS: " + _TLS_PORT_FIX),
    "tls_timeout": (
        Status.FAIL,
        "tls",
        "{host}:{port} gave no TLS answer within {timeout_s:g} s: " + _TLS_PORT_FIX,
    ),
    "tls_expected": (
        Status.FAIL,
        "tls",
        "add [uplink.tls] with ca_file = the CA of the broker's certificate, or use the "
        "broker's plain port (usually 1883)",
    ),
    "accepted": (Status.OK, "ok", None),
    "credentials": (
        Status.FAIL,
        "credentials",
        "uplink.username ({user}) and uplink.password must match the broker's password file "
        "(Mosquitto: mosquitto_passwd); if the broker refused the client id, check "
        "uplink.client_id",
    ),
    "credentials_no_password": (
        Status.FAIL,
        "credentials",
        "uplink.password is not set: the agent reads it from FLEETLINK_EDGE_UPLINK__PASSWORD; "
        "export it for the doctor the way the service gets it (its EnvironmentFile)",
    ),
    "no_mqtt": (
        Status.FAIL,
        "no_mqtt",
        "{host}:{port} takes TCP connections but did not accept MQTT: is it the MQTT port? "
        "A broker answering other reason codes (server busy, quota) says why in its log",
    ),
}


def broker_finding(outcome: Outcome, common: Mapping[str, Any]) -> Finding:
    """The finding for one stage's outcome; ``common`` has host, port, user and timeout_s."""
    status, verdict, fix = VERDICTS[outcome.kind]
    facts = {**common, **outcome.facts}
    detail = {
        "verdict": verdict,
        "outcome": outcome.kind,
        "elapsed_s": round(outcome.elapsed_s, 3),
        **facts,
    }
    text_fix = fix.format(**facts) if fix is not None else None
    return Finding(f"broker.{outcome.stage}", status, outcome.text, text_fix, detail)


def broker_findings(
    outcomes: Sequence[Outcome], stages: Sequence[Stage], common: Mapping[str, Any]
) -> list[Finding]:
    """A finding per planned stage: those that ran, then SKIP for those after a failure."""
    out = [broker_finding(o, common) for o in outcomes]
    failed = next((f.check for f in out if f.status is Status.FAIL), None)
    for stage in stages[len(outcomes) :]:
        out.append(skip(f"broker.{stage}", f"not checked: {failed or 'an earlier step'} failed"))
    return out
