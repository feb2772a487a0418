"""A device bundle: every file one vehicle's computer needs, rendered from its profile.

:func:`render_bundle` is pure: a :class:`~fleetlink_cloud.profiles.Profile`, the device's
credentials, the broker as devices reach it, the templates and the shipped edge unit in; a
mapping of relative path -> (text, mode) out. Paths mirror where ``install.sh`` puts the files
(``etc/fleetlink/agent.toml`` -> ``/etc/fleetlink/agent.toml``); ``boot/config.txt`` is a block
that install.sh merges into the Pi's config.txt. ``fleetlink-cloud devices add --bundle`` writes
the result; nothing here touches the file system, the clock or a random source, so the same
input always gives the same bytes (the golden tests rely on it).

Templates are ``firmware-config/templates/<name>`` with ``@{name}`` placeholders (string.Template
with ``@`` as delimiter: ``$`` belongs to shell and systemd). Conditional pieces (TLS, FD,
listen-only) are chosen here and passed in as whole lines.
"""

from __future__ import annotations

import ipaddress
import json
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from fleetlink_cloud.errors import ConfigError
from fleetlink_cloud.profiles import CanInterface, Profile
from fleetlink_cloud.registry import DeviceCredentials, checked_device_id

TEMPLATE_NAMES = (
    "agent.toml",
    "can.network",
    "config.txt",
    "gnss-serial.conf",
    "gnss.rules",
    "gpsd.default",
    "install.sh",
    "modules-load.conf",
)
AGENT_CONFIG = "etc/fleetlink/agent.toml"
CA_FILE = "etc/fleetlink/ca.pem"
DEVICE_CA_PATH = "/etc/fleetlink/ca.pem"  # where the agent finds it on the device
EDGE_UNIT = "etc/systemd/system/fleetlink-edge.service"
SERIAL_DROP_IN = "etc/systemd/system/fleetlink-edge.service.d/gnss-serial.conf"
MODULES_FILE = "etc/modules-load.d/fleetlink-can.conf"
GPSD_DEFAULTS = "etc/default/gpsd"
UDEV_RULES = "etc/udev/rules.d/70-fleetlink-gnss.rules"
BOOT_BLOCK = "boot/config.txt"
NETWORK_DIR = "etc/systemd/network/"
INSTALLER = "install.sh"

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
_PEM_CERT = re.compile(
    r"-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]+-----END CERTIFICATE-----"
)


class BundleFile(NamedTuple):
    text: str
    mode: int  # file mode in the bundle (agent.toml: 0o600, it holds the password)


@dataclass(frozen=True, slots=True)
class BrokerTarget:
    """The MQTT broker as the device reaches it. ``ca_pem``: CA certificate text to ship."""

    host: str
    port: int
    topic_prefix: str
    tls: bool = False
    ca_pem: str | None = None

    def __post_init__(self) -> None:
        if not _is_host(self.host):
            raise ConfigError(f"broker host {self.host!r} is not a host name or IP address")
        if not 0 < self.port < 65536:
            raise ConfigError(f"broker port {self.port} is not 1-65535")
        if not re.fullmatch(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*", self.topic_prefix):
            raise ConfigError(f"topic prefix {self.topic_prefix!r}: plain topic levels only")
        if self.ca_pem is not None:
            if not self.tls:
                raise ConfigError("a CA certificate without TLS: the device would not use it")
            if not _PEM_CERT.search(self.ca_pem):
                raise ConfigError("the broker CA file holds no PEM certificate")


# What install.sh does with each file: its mode on the device, what a change to it needs
# (tag: agent restart, daemon-reload, networkd restart, ...), and its group.
_INSTALL: dict[str, tuple[str, str, str | None]] = {
    AGENT_CONFIG: ("640", "agent", "fleetlink"),
    CA_FILE: ("644", "agent", None),
    EDGE_UNIT: ("644", "unit", None),
    SERIAL_DROP_IN: ("644", "unit", None),
    MODULES_FILE: ("644", "modules", None),
    UDEV_RULES: ("644", "udev", None),
    GPSD_DEFAULTS: ("644", "gpsd", None),
}


# Only ``@{name}`` is a placeholder (and ``@@`` a literal @): a bare @ as in unit instances
# (serial-getty@ttyS0) stays text. Verbose syntax: string.Template adds re.VERBOSE.
_PLACEHOLDER = (
    r"@(?: (?P<escaped>@) | \{(?P<braced>[a-z][a-z0-9_]*)\} | (?P<named>(?!)) | (?P<invalid>\{) )"
)


class _Template(string.Template):
    delimiter = "@"
    # A str pattern is compiled by Template.__init_subclass__ (documented); typeshed types the
    # attribute as the compiled Pattern.
    pattern = _PLACEHOLDER  # type: ignore[assignment]


def network_file(interface: str) -> str:
    """The bundle path of ``interface``'s systemd-networkd file."""
    return f"{NETWORK_DIR}80-fleetlink-{interface}.network"


def render_bundle(
    profile: Profile,
    creds: DeviceCredentials,
    broker: BrokerTarget,
    *,
    templates: Mapping[str, str],
    edge_unit: str,
) -> dict[str, BundleFile]:
    """Every file of the device's bundle; ConfigError for invalid input or a broken template."""
    checked_device_id(creds.device_id)
    if "ExecStart=" not in edge_unit:
        raise ConfigError("the edge unit text has no ExecStart=: not fleetlink-edge.service")
    files: dict[str, BundleFile] = {
        AGENT_CONFIG: BundleFile(_agent_config(profile, creds, broker, templates), 0o600),
        EDGE_UNIT: BundleFile(edge_unit, 0o644),
    }
    if broker.ca_pem is not None:
        files[CA_FILE] = BundleFile(broker.ca_pem.rstrip("\n") + "\n", 0o644)
    files |= _system_files(profile, creds.device_id, templates)
    common = {"device_id": creds.device_id, "profile": profile.name}
    files[INSTALLER] = BundleFile(_installer(profile, files, templates, common), 0o755)
    return dict(sorted(files.items()))


def _system_files(
    profile: Profile, device_id: str, templates: Mapping[str, str]
) -> dict[str, BundleFile]:
    """The OS side: networkd, modules, gpsd or the unit drop-in, udev, boot block.

    Each file's header names only the profile parts it depends on, so changing the vehicle
    kind leaves the GNSS files (and install.sh's view of them) untouched.
    """

    def fill(name: str, *parts: str, **values: str) -> BundleFile:
        named = ", ".join(f"{p} {profile.part(p)}" for p in parts)
        return BundleFile(_fill(templates, name, device_id=device_id, parts=named, **values), 0o644)

    files: dict[str, BundleFile] = {}
    for can in profile.hardware.can:
        files[network_file(can.name)] = fill(
            "can.network",
            "hardware",
            "vehicle",
            interface=can.name,
            bitrate=str(profile.vehicle.bitrate),
            can_options=_can_options(profile, can),
        )
    if profile.hardware.kernel_modules:
        modules = "\n".join(profile.hardware.kernel_modules)
        files[MODULES_FILE] = fill("modules-load.conf", "hardware", modules=modules)
    gnss = profile.gnss
    if gnss.read_via == "gpsd":
        files[GPSD_DEFAULTS] = fill("gpsd.default", "gnss", device=gnss.device)
    elif gnss.device_allow:
        allow = "\n".join(f"DeviceAllow={d}" for d in gnss.device_allow)
        files[SERIAL_DROP_IN] = fill(
            "gnss-serial.conf", "gnss", device=gnss.device, device_allow=allow
        )
    if gnss.usb_ids:
        rules = _udev_rules(profile)
        files[UDEV_RULES] = fill("gnss.rules", "gnss", device=gnss.device, rules=rules)
    lines = _boot_lines(profile)
    if lines:
        files[BOOT_BLOCK] = fill("config.txt", "hardware", "gnss", lines="\n".join(lines))
    return files


def _agent_config(
    profile: Profile, creds: DeviceCredentials, broker: BrokerTarget, templates: Mapping[str, str]
) -> str:
    gnss, can = profile.gnss, profile.hardware.can[0]
    if gnss.read_via == "gpsd":
        gnss_note = f"gpsd reads the receiver at {gnss.device} (/etc/default/gpsd)."
    else:
        gnss_note = f"The agent reads the receiver at {gnss.device} itself (no gpsd)."
    names = [c.name for c in profile.hardware.can]
    if len(names) == 1:
        can_note = f"{can.name}: {profile.hardware.description}."
    else:
        can_note = f"{' and '.join(names)} are up (systemd-networkd); the agent reads {can.name}."
    tls = ""
    if broker.tls:
        tls = "\n[uplink.tls]\n" + (
            f"ca_file = {_toml_str(DEVICE_CA_PATH)}\n"
            if broker.ca_pem is not None
            else "# The broker's certificate is checked against the system's CA store.\n"
        )
    return _fill(
        templates,
        "agent.toml",
        device_id=creds.device_id,
        profile=profile.name,
        device_id_toml=_toml_str(creds.device_id),
        gnss_note=gnss_note,
        gnss_source=_toml_str(gnss.read_via),
        gnss_device=_toml_str(gnss.device),
        gnss_baudrate=str(gnss.baudrate),
        can_note=can_note,
        can_channel=_toml_str(can.name),
        bitrate=str(profile.vehicle.bitrate),
        obd=_toml_bool(profile.vehicle.obd),
        j1939=_toml_bool(profile.vehicle.j1939),
        broker_host=_toml_str(broker.host),
        broker_port=str(broker.port),
        username=_toml_str(creds.username),
        password=_toml_str(creds.password),
        topic_prefix=_toml_str(broker.topic_prefix),
        tls_section=tls,
    )


def _can_options(profile: Profile, can: CanInterface) -> str:
    lines: list[str] = []
    if can.fd:
        lines += [
            "# CAN FD: the data phase rate applies to FD frames; classic frames are unaffected.",
            "FDMode=yes",
            f"DataBitRate={can.data_bitrate}",
        ]
    if profile.vehicle.listen_only:
        lines += [
            "# Listen only: never transmit, acknowledge or send error frames on the vehicle bus.",
            "ListenOnly=yes",
        ]
    return "\n".join(lines)


def _udev_rules(profile: Profile) -> str:
    link = profile.gnss.device.removeprefix("/dev/")
    return "\n".join(
        f"# {usb.model}\n"
        f'SUBSYSTEM=="tty", ATTRS{{idVendor}}=="{usb.vendor}", '
        f'ATTRS{{idProduct}}=="{usb.product}", SYMLINK+="{link}", GROUP="dialout", '
        f'MODE="0660", ENV{{ID_MM_DEVICE_IGNORE}}="1"'
        for usb in profile.gnss.usb_ids
    )


def _boot_lines(profile: Profile) -> list[str]:
    lines = [f"dtparam={p}" for p in profile.hardware.boot_params]
    lines += [line for can in profile.hardware.can if (line := can.overlay_line())]
    lines += profile.gnss.boot_config
    return list(dict.fromkeys(lines))  # once each, in order


def _installer(
    profile: Profile,
    files: Mapping[str, BundleFile],
    templates: Mapping[str, str],
    common: Mapping[str, str],
) -> str:
    places = []
    for path in sorted(files):
        if path == BOOT_BLOCK:
            continue
        mode, tag, group = (
            ("644", "network", None) if path.startswith(NETWORK_DIR) else _INSTALL[path]
        )
        places.append(f"place {path} {mode} {tag}" + (f" {group}" if group else ""))
    return _fill(
        templates,
        "install.sh",
        places="\n".join(places),
        uses_gpsd="yes" if profile.gnss.read_via == "gpsd" else "no",
        boot_block="yes" if BOOT_BLOCK in files else "no",
        serial_console="off" if profile.gnss.disable_serial_console else "keep",
        modules=" ".join(profile.hardware.kernel_modules),
        **common,
    )


def _fill(templates: Mapping[str, str], name: str, **values: str) -> str:
    """Template ``name`` with ``values``; every file ends in exactly one newline."""
    if name not in templates:
        raise ConfigError(f"template {name} missing")
    try:
        text = _Template(templates[name]).substitute(values)
    except KeyError as exc:
        raise ConfigError(f"template {name} uses @{{{exc.args[0]}}}, which has no value") from None
    except ValueError as exc:
        raise ConfigError(f"template {name}: {exc}") from None
    return text.rstrip("\n") + "\n"


def _toml_str(value: str) -> str:
    """A TOML basic string. JSON's escapes are TOML's for printable ASCII, the only input here."""
    if not value.isascii() or not value.isprintable():
        raise ConfigError(f"{value!r}: only printable ASCII goes into the agent configuration")
    return json.dumps(value)


def _toml_bool(value: bool) -> str:
    return "true" if value else "false"


def _is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return bool(_HOSTNAME.match(host))
    return True
