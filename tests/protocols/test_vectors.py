"""Golden vectors: the checked-in bytes are protocol v1; encoders must reproduce them exactly."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fleetlink_protocols import codec, messages
from fleetlink_protocols.catalog import BY_ALIAS, SIGNALS, AliasTable
from fleetlink_protocols.codec import Batch, DecodedBatch
from fleetlink_protocols.records import Entry
from tests.protocols.make_vectors import CATALOG_SNAPSHOT, VECTORS_DIR, encoder_for, from_json

NAMES = sorted(
    p.name.removesuffix(".json") for p in VECTORS_DIR.glob("*.json") if p != CATALOG_SNAPSHOT
)


def _load(name: str) -> tuple[Any, AliasTable | None, bytes]:
    doc = json.loads((VECTORS_DIR / f"{name}.json").read_text())
    extras = doc.get("aliases_for_batch")
    golden = bytes.fromhex((VECTORS_DIR / f"{name}.msgpack.hex").read_text().strip())
    return from_json(doc), None if extras is None else AliasTable(extras), golden


def _decode(obj: Any, data: bytes, aliases: AliasTable | None) -> Any:
    if isinstance(obj, Batch):
        return codec.decode_batch(data, aliases)
    if isinstance(obj, messages.Birth | messages.Death):
        return messages.decode_status(data)
    if isinstance(obj, messages.Command):
        return messages.decode_command(data)
    if isinstance(obj, messages.CommandAck):
        return messages.decode_ack(data)
    if isinstance(obj, messages.ConfigDocument):
        return messages.decode_config(data)
    if isinstance(obj, messages.ReportedConfig):
        return messages.decode_reported_config(data)
    return codec.decode_record(data)


def _expected(obj: Any) -> Any:
    if isinstance(obj, Batch):
        entries = tuple(Entry(e.seq, codec.quantize(e.record)) for e in obj.entries)
        return DecodedBatch(Batch(obj.device_id, obj.boot_id, entries), ())
    if isinstance(obj, messages.Birth | messages.Death | messages.Command):
        return obj
    if isinstance(obj, messages.CommandAck | messages.ConfigDocument | messages.ReportedConfig):
        return obj
    return codec.quantize(obj)


def test_there_are_vectors_for_every_message() -> None:
    assert len(NAMES) >= 20
    kinds = {json.loads((VECTORS_DIR / f"{n}.json").read_text())["kind"] for n in NAMES}
    assert kinds == {
        "record", "batch", "birth", "death", "command", "ack", "config", "config_reported",
    }  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_encoding_reproduces_the_golden_bytes(name: str) -> None:
    obj, aliases, golden = _load(name)
    assert encoder_for(obj, aliases)().hex() == golden.hex()


@pytest.mark.parametrize("name", NAMES)
def test_golden_bytes_decode_to_the_quantized_input(name: str) -> None:
    obj, aliases, golden = _load(name)
    assert _decode(obj, golden, aliases) == _expected(obj)


def test_catalog_aliases_are_never_renumbered_or_reused() -> None:
    snapshot = {int(k): v for k, v in json.loads(CATALOG_SNAPSHOT.read_text()).items()}
    for alias, path in snapshot.items():
        if alias in BY_ALIAS:  # a retired alias may disappear, but never change meaning
            assert BY_ALIAS[alias].path == path, f"alias {alias} was {path}"
    new = {s.alias: s.path for s in SIGNALS if s.alias not in snapshot}
    assert not new, f"new catalog aliases {new}: run tests/protocols/make_vectors.py to pin them"
    for path in snapshot.values():
        assert sum(s.path == path for s in SIGNALS) <= 1
