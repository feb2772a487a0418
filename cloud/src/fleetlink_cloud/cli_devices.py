"""``fleetlink-cloud devices``: register devices and render their Mosquitto credentials and ACL.

``devices add ID`` creates the device with a random MQTT password (printed once, stored only as
its Mosquitto hash), and with ``--passwd-file``/``--acl-file`` adds its line to the broker's
password file and makes sure the ACL file holds the per-device pattern lines. Reload Mosquitto
afterwards (``kill -HUP``) so it reads them.

``devices add ID --profile HARDWARE:GNSS:VEHICLE --bundle DIR`` also writes the device's bundle
into DIR (``bundle.py``: agent config with the password, CA certificate, CAN network files, GNSS
and boot configuration, the edge unit, ``install.sh``); see docs/provisioning.md. Profile, broker
settings and DIR are checked before the device is registered, so a mistake registers nothing.

``devices rotate ID`` queues a new password for the device (``credentials.py``); the running
service sends it and, once the device acked it, updates the broker.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fleetlink_cloud.bundle import (
    AGENT_CONFIG,
    TEMPLATE_NAMES,
    BrokerTarget,
    BundleFile,
    render_bundle,
)
from fleetlink_cloud.cli_store import add_store_options, audit_cli, run_with_store
from fleetlink_cloud.commands import CommandService
from fleetlink_cloud.config import CloudSettings
from fleetlink_cloud.credentials import start_rotation
from fleetlink_cloud.errors import ConfigError
from fleetlink_cloud.profiles import load_profile, read_edge_unit, read_template
from fleetlink_cloud.registry import (
    DeviceCredentials,
    add_device,
    checked_device_id,
    passwd_file_text,
    write_acl,
    write_passwd_line,
)
from fleetlink_cloud.store import Store


def register(subparsers: Any) -> None:
    """Add the ``devices`` command group to the top-level parser."""
    devices = subparsers.add_parser("devices", help="register devices, render MQTT credentials")
    sub = devices.add_subparsers(dest="devices_command", required=True)

    add = sub.add_parser("add", help="register a device and print its MQTT credentials once")
    add.add_argument("device_id", help="device id, also its MQTT user name")
    add.add_argument("--name", help="display name (default: the id)")
    add.add_argument("--passwd-file", type=Path, help="Mosquitto password_file to add it to")
    add.add_argument("--acl-file", type=Path, help="Mosquitto acl_file to complete if needed")
    add.add_argument("--json", action="store_true", help="print the credentials as JSON")
    add.add_argument(
        "--profile",
        metavar="HARDWARE:GNSS:VEHICLE",
        help="the device's hardware, e.g. pi-mcp2515:usb:car (docs/provisioning.md lists them)",
    )
    add.add_argument(
        "--bundle",
        type=Path,
        metavar="DIR",
        help="write every file the device needs into DIR (new or empty; needs --profile)",
    )
    add_store_options(add)
    add.set_defaults(func=_cmd_add)

    lst = sub.add_parser("list", help="list registered devices")
    lst.add_argument("--json", action="store_true", help="one JSON object per line")
    add_store_options(lst)
    lst.set_defaults(func=_cmd_list)

    pw = sub.add_parser("passwd-file", help="print the Mosquitto password file of every device")
    add_store_options(pw)
    pw.set_defaults(func=_cmd_passwd_file)

    rot = sub.add_parser(
        "rotate", help="give a device a new MQTT password over its connection (no data lost)"
    )
    rot.add_argument("device_id", help="the device whose password to rotate")
    rot.add_argument("--json", action="store_true", help="print the rotation as JSON")
    add_store_options(rot)
    rot.set_defaults(func=_cmd_rotate)


def _cmd_add(args: argparse.Namespace) -> int:
    async def work(store: Store, settings: CloudSettings) -> int:
        checked_device_id(args.device_id)
        render = _bundle_renderer(args, settings)  # every check before anything is written
        if await store.get_device(args.device_id) is not None:
            print(f"fleetlink-cloud: device {args.device_id} exists already", file=sys.stderr)
            return 1
        creds = await add_device(
            store, args.device_id, name=args.name, prefix=settings.broker.topic_prefix
        )
        await audit_cli(
            store,
            "devices add",
            f"device {creds.device_id}",
            now_wall_ns=time.time_ns(),
            status=201,
        )
        if args.passwd_file is not None:
            write_passwd_line(args.passwd_file, creds.passwd_line)
        acl_written = args.acl_file is not None and write_acl(args.acl_file, creds.acl)
        bundle_written = False
        if render is not None:
            try:
                write_bundle(args.bundle, render(creds))
                bundle_written = True
            except OSError as exc:  # registered already: the password must not get lost
                print(f"fleetlink-cloud: cannot write the bundle: {exc}", file=sys.stderr)
        if args.json:
            row = _credentials_json(creds, settings)
            print(json.dumps(row | ({"bundle": str(args.bundle)} if bundle_written else {})))
        else:
            _print_credentials(creds, settings, args, acl_written, bundle_written)
        return 0 if render is None or bundle_written else 1

    return run_with_store(args, work)


Renderer = Callable[[DeviceCredentials], Mapping[str, BundleFile]]


def _bundle_renderer(args: argparse.Namespace, settings: CloudSettings) -> Renderer | None:
    """Check --profile/--bundle and the broker settings; the bundle's renderer, or None.

    Raises ConfigError (unknown profile, missing CA file, bundle folder not empty).
    """
    if args.profile is None and args.bundle is None:
        return None
    if args.profile is None or args.bundle is None:
        raise ConfigError("--profile and --bundle go together: a bundle is rendered for a profile")
    profile = load_profile(args.profile)
    bundle: Path = args.bundle
    if bundle.exists() and (not bundle.is_dir() or any(bundle.iterdir())):
        raise ConfigError(f"bundle folder {bundle} exists and is not empty")
    broker = settings.broker
    ca_pem = None
    if broker.tls is not None and broker.tls.ca_file is not None:
        try:
            ca_pem = broker.tls.ca_file.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"broker CA file {broker.tls.ca_file}: {exc}") from exc
    target = BrokerTarget(
        host=broker.host,
        port=broker.port,
        topic_prefix=broker.topic_prefix,
        tls=broker.tls is not None,
        ca_pem=ca_pem,
    )
    if broker.embedded or _is_loopback(broker.host):
        print(
            f"fleetlink-cloud: warning: the device will connect to {broker.host}:{broker.port}, "
            "the cloud's own view of the broker; set [broker] host to the address vehicles reach",
            file=sys.stderr,
        )
    templates = {name: read_template(name) for name in TEMPLATE_NAMES}
    edge_unit = read_edge_unit()

    def render(creds: DeviceCredentials) -> Mapping[str, BundleFile]:
        return render_bundle(profile, creds, target, templates=templates, edge_unit=edge_unit)

    render(DeviceCredentials(args.device_id, args.device_id, "check", "", ""))  # fails early
    return render


def write_bundle(directory: Path, files: Mapping[str, BundleFile]) -> None:
    """Write ``files`` under ``directory`` (made 0700: agent.toml holds the password).

    Each file is created with its final mode (never readable by others in between) and must not
    exist yet. Raises OSError.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    for relative, file in files.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)  # inside the 0700 folder
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file.mode)
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
            out.write(file.text)
        path.chmod(file.mode)  # the umask may have taken bits off install.sh


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _credentials_json(creds: DeviceCredentials, settings: CloudSettings) -> dict[str, Any]:
    return {
        "device_id": creds.device_id,
        "username": creds.username,
        "password": creds.password,
        "passwd_line": creds.passwd_line,
        "acl": creds.acl,
        "topic_prefix": settings.broker.topic_prefix,
    }


def _print_credentials(
    creds: DeviceCredentials,
    settings: CloudSettings,
    args: argparse.Namespace,
    acl_written: bool,
    bundle_written: bool = False,
) -> None:
    out = sys.stdout.write
    out(f"device {creds.device_id} registered\n")
    out(f"  MQTT user:     {creds.username}\n")
    if bundle_written:
        out(f"  MQTT password: in {args.bundle / AGENT_CONFIG} (mode 0600, nowhere else)\n\n")
        out(f"bundle written to {args.bundle} (profile {args.profile}): copy it to the device\n")
        out("and run `sudo sh install.sh` there (docs/provisioning.md)\n\n")
    else:
        out(f"  MQTT password: {creds.password}\n")
        out("  (shown once: put it in the device's configuration now)\n\n")
        out("edge agent settings:\n")
        out(f"  FLEETLINK_EDGE_DEVICE__ID={creds.device_id}\n")
        out(f"  FLEETLINK_EDGE_UPLINK__USERNAME={creds.username}\n")
        out(f"  FLEETLINK_EDGE_UPLINK__PASSWORD={creds.password}\n")
        out(f"  FLEETLINK_EDGE_UPLINK__TOPIC_PREFIX={settings.broker.topic_prefix}\n\n")
    if args.passwd_file is not None:
        out(f"added to Mosquitto password file {args.passwd_file}\n")
    else:
        out(f"Mosquitto password file line:\n{creds.passwd_line}\n")
    if args.acl_file is not None:
        state = "updated" if acl_written else "already complete"
        out(f"Mosquitto ACL file {args.acl_file}: {state}\n")
    else:
        out(f"\nMosquitto ACL entries:\n{creds.acl}")
    if args.passwd_file is not None or acl_written:
        out("reload Mosquitto (kill -HUP <pid>) so it reads the new files\n")


def _cmd_list(args: argparse.Namespace) -> int:
    async def work(store: Store, settings: CloudSettings) -> int:
        for d in await store.list_devices():
            row = {
                "id": d.id,
                "name": d.name,
                "created_wall_ns": d.created_wall_ns,
                "disabled": d.disabled,
            }
            if args.json:
                print(json.dumps(row))
            else:
                print(f"{d.id}\t{d.name}\t{'disabled' if d.disabled else 'enabled'}")
        return 0

    return run_with_store(args, work)


def _cmd_rotate(args: argparse.Namespace) -> int:
    async def work(store: Store, settings: CloudSettings) -> int:
        checked_device_id(args.device_id)
        if await store.get_device(args.device_id) is None:
            print(f"fleetlink-cloud: no device {args.device_id}", file=sys.stderr)
            return 1
        # No MQTT link here: the running service sends the command when the device is online.
        commands = CommandService(store, None, prefix=settings.broker.topic_prefix)
        row = await start_rotation(commands, args.device_id, actor="cli")
        await audit_cli(
            store,
            "devices rotate",
            f"device {args.device_id} rotation {row.command_id}",
            now_wall_ns=time.time_ns(),
            status=201,
        )
        if args.json:
            print(json.dumps({"device_id": args.device_id, "command_id": row.command_id}))
            return 0
        print(f"rotation of {args.device_id} queued as command {row.command_id}")
        print("the running service sends it when the device is online; once the device acks it,")
        print("the service replaces the device's line in [broker] passwd_file and reloads the")
        print("broker (docs/provisioning.md, Rotating credentials). The password is not shown:")
        print("only the device gets it.")
        return 0

    return run_with_store(args, work)


def _cmd_passwd_file(args: argparse.Namespace) -> int:
    async def work(store: Store, settings: CloudSettings) -> int:
        sys.stdout.write(passwd_file_text(await store.list_devices()))
        return 0

    return run_with_store(args, work)
