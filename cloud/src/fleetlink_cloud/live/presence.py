"""Online/offline rules per vehicle: birth, last-will death, traffic and a heartbeat timeout.

Pure: every rule takes the current ``Presence`` and ``now_ns`` (the cloud's wall clock when the
message was received, in ns) and returns a ``Transition``: the new state and the stream event
it fires, if any. The store keeps the state; ingest applies these rules per message.

Ingest workers on a shared subscription may process a device's messages out of order, so:

- a death names its boot; a death of a boot older than the one last heard from is a stale will
  (the agent restarted) and is ignored;
- a birth or death received before the current state began (``since_ns``) is older news than
  that state and never changes it: a will processed after the reconnect's birth must not take
  the vehicle offline again;
- after a death, traffic of the same boot brings the vehicle back online only when it arrives
  ``revive_after_s`` later: a batch published just before a clean shutdown but processed after
  the death must not revive it, while a device that reconnected before the broker published its
  will keeps talking and is back within seconds;
- traffic never changes the boot of an online vehicle: records that waited in the outbox over a
  reboot keep their old boot id, and a new boot always announces itself with a birth;
- only live-lane traffic, events, acks and status count as signs of life: the history lane is
  the past and never fires real-time events (it still is stored, of course).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

_NS = 1_000_000_000

ONLINE_EVENT = "vehicle.online"
OFFLINE_EVENT = "vehicle.offline"


class Reason(enum.StrEnum):
    """Why the vehicle has its current presence (shown in the API, kept in the store)."""

    NEVER = "never"  # nothing heard yet
    BIRTH = "birth"  # the agent announced itself after connecting
    DATA = "data"  # data arrived from a silent or unannounced boot (a birth may be missed)
    DEATH = "death"  # the agent's clean goodbye or its MQTT last will
    TIMEOUT = "timeout"  # nothing heard for longer than the heartbeat timeout


@dataclass(frozen=True, slots=True)
class Presence:
    """A vehicle's presence. Times are the cloud's receive wall clock in ns, not device time."""

    online: bool = False
    boot_id: int | None = None  # the boot last heard from
    since_ns: int = 0  # when ``online`` last changed
    last_seen_ns: int = 0  # the last sign of life
    reason: Reason = Reason.NEVER


NEVER_SEEN = Presence()


@dataclass(frozen=True, slots=True)
class Transition:
    """The state after a rule, and the stream event type it fires (None: nothing to tell)."""

    state: Presence
    event: str | None = None

    @property
    def changed(self) -> bool:
        return self.event is not None


@dataclass(frozen=True, slots=True)
class PresenceRules:
    """Timeouts of the presence rules, in seconds (``IngestSettings.heartbeat_timeout_s``)."""

    heartbeat_timeout_s: float = 180.0
    revive_after_s: float = 5.0

    def on_birth(self, state: Presence, boot_id: int, now_ns: int) -> Transition:
        """The agent connected (birth on ``status``): online, a new boot always announced."""
        seen = replace(state, last_seen_ns=max(state.last_seen_ns, now_ns))
        if (state.online and state.boot_id == boot_id) or now_ns < state.since_ns:
            return Transition(seen)  # repeated (retained) birth, or older than the state
        return _online(boot_id, now_ns, Reason.BIRTH)

    def on_death(self, state: Presence, boot_id: int, now_ns: int) -> Transition:
        """Clean goodbye or last will: offline, unless the will belongs to an earlier boot."""
        if state.boot_id is not None and state.boot_id != boot_id:
            return Transition(state)  # a stale will of a boot the agent already left behind
        if now_ns < state.since_ns:
            return Transition(state)  # received before the vehicle came (back) online
        if not state.online:
            return Transition(replace(state, boot_id=boot_id))
        return Transition(
            Presence(False, boot_id, now_ns, state.last_seen_ns, Reason.DEATH), OFFLINE_EVENT
        )

    def on_traffic(self, state: Presence, boot_id: int, now_ns: int) -> Transition:
        """A live batch, event batch or ack of ``boot_id`` arrived: a sign of life."""
        seen = max(state.last_seen_ns, now_ns)
        if state.online:
            return Transition(replace(state, last_seen_ns=seen))  # of this boot or an earlier one
        if (
            state.reason is Reason.DEATH
            and state.boot_id == boot_id
            and now_ns - state.since_ns < self.revive_after_s * _NS
        ):
            return Transition(state)  # sent before the goodbye, processed after it
        return _online(boot_id, now_ns, Reason.DATA)

    def on_tick(self, state: Presence, now_ns: int) -> Transition:
        """Periodic check: an online vehicle silent for the heartbeat timeout goes offline."""
        if state.online and now_ns - state.last_seen_ns > self.heartbeat_timeout_s * _NS:
            return Transition(
                Presence(False, state.boot_id, now_ns, state.last_seen_ns, Reason.TIMEOUT),
                OFFLINE_EVENT,
            )
        return Transition(state)

    def silent_since_ns(self, now_ns: int) -> int:
        """Vehicles last seen before this receive time are due for ``on_tick`` (a store query)."""
        return now_ns - int(self.heartbeat_timeout_s * _NS)


def _online(boot_id: int, now_ns: int, reason: Reason) -> Transition:
    return Transition(Presence(True, boot_id, now_ns, now_ns, reason), ONLINE_EVENT)


def is_future(ts_wall_ns: int, now_ns: int, max_clock_skew_s: float) -> bool:
    """Device time more than ``max_clock_skew_s`` ahead of the receive time: a wrong clock.

    Such records never reach the record tables (ingest keeps them as a dead letter, with the
    raw bytes and a reason): a single record from a clock running years ahead would otherwise
    pin "latest by device time" for good.
    """
    return ts_wall_ns - now_ns > max_clock_skew_s * _NS
