"""Device registry: register a device, mint its MQTT credentials, render Mosquitto passwd and ACL.

A device's MQTT user name is its device id (protocol v1, section 1), so one ``pattern`` ACL
(``%u``) confines every device to its own topics. The password is random and shown once; the
store keeps only its Mosquitto hash, which is exactly the password-file line's hash, so the
password file can be rendered again from the registry at any time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fleetlink_cloud.errors import ConfigError
from fleetlink_cloud.store.base import Device, Store
from fleetlink_protocols.errors import ProtocolError
from fleetlink_protocols.topics import check_device_id, mosquitto_acl_entries

# Mosquitto 2.0 password hash "sha512-pbkdf2" (mosquitto_passwd's default since 2.0):
# ``$7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512(password, salt)>``, standard
# base64 with padding, 12-byte salt, 64-byte key (mosquitto src/password_mosq.c).
MOSQUITTO_PBKDF2_ID = 7
MOSQUITTO_SALT_BYTES = 12
# mosquitto_passwd's default count. The broker pays it on every CONNECT; it protects nothing
# here because the passwords are 256 random bits, which no guessing reaches.
MOSQUITTO_ITERATIONS = 101
PASSWORD_BYTES = 32


@dataclass(frozen=True, slots=True)
class DeviceCredentials:
    """What a new device needs, shown once: its MQTT user name and password."""

    device_id: str
    username: str
    password: str
    passwd_line: str  # "<user>:$7$..." for Mosquitto's password_file
    acl: str  # the whole acl_file text (pattern lines shared by every device)


def generate_password() -> str:
    """A URL-safe random password of PASSWORD_BYTES random bytes (43 characters)."""
    return secrets.token_urlsafe(PASSWORD_BYTES)


def mosquitto_hash(
    password: str, *, salt: bytes | None = None, iterations: int = MOSQUITTO_ITERATIONS
) -> str:
    """The ``$7$...`` hash mosquitto_passwd writes for ``password`` (random salt by default)."""
    if iterations < 1:
        raise ValueError("iterations must be positive")
    salt = secrets.token_bytes(MOSQUITTO_SALT_BYTES) if salt is None else salt
    key = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    b64 = base64.b64encode
    return f"${MOSQUITTO_PBKDF2_ID}${iterations}${b64(salt).decode()}${b64(key).decode()}"


def verify_mosquitto_hash(password: str, encoded: str) -> bool:
    """True if ``password`` matches a ``$7$`` hash; False for any other or malformed hash."""
    parts = encoded.split("$")
    if len(parts) != 5 or parts[0] or parts[1] != str(MOSQUITTO_PBKDF2_ID):
        return False
    try:
        iterations = int(parts[2])
        salt = base64.b64decode(parts[3], validate=True)
        expected = base64.b64decode(parts[4], validate=True)
    except ValueError:
        return False
    if not 0 < iterations <= 10_000_000:
        return False
    key = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return hmac.compare_digest(key, expected)


def passwd_line(username: str, password_hash: str) -> str:
    """One Mosquitto password-file line (no newline)."""
    return f"{username}:{password_hash}"


def passwd_file_text(devices: Iterable[Device]) -> str:
    """The password file for every enabled device of the registry."""
    return "".join(
        passwd_line(d.id, d.password_hash) + "\n"
        for d in devices
        if not d.disabled and d.password_hash
    )


def checked_device_id(device_id: str) -> str:
    """``device_id`` if protocol v1 accepts it as an id and MQTT user name; else ConfigError."""
    try:
        return check_device_id(device_id)
    except ProtocolError as exc:
        raise ConfigError(
            f"{exc}: a device id is 1-64 of A-Z a-z 0-9 _ - and starts with a letter or digit"
        ) from None


async def add_device(
    store: Store, device_id: str, *, name: str | None = None, prefix: str = "fleet"
) -> DeviceCredentials:
    """Register ``device_id`` with a fresh password; raise ConfigError for an invalid id.

    The store raises StoreError if the device exists already: re-registering must be explicit.
    """
    checked_device_id(device_id)
    password = generate_password()
    hashed = mosquitto_hash(password)
    await store.add_device(device_id, name=name or device_id, password_hash=hashed)
    return DeviceCredentials(
        device_id=device_id,
        username=device_id,
        password=password,
        passwd_line=passwd_line(device_id, hashed),
        acl=mosquitto_acl_entries(prefix),
    )


def merge_passwd_line(existing: str, line: str) -> str:
    """Password-file text with ``line`` replacing its user's line, or added (mosquitto_passwd)."""
    user = line.split(":", 1)[0]
    kept = [ln for ln in existing.splitlines() if ln.split(":", 1)[0] != user]
    return "".join(ln + "\n" for ln in [*kept, line])


def write_passwd_line(path: Path, line: str) -> None:
    """Add or replace one user's line in a Mosquitto password file (created 0600 if missing)."""
    existing = path.read_text() if path.exists() else ""
    path.touch(mode=0o600, exist_ok=True)
    path.write_text(merge_passwd_line(existing, line))


def write_acl(path: Path, acl: str) -> bool:
    """Write the ACL file unless it already holds every line of ``acl``; True if written.

    The device lines are ``pattern`` lines shared by all devices, so a second device changes
    nothing; a hand-edited file that lacks them gets the block appended, never rewritten.
    """
    existing = path.read_text() if path.exists() else ""
    have = {ln.strip() for ln in existing.splitlines()}
    needed = [ln for ln in acl.splitlines() if ln.strip() and not ln.startswith("#")]
    if all(ln in have for ln in needed):
        return False
    sep = (
        ""
        if not existing or existing.endswith("\n\n")
        else ("\n" if existing.endswith("\n") else "\n\n")
    )
    path.write_text(existing + sep + acl)
    return True
