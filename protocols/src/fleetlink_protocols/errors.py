"""The protocol's error tree. ``decode_*`` functions raise only these, whatever the input.

ProtocolError
├── MalformedPayload     not msgpack, or the wrong shape or types for its place
├── UnsupportedVersion   a major protocol version this code does not speak
├── PayloadTooLarge      a size limit from ``limits`` exceeded (bytes, entries, string length)
├── InvalidValue         a well-formed field outside its domain (latitude 91, NaN, seq order)
│   └── InvalidDeviceId  a device id that does not match ``DEVICE_ID_PATTERN``
├── UnknownRecordType    a record type tag this version does not know (rest of a batch decodes)
├── UnknownSignalAlias   a signal alias in neither the catalog nor the device's declared extras
└── InvalidTopic         an MQTT topic outside the fleetlink topic tree
"""

from __future__ import annotations

# The names read as what went wrong (httpx style); an "Error" suffix would add nothing.


class ProtocolError(Exception):
    """Base of every error raised by fleetlink_protocols on purpose."""


class MalformedPayload(ProtocolError):
    pass


class UnsupportedVersion(ProtocolError):
    pass


class PayloadTooLarge(ProtocolError):
    pass


class InvalidValue(ProtocolError):
    pass


class InvalidDeviceId(InvalidValue):
    pass


class UnknownRecordType(ProtocolError):
    pass


class UnknownSignalAlias(ProtocolError):
    pass


class InvalidTopic(ProtocolError):
    pass
