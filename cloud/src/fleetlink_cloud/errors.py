"""The cloud service's error tree. Library errors are translated where the library is used.

CloudError
├── ConfigError        invalid or unreadable configuration
├── StoreError         the database failed (connection lost, migration failed)
│   └── NotFound       no such vehicle, command, webhook...
├── IngestError        a message could not be ingested (goes to dead letters, never fatal)
├── BrokerError        the MQTT link failed
│   └── BrokerRefused  bad credentials / not authorised
└── AuthError          missing or invalid token (401) / wrong scope (403)
"""

from __future__ import annotations


class CloudError(Exception):
    """Base of every error the cloud service raises on purpose."""


class ConfigError(CloudError):
    pass


class StoreError(CloudError):
    pass


class NotFound(StoreError):
    pass


class IngestError(CloudError):
    pass


class BrokerError(CloudError):
    pass


class BrokerRefused(BrokerError):
    pass


class AuthError(CloudError):
    pass
