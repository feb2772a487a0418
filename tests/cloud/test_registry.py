"""Device registry: Mosquitto password hashes, passwd/ACL files, and a real broker using them."""

from __future__ import annotations

import contextlib
import io
import json
import queue
import subprocess
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fleetlink_cloud import cli
from fleetlink_cloud.errors import ConfigError, StoreError
from fleetlink_cloud.registry import (
    MOSQUITTO_ITERATIONS,
    add_device,
    generate_password,
    merge_passwd_line,
    mosquitto_hash,
    passwd_file_text,
    verify_mosquitto_hash,
    write_acl,
    write_passwd_line,
)
from fleetlink_cloud.store import Store, open_store
from fleetlink_protocols.topics import UPLINK, Topics, mosquitto_acl_entries
from tests.peers import require_binary

NOT_AUTHORIZED = 0x87  # MQTT 5 reason code "Not authorized" (MQTT 5.0 §2.4)
BAD_USER_OR_PASSWORD = 0x86  # MQTT 5 CONNACK "Bad User Name or Password"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(f"sqlite:///{tmp_path / 'cloud.sqlite3'}") as s:
        yield s


def _mosquitto_passwd(tmp_path: Path, user: str, password: str) -> str:
    tool = require_binary("mosquitto_passwd", "mosquitto")
    path = tmp_path / "passwd"
    subprocess.run([tool, "-c", "-b", str(path), user, password], check=True)
    line = path.read_text().strip()
    assert line.startswith(f"{user}:$7$")
    return line.split(":", 1)[1]


# -- the hash ----------------------------------------------------------------------------------


def test_hash_has_mosquitto_pbkdf2_layout() -> None:
    encoded = mosquitto_hash("s3cret")
    empty, ident, iterations, salt, key = encoded.split("$")
    assert (empty, ident, iterations) == ("", "7", str(MOSQUITTO_ITERATIONS))
    assert len(salt) == 16  # 12 bytes, base64
    assert len(key) == 88  # 64 bytes of SHA-512, base64 with padding
    assert verify_mosquitto_hash("s3cret", encoded)
    assert not verify_mosquitto_hash("s3cret!", encoded)
    assert mosquitto_hash("s3cret") != encoded  # a fresh salt each time


def test_hash_reproduces_mosquitto_passwd_exactly(tmp_path: Path) -> None:
    """Same password, salt and count as the real tool: byte-identical hash."""
    import base64

    theirs = _mosquitto_passwd(tmp_path, "veh-001", "correct horse")
    _, _, iterations, salt, _ = theirs.split("$")
    ours = mosquitto_hash("correct horse", salt=base64.b64decode(salt), iterations=int(iterations))
    assert ours == theirs
    assert verify_mosquitto_hash("correct horse", theirs)
    assert not verify_mosquitto_hash("correct horsE", theirs)


@pytest.mark.parametrize(
    "encoded",
    ["", "plain", "$6$abc$def", "$7$x$AAAA$AAAA", "$7$101$not base64!$AAAA", "$7$0$AAAA$AAAA"],
)
def test_verify_refuses_malformed_hashes(encoded: str) -> None:
    assert not verify_mosquitto_hash("anything", encoded)


def test_generated_passwords_are_long_and_distinct() -> None:
    passwords = {generate_password() for _ in range(100)}
    assert len(passwords) == 100
    assert all(len(p) == 43 and p.isascii() for p in passwords)


# -- the files ---------------------------------------------------------------------------------


def test_passwd_line_replaces_the_users_line() -> None:
    text = "a:$7$1$x$y\nb:$7$1$x$y\n"
    assert merge_passwd_line(text, "a:NEW") == "b:$7$1$x$y\na:NEW\n"
    assert merge_passwd_line("", "c:H") == "c:H\n"


def test_write_passwd_line_creates_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    write_passwd_line(path, "veh-1:H1")
    write_passwd_line(path, "veh-2:H2")
    write_passwd_line(path, "veh-1:H3")
    assert path.read_text() == "veh-2:H2\nveh-1:H3\n"
    assert path.stat().st_mode & 0o077 == 0


def test_write_acl_completes_once(tmp_path: Path) -> None:
    path = tmp_path / "acl"
    acl = mosquitto_acl_entries("fleet")
    assert write_acl(path, acl)
    assert path.read_text() == acl
    assert not write_acl(path, acl)  # a second device adds nothing
    custom = tmp_path / "custom"
    custom.write_text("user ops\ntopic read #")
    assert write_acl(custom, acl)
    assert custom.read_text() == "user ops\ntopic read #\n\n" + acl


# -- the registry in the store -----------------------------------------------------------------


async def test_add_device_stores_only_the_hash(store: Store) -> None:
    creds = await add_device(store, "veh-001", name="Van 1")
    assert (creds.device_id, creds.username) == ("veh-001", "veh-001")
    device = await store.get_device("veh-001")
    assert device is not None
    assert device.name == "Van 1"
    assert creds.password not in device.password_hash
    assert verify_mosquitto_hash(creds.password, device.password_hash)
    assert creds.passwd_line == f"veh-001:{device.password_hash}"
    assert creds.acl == mosquitto_acl_entries("fleet")
    assert passwd_file_text(await store.list_devices()) == creds.passwd_line + "\n"


async def test_add_device_refuses_bad_ids_and_duplicates(store: Store) -> None:
    for bad in ("", "a/b", "+", "veh 1", "-x", "x" * 65):
        with pytest.raises(ConfigError):
            await add_device(store, bad)
    await add_device(store, "veh-001")
    with pytest.raises(StoreError):
        await add_device(store, "veh-001")
    assert [d.id for d in await store.list_devices()] == ["veh-001"]


# -- a real Mosquitto with the generated files -------------------------------------------------


class MqttTestClient:
    """A blocking MQTT 5 client for tests: records messages and PUBACK reason codes."""

    def __init__(self, port: int, user: str, password: str, *, client_id: str = "") -> None:
        from paho.mqtt.client import CallbackAPIVersion, Client, MQTTv5

        self.received: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.acks: dict[int, int] = {}
        self.connect_rc: int | None = None
        self._acked = threading.Condition()
        self._subscribed = threading.Event()
        self._connected = threading.Event()
        self.client = Client(
            CallbackAPIVersion.VERSION2, client_id=client_id or user, protocol=MQTTv5
        )
        self.client.username_pw_set(user, password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = lambda _c, _u, m: self.received.put((m.topic, m.payload, m.retain))
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise TimeoutError("no CONNACK")

    def _on_connect(self, _c: object, _u: object, _f: object, rc: object, _p: object) -> None:
        self.connect_rc = int(getattr(rc, "value", 0))
        self._connected.set()

    def _on_publish(self, _c: object, _u: object, mid: int, rc: object, _p: object) -> None:
        with self._acked:
            self.acks[mid] = int(getattr(rc, "value", 0))
            self._acked.notify_all()

    def subscribe(self, topic_filter: str) -> None:
        self._subscribed.clear()
        self.client.subscribe(topic_filter, qos=1)
        assert self._subscribed.wait(10)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Publish at QoS 1 and return the PUBACK reason code (0 ok, 0x87 not authorised)."""
        mid = self.client.publish(topic, payload, qos=1, retain=retain).mid
        with self._acked:
            assert self._acked.wait_for(lambda: mid in self.acks, 10)
            return self.acks[mid]

    def next(self, timeout: float = 10) -> tuple[str, bytes, bool]:
        return self.received.get(timeout=timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(list(argv))
    return code, out.getvalue()


@pytest.mark.mosquitto
def test_cli_registration_lets_a_device_use_only_its_topics(tmp_path: Path) -> None:
    """`devices add` writes the broker's files; the device connects, and stays in its lane."""
    from tests.peers.mosquitto import Mosquitto

    db = f"sqlite:///{tmp_path / 'cloud.sqlite3'}"
    with Mosquitto({"backend": "backend-pw"}, []) as broker:
        broker.stop()
        passwd, acl = broker.dir / "passwd", broker.dir / "acl"
        registered = {}
        for device_id in ("veh-001", "veh-002"):
            code, out = _run_cli(
                "devices", "add", device_id, "--database", db,
                "--passwd-file", str(passwd), "--acl-file", str(acl), "--json",
            )  # fmt: skip
            assert code == 0
            registered[device_id] = json.loads(out)["password"]
        assert acl.read_text().strip() == mosquitto_acl_entries("fleet").strip()
        assert passwd.read_text().count("\n") == 3  # backend + two devices
        code, listing = _run_cli("devices", "list", "--database", db)
        assert code == 0
        assert [ln.split("\t")[0] for ln in listing.splitlines()] == ["veh-001", "veh-002"]
        broker.start()

        rejected = MqttTestClient(broker.port, "veh-001", registered["veh-002"])
        # Mosquitto 2.0 answers a wrong password with 0x87 "Not authorized" (MQTT 5 allows 0x86).
        assert rejected.connect_rc in (BAD_USER_OR_PASSWORD, NOT_AUTHORIZED)
        rejected.close()

        backend = MqttTestClient(broker.port, "backend", "backend-pw")
        device = MqttTestClient(broker.port, "veh-001", registered["veh-001"])
        try:
            assert device.connect_rc == 0
            backend.subscribe("fleet/#")
            device.subscribe("fleet/#")
            mine, other = Topics("fleet", "veh-001"), Topics("fleet", "veh-002")
            for topic in (other.live, other.status, other.ack, mine.cmd, mine.desired_config):
                assert device.publish(topic, b"forbidden") == NOT_AUTHORIZED, topic
            uplinks = [mine.topic(kind) for kind in UPLINK]
            for topic in uplinks:
                assert device.publish(topic, b"ok") == 0, topic
            assert [backend.next()[:2] for _ in uplinks] == [(t, b"ok") for t in uplinks]
            assert backend.publish(other.cmd, b"for veh-002") == 0
            assert backend.publish(mine.cmd, b"for veh-001") == 0
            assert device.next()[:2] == (mine.cmd, b"for veh-001")
            assert device.received.empty()
        finally:
            device.close()
            backend.close()


def test_cli_refuses_a_duplicate_and_a_bad_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = f"sqlite:///{tmp_path / 'cloud.sqlite3'}"
    assert cli.main(["devices", "add", "veh-001", "--database", db]) == 0
    first = capsys.readouterr().out
    assert "MQTT password: " in first
    assert "pattern read fleet/%u/dn/#" in first
    assert cli.main(["devices", "add", "veh-001", "--database", db]) == 1
    assert "exists already" in capsys.readouterr().err
    assert cli.main(["devices", "add", "bad/id", "--database", db]) == 1
    assert "invalid device id" in capsys.readouterr().err
    assert cli.main(["devices", "passwd-file", "--database", db]) == 0
    assert capsys.readouterr().out.startswith("veh-001:$7$")
