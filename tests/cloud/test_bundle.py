"""Device bundles: every rendered file checked by the tool that reads it, and golden copies.

- agent.toml: loaded by the agent's own settings model (``fleetlink_edge.config``);
- the unit and its drop-in: ``systemd-analyze verify`` (ExecStart pointed at a stand-in);
- ``.network`` files: parsed as INI with the expected keys (``systemd-analyze verify`` checks
  units only; nothing offline checks networkd files);
- install.sh: ``sh -n``/``bash -n``, then run twice into a fake Raspberry Pi OS root with the
  real ``systemctl --root``, the second run changing nothing;
- every file of a few profiles byte for byte against tests/cloud/golden/<profile>/ (the profile's
  colons written as dots). After an intended change, regenerate them with
  ``FLEETLINK_UPDATE_GOLDEN=1 uv run pytest tests/cloud/test_bundle.py`` and review the diff.
"""

from __future__ import annotations

import configparser
import itertools
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from fleetlink_cloud import cli
from fleetlink_cloud.bundle import (
    AGENT_CONFIG,
    BOOT_BLOCK,
    EDGE_UNIT,
    GPSD_DEFAULTS,
    INSTALLER,
    SERIAL_DROP_IN,
    TEMPLATE_NAMES,
    UDEV_RULES,
    BrokerTarget,
    BundleFile,
    network_file,
    render_bundle,
)
from fleetlink_cloud.cli_devices import write_bundle
from fleetlink_cloud.errors import ConfigError
from fleetlink_cloud.profiles import (
    known_profiles,
    load_profile,
    read_edge_unit,
    read_template,
)
from fleetlink_cloud.registry import DeviceCredentials, verify_mosquitto_hash
from fleetlink_edge.config import load_settings
from tests.peers import require_binary

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
UPDATE_GOLDEN = os.environ.get("FLEETLINK_UPDATE_GOLDEN") == "1"
CA = "-----BEGIN CERTIFICATE-----\nMIIBfleetlinkTESTca==\n-----END CERTIFICATE-----\n"
CREDS = DeviceCredentials("veh-0001", "veh-0001", "FIXED-test-password_0123456789", "", "")
BROKER = BrokerTarget("mqtt.example.net", 8883, "fleet", tls=True, ca_pem=CA)
KNOWN = known_profiles()
ALL_PROFILES = [":".join(p) for p in itertools.product(*KNOWN.values())]
GOLDEN_PROFILES = [
    "pi-mcp2515:usb:car",
    "pi-mcp2515-8mhz:uart:car",
    "pi-canfd-2ch:usb:truck",
    "usb-gs-usb:usb:car",
    "usb-gs-usb:uart:truck",
]
TEMPLATES = {name: read_template(name) for name in TEMPLATE_NAMES}
UNIT = read_edge_unit()


def _render(profile: str, broker: BrokerTarget = BROKER) -> dict[str, BundleFile]:
    return render_bundle(load_profile(profile), CREDS, broker, templates=TEMPLATES, edge_unit=UNIT)


# -- inputs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"host": "mqtt example"},
        {"host": 'a"b'},
        {"port": 0},
        {"topic_prefix": "fleet/#"},
        {"tls": False},  # a CA without TLS
        {"ca_pem": "not a certificate"},
    ],
)
def test_broker_targets_are_validated(change: dict[str, object]) -> None:
    valid: dict[str, object] = {"host": "h.example", "port": 8883, "topic_prefix": "fleet"}
    valid |= {"tls": True, "ca_pem": CA}
    BrokerTarget(**valid)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        BrokerTarget(**(valid | change))  # type: ignore[arg-type]


@pytest.fixture
def no_edge_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent's settings read FLEETLINK_EDGE_* too: only the file may count here."""
    for key in [k for k in os.environ if k.startswith("FLEETLINK_EDGE_")]:
        monkeypatch.delenv(key)


# -- every profile: each rendered file checked by what reads it ----------------------------------


@pytest.mark.parametrize("profile", ALL_PROFILES)
@pytest.mark.usefixtures("no_edge_env")
def test_agent_config_loads_in_the_agent(profile: str, tmp_path: Path) -> None:
    files = _render(profile)
    assert files[AGENT_CONFIG].mode == 0o600
    path = tmp_path / "agent.toml"
    path.write_text(files[AGENT_CONFIG].text)
    settings = load_settings(path)
    parsed = load_profile(profile)
    assert settings.device.id == "veh-0001"
    assert (settings.uplink.host, settings.uplink.port) == ("mqtt.example.net", 8883)
    assert (settings.uplink.username, settings.uplink.password) == (CREDS.username, CREDS.password)
    assert settings.uplink.tls is not None
    assert str(settings.uplink.tls.ca_file) == "/etc/fleetlink/ca.pem"
    assert settings.gnss.source == parsed.gnss.read_via
    assert str(settings.gnss.serial.port) == parsed.gnss.device
    assert (settings.can.enabled, settings.can.channel) == (True, "can0")
    assert settings.can.bitrate == parsed.vehicle.bitrate
    assert settings.can.obd.enabled == parsed.vehicle.obd
    assert settings.can.j1939.enabled == parsed.vehicle.j1939


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_network_files_hold_the_can_settings(profile: str) -> None:
    files, parsed = _render(profile), load_profile(profile)
    assert sorted(p for p in files if p.endswith(".network")) == sorted(
        network_file(c.name) for c in parsed.hardware.can
    )
    for can in parsed.hardware.can:
        ini = configparser.ConfigParser(interpolation=None, strict=True)
        ini.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
        ini.read_string(files[network_file(can.name)].text)
        assert ini.sections() == ["Match", "Link", "CAN"]
        assert dict(ini["Match"]) == {"Name": can.name}
        assert dict(ini["Link"]) == {"RequiredForOnline": "no"}
        expected = {"BitRate": str(parsed.vehicle.bitrate), "RestartSec": "100ms"}
        if can.fd:
            expected |= {"FDMode": "yes", "DataBitRate": str(can.data_bitrate)}
        if parsed.vehicle.listen_only:
            expected |= {"ListenOnly": "yes"}
        assert dict(ini["CAN"]) == expected


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_unit_and_drop_in_verify(profile: str, tmp_path: Path) -> None:
    analyze = require_binary("systemd-analyze", "systemd")
    files = _render(profile)
    assert files[EDGE_UNIT].text == UNIT  # the shipped unit, unchanged
    stand_in = tmp_path / "program"
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    unit = tmp_path / "fleetlink-edge.service"
    text, count = re.subn(r"^ExecStart=/\S+", f"ExecStart={stand_in}", UNIT, flags=re.M)
    assert count == 1
    unit.write_text(text)
    if SERIAL_DROP_IN in files:  # verify reads drop-ins beside the unit
        drop_in = tmp_path / "fleetlink-edge.service.d" / "gnss-serial.conf"
        drop_in.parent.mkdir()
        drop_in.write_text(files[SERIAL_DROP_IN].text)
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stderr.strip()) == (0, "")


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_gnss_boot_and_module_files(profile: str, tmp_path: Path) -> None:
    files, parsed = _render(profile), load_profile(profile)
    gnss = parsed.gnss
    assert (GPSD_DEFAULTS in files) == (gnss.read_via == "gpsd")
    if GPSD_DEFAULTS in files:  # what gpsd's unit reads (EnvironmentFile): shell assignments
        (tmp_path / "gpsd").write_text(files[GPSD_DEFAULTS].text)
        shown = subprocess.run(
            ["sh", "-c", '. "$0"; printf "%s|%s|%s" "$DEVICES" "$GPSD_OPTIONS" "$USBAUTO"',
             str(tmp_path / "gpsd")],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert shown.stdout == f"{gnss.device}|-n|false"
    assert (UDEV_RULES in files) == bool(gnss.usb_ids)
    if UDEV_RULES in files:
        rules = [ln for ln in files[UDEV_RULES].text.splitlines() if ln and ln[0] != "#"]
        assert len(rules) == len(gnss.usb_ids)
        pair = re.compile(r'^[A-Z_]+(\{[A-Za-z_]+\})?(==|\+=|=)"[^"]*"$')
        for rule in rules:
            assert all(pair.match(p) for p in rule.split(", ")), rule
            assert f'SYMLINK+="{gnss.device.removeprefix("/dev/")}"' in rule
    overlays = [c.overlay_line() for c in parsed.hardware.can if c.overlay_line()]
    if BOOT_BLOCK in files:
        lines = files[BOOT_BLOCK].text.splitlines()
        assert lines[0].startswith("# BEGIN fleetlink")
        assert lines[-1] == "# END fleetlink"
        settings = [ln for ln in lines if not ln.startswith("#")]
        assert settings[0] == "[all]"
        assert all(re.fullmatch(r"[a-z_]+=[A-Za-z0-9_.,=-]+", s) for s in settings[1:])
        assert set(overlays) | set(gnss.boot_config) <= set(settings)
    else:
        assert not overlays
        assert not gnss.boot_config
    assert not any("@{" in f.text for f in files.values())


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_install_script_parses(profile: str, tmp_path: Path) -> None:
    script = tmp_path / "install.sh"
    script.write_text(_render(profile)[INSTALLER].text)
    for shell in ("sh", "bash"):
        result = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True)
        assert (result.returncode, result.stderr) == (0, ""), shell


@pytest.mark.usefixtures("no_edge_env")
def test_without_tls_the_agent_config_has_no_tls_table(tmp_path: Path) -> None:
    files = _render("pi-mcp2515:usb:car", BrokerTarget("10.0.0.2", 1883, "fleet"))
    assert "etc/fleetlink/ca.pem" not in files
    (tmp_path / "agent.toml").write_text(files[AGENT_CONFIG].text)
    assert load_settings(tmp_path / "agent.toml").uplink.tls is None


# -- golden files ------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", GOLDEN_PROFILES)
def test_bundle_matches_golden_files(profile: str) -> None:
    files = {p: f for p, f in _render(profile).items() if p != EDGE_UNIT}  # checked above
    folder = GOLDEN / profile.replace(":", ".")
    manifest = "".join(f"{f.mode:04o} {p}\n" for p, f in files.items())
    if UPDATE_GOLDEN:
        shutil.rmtree(folder, ignore_errors=True)
        for path, file in files.items():
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            (folder / path).write_bytes(file.text.encode())
        (folder / "MANIFEST").write_text(manifest)
    assert (folder / "MANIFEST").read_text() == manifest, "regenerate: FLEETLINK_UPDATE_GOLDEN=1"
    for path, file in files.items():
        assert (folder / path).read_bytes() == file.text.encode(), path


# -- install.sh in a fake Raspberry Pi OS root ---------------------------------------------------

_UNITS = {
    "systemd-networkd.service": "[Install]\nWantedBy=multi-user.target\n"
    "Also=systemd-networkd.socket systemd-networkd-wait-online.service\n",
    "systemd-networkd.socket": "[Install]\nWantedBy=sockets.target\n",
    "systemd-networkd-wait-online.service": "[Install]\nWantedBy=network-online.target\n",
    "gpsd.service": "[Install]\nWantedBy=multi-user.target\nAlso=gpsd.socket\n",
    "gpsd.socket": "[Install]\nWantedBy=sockets.target\n",
}
CONFIG_TXT = "dtparam=audio=on\ncamera_auto_detect=1\n\n[cm4]\notg_mode=1\n\n[all]\n"
CMDLINE = "console=serial0,115200 console=tty1 root=PARTUUID=1234-02 rootfstype=ext4 rootwait\n"


def _fake_root(root: Path) -> None:
    """The parts of a Raspberry Pi OS Bookworm root install.sh reads or writes."""
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\n")
    if os.geteuid() != 0 or shutil.which("useradd", path="/usr/sbin:/sbin") is None:
        gid = os.getgid()  # without root chgrp works only to one's own group
        with (root / "etc/passwd").open("a") as f:
            f.write(f"fleetlink:x:999:{gid}::/var/lib/fleetlink-edge:/usr/sbin/nologin\n")
        (root / "etc/group").write_text(f"root:x:0:\nfleetlink:x:{gid}:\n")
    units = root / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    for name, text in _UNITS.items():
        (units / name).write_text(f"[Unit]\nDescription={name}\n\n[Service]\n{text}")
    for program in ("usr/sbin/gpsd", "usr/sbin/nologin", "opt/fleetlink-edge/bin/fleetlink-edge"):
        (root / program).parent.mkdir(parents=True, exist_ok=True)
        (root / program).write_text("#!/bin/sh\n")
        (root / program).chmod(0o755)
    (root / "boot/firmware").mkdir(parents=True)
    (root / "boot/firmware/config.txt").write_text(CONFIG_TXT)
    (root / "boot/firmware/cmdline.txt").write_text(CMDLINE)


def _snapshot(root: Path) -> dict[str, tuple[int, int, bytes | str]]:
    out: dict[str, tuple[int, int, bytes | str]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        body: bytes | str = (
            os.readlink(path) if path.is_symlink() else path.read_bytes() if path.is_file() else ""
        )
        out[str(path.relative_to(root))] = (st.st_mode, st.st_mtime_ns, body)
    return out


def _install(bundle: Path, root: Path) -> str:
    require_binary("systemctl", "systemd")
    env = dict(os.environ, PATH=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    result = subprocess.run(
        [str(bundle / INSTALLER), "--root", str(root)],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize(
    "profile", ["pi-mcp2515:uart:car", "pi-canfd-2ch:usb:truck", "usb-gs-usb:usb:car"]
)
def test_install_twice_into_a_fake_root(profile: str, tmp_path: Path) -> None:
    bundle, root = tmp_path / "bundle", tmp_path / "root"
    files = _render(profile)
    write_bundle(bundle, files)
    _fake_root(root)
    first = _install(bundle, root)
    for path, file in files.items():
        if path not in (INSTALLER, BOOT_BLOCK):
            assert (root / path).read_text() == file.text, path
    agent = (root / AGENT_CONFIG).stat()
    assert (agent.st_mode & 0o777, agent.st_gid) == (0o640, _gid(root, "fleetlink"))
    assert "changed: /etc/fleetlink/agent.toml" in first
    wants = root / "etc/systemd/system"
    assert (wants / "multi-user.target.wants/fleetlink-edge.service").is_symlink()
    assert (wants / "multi-user.target.wants/systemd-networkd.service").is_symlink()
    assert not (wants / "network-online.target.wants").exists()  # wait-online left disabled
    gpsd = load_profile(profile).gnss.read_via == "gpsd"
    assert (wants / "multi-user.target.wants/gpsd.service").is_symlink() == gpsd
    config_txt = (root / "boot/firmware/config.txt").read_text()
    if BOOT_BLOCK in files:
        assert config_txt == CONFIG_TXT + files[BOOT_BLOCK].text
        assert (root / "boot/firmware/config.txt.fleetlink-orig").read_text() == CONFIG_TXT
    else:
        assert config_txt == CONFIG_TXT
    cmdline = (root / "boot/firmware/cmdline.txt").read_text()
    if load_profile(profile).gnss.disable_serial_console:
        assert cmdline == CMDLINE.replace("console=serial0,115200 ", "")
    else:
        assert cmdline == CMDLINE

    before = _snapshot(root)
    second = _install(bundle, root)
    assert "changed:" not in second
    assert "nothing to change" in second
    assert _snapshot(root) == before


def test_install_puts_back_only_what_changed(tmp_path: Path) -> None:
    bundle, root = tmp_path / "bundle", tmp_path / "root"
    write_bundle(bundle, _render("pi-mcp2515:usb:car"))
    _fake_root(root)
    _install(bundle, root)
    (root / AGENT_CONFIG).chmod(0o644)  # someone loosened it
    shutil.rmtree(bundle)
    write_bundle(bundle, _render("pi-mcp2515:usb:truck"))  # the vehicle turned out a truck
    out = _install(bundle, root)
    assert sorted(ln for ln in out.splitlines() if ln.startswith("changed:")) == [
        "changed: /etc/fleetlink/agent.toml",
        "changed: /etc/systemd/network/80-fleetlink-can0.network",
    ]
    assert (root / AGENT_CONFIG).stat().st_mode & 0o777 == 0o640


def _gid(root: Path, group: str) -> int:
    for line in (root / "etc/group").read_text().splitlines():
        name, _, gid, *_ = line.split(":")
        if name == group:
            return int(gid)
    raise AssertionError(f"no group {group}")


# -- the command line --------------------------------------------------------------------------


def _cloud_config(tmp_path: Path) -> Path:
    (tmp_path / "ca.pem").write_text(CA)
    config = tmp_path / "cloud.toml"
    config.write_text(
        f'[broker]\nembedded = false\nhost = "mqtt.example.net"\nport = 8883\n'
        f'[broker.tls]\nca_file = "{tmp_path / "ca.pem"}"\n'
        f'[database]\nurl = "sqlite:///{tmp_path / "cloud.sqlite3"}"\n'
    )
    return config


def test_devices_add_writes_the_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, bundle = _cloud_config(tmp_path), tmp_path / "veh-0001"
    argv = ["devices", "add", "veh-0001", "-c", str(config), "--profile", "pi-mcp2515:usb:car"]
    assert cli.main([*argv, "--bundle", str(bundle)]) == 0
    out = capsys.readouterr().out
    text = (bundle / AGENT_CONFIG).read_text()
    password = re.search(r'^password = "([^"]+)"$', text, flags=re.M)
    assert password is not None
    assert password.group(1) not in out
    assert (bundle / AGENT_CONFIG).stat().st_mode & 0o777 == 0o600
    assert bundle.stat().st_mode & 0o777 == 0o700
    assert os.access(bundle / INSTALLER, os.X_OK)
    assert (bundle / "etc/fleetlink/ca.pem").read_text() == CA
    assert cli.main(["devices", "passwd-file", "-c", str(config)]) == 0
    stored = capsys.readouterr().out.strip().split(":", 1)[1]
    assert verify_mosquitto_hash(password.group(1), stored)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--profile", "pi-mcp2515:usb:bus", "--bundle", "B"], "known vehicle profiles are"),
        (["--profile", "pi-mcp2515:usb:car"], "--profile and --bundle go together"),
        (["--bundle", "B"], "--profile and --bundle go together"),
        (["--profile", "pi-mcp2515:usb:car", "--bundle", "FULL"], "exists and is not empty"),
    ],
)
def test_devices_add_checks_before_registering(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _cloud_config(tmp_path)
    (tmp_path / "FULL").mkdir()
    (tmp_path / "FULL" / "old").write_text("x")
    extra = [str(tmp_path / a) if a in ("B", "FULL") else a for a in extra]
    assert cli.main(["devices", "add", "veh-0001", "-c", str(config), *extra]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "B").exists()
    assert cli.main(["devices", "list", "-c", str(config)]) == 0
    assert capsys.readouterr().out == ""  # nothing registered


# -- packaging ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_wheel_carries_profiles_templates_and_unit(tmp_path: Path) -> None:
    """Built alone, fleetlink-cloud renders bundles from its own data (importlib.resources)."""
    uv = shutil.which("uv")
    assert uv is not None, "uv is required (tests/run puts it on PATH)"
    subprocess.run(
        [uv, "build", "--wheel", "--package", "fleetlink-cloud", "-o", str(tmp_path)],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("fleetlink_cloud-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "fleetlink_cloud/_firmware/systemd/fleetlink-edge.service" in names
    for name in TEMPLATE_NAMES:
        assert f"fleetlink_cloud/_firmware/firmware-config/templates/{name}" in names
    # Imported from the zip itself: the data is read through importlib.resources, not paths.
    check = (
        "from fleetlink_cloud import profiles, bundle\n"
        "root = profiles.resource_root()\n"
        "assert type(root).__name__ == 'Path' and 'zip' in type(root).__module__, root\n"
        "print(sorted(profiles.known_profiles()['hardware']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], env=dict(os.environ, PYTHONPATH=str(wheel)),
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "pi-mcp2515" in result.stdout
