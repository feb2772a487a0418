"""The agent's error tree. Library errors are translated to these at the module that owns them.

EdgeError
├── ConfigError          invalid or unreadable configuration
├── SourceError          a data source failed (device gone, gpsd unreachable)
│   └── SourceClosed     the source ended (end of a replay file, clean shutdown)
├── DecodeError          bytes from a source could not be decoded (counted, never fatal)
├── OutboxError          the local store failed (disk full, corrupt file)
└── UplinkError          the MQTT link failed
    ├── BrokerRefused    the broker refused the connection (bad credentials, not authorised)
    ├── PublishRejected  the broker refused a publish (ACL denial reported in PUBACK)
    └── NotDelivered     the broker took a publish but had no subscriber for it (PUBACK 0x10)
"""

from __future__ import annotations


class EdgeError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(EdgeError):
    pass


class SourceError(EdgeError):
    pass


class SourceClosed(SourceError):
    pass


class DecodeError(EdgeError):
    pass


class OutboxError(EdgeError):
    pass


class UplinkError(EdgeError):
    pass


class BrokerRefused(UplinkError):
    pass


class PublishRejected(UplinkError):
    pass


class NotDelivered(UplinkError):
    pass
