"""Device profiles: which CAN hardware, GNSS receiver and vehicle bus a device has.

A profile is named ``HARDWARE:GNSS:VEHICLE`` (``pi-mcp2515:usb:car``): three independent parts,
each one TOML file under ``firmware-config/profiles/<part>/<name>.toml``, so supporting another
HAT or receiver is adding a file, not code. The models below validate every file, and
:func:`load_profile` names the known choices when a name is wrong. ``bundle.py`` turns a profile
into files; this module also finds the templates and the edge unit those files are made from.

Where the data lives: a wheel of fleetlink-cloud carries ``firmware-config/`` and
``systemd/fleetlink-edge.service`` under ``fleetlink_cloud/_firmware/`` (hatch ``force-include``,
see ``cloud/pyproject.toml``); a source checkout (editable install) reads them from the repository.
Every loader raises ConfigError.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fleetlink_cloud.errors import ConfigError

_PART_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,47}$")  # files named otherwise are ignored
PARTS = ("hardware", "gnss", "vehicle")
# Bit rates every CAN controller and vehicle bus agrees on (CiA 301 / SAE J1939 / ISO 15765-4).
CLASSIC_BITRATES = frozenset({125_000, 250_000, 500_000, 1_000_000})
# Crystals seen on MCP2515 boards; the mcp2515 overlay takes the frequency in Hz.
MCP2515_OSCILLATORS_HZ = frozenset({8_000_000, 12_000_000, 16_000_000, 20_000_000})
# mcp2515-can<N> overlays exist for these interfaces (raspberrypi/linux arch/arm/boot/dts/overlays).
MCP2515_OVERLAY_INTERFACES = frozenset({"can0", "can1", "can2"})

Gpio = Annotated[int, Field(ge=0, le=27)]  # the 40-pin header's BCM GPIO numbers
Bitrate = Annotated[int, Field(gt=0, le=1_000_000)]
DataBitrate = Annotated[int, Field(gt=0, le=8_000_000)]
BootLine = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]*=[A-Za-z0-9_.,=-]+$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CanInterface(_Model):
    """One CAN controller and the kernel interface it becomes (``can0``)."""

    name: Annotated[str, Field(pattern=r"^can[0-9]$")]
    controller: Literal["mcp2515", "mcp251xfd", "gs_usb"]
    oscillator_hz: Annotated[int, Field(gt=0, le=40_000_000)] | None = None
    interrupt_gpio: Gpio | None = None
    spi: Annotated[str, Field(pattern=r"^spi[0-6]-[0-2]$")] | None = None  # mcp251xfd: bus-cs
    max_bitrate: Bitrate = 1_000_000
    fd: bool = False
    data_bitrate: DataBitrate | None = None  # FD data phase; required with fd
    max_data_bitrate: DataBitrate | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.controller in {"mcp2515", "mcp251xfd"} and self.interrupt_gpio is None:
            raise ValueError(f"{self.controller} needs interrupt_gpio (the HAT's INT pin)")
        if self.controller == "mcp2515":
            if self.oscillator_hz not in MCP2515_OSCILLATORS_HZ:
                raise ValueError(
                    f"mcp2515 oscillator_hz must be one of {sorted(MCP2515_OSCILLATORS_HZ)}"
                )
            if self.name not in MCP2515_OVERLAY_INTERFACES:
                raise ValueError(f"no mcp2515 overlay for {self.name}")
            if self.fd:
                raise ValueError("the MCP2515 is a classic CAN controller: fd must be false")
        if self.controller == "mcp251xfd" and self.spi is None:
            raise ValueError("mcp251xfd needs spi (the overlay's spi<bus>-<cs> flag)")
        if self.controller == "gs_usb" and (self.interrupt_gpio or self.spi or self.oscillator_hz):
            raise ValueError("a gs_usb adapter has no interrupt_gpio, spi or oscillator_hz")
        if self.fd != (self.data_bitrate is not None):
            raise ValueError("data_bitrate is required with fd = true and allowed only then")
        if (
            self.data_bitrate
            and self.max_data_bitrate
            and self.data_bitrate > self.max_data_bitrate
        ):
            raise ValueError("data_bitrate exceeds max_data_bitrate")
        return self

    def overlay_line(self) -> str | None:
        """The ``dtoverlay=`` line of config.txt this controller needs, or None (USB)."""
        if self.controller == "mcp2515":
            return (
                f"dtoverlay=mcp2515-{self.name},oscillator={self.oscillator_hz},"
                f"interrupt={self.interrupt_gpio}"
            )
        if self.controller == "mcp251xfd":
            line = f"dtoverlay=mcp251xfd,{self.spi},interrupt={self.interrupt_gpio}"
            return line + (f",oscillator={self.oscillator_hz}" if self.oscillator_hz else "")
        return None


class HardwareProfile(_Model):
    """The computer's CAN side: interfaces, boot configuration, kernel modules."""

    description: str
    boot_params: list[BootLine] = []  # config.txt ``dtparam=`` values, e.g. "spi=on"
    kernel_modules: list[Annotated[str, Field(pattern=r"^[a-z0-9_]+$")]] = []
    can: Annotated[list[CanInterface], Field(min_length=1, max_length=4)]

    @model_validator(mode="after")
    def _unique_interfaces(self) -> Self:
        names = [c.name for c in self.can]
        if len(set(names)) != len(names):
            raise ValueError(f"interface names repeat: {names}")
        if any(c.controller != "gs_usb" for c in self.can) and "spi=on" not in self.boot_params:
            raise ValueError('SPI CAN controllers need boot_params = ["spi=on"]')
        return self


class UsbId(_Model):
    vendor: Annotated[str, Field(pattern=r"^[0-9a-f]{4}$")]
    product: Annotated[str, Field(pattern=r"^[0-9a-f]{4}$")]
    model: Annotated[str, Field(pattern=r"^[A-Za-z0-9 ./+()-]{1,60}$")]


class GnssProfile(_Model):
    """How the receiver is attached and who reads it: gpsd, or the agent from the serial port."""

    description: str
    connection: Literal["usb", "uart"]
    read_via: Literal["gpsd", "serial"]
    device: Annotated[str, Field(pattern=r"^/dev/[A-Za-z0-9_./-]+$")]
    baudrate: Annotated[int, Field(gt=0, le=921_600)] = 9600
    usb_ids: list[UsbId] = []  # udev: these receivers get the stable name ``device``
    boot_config: list[BootLine] = []
    disable_serial_console: bool = False
    # Extra DeviceAllow= lines for the agent's unit when it opens the device itself.
    device_allow: list[Annotated[str, Field(pattern=r"^char-[A-Za-z0-9_-]+ rw?$")]] = []

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.connection == "usb" and not self.usb_ids:
            raise ValueError("a usb receiver needs usb_ids for its udev rule")
        if self.connection == "uart" and self.usb_ids:
            raise ValueError("usb_ids apply to usb receivers only")
        return self


class VehicleProfile(_Model):
    """The vehicle bus: bit rate and which protocols the agent speaks on it."""

    description: str
    bitrate: Bitrate
    obd: bool
    j1939: bool
    listen_only: bool = False  # controller never transmits: no ACK, no error frames

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.bitrate not in CLASSIC_BITRATES:
            raise ValueError(f"bitrate must be one of {sorted(CLASSIC_BITRATES)}")
        if not (self.obd or self.j1939):
            raise ValueError("enable obd or j1939: a vehicle profile that reads nothing")
        if self.listen_only and self.obd:
            raise ValueError("OBD-II polling transmits requests: it cannot run listen_only")
        return self


@dataclass(frozen=True, slots=True)
class Profile:
    """One device's three parts, checked against each other."""

    name: str  # "hardware:gnss:vehicle"
    hardware: HardwareProfile
    gnss: GnssProfile
    vehicle: VehicleProfile

    def part(self, kind: str) -> str:
        """The name of one part: ``part("gnss")`` of ``pi-mcp2515:usb:car`` is ``usb``."""
        return self.name.split(":")[PARTS.index(kind)]

    def __post_init__(self) -> None:
        for can in self.hardware.can:
            if self.vehicle.bitrate > can.max_bitrate:
                raise ConfigError(
                    f"profile {self.name}: {can.name} reaches {can.max_bitrate} bit/s, "
                    f"the vehicle bus needs {self.vehicle.bitrate}"
                )


_M = TypeVar("_M", bound=_Model)


def resource_root() -> Traversable:
    """Where ``firmware-config/`` and ``systemd/`` are: the wheel's copy, else the checkout."""
    packaged = resources.files("fleetlink_cloud") / "_firmware"
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[3]
    if (checkout / "firmware-config" / "profiles").is_dir():
        return checkout
    raise ConfigError(
        "firmware-config not found: fleetlink-cloud was installed without its profile data"
    )


def known_parts(part: str, root: Traversable | None = None) -> list[str]:
    """Sorted names of the ``part`` profiles (``hardware``, ``gnss``, ``vehicle``)."""
    folder = (root or resource_root()) / "firmware-config" / "profiles" / part
    if not folder.is_dir():
        return []
    names = (f.name.removesuffix(".toml") for f in folder.iterdir() if f.name.endswith(".toml"))
    return sorted(n for n in names if _PART_NAME.match(n))


def known_profiles(root: Traversable | None = None) -> dict[str, list[str]]:
    """Every part's known names, for help texts and error messages."""
    root = root or resource_root()
    return {part: known_parts(part, root) for part in PARTS}


def load_profile(name: str, root: Traversable | None = None) -> Profile:
    """Load and validate ``HARDWARE:GNSS:VEHICLE``; ConfigError lists the known names."""
    root = root or resource_root()
    pieces = name.split(":")
    if len(pieces) != len(PARTS):
        raise ConfigError(f"profile {name!r} is not HARDWARE:GNSS:VEHICLE; {_choices(root)}")
    hardware, gnss, vehicle = pieces
    return Profile(
        name=name,
        hardware=_load_part(HardwareProfile, "hardware", hardware, root),
        gnss=_load_part(GnssProfile, "gnss", gnss, root),
        vehicle=_load_part(VehicleProfile, "vehicle", vehicle, root),
    )


def _load_part(model: type[_M], part: str, piece: str, root: Traversable) -> _M:
    known = known_parts(part, root)
    if piece not in known:
        raise ConfigError(
            f"unknown {part} profile {piece!r}: known {part} profiles are {', '.join(known)}"
        )
    source = root / "firmware-config" / "profiles" / part / f"{piece}.toml"
    try:
        return model.model_validate(tomllib.loads(source.read_text(encoding="utf-8")))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{part} profile {piece}: not valid TOML: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{part} profile {piece}: {problems}") from exc


def _choices(root: Traversable) -> str:
    return "known: " + "; ".join(
        f"{part} {', '.join(names)}" for part, names in known_profiles(root).items()
    )


def read_template(name: str, root: Traversable | None = None) -> str:
    """The text of ``firmware-config/templates/<name>``."""
    source = (root or resource_root()) / "firmware-config" / "templates" / name
    if not source.is_file():
        raise ConfigError(f"template {name} not found in firmware-config/templates")
    return source.read_text(encoding="utf-8")


def read_edge_unit(root: Traversable | None = None) -> str:
    """The shipped ``systemd/fleetlink-edge.service``, copied into every bundle as it is."""
    source = (root or resource_root()) / "systemd" / "fleetlink-edge.service"
    if not source.is_file():
        raise ConfigError("systemd/fleetlink-edge.service not found")
    return source.read_text(encoding="utf-8")
