"""The REST/WebSocket API: ``create_app(ctx)`` (see ``fleetlink_cloud.api.app``)."""

from __future__ import annotations

from fleetlink_cloud.api.app import create_app
from fleetlink_cloud.api.deps import ApiContext, Principal
from fleetlink_cloud.api.tailer import StreamTailer

__all__ = ["ApiContext", "Principal", "StreamTailer", "create_app"]
