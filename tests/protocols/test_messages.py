"""Birth/death, commands, acks and configuration documents."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetlink_protocols.catalog import AliasTable
from fleetlink_protocols.errors import (
    InvalidDeviceId,
    InvalidValue,
    MalformedPayload,
    PayloadTooLarge,
    ProtocolError,
    UnsupportedVersion,
)
from fleetlink_protocols.limits import MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH, MAX_PENDING_KEYS
from fleetlink_protocols.messages import (
    AckStatus,
    Birth,
    Command,
    CommandAck,
    ConfigDocument,
    Death,
    ReportedConfig,
    decode_ack,
    decode_command,
    decode_config,
    decode_reported_config,
    decode_status,
    encode_ack,
    encode_birth,
    encode_command,
    encode_config,
    encode_death,
    encode_reported_config,
)

T0 = 1_717_243_200_000_000_000
EXTRAS = AliasTable({"Acme.Cargo.Temperature": 1024})


def test_birth_round_trip_carries_the_alias_table() -> None:
    birth = Birth("veh-001", 2**63 - 1, "1.2.3+g4e5f", T0, EXTRAS)
    decoded = decode_status(encode_birth(birth))
    assert decoded == birth
    assert decoded.online
    assert isinstance(decoded, Birth)
    assert decoded.aliases.path_of(1024) == "Acme.Cargo.Temperature"
    assert decoded.aliases.fingerprint == EXTRAS.fingerprint


def test_death_is_small_and_says_offline() -> None:
    will = encode_death("veh-001", 42)
    assert len(will) < 32
    assert decode_status(will) == Death("veh-001", 42)
    assert not decode_status(will).online


def test_command_and_ack_round_trip() -> None:
    cmd = Command("4f1c2a9e-0b7d", "set_sampling", {"period_s": 2.5, "paths": ["a", "b"]}, T0)
    assert decode_command(encode_command(cmd)) == cmd
    assert decode_command(encode_command(Command("c1", "reboot"))) == Command("c1", "reboot")
    for status in AckStatus:
        ack = CommandAck("c1", status, "why", T0)
        assert decode_ack(encode_ack(ack)) == ack
    assert decode_ack(encode_ack(CommandAck("c1", AckStatus.ACCEPTED))) == CommandAck(
        "c1", AckStatus.ACCEPTED
    )


def test_config_round_trip_with_and_without_error() -> None:
    desired = ConfigDocument(7, {"sampling": {"period_s": 1.0, "on": True, "x": None}})
    assert decode_config(encode_config(desired)) == desired
    refused = ConfigDocument(6, {}, "unknown key sampling.foo")
    assert decode_config(encode_config(refused)) == refused


def test_reported_config_round_trip_and_compatibility_with_the_config_layout() -> None:
    applied = ReportedConfig(8, {"sampling": {"position_interval_s": 2.0}}, None, ("a.b",))
    assert decode_reported_config(encode_reported_config(applied)) == applied
    refused = ReportedConfig(8, {}, "sampling.x: Extra inputs", refused_version=9)
    assert decode_reported_config(encode_reported_config(refused)) == refused
    # The first four fields are the config message: either decoder reads either payload.
    assert decode_config(encode_reported_config(refused)) == ConfigDocument(
        8, {}, "sampling.x: Extra inputs"
    )
    old = encode_config(ConfigDocument(6, {}, "unknown key sampling.foo"))
    assert decode_reported_config(old) == ReportedConfig(6, {}, "unknown key sampling.foo")
    assert encode_reported_config(ReportedConfig(6, {}, "unknown key sampling.foo")) == old


def test_reported_config_limits() -> None:
    too_many = tuple(f"s.k{i}" for i in range(MAX_PENDING_KEYS + 1))
    with pytest.raises(PayloadTooLarge):
        encode_reported_config(ReportedConfig(1, {}, pending_restart=too_many))
    with pytest.raises(PayloadTooLarge):
        decode_reported_config(msgpack.packb([1, 1, {}, None, list(too_many)]))
    with pytest.raises(MalformedPayload):
        decode_reported_config(msgpack.packb([1, 1, {}, None, "a.b"]))
    with pytest.raises(InvalidValue):
        encode_reported_config(ReportedConfig(1, {}, refused_version=-1))


def test_unknown_trailing_fields_are_ignored_and_new_major_versions_refused() -> None:
    raw = msgpack.unpackb(encode_command(Command("c1", "reboot", {}, T0)))
    assert decode_command(msgpack.packb([*raw, "v1.1 field"])) == Command("c1", "reboot", {}, T0)
    with pytest.raises(UnsupportedVersion):
        decode_command(msgpack.packb([2, *raw[1:]]))
    with pytest.raises(UnsupportedVersion):
        decode_status(msgpack.packb([3]))


def test_invalid_messages_are_refused_on_encode() -> None:
    with pytest.raises(InvalidDeviceId):
        encode_death("veh/1", 1)
    with pytest.raises(InvalidValue):
        encode_command(Command("bad id with spaces", "reboot"))
    with pytest.raises(InvalidValue):
        encode_config(ConfigDocument(1, {"x": float("inf")}))
    with pytest.raises(InvalidValue):
        encode_config(ConfigDocument(1, {"x": object()}))  # type: ignore[dict-item]
    deep: dict[str, object] = {}
    node = deep
    for _ in range(MAX_CONFIG_DEPTH + 1):
        node["d"] = {}
        node = node["d"]  # type: ignore[assignment]
    with pytest.raises(InvalidValue):
        encode_config(ConfigDocument(1, deep))  # type: ignore[arg-type]
    with pytest.raises(PayloadTooLarge):
        encode_config(ConfigDocument(1, {f"k{i}": "x" * 250 for i in range(400)}))
    assert MAX_CONFIG_BYTES < 400 * 250


def test_unknown_ack_status_is_invalid() -> None:
    with pytest.raises(InvalidValue):
        decode_ack(msgpack.packb([1, "c1", 9, ""]))


_DECODERS = (decode_status, decode_command, decode_ack, decode_config, decode_reported_config)


@given(st.binary(max_size=300))
def test_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    for decode in _DECODERS:
        with contextlib.suppress(ProtocolError):
            decode(data)


_LEAF = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=8)
)
_OBJ = st.recursive(
    _LEAF,
    lambda kids: (
        st.lists(kids, max_size=6)
        | st.dictionaries(st.text(max_size=5) | st.integers(), kids, max_size=5)
    ),
    max_leaves=30,
)


@given(st.lists(_OBJ, max_size=8), st.sampled_from([0, 1, 2]))
def test_random_msgpack_arrays_raise_only_protocol_errors(
    fields: list[object], version: int
) -> None:
    try:
        data = msgpack.packb([version, *fields])
    except (OverflowError, ValueError, TypeError):
        return  # not representable in msgpack: nothing a peer could send
    for decode in _DECODERS:
        with contextlib.suppress(ProtocolError):
            decode(data)


def test_malformed_status_is_malformed() -> None:
    with pytest.raises(MalformedPayload):
        decode_status(msgpack.packb([1, "yes", "veh", 1]))
    with pytest.raises(MalformedPayload):
        decode_status(msgpack.packb([1, True, "veh", 1]))  # a birth needs all its fields
