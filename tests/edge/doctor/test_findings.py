"""Finding types, exit codes, rendering and the broker verdict table: pure, no I/O."""

from __future__ import annotations

import json

import pytest

from fleetlink_edge.doctor.findings import (
    VERDICTS,
    Finding,
    Outcome,
    Stage,
    Status,
    broker_finding,
    broker_findings,
    exit_code,
    fail,
    ok,
    render_json,
    render_text,
    skip,
    warn,
)

COMMON = {"host": "mqtt.example.net", "port": 8883, "user": "veh001", "timeout_s": 5.0}


@pytest.mark.parametrize(
    ("statuses", "code"),
    [
        ([], 0),
        ([Status.OK, Status.SKIP], 0),
        ([Status.OK, Status.WARN, Status.SKIP], 1),
        ([Status.WARN, Status.FAIL, Status.OK], 2),
    ],
)
def test_exit_code_is_the_worst_finding(statuses: list[Status], code: int) -> None:
    assert exit_code(Finding("x", s, "y") for s in statuses) == code


def sample() -> list[Finding]:
    return [
        ok("config", "agent.toml is valid", path="agent.toml"),
        warn("gnss.fix", "no fix in 5.0 s", "give the antenna open sky " * 8, positions=0),
        fail("broker.mqtt", "broker refused credentials", "check uplink.password"),
        skip("can", "CAN is off"),
    ]


def test_text_has_one_line_per_check_and_fixes_for_warn_and_fail() -> None:
    text = render_text(sample())
    lines = text.splitlines()
    heads = [line for line in lines if not line.startswith(" ")]
    assert [line.split()[0] for line in heads[:-1]] == ["OK", "WARN", "FAIL", "SKIP"]
    assert heads[-1] == "doctor: FAIL (4 checks: 1 ok, 1 warn, 1 fail, 1 skipped)"
    fixes = [line.strip() for line in lines if line.strip().startswith("fix:")]
    assert len(fixes) == 2
    assert all(len(line) <= 100 for line in lines)  # long fixes are wrapped
    # The summaries line up in one column, after the longest check name ("broker.mqtt").
    column = len("FAIL  broker.mqtt  ")
    assert [line[column:] for line in heads[:-1]] == [f.summary for f in sample()]


def test_json_is_a_list_of_the_five_keys() -> None:
    rows = json.loads(render_json(sample()))
    assert [set(r) for r in rows] == [{"check", "status", "summary", "detail", "fix"}] * 4
    assert [r["status"] for r in rows] == ["ok", "warn", "fail", "skip"]
    assert rows[0]["detail"] == {"path": "agent.toml"}
    assert rows[0]["fix"] is None
    assert rows[2]["fix"] == "check uplink.password"


def test_every_warning_and_failure_has_a_fix() -> None:
    for kind, (status, verdict, fix) in VERDICTS.items():
        assert (status is Status.OK) == (verdict == "ok"), kind
        assert (fix is None) == (status is Status.OK), kind
        if fix is not None:
            fix.format(**COMMON)  # every placeholder is a common fact


@pytest.mark.parametrize(
    ("stage", "kind", "verdict"),
    [
        (Stage.DNS, "dns_failed", "unreachable"),
        (Stage.TCP, "tcp_refused", "unreachable"),
        (Stage.TCP, "tcp_timeout", "unreachable"),
        (Stage.TLS, "tls_untrusted", "tls"),
        (Stage.TLS, "tls_handshake", "tls"),
        (Stage.MQTT, "tls_expected", "tls"),
        (Stage.MQTT, "credentials", "credentials"),
        (Stage.MQTT, "no_mqtt", "no_mqtt"),
    ],
)
def test_outcomes_map_to_verdicts(stage: Stage, kind: str, verdict: str) -> None:
    found = broker_finding(Outcome(stage, kind, "what happened", 0.0123), COMMON)
    assert found.check == f"broker.{stage}"
    assert found.status is Status.FAIL
    assert found.detail["verdict"] == verdict
    assert found.detail["elapsed_s"] == 0.012
    assert found.summary == "what happened"
    assert found.fix


def test_fix_names_the_configured_host() -> None:
    found = broker_finding(Outcome(Stage.TCP, "tcp_refused", "refused", 0.0), COMMON)
    assert "mqtt.example.net:8883" in (found.fix or "")


def test_stages_after_a_failure_are_skipped() -> None:
    stages = [Stage.DNS, Stage.TCP, Stage.TLS, Stage.MQTT]
    outcomes = [
        Outcome(Stage.DNS, "resolved", "resolves", 0.0),
        Outcome(Stage.TCP, "tcp_timeout", "no answer", 5.0),
    ]
    found = broker_findings(outcomes, stages, COMMON)
    assert [(f.check, f.status) for f in found] == [
        ("broker.dns", Status.OK),
        ("broker.tcp", Status.FAIL),
        ("broker.tls", Status.SKIP),
        ("broker.mqtt", Status.SKIP),
    ]
    assert found[2].summary == "not checked: broker.tcp failed"
