"""One round of the reallocation rules: evaluate the fleet's snapshot, act on what fired.

The rules themselves are pure (``dispatch.rules.evaluate``). A ``hold`` is logged at debug and
counted per reason; a ``reallocate`` asks the mover (the dispatcher) to find the job another
vehicle by instant assignment, the old one excluded. When the job moved, or went back to
``new`` because nobody could take it, the round writes an audit row (actor ``dispatch``, method
``REALLOCATE``, the job's path, the rule, the old and new vehicle and the evidence) and a
``job.reallocated`` stream event with the same facts. A mover that finds the job changed since
the snapshot moves nothing and nothing is written; a failing move is logged and counted, and
the round goes on with the next firing.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from fleetlink_cloud.bus import StreamEvent
from fleetlink_cloud.dispatch.rules import (
    Action,
    AuditRecord,
    Firing,
    RuleSettings,
    Snapshot,
    audit_record,
    evaluate,
)
from fleetlink_cloud.errors import CloudError
from fleetlink_cloud.store.base import Store

log = logging.getLogger(__name__)

ACTOR: Final = "dispatch"  # who the audit log names for the rules' moves
AUDIT_METHOD: Final = "REALLOCATE"
AUDIT_MOVED: Final = 200
AUDIT_UNASSIGNED: Final = 204  # moved off its vehicle, onto none
MAX_AUDIT_DETAIL: Final = 500


@dataclass(frozen=True, slots=True)
class Moved:
    """What a move did: the job's new vehicle (None: nobody could take it, it is new again)."""

    new_vehicle_id: str | None


Mover = Callable[[Firing], Awaitable[Moved | None]]
"""Moves the firing's job off its vehicle; None when the job changed since the snapshot."""


def reallocated_event(record: AuditRecord, ts_wall_ns: int) -> StreamEvent:
    """The ``job.reallocated`` stream event of one move (``device_id``: the new vehicle, or the
    old one when nobody took the job)."""
    data: dict[str, Any] = {
        "job_id": record["job_id"],
        "reason": "reallocated",
        "rule": record["rule"],
        "old_vehicle_id": record["old_vehicle_id"],
        "new_vehicle_id": record["new_vehicle_id"],
        "evidence": dict(record["evidence"]),
    }
    device = record["new_vehicle_id"] or record["old_vehicle_id"]
    return StreamEvent(0, "job.reallocated", device, ts_wall_ns, data)


def audit_detail(record: AuditRecord) -> str:
    """The audit row's detail: the record as compact JSON, cut to the audit log's limit."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return text[:MAX_AUDIT_DETAIL]


class Reallocation:
    """Acts on rule firings; ``counters`` count holds by reason, moves and failures."""

    def __init__(
        self, store: Store, settings: RuleSettings, move: Mover, clock: Callable[[], int]
    ) -> None:
        self._store = store
        self._settings = settings
        self._move = move
        self._clock = clock
        self.counters: Counter[str] = Counter()

    async def round(self, snapshot: Snapshot) -> list[AuditRecord]:
        """Evaluate ``snapshot`` and act on every firing; returns the moves' audit records."""
        done: list[AuditRecord] = []
        for firing in evaluate(snapshot, self._settings):
            if firing.action is Action.HOLD:
                assert firing.hold is not None
                self.counters[f"hold.{firing.hold.value}"] += 1
                log.debug(
                    "rule %s holds job %s on %s: %s",
                    firing.rule.value,
                    firing.job_id,
                    firing.vehicle_id,
                    firing.hold.value,
                )
                continue
            try:
                record = await self._act(firing)
            except CloudError as exc:
                self.counters["failed"] += 1
                log.warning("reallocating job %s (%s): %s", firing.job_id, firing.rule.value, exc)
                continue
            if record is not None:
                done.append(record)
        return done

    async def _act(self, firing: Firing) -> AuditRecord | None:
        moved = await self._move(firing)
        if moved is None:
            self.counters["skipped"] += 1
            return None
        now = self._clock()
        record = audit_record(firing, moved.new_vehicle_id, now // 1_000_000_000)
        self.counters["moved" if moved.new_vehicle_id else "unassigned"] += 1
        log.info(
            "rule %s moved job %s from %s to %s",
            firing.rule.value,
            firing.job_id,
            firing.vehicle_id,
            moved.new_vehicle_id or "nobody (unassigned)",
        )
        await self._store.add_audit(
            ts_wall_ns=now,
            actor=ACTOR,
            method=AUDIT_METHOD,
            path=f"/v1/jobs/{firing.job_id}",
            status=AUDIT_MOVED if moved.new_vehicle_id else AUDIT_UNASSIGNED,
            detail=audit_detail(record),
        )
        await self._store.append_stream_events([reallocated_event(record, now)])
        return record
