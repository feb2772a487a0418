"""Broker checks, one stage at a time: DNS, TCP, TLS (when configured), MQTT CONNECT.

Each stage runs only if the one before it passed, so the first failure names the cause: a host
that does not resolve or answer is "unreachable", a handshake that fails is "tls", a CONNACK
refusing the configured user is "credentials" (findings.VERDICTS). DNS, TCP and TLS are probed
here with asyncio streams and the agent's own TLS context; the CONNECT goes through the
agent's ``MqttClient``, so it is exactly what the uplink would send, with a client id of its
own (so the running agent is not thrown off the broker) and a session that ends with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
import time
from collections.abc import Sequence
from typing import Any

from fleetlink_edge.config import UplinkSettings
from fleetlink_edge.credentials import Attempt
from fleetlink_edge.doctor.findings import (
    VERDICTS,
    Finding,
    Outcome,
    Stage,
    Status,
    broker_findings,
)
from fleetlink_edge.errors import BrokerRefused, ConfigError, UplinkError
from fleetlink_edge.mqtt import MqttClient, build_tls_context

CERT_EXPIRY_WARN_DAYS = 14
CLIENT_ID_SUFFIX = "-doctor"


async def check(
    s: UplinkSettings,
    client_id: str,
    timeout_s: float,
    attempts: Sequence[Attempt] | None = None,
) -> list[Finding]:
    """Every stage's finding; stages after the first failure are SKIP. ``attempts``: the
    passwords the agent would offer, in its order (rotated ones first); default the configured."""
    stages = [Stage.DNS, Stage.TCP, *([Stage.TLS] if s.tls is not None else []), Stage.MQTT]
    common = {"host": s.host, "port": s.port, "user": s.username or "<none>"}
    common |= {"timeout_s": timeout_s, "tls": s.tls is not None}
    if attempts is None:
        attempts = [Attempt(s.password, "configured")]
    probe = _Probe(s, client_id + CLIENT_ID_SUFFIX, timeout_s, attempts)
    outcomes: list[Outcome] = []
    try:
        for stage in stages:
            outcome = await probe.run(stage)
            outcomes.append(outcome)
            if VERDICTS[outcome.kind][0] is Status.FAIL:
                break
    finally:
        await probe.close()
    return broker_findings(outcomes, stages, common)


class _Probe:
    """The stages' shared state: the TCP connection that the TLS stage upgrades."""

    def __init__(
        self, s: UplinkSettings, client_id: str, timeout_s: float, attempts: Sequence[Attempt]
    ) -> None:
        self._s = s
        self._attempts = attempts
        self._client_id = client_id
        self._timeout_s = timeout_s
        self._writer: asyncio.StreamWriter | None = None
        self._where = f"{s.host}:{s.port}"

    async def run(self, stage: Stage) -> Outcome:
        step = {
            Stage.DNS: self._dns,
            Stage.TCP: self._tcp,
            Stage.TLS: self._tls,
            Stage.MQTT: self._mqtt,
        }[stage]
        start = time.monotonic()
        kind, text, facts = await step()
        return Outcome(stage, kind, text, time.monotonic() - start, facts)

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            await _close(writer, self._timeout_s)

    async def _dns(self) -> tuple[str, str, dict[str, Any]]:
        host = self._s.host
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(host)
            return "address", f"{host} is an IP address: nothing to resolve", {}
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout_s):
                infos = await loop.getaddrinfo(host, self._s.port, type=socket.SOCK_STREAM)
        except TimeoutError:
            return "dns_failed", f"no DNS answer for {host} in {self._timeout_s:g} s", {}
        except socket.gaierror as exc:
            return "dns_failed", f"cannot resolve {host}: {exc.strerror or exc}", {}
        addresses = sorted({str(info[4][0]) for info in infos})
        text = f"{host} resolves to {', '.join(addresses[:4])}"
        return "resolved", text, {"addresses": addresses}

    async def _tcp(self) -> tuple[str, str, dict[str, Any]]:
        s = self._s
        try:
            async with asyncio.timeout(self._timeout_s):
                _, self._writer = await asyncio.open_connection(s.host, s.port)
        except TimeoutError:
            return "tcp_timeout", f"no answer from {self._where} in {self._timeout_s:g} s", {}
        except ConnectionRefusedError:
            return "tcp_refused", f"{self._where} refused the connection: nothing listens", {}
        except socket.gaierror as exc:
            return "dns_failed", f"cannot resolve {s.host}: {exc.strerror or exc}", {}
        except OSError as exc:
            return "tcp_failed", f"cannot connect to {self._where}: {exc.strerror or exc}", {}
        peer = self._writer.get_extra_info("peername")
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else self._where
        return "connected", f"TCP connection to {where}", {"peer": where}

    async def _tls(self) -> tuple[str, str, dict[str, Any]]:
        s, writer = self._s, self._writer
        if s.tls is None or writer is None:  # planned only with TLS, after a TCP connection
            raise RuntimeError("TLS stage without TLS settings or a TCP connection")
        try:
            ctx = await asyncio.to_thread(build_tls_context, s.tls)  # reads the PEM files
        except ConfigError as exc:
            return "tls_files", str(exc), {}
        try:
            async with asyncio.timeout(self._timeout_s):
                await writer.start_tls(ctx, server_hostname=s.host)
        except TimeoutError:
            kind, text = (
                "tls_timeout",
                f"no TLS handshake with {self._where} in {self._timeout_s:g} s",
            )
        except ssl.SSLCertVerificationError as exc:
            kind, text = (
                "tls_untrusted",
                f"the broker's certificate is not trusted: {exc.verify_message or exc}",
            )
        except (ssl.SSLError, OSError) as exc:
            kind, text = "tls_handshake", f"TLS handshake with {self._where} failed: {exc}"
        else:
            return _tls_success(writer)
        # A failed start_tls leaves the stream half torn down: its close would never finish.
        self._writer = None
        writer.transport.abort()
        return kind, text, {}

    async def _mqtt(self) -> tuple[str, str, dict[str, Any]]:
        await self.close()  # the raw probe connection is done; MqttClient opens its own
        refused: list[str] = []
        result: tuple[str, str, dict[str, Any]] = ("credentials", "no password to offer", {})
        for attempt in self._attempts:  # as the agent does: the first password accepted wins
            result = await self._connect(attempt)
            if result[0] not in ("credentials", "credentials_no_password"):
                if result[0] == "accepted" and refused:
                    result[2]["refused_before"] = refused
                return result
            refused.append(attempt.source)
        return result

    async def _connect(self, attempt: Attempt) -> tuple[str, str, dict[str, Any]]:
        s = self._s
        settings = s.model_copy(
            update={
                "connect_timeout_s": self._timeout_s,
                "session_expiry_s": 0,
                "password": attempt.password,
            }
        )
        client: MqttClient | None = None
        try:
            client = MqttClient(settings, self._client_id)
            info = await client.connect()
        except BrokerRefused as exc:
            no_password = s.username is not None and attempt.password is None
            return ("credentials_no_password" if no_password else "credentials"), str(exc), {}
        except ConfigError as exc:
            return "tls_files", str(exc), {}
        except UplinkError as exc:
            if s.tls is None and await self._speaks_tls():
                text = f"{self._where} speaks TLS, and a plain MQTT CONNECT got: {exc}"
                return "tls_expected", text, {}
            return "no_mqtt", str(exc), {}
        finally:
            if client is not None:
                await client.disconnect()
        who = s.username or "anonymous"
        text = f"CONNECT accepted for {who}, {attempt.source} password (MQTT {info.protocol})"
        facts = {"protocol": info.protocol, "client_id": self._client_id}
        return "accepted", text, facts | {"password": attempt.source}

    async def _speaks_tls(self) -> bool:
        """Whether the port completes a TLS handshake (certificate not checked)."""
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            async with asyncio.timeout(self._timeout_s):
                _, writer = await asyncio.open_connection(
                    self._s.host, self._s.port, ssl=ctx, server_hostname=self._s.host
                )
        except (TimeoutError, ssl.SSLError, OSError):
            return False
        await _close(writer, self._timeout_s)
        return True


def _tls_success(writer: asyncio.StreamWriter) -> tuple[str, str, dict[str, Any]]:
    ssl_object = writer.get_extra_info("ssl_object")
    version = ssl_object.version() if isinstance(ssl_object, ssl.SSLObject) else "TLS"
    cert = writer.get_extra_info("peercert") or {}
    not_after = cert.get("notAfter") if isinstance(cert, dict) else None
    if not isinstance(not_after, str):  # tls.insecure: the certificate was not checked
        return "tls_ok", f"{version} handshake done (certificate not verified)", {}
    expires_s = ssl.cert_time_to_seconds(not_after)
    days = (expires_s - time.time()) / 86400
    until = time.strftime("%Y-%m-%d", time.gmtime(expires_s))
    facts = {"tls_version": version, "cert_not_after": until, "cert_days_left": round(days, 1)}
    text = f"{version} handshake done, certificate valid until {until} ({days:.0f} days)"
    return ("tls_expiring" if days < CERT_EXPIRY_WARN_DAYS else "tls_ok"), text, facts


async def _close(writer: asyncio.StreamWriter, timeout_s: float) -> None:
    """Close politely (TLS close_notify), and abort what does not close within a second."""
    writer.close()
    try:
        async with asyncio.timeout(min(timeout_s, 1.0)):
            await writer.wait_closed()
    except TimeoutError:
        writer.transport.abort()
    except (OSError, ssl.SSLError):
        pass
