"""msgpack in and out, and typed readers for decoded fields. The only module importing msgpack.

Every failure of the msgpack library is translated here into a ProtocolError, so that decoders
built on these helpers raise nothing else, whatever bytes they are given.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import msgpack

from fleetlink_protocols.errors import InvalidValue, MalformedPayload, PayloadTooLarge

INT64_MIN = -(2**63)
INT63_MAX = 2**63 - 1
"""Largest id or sequence number: fits a signed 64-bit column (SQLite INTEGER, bigint)."""


def pack(obj: object, limit: int, what: str) -> bytes:
    """Encode ``obj``; raise PayloadTooLarge if the result exceeds ``limit`` bytes."""
    try:
        data = msgpack.packb(obj, use_bin_type=True)
    except (OverflowError, TypeError, ValueError) as exc:
        # Encoders validate their fields first, so this only fires on a caller's odd type.
        raise InvalidValue(f"{what}: cannot encode: {exc}") from exc
    if len(data) > limit:
        raise PayloadTooLarge(f"{what}: {len(data)} bytes exceeds the limit of {limit}")
    return data


def pack_envelope(head: list[Any], rows: list[bytes], limit: int, what: str) -> bytes:
    """Encode ``[*head, [rows...]]`` around rows already packed by ``pack_row``."""
    packer = msgpack.Packer(use_bin_type=True)
    try:
        parts = [packer.pack_array_header(len(head) + 1), *(packer.pack(f) for f in head)]
    except (OverflowError, TypeError, ValueError) as exc:
        raise InvalidValue(f"{what}: cannot encode: {exc}") from exc
    data = b"".join([*parts, packer.pack_array_header(len(rows)), *rows])
    if len(data) > limit:
        raise PayloadTooLarge(f"{what}: {len(data)} bytes exceeds the limit of {limit}")
    return data


def pack_row(row: list[Any], limit: int, what: str) -> bytes:
    """Encode one flat row (values and one level of maps), floats as float32 where exact.

    A float32 costs 5 bytes against a float64's 9; the decoder reads either as the same Python
    float, so a value survives unchanged whichever width it travelled in.
    """
    packer = msgpack.Packer(use_bin_type=True, use_single_float=_floats_fit_f32(row))
    try:
        data = packer.pack(row)
    except (OverflowError, TypeError, ValueError) as exc:
        raise InvalidValue(f"{what}: cannot encode: {exc}") from exc
    if len(data) > limit:
        raise PayloadTooLarge(f"{what}: {len(data)} bytes exceeds the limit of {limit}")
    return data


def _floats_fit_f32(row: list[Any]) -> bool:
    """True if every float in the row, or in a map inside it, is exact as an IEEE float32."""
    for value in row:
        if type(value) is float and not _fits_f32(value):
            return False
        if type(value) is dict and not all(
            _fits_f32(v) for v in value.values() if type(v) is float
        ):
            return False
    return True


def _fits_f32(value: float) -> bool:
    try:
        narrowed: float = struct.unpack(">f", struct.pack(">f", value))[0]
    except OverflowError:
        return False
    return narrowed == value


def unpack(data: bytes, limit: int, what: str) -> Any:
    """Decode one msgpack object spanning ``data``. Raises MalformedPayload, PayloadTooLarge."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedPayload(f"{what}: expected bytes, got {type(data).__name__}")
    if len(data) > limit:
        raise PayloadTooLarge(f"{what}: {len(data)} bytes exceeds the limit of {limit}")
    try:
        # strict_map_key=False admits int keys; readers below check every key's type anyway.
        return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:  # msgpack raises ValueError, TypeError, StackError, ExtraData...
        raise MalformedPayload(f"{what}: not a msgpack object: {type(exc).__name__}") from exc


def at(arr: list[Any], index: int) -> Any:
    """Element ``index`` or None past the end: fields missing at the end of an array are absent."""
    return arr[index] if index < len(arr) else None


def array(value: object, what: str, min_len: int = 0) -> list[Any]:
    if type(value) is not list:
        raise MalformedPayload(f"{what}: expected an array, got {type(value).__name__}")
    if len(value) < min_len:
        raise MalformedPayload(f"{what}: expected at least {min_len} elements, got {len(value)}")
    return value


def mapping(value: object, what: str, max_len: int) -> dict[Any, Any]:
    if type(value) is not dict:
        raise MalformedPayload(f"{what}: expected a map, got {type(value).__name__}")
    if len(value) > max_len:
        raise PayloadTooLarge(f"{what}: {len(value)} entries exceed the limit of {max_len}")
    return value


def integer(value: object, what: str, lo: int = INT64_MIN, hi: int = INT63_MAX) -> int:
    """An int (never a bool) in ``lo..hi``: wrong type is malformed, out of range is invalid."""
    if type(value) is not int:
        raise MalformedPayload(f"{what}: expected an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise InvalidValue(f"{what}: {value} outside {lo}..{hi}")
    return value


def opt_integer(value: object, what: str, lo: int = INT64_MIN, hi: int = INT63_MAX) -> int | None:
    return None if value is None else integer(value, what, lo, hi)


def boolean(value: object, what: str) -> bool:
    if type(value) is not bool:
        raise MalformedPayload(f"{what}: expected a boolean, got {type(value).__name__}")
    return value


def text(value: object, what: str, max_len: int) -> str:
    if type(value) is not str:
        raise MalformedPayload(f"{what}: expected a string, got {type(value).__name__}")
    if len(value) > max_len:
        raise PayloadTooLarge(f"{what}: {len(value)} characters exceed the limit of {max_len}")
    return value


def finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise InvalidValue(f"{what}: {value} is not a finite number")
    return value


def check_text(value: str, what: str, max_len: int) -> str:
    """Encoder-side check of a string field's type and length."""
    if not isinstance(value, str):
        raise InvalidValue(f"{what}: expected a string, got {type(value).__name__}")
    if len(value) > max_len:
        raise PayloadTooLarge(f"{what}: {len(value)} characters exceed the limit of {max_len}")
    return value


def check_int(value: int, what: str, lo: int = INT64_MIN, hi: int = INT63_MAX) -> int:
    """Encoder-side check of an integer field's type and range."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValue(f"{what}: expected an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise InvalidValue(f"{what}: {value} outside {lo}..{hi}")
    return int(value)
