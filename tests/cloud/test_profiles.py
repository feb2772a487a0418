"""Profiles: every shipped file validates, wrong names list the known ones, bad data is refused."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from fleetlink_cloud.errors import ConfigError
from fleetlink_cloud.profiles import (
    CanInterface,
    GnssProfile,
    VehicleProfile,
    known_profiles,
    load_profile,
)

ROOT = Path(__file__).resolve().parents[2]
KNOWN = known_profiles()


def test_the_documented_profiles_exist() -> None:
    assert {"pi-mcp2515", "pi-canfd-2ch", "usb-gs-usb"} <= set(KNOWN["hardware"])
    assert {"usb", "uart"} <= set(KNOWN["gnss"])
    assert {"car", "truck"} <= set(KNOWN["vehicle"])


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("pi-mcp2515", "not HARDWARE:GNSS:VEHICLE; known: hardware pi-canfd-2ch"),
        ("pi-mcp2515:usb:car:x", "not HARDWARE:GNSS:VEHICLE"),
        ("pi3:usb:car", "unknown hardware profile 'pi3': known hardware profiles are pi-canfd-2ch"),
        ("pi-mcp2515:gps:car", "known gnss profiles are uart, usb"),
        ("pi-mcp2515:usb:bus", "known vehicle profiles are car, truck"),
        ("../vehicle/car:usb:car", "unknown hardware profile"),
    ],
)
def test_unknown_profiles_name_the_known_ones(name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_profile(name)


_VALID: dict[type[BaseModel], dict[str, object]] = {
    CanInterface: {"name": "can0", "controller": "mcp2515", "oscillator_hz": 16_000_000,
                   "interrupt_gpio": 25},
    GnssProfile: {"description": "", "connection": "usb", "read_via": "gpsd",
                  "device": "/dev/gnss0", "usb_ids": [{"vendor": "1546", "product": "01a8",
                                                       "model": "M8"}]},
    VehicleProfile: {"description": "", "bitrate": 500_000, "obd": True, "j1939": False},
}  # fmt: skip


@pytest.mark.parametrize(
    ("model", "change"),
    [
        (CanInterface, {"oscillator_hz": 10_000_000}),  # no such MCP2515 crystal
        (CanInterface, {"interrupt_gpio": None}),
        (CanInterface, {"interrupt_gpio": 40}),  # not on the 40-pin header
        (CanInterface, {"name": "eth0"}),
        (CanInterface, {"fd": True, "data_bitrate": 2_000_000}),  # MCP2515 is classic CAN
        (CanInterface, {"controller": "mcp251xfd"}),  # needs spi
        (CanInterface, {"controller": "gs_usb"}),  # but with an oscillator and interrupt
        (GnssProfile, {"device": "gnss0"}),
        (GnssProfile, {"usb_ids": []}),
        (GnssProfile, {"connection": "uart"}),  # with usb ids
        (VehicleProfile, {"bitrate": 333_000}),
        (VehicleProfile, {"obd": False}),  # reads nothing
        (VehicleProfile, {"listen_only": True}),  # while polling OBD
    ],
)
def test_profile_models_refuse_inconsistent_data(
    model: type[BaseModel], change: dict[str, object]
) -> None:
    model.model_validate(_VALID[model])
    with pytest.raises(ValidationError):
        model.model_validate(_VALID[model] | change)


def test_a_bus_faster_than_the_controller_is_refused(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "firmware-config" / "profiles", tmp_path / "firmware-config/profiles")
    fast = tmp_path / "firmware-config/profiles/vehicle/fast.toml"
    fast.write_text('description = "x"\nbitrate = 1000000\nobd = true\nj1939 = false\n')
    load_profile("pi-mcp2515:usb:fast", root=tmp_path)
    with pytest.raises(ConfigError, match="can0 reaches 500000 bit/s"):
        load_profile("pi-mcp2515-8mhz:usb:fast", root=tmp_path)


def test_every_combination_loads() -> None:
    for hardware in KNOWN["hardware"]:
        for gnss in KNOWN["gnss"]:
            for vehicle in KNOWN["vehicle"]:
                profile = load_profile(f"{hardware}:{gnss}:{vehicle}")
                assert (profile.part("hardware"), profile.part("vehicle")) == (hardware, vehicle)
