"""Presence rules: birth, death, traffic and heartbeat timeout, including out-of-order input."""

from __future__ import annotations

import pytest

from fleetlink_cloud.live.presence import (
    NEVER_SEEN,
    OFFLINE_EVENT,
    ONLINE_EVENT,
    Presence,
    PresenceRules,
    Reason,
    Transition,
    is_future,
)

S = 1_000_000_000
T0 = 1_717_000_000 * S
BOOT, NEXT_BOOT = 11, 22
RULES = PresenceRules(heartbeat_timeout_s=180.0, revive_after_s=5.0)


def online(
    boot: int = BOOT, since: int = T0, seen: int = T0, reason: Reason = Reason.BIRTH
) -> Presence:
    return Presence(True, boot, since, seen, reason)


def test_first_birth_goes_online_and_fires() -> None:
    assert RULES.on_birth(NEVER_SEEN, BOOT, T0) == Transition(online(), ONLINE_EVENT)


def test_repeated_birth_of_the_current_boot_only_refreshes_last_seen() -> None:
    t = RULES.on_birth(online(), BOOT, T0 + 60 * S)
    assert t == Transition(online(seen=T0 + 60 * S))
    assert not t.changed


def test_birth_of_a_new_boot_is_a_reboot_and_fires_again() -> None:
    t = RULES.on_birth(online(), NEXT_BOOT, T0 + 30 * S)
    assert t == Transition(online(NEXT_BOOT, T0 + 30 * S, T0 + 30 * S), ONLINE_EVENT)


def test_birth_received_before_the_applied_death_is_stale() -> None:
    dead = Presence(False, BOOT, T0 + 10 * S, T0 + 5 * S, Reason.DEATH)
    t = RULES.on_birth(dead, BOOT, T0 + 3 * S)  # connect, then goodbye; processed the other way
    assert t == Transition(dead)


def test_death_of_the_current_boot_goes_offline_keeping_last_seen() -> None:
    t = RULES.on_death(online(seen=T0 + 40 * S), BOOT, T0 + 50 * S)
    assert t == Transition(
        Presence(False, BOOT, T0 + 50 * S, T0 + 40 * S, Reason.DEATH), OFFLINE_EVENT
    )


def test_will_of_an_earlier_boot_is_ignored() -> None:
    state = online(NEXT_BOOT)
    assert RULES.on_death(state, BOOT, T0 + S) == Transition(state)


def test_will_received_before_the_reconnect_birth_is_ignored() -> None:
    # Link cut: the broker publishes the will at T0+9 s, the agent's birth arrives at T0+10 s,
    # and another worker processes the birth first.
    back = online(since=T0 + 10 * S, seen=T0 + 10 * S)
    assert RULES.on_death(back, BOOT, T0 + 9 * S) == Transition(back)


def test_death_while_offline_fires_nothing() -> None:
    timed_out = Presence(False, BOOT, T0, T0 - 200 * S, Reason.TIMEOUT)
    assert RULES.on_death(timed_out, BOOT, T0 + S) == Transition(timed_out)
    assert RULES.on_death(NEVER_SEEN, BOOT, T0) == Transition(Presence(boot_id=BOOT))


def test_traffic_keeps_an_online_vehicle_online() -> None:
    t = RULES.on_traffic(online(), BOOT, T0 + 7 * S)
    assert t == Transition(online(seen=T0 + 7 * S))


def test_traffic_never_moves_last_seen_backwards() -> None:
    state = online(seen=T0 + 9 * S)
    assert RULES.on_traffic(state, BOOT, T0 + 2 * S) == Transition(state)


def test_traffic_of_an_earlier_boot_does_not_change_the_boot() -> None:
    # Records that waited in the outbox over a reboot keep their old boot id.
    state = online(NEXT_BOOT)
    assert RULES.on_traffic(state, BOOT, T0 + S) == Transition(online(NEXT_BOOT, seen=T0 + S))


def test_traffic_sent_before_the_goodbye_does_not_revive() -> None:
    dead = Presence(False, BOOT, T0, T0 - S, Reason.DEATH)
    assert RULES.on_traffic(dead, BOOT, T0 + 4 * S) == Transition(dead)
    assert RULES.on_traffic(dead, BOOT, T0 - 2 * S) == Transition(dead)  # received before it


def test_traffic_well_after_the_death_revives_with_reason_data() -> None:
    dead = Presence(False, BOOT, T0, T0 - S, Reason.DEATH)
    t = RULES.on_traffic(dead, BOOT, T0 + 5 * S)
    assert t == Transition(
        online(since=T0 + 5 * S, seen=T0 + 5 * S, reason=Reason.DATA), ONLINE_EVENT
    )


@pytest.mark.parametrize(
    "state",
    [
        NEVER_SEEN,
        Presence(False, BOOT, T0 - 60 * S, T0 - 240 * S, Reason.TIMEOUT),
        Presence(False, BOOT, T0 - S, T0 - 2 * S, Reason.DEATH),  # another boot's data: new boot
    ],
)
def test_traffic_of_an_offline_vehicle_brings_it_online(state: Presence) -> None:
    boot = NEXT_BOOT if state.reason is Reason.DEATH else BOOT
    t = RULES.on_traffic(state, boot, T0)
    assert t == Transition(Presence(True, boot, T0, T0, Reason.DATA), ONLINE_EVENT)


def test_heartbeat_timeout() -> None:
    state = online(seen=T0)
    assert RULES.on_tick(state, T0 + 180 * S) == Transition(state)  # exactly the timeout: fine
    t = RULES.on_tick(state, T0 + 180 * S + 1)
    assert t == Transition(
        Presence(False, BOOT, T0 + 180 * S + 1, T0, Reason.TIMEOUT), OFFLINE_EVENT
    )
    offline = t.state
    assert RULES.on_tick(offline, T0 + 999 * S) == Transition(offline)
    assert RULES.silent_since_ns(T0 + 180 * S) == T0


def test_a_drive_through_every_rule() -> None:
    state = NEVER_SEEN
    events: list[str | None] = []
    for rule, args in [
        (RULES.on_birth, (BOOT, T0)),
        (RULES.on_traffic, (BOOT, T0 + S)),
        (RULES.on_death, (BOOT, T0 + 60 * S)),  # link cut: the will
        (RULES.on_birth, (BOOT, T0 + 62 * S)),  # reconnected
        (RULES.on_traffic, (BOOT, T0 + 63 * S)),
    ]:
        t = rule(state, *args)
        state, events = t.state, [*events, t.event]
    assert events == [ONLINE_EVENT, None, OFFLINE_EVENT, ONLINE_EVENT, None]
    assert state == online(since=T0 + 62 * S, seen=T0 + 63 * S)
    t = RULES.on_tick(state, T0 + 63 * S + 181 * S)
    assert (t.event, t.state.reason, t.state.last_seen_ns) == (
        OFFLINE_EVENT,
        Reason.TIMEOUT,
        T0 + 63 * S,
    )


def test_is_future() -> None:
    assert not is_future(T0 + 300 * S, T0, 300.0)
    assert is_future(T0 + 300 * S + 1, T0, 300.0)
    assert not is_future(T0 - 10**6 * S, T0, 300.0)  # the past is never "future"
