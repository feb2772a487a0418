"""Size limits of protocol v1. Encoders refuse to exceed them; decoders reject what does.

The limits bound the memory a single message can cost a 1 GB gateway or an ingest worker, and
keep one message well under the broker's default ``message_size_limit``.
"""

from __future__ import annotations

MAX_PAYLOAD_BYTES = 256 * 1024
"""Largest MQTT payload of any fleetlink message (batch, birth, command, config)."""

MAX_RECORD_BYTES = 16 * 1024
"""Largest single record encoded with ``encode_record`` (one outbox row)."""

MAX_BATCH_ENTRIES = 4096
"""Most records in one batch; the uplink splits longer backlogs into several batches."""

MAX_DEVICE_ID_LEN = 64
MAX_NAME_LEN = 64
"""Event kinds, Event.data keys, Health counter names, DTC codes, command names."""

MAX_PATH_LEN = 128
"""Signal paths (VSS dotted names)."""

MAX_TEXT_LEN = 256
"""String values: signal values, Event.data values, command-ack details."""

MAX_EVENT_DATA_ENTRIES = 32
MAX_HEALTH_COUNTERS = 128
MAX_EXTRA_ALIASES = 1024
"""Device-defined signal aliases declared in one birth message."""

MAX_COMMAND_ARGS = 32
MAX_CONFIG_BYTES = 64 * 1024
"""Largest encoded desired/reported configuration message."""

MAX_DESIRED_CONFIG_BYTES = 8 * 1024
"""Largest encoded desired document the cloud publishes on ``dn/config`` (its API refuses more).

Well below MAX_CONFIG_BYTES, so the device's report, which echoes the applied document with the
keys pending a restart and an error, always fits in one message.
"""

MAX_PENDING_KEYS = 256
"""Most ``section.key`` names a reported configuration lists as pending a restart."""

MAX_CONFIG_DEPTH = 8
"""Deepest nesting of maps and lists inside a configuration document or command args."""

MAX_ID_LEN = 64
"""Command ids and agent version strings."""
