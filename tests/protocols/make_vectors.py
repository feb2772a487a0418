"""Write the golden vectors of protocol v1 into tests/protocols/vectors/ (run by hand, once).

    uv run python -m tests.protocols.make_vectors

Each vector is a pair: ``NAME.json`` (the input, in plain JSON any implementation can read)
and ``NAME.msgpack.hex`` (the exact bytes protocol v1 gives for it). ``test_vectors`` rebuilds
the input from the JSON, encodes it and compares the bytes, then decodes them back. Rerunning
this script must not change a committed vector; if it does, the wire format changed.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleetlink_protocols import codec, messages
from fleetlink_protocols.catalog import SIGNALS, AliasTable
from fleetlink_protocols.codec import Batch
from fleetlink_protocols.messages import (
    AckStatus,
    Birth,
    Command,
    CommandAck,
    ConfigDocument,
    Death,
    ReportedConfig,
)
from fleetlink_protocols.records import (
    Dtc,
    DtcSource,
    Entry,
    Event,
    FixMode,
    Health,
    Position,
    Record,
    SignalValue,
)

VECTORS_DIR = Path(__file__).resolve().parent / "vectors"
CATALOG_SNAPSHOT = VECTORS_DIR / "catalog_aliases.json"

T0 = 1_717_243_200_000_000_000  # 2024-06-01T12:00:00Z
DEVICE = "veh-0001"
BOOT = 0x1234_5678_9ABC_DEF0
EXTRAS = {"Acme.Body.RearDoor.IsOpen": 1024, "Acme.Cargo.Temperature": 1025}

RECORD_TYPES: dict[str, type[Record]] = {
    "position": Position,
    "signal": SignalValue,
    "dtc": Dtc,
    "event": Event,
    "health": Health,
}
MESSAGE_TYPES: dict[str, type[Any]] = {
    "birth": Birth,
    "death": Death,
    "command": Command,
    "ack": CommandAck,
    "config": ConfigDocument,
    "config_reported": ReportedConfig,
}


def record_to_json(record: Record) -> dict[str, Any]:
    name = next(k for k, v in RECORD_TYPES.items() if isinstance(record, v))
    fields = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    # Enums become their numbers; bools stay bools.
    plain = {
        k: int(v) if isinstance(v, int) and type(v) is not bool else v for k, v in fields.items()
    }
    return {"type": name, **plain}


def record_from_json(obj: dict[str, Any]) -> Record:
    fields = {k: v for k, v in obj.items() if k != "type"}
    if obj["type"] == "position":
        fields["mode"] = FixMode(fields.get("mode", FixMode.FIX_3D))
    if obj["type"] == "dtc":
        fields["source"] = DtcSource(fields["source"])
    return RECORD_TYPES[obj["type"]](**fields)


def to_json(obj: Any) -> dict[str, Any]:
    """The JSON form of a record, batch or control message."""
    if isinstance(obj, Batch):
        return {
            "kind": "batch",
            "device_id": obj.device_id,
            "boot_id": obj.boot_id,
            "entries": [{"seq": e.seq, "record": record_to_json(e.record)} for e in obj.entries],
        }
    if isinstance(obj, tuple(RECORD_TYPES.values())):
        return {"kind": "record", "record": record_to_json(obj)}
    kind = next(k for k, v in MESSAGE_TYPES.items() if isinstance(obj, v))
    fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, Birth):
        fields["aliases"] = dict(obj.aliases.extras)
    if isinstance(obj, CommandAck):
        fields["status"] = obj.status.name
    return {"kind": kind, **fields}


def from_json(obj: dict[str, Any]) -> Any:
    kind = obj["kind"]
    if kind == "batch":
        entries = tuple(Entry(e["seq"], record_from_json(e["record"])) for e in obj["entries"])
        return Batch(obj["device_id"], obj["boot_id"], entries)
    if kind == "record":
        return record_from_json(obj["record"])
    fields = {k: v for k, v in obj.items() if k not in ("kind", "aliases_for_batch")}
    if kind == "birth":
        fields["aliases"] = AliasTable(fields["aliases"])
    if kind == "ack":
        fields["status"] = AckStatus[fields["status"]]
    if kind == "config_reported":
        fields["pending_restart"] = tuple(fields["pending_restart"])
    return MESSAGE_TYPES[kind](**fields)


def encoder_for(obj: Any, aliases: AliasTable | None) -> Callable[[], bytes]:
    """The encoding function protocol v1 defines for ``obj``."""
    if isinstance(obj, Batch):
        return lambda: codec.encode_batch(obj, aliases)
    if isinstance(obj, Birth):
        return lambda: messages.encode_birth(obj)
    if isinstance(obj, Death):
        return lambda: messages.encode_death(obj.device_id, obj.boot_id)
    if isinstance(obj, Command):
        return lambda: messages.encode_command(obj)
    if isinstance(obj, CommandAck):
        return lambda: messages.encode_ack(obj)
    if isinstance(obj, ConfigDocument):
        return lambda: messages.encode_config(obj)
    if isinstance(obj, ReportedConfig):
        return lambda: messages.encode_reported_config(obj)
    return lambda: codec.encode_record(obj)


def _mixed_batch() -> Batch:
    fixes = codec.example_positions(3)
    records: list[Record] = [
        fixes[0],
        SignalValue(T0 + 20_000_000, "Vehicle.Speed", 48.3),
        SignalValue(T0 + 20_000_000, "Vehicle.Powertrain.CombustionEngine.Speed", 1712.5),
        SignalValue(T0 + 40_000_000, "Acme.Body.RearDoor.IsOpen", False),
        SignalValue(T0 + 40_000_000, "Acme.Cargo.Temperature", 4.5),
        SignalValue(T0 + 60_000_000, "Acme.Trailer.Id", "TR-778"),  # not declared: inline path
        fixes[1],
        Dtc(T0 + 1_500_000_000, DtcSource.J1939, "110-0", 0, True, 110, 0, 1, 0x04),
        Event(T0 + 1_700_000_000, "harsh_braking", {"decel_mps2": -4.25, "speed_kmh": 52}),
        fixes[2],
        Health(T0 + 2_000_000_000, {"can_frames": 183_204, "nmea_rejected": 3}),
    ]
    seqs = [500, 501, 502, 503, 504, 505, 506, 510, 511, 512, 520]  # gaps: other lanes, eviction
    return Batch(DEVICE, BOOT, tuple(Entry(s, r) for s, r in zip(seqs, records, strict=True)))


def vectors() -> dict[str, tuple[Any, AliasTable | None]]:
    """Name -> (input, alias table for batches)."""
    fix = codec.example_positions(1)[0]
    ten = tuple(Entry(1000 + i, f) for i, f in enumerate(codec.example_positions(10)))
    small = codec.example_positions(2)
    return {
        "record_position_full": (fix, None),
        "record_position_minimal": (Position(T0 + 123_456_789, -33.8688197, 151.2092955), None),
        "record_signal_float": (SignalValue(T0, "Vehicle.Speed", 48.25), None),
        "record_signal_int_inline_path": (SignalValue(T0, "Acme.Body.DoorCount", 4), None),
        "record_signal_string": (
            SignalValue(T0, "Vehicle.VehicleIdentification.VIN", "WVWZZZ1JZXW000001"),
            None,
        ),
        "record_dtc_obd": (Dtc(T0, DtcSource.OBD, "P0301", 0x7E8), None),
        "record_dtc_j1939": (Dtc(T0, DtcSource.J1939, "110-0", 0, False, 110, 0, 3, 4), None),
        "record_event": (Event(T0, "ignition_on", {"battery_v": 12.6}), None),
        "record_health": (Health(T0, {"can_frames": 1000, "outbox_evicted": 0}), None),
        "batch_small": (
            Batch(DEVICE, BOOT, (Entry(7, small[0]), Entry(8, small[1]))),
            None,
        ),
        "batch_positions_10": (Batch(DEVICE, BOOT, ten), None),
        "batch_mixed_extras": (_mixed_batch(), AliasTable(EXTRAS)),
        "birth": (Birth(DEVICE, BOOT, "0.1.0", T0 - 30_000_000_000, AliasTable(EXTRAS)), None),
        "death": (Death(DEVICE, BOOT), None),
        "command": (
            Command("4f1c2a9e-0b7d-4c1e-9a53-2d8e6f1b7c30", "set_sampling", {"period_s": 5}, T0),
            None,
        ),
        "ack_done": (
            CommandAck("4f1c2a9e-0b7d-4c1e-9a53-2d8e6f1b7c30", AckStatus.DONE, "", T0),
            None,
        ),
        "config_desired": (
            ConfigDocument(7, {"sampling": {"position_period_s": 1.0, "can": ["obd", "j1939"]}}),
            None,
        ),
        "config_reported_error": (ConfigDocument(6, {}, "unknown key sampling.foo"), None),
        "config_reported_applied": (
            ReportedConfig(
                8,
                {"sampling": {"position_interval_s": 2.0}, "uplink": {"batch_max_records": 100}},
                pending_restart=("uplink.batch_max_records",),
            ),
            None,
        ),
        "config_reported_refused": (
            ReportedConfig(
                8,
                {"sampling": {"position_interval_s": 2.0}},
                "sampling.position_interval_s: Input should be greater than or equal to 0",
                refused_version=9,
            ),
            None,
        ),
    }


def write_vector(name: str, obj: Any, aliases: AliasTable | None) -> None:
    doc = to_json(obj)
    if aliases is not None:
        doc["aliases_for_batch"] = dict(aliases.extras)
    (VECTORS_DIR / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
    (VECTORS_DIR / f"{name}.msgpack.hex").write_text(encoder_for(obj, aliases)().hex() + "\n")


def main() -> int:
    VECTORS_DIR.mkdir(exist_ok=True)
    for name, (obj, aliases) in vectors().items():
        write_vector(name, obj, aliases)
    snapshot = {str(s.alias): s.path for s in SIGNALS}
    CATALOG_SNAPSHOT.write_text(json.dumps(snapshot, indent=1) + "\n")
    print(f"wrote {len(vectors())} vectors and the alias snapshot to {VECTORS_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
