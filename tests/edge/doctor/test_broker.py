"""Broker checks against a real Mosquitto with a password file (plain and TLS listeners):
each way of failing gets its own verdict, and a wrong password is told quickly."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetlink_edge.config import TlsSettings, UplinkSettings
from fleetlink_edge.credentials import Attempt
from fleetlink_edge.doctor import broker
from fleetlink_edge.doctor.findings import Finding, Status
from fleetlink_protocols.topics import mosquitto_acl_entries
from tests.edge.doctor.harness import by_check
from tests.peers import free_port
from tests.peers.mosquitto import Mosquitto

USERS = {"veh001": "secret1"}
ACL = mosquitto_acl_entries("fleet").splitlines()
TIMEOUT_S = 5.0


@pytest.fixture(scope="module")
def mosquitto() -> Iterator[Mosquitto]:
    with Mosquitto(USERS, ACL, tls=True) as b:
        yield b


def uplink(port: int, **kw: Any) -> UplinkSettings:
    values: dict[str, Any] = {"host": "127.0.0.1", "port": port, "username": "veh001"}
    values["password"] = USERS["veh001"]
    return UplinkSettings.model_validate(values | kw)


async def run(settings: UplinkSettings, timeout_s: float = TIMEOUT_S) -> dict[str, Finding]:
    return by_check(await broker.check(settings, "veh001", timeout_s))


def verdicts(found: dict[str, Finding]) -> dict[str, str]:
    return {check: f.detail.get("verdict", f.status) for check, f in found.items()}


@pytest.mark.mosquitto
async def test_right_password_is_accepted(mosquitto: Mosquitto) -> None:
    found = await run(uplink(mosquitto.port))
    assert list(found) == ["broker.dns", "broker.tcp", "broker.mqtt"]
    assert all(f.status is Status.OK for f in found.values()), found
    mqtt = found["broker.mqtt"]
    assert mqtt.detail["protocol"] == "5"
    assert mqtt.detail["client_id"] == "veh001-doctor"  # the agent's own session is left alone


@pytest.mark.mosquitto
async def test_wrong_password_is_the_credentials_verdict_and_quick(mosquitto: Mosquitto) -> None:
    start = time.monotonic()
    found = await run(uplink(mosquitto.port, password="wrong"))
    elapsed_s = time.monotonic() - start
    mqtt = found["broker.mqtt"]
    assert mqtt.status is Status.FAIL
    assert mqtt.detail["verdict"] == "credentials"
    assert "veh001" in mqtt.summary
    assert "password" in (mqtt.fix or "")
    assert elapsed_s < TIMEOUT_S / 5, f"took {elapsed_s:.2f} s: a timeout, not a refusal"


@pytest.mark.mosquitto
async def test_a_rotated_password_is_offered_as_the_agent_would(mosquitto: Mosquitto) -> None:
    # After a rotation the config file still holds the old password; the agent connects with
    # the kept one, so doctor must not call that a credentials failure.
    stale = uplink(mosquitto.port, password="old-password")
    kept = [Attempt(USERS["veh001"], "rotated"), Attempt("old-password", "configured")]
    found = by_check(await broker.check(stale, "veh001", TIMEOUT_S, kept))
    mqtt = found["broker.mqtt"]
    assert mqtt.status is Status.OK, mqtt
    assert mqtt.detail["password"] == "rotated"
    both_wrong = [Attempt("wrong-1", "rotated"), Attempt("wrong-2", "configured")]
    found = by_check(await broker.check(stale, "veh001", TIMEOUT_S, both_wrong))
    assert found["broker.mqtt"].detail["verdict"] == "credentials"


@pytest.mark.mosquitto
async def test_unset_password_says_where_it_comes_from(mosquitto: Mosquitto) -> None:
    found = await run(uplink(mosquitto.port, password=None))
    mqtt = found["broker.mqtt"]
    assert mqtt.detail["verdict"] == "credentials"
    assert "FLEETLINK_EDGE_UPLINK__PASSWORD" in (mqtt.fix or "")


async def test_nothing_listening_is_unreachable() -> None:
    start = time.monotonic()
    found = await run(uplink(free_port()))
    assert time.monotonic() - start < TIMEOUT_S / 5
    assert found["broker.dns"].status is Status.OK
    tcp = found["broker.tcp"]
    assert tcp.status is Status.FAIL
    assert tcp.detail["verdict"] == "unreachable"
    assert "nothing listens" in tcp.summary
    assert found["broker.mqtt"].status is Status.SKIP


async def test_unknown_host_is_unreachable() -> None:
    found = await run(uplink(1883, host="broker.fleetlink.invalid"), timeout_s=2.0)
    dns = found["broker.dns"]
    assert dns.status is Status.FAIL
    assert dns.detail["verdict"] == "unreachable"
    assert "broker.fleetlink.invalid" in (dns.fix or "")
    assert found["broker.tcp"].status is found["broker.mqtt"].status is Status.SKIP


@pytest.mark.mosquitto
async def test_tls_with_the_brokers_ca(mosquitto: Mosquitto) -> None:
    assert mosquitto.tls_port is not None
    found = await run(uplink(mosquitto.tls_port, tls=TlsSettings(ca_file=mosquitto.ca_file)))
    assert list(found) == ["broker.dns", "broker.tcp", "broker.tls", "broker.mqtt"]
    tls = found["broker.tls"]
    # The test CA signs for two days: the doctor warns before a certificate runs out.
    assert tls.status is Status.WARN
    assert tls.detail["outcome"] == "tls_expiring"
    assert tls.detail["cert_days_left"] < broker.CERT_EXPIRY_WARN_DAYS
    assert found["broker.mqtt"].status is Status.OK


@pytest.mark.mosquitto
async def test_tls_against_a_plain_listener(mosquitto: Mosquitto) -> None:
    found = await run(uplink(mosquitto.port, tls=TlsSettings(ca_file=mosquitto.ca_file)))
    tls = found["broker.tls"]
    assert tls.status is Status.FAIL
    assert tls.detail["verdict"] == "tls"
    assert tls.detail["outcome"] == "tls_handshake"
    assert "8883" in (tls.fix or "")
    assert found["broker.mqtt"].status is Status.SKIP


@pytest.mark.mosquitto
async def test_tls_with_another_ca(mosquitto: Mosquitto) -> None:
    assert mosquitto.tls_port is not None
    other = Mosquitto(USERS, ACL, tls=True)  # never started: only its throwaway CA is used
    try:
        found = await run(uplink(mosquitto.tls_port, tls=TlsSettings(ca_file=other.ca_file)))
    finally:
        other.close()
    tls = found["broker.tls"]
    assert tls.status is Status.FAIL
    assert tls.detail["outcome"] == "tls_untrusted"
    assert "ca_file" in (tls.fix or "")


@pytest.mark.mosquitto
async def test_tls_with_the_system_cas_only(mosquitto: Mosquitto) -> None:
    assert mosquitto.tls_port is not None
    found = await run(uplink(mosquitto.tls_port, tls=TlsSettings()))
    assert found["broker.tls"].detail["outcome"] == "tls_untrusted"


async def test_unreadable_tls_files(tmp_path: Path) -> None:
    with_tls = uplink(1883, tls=TlsSettings(ca_file=tmp_path / "missing.pem"))
    # Something must accept TCP for the TLS stage to run: a listener that never answers.
    with socket.create_server(("127.0.0.1", 0)) as server:
        found = await run(with_tls.model_copy(update={"port": server.getsockname()[1]}))
    tls = found["broker.tls"]
    assert tls.detail["outcome"] == "tls_files"
    assert "PEM" in (tls.fix or "")


@pytest.mark.mosquitto
async def test_plain_connect_to_a_tls_port(mosquitto: Mosquitto) -> None:
    assert mosquitto.tls_port is not None
    found = await run(uplink(mosquitto.tls_port))
    mqtt = found["broker.mqtt"]
    assert mqtt.status is Status.FAIL
    assert mqtt.detail["verdict"] == "tls"
    assert mqtt.detail["outcome"] == "tls_expected"
    assert "[uplink.tls]" in (mqtt.fix or "")


@pytest.mark.mosquitto
async def test_three_failures_three_verdicts(mosquitto: Mosquitto) -> None:
    refused = await run(uplink(mosquitto.port, password="wrong"))
    unreachable = await run(uplink(free_port()))
    tls = await run(uplink(mosquitto.port, tls=TlsSettings(ca_file=mosquitto.ca_file)))
    worst = [
        next(f for f in found.values() if f.status is Status.FAIL)
        for found in (refused, unreachable, tls)
    ]
    assert [f.detail["verdict"] for f in worst] == ["credentials", "unreachable", "tls"]
    assert len({f.fix for f in worst}) == 3
