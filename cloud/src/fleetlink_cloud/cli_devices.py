"""``fleetlink-cloud devices``: register devices and render their Mosquitto credentials and ACL.

``devices add ID`` creates the device with a random MQTT password (printed once, stored only as
its Mosquitto hash), and with ``--passwd-file``/``--acl-file`` adds its line to the broker's
password file and makes sure the ACL file holds the per-device pattern lines. Reload Mosquitto
afterwards (``kill -HUP``) so it reads them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from fleetlink_cloud.cli_store import add_store_options, audit_cli, run_with_store
from fleetlink_cloud.config import CloudSettings
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
    add_store_options(add)
    add.set_defaults(func=_cmd_add)

    lst = sub.add_parser("list", help="list registered devices")
    lst.add_argument("--json", action="store_true", help="one JSON object per line")
    add_store_options(lst)
    lst.set_defaults(func=_cmd_list)

    pw = sub.add_parser("passwd-file", help="print the Mosquitto password file of every device")
    add_store_options(pw)
    pw.set_defaults(func=_cmd_passwd_file)


def _cmd_add(args: argparse.Namespace) -> int:
    async def work(store: Store, settings: CloudSettings) -> int:
        checked_device_id(args.device_id)
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
        if args.json:
            print(json.dumps(_credentials_json(creds, settings)))
        else:
            _print_credentials(creds, settings, args, acl_written)
        return 0

    return run_with_store(args, work)


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
) -> None:
    out = sys.stdout.write
    out(f"device {creds.device_id} registered\n")
    out(f"  MQTT user:     {creds.username}\n")
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


def _cmd_passwd_file(args: argparse.Namespace) -> int:
    async def work(store: Store, settings: CloudSettings) -> int:
        sys.stdout.write(passwd_file_text(await store.list_devices()))
        return 0

    return run_with_store(args, work)
