"""The embedded MQTT broker: amqtt in-process, for a single machine with nothing installed.

An embedded default only (``broker.embedded = true``): amqtt speaks MQTT 3.1.1, keeps sessions in
memory and has no ACLs, so it listens on loopback and accepts anonymous clients. Production points
``[broker]`` at Mosquitto, EMQX or any MQTT 5 broker. The only module that imports amqtt.
"""

from __future__ import annotations

import logging
import socket
from types import TracebackType
from typing import Any, Self

from fleetlink_cloud.errors import BrokerError

log = logging.getLogger(__name__)

# amqtt logs every packet and client event at INFO; ours says what matters.
_NOISY_LOGGERS = ("amqtt", "transitions")


class _SnapshotDict(dict[Any, Any]):
    """A dict whose Python-level iteration walks a copy of its keys or items.

    amqtt 0.11 iterates ``Broker._subscriptions`` across ``await`` points (retained messages for
    a connecting client) and deletes from it while iterating (unsubscribe), so ten agents
    connecting at once kill connection handlers with "dictionary changed size during
    iteration"; the clients then reconnect with a take-over. Iterating a snapshot is what the
    code means in both places.
    """

    def __iter__(self) -> Any:
        return iter(list(super().keys()))

    def keys(self) -> Any:
        return list(super().keys())

    def items(self) -> Any:
        return list(super().items())

    def values(self) -> Any:
        return list(super().values())


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def broker_config(host: str, port: int) -> dict[str, Any]:
    """amqtt's configuration: one TCP listener, anonymous clients, no $SYS topics."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
        },
    }


class EmbeddedBroker:
    """``async with EmbeddedBroker(port=0) as b:`` serves MQTT 3.1.1 on ``b.host:b.port``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            # Anonymous and without ACLs: never on an interface other machines can reach.
            raise BrokerError(f"the embedded broker listens on loopback only, not {host!r}")
        self.host = host
        self.port = port
        self._broker: Any = None

    async def __aenter__(self) -> Self:
        from amqtt.broker import Broker

        for name in _NOISY_LOGGERS:
            if logging.getLogger(name).level == logging.NOTSET:
                logging.getLogger(name).setLevel(logging.WARNING)
        if self.port == 0:
            self.port = free_port(self.host)
        self._broker = Broker(broker_config(self.host, self.port))
        subscriptions = getattr(self._broker, "_subscriptions", None)
        if isinstance(subscriptions, dict):
            self._broker._subscriptions = _SnapshotDict(subscriptions)
        try:
            await self._broker.start()
        except Exception as exc:  # amqtt raises its own BrokerError or an OSError from bind
            raise BrokerError(
                f"embedded MQTT broker cannot listen on {self.host}:{self.port}: {exc}"
            ) from exc
        log.info("embedded MQTT broker (amqtt, MQTT 3.1.1) on %s:%d", self.host, self.port)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._broker is not None:
            try:
                await self._broker.shutdown()
            except Exception as err:  # a broker that fails to stop must not hide exc
                log.warning("embedded MQTT broker did not stop cleanly: %s", err)
            self._broker = None
