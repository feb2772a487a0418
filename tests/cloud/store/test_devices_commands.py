"""Devices, dead letters and commands."""

from __future__ import annotations

import time

import pytest

from fleetlink_cloud.errors import NotFound
from fleetlink_cloud.store import CommandRow, DeadLetter, Device, Store
from fleetlink_cloud.store.base import AlreadyExists
from tests.cloud.store.records import DEV, T0, S, add

# -- devices -----------------------------------------------------------------------------------


async def test_add_and_get_device(store: Store) -> None:
    created = await store.add_device(DEV, name="Truck 1", password_hash="$7$h", created_wall_ns=T0)
    assert created == Device(DEV, "Truck 1", T0, False, "$7$h")
    assert await store.get_device(DEV) == created
    assert await store.get_device("veh-2") is None


async def test_add_device_without_a_time_reads_the_clock(store: Store) -> None:
    before = time.time_ns()
    device = await store.add_device(DEV, name="n", password_hash="h")
    assert before <= device.created_wall_ns <= time.time_ns()
    assert (await store.get_device(DEV)) == device


async def test_duplicate_device_is_already_exists_and_keeps_the_first(store: Store) -> None:
    await store.add_device(DEV, name="first", password_hash="h1", created_wall_ns=T0)
    with pytest.raises(AlreadyExists):
        await store.add_device(DEV, name="second", password_hash="h2", created_wall_ns=T0 + S)
    assert await store.get_device(DEV) == Device(DEV, "first", T0, False, "h1")
    assert (await store.stats()).counts["devices"] == 1


async def test_list_devices_is_ordered_by_id(store: Store) -> None:
    await add(store, "veh-b", "veh-c", "veh-a")
    assert [d.id for d in await store.list_devices()] == ["veh-a", "veh-b", "veh-c"]


async def test_disable_enable_and_rotate_password(store: Store) -> None:
    await add(store)
    disabled = await store.set_device_disabled(DEV, True)
    assert disabled == Device(DEV, f"{DEV} name", T0, True, "h")
    assert await store.get_device(DEV) == disabled
    assert (await store.set_device_disabled(DEV, False)).disabled is False
    rotated = await store.set_device_password(DEV, "$7$new")
    assert rotated == Device(DEV, f"{DEV} name", T0, False, "$7$new")
    assert await store.list_devices() == [rotated]


async def test_updating_an_unknown_device_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.set_device_disabled("nope", True)
    with pytest.raises(NotFound):
        await store.set_device_password("nope", "h")


# -- dead letters ------------------------------------------------------------------------------


async def test_dead_letters_keep_raw_bytes_in_id_order(store: Store) -> None:
    raw = bytes(range(256))  # every byte value, NUL and invalid UTF-8 included
    first = await store.add_dead_letter(
        topic="fl/v1/veh-1/live", reason="MalformedPayload: x", payload=raw,
        received_wall_ns=T0, device_id=DEV,
    )  # fmt: skip
    second = await store.add_dead_letter(
        topic="junk", reason="NotOurTopic", payload=b"", received_wall_ns=T0 + 1, device_id=None
    )
    assert second > first
    assert await store.list_dead_letters() == [
        DeadLetter(first, "fl/v1/veh-1/live", "MalformedPayload: x", raw, T0, DEV),
        DeadLetter(second, "junk", "NotOurTopic", b"", T0 + 1, None),
    ]
    assert [d.id for d in await store.list_dead_letters(after_id=first)] == [second]
    assert [d.id for d in await store.list_dead_letters(limit=1)] == [first]
    assert (await store.stats()).counts["dead_letters"] == 2


async def test_dead_letter_text_with_nul_is_kept(store: Store) -> None:
    dl = await store.add_dead_letter(
        topic="fl/v1/veh-1/ack", reason="MalformedPayload: 'a\x00b'", payload=b"\x00",
        received_wall_ns=T0, device_id=DEV,
    )  # fmt: skip
    assert await store.list_dead_letters() == [
        DeadLetter(dl, "fl/v1/veh-1/ack", "MalformedPayload: 'a\ufffdb'", b"\x00", T0, DEV)
    ]


# -- commands ----------------------------------------------------------------------------------


async def _command(store: Store, command_id: str, created: int, device: str = DEV) -> CommandRow:
    args = {"key": "sampling.position_s", "value": 5, "nested": {"on": True, "list": [1, 2.5]}}
    return await store.create_command(
        device, command_id, "config.set", args, created_wall_ns=created, expires_wall_ns=T0 + 60 * S
    )


async def test_create_command_is_queued_and_idempotent(store: Store) -> None:
    await add(store)
    row = await _command(store, "c1", T0)
    args = {"key": "sampling.position_s", "value": 5, "nested": {"on": True, "list": [1, 2.5]}}
    assert row == CommandRow(
        "c1", DEV, "config.set", args, "queued", T0, T0 + 60 * S, None, None, ""
    )
    assert await store.get_command("c1") == row
    again = await store.create_command(DEV, "c1", "reboot", {}, created_wall_ns=T0 + S)
    assert again == row
    assert (await store.stats()).counts["commands"] == 1
    assert await store.get_command("c2") is None


async def test_create_command_checks_the_device(store: Store) -> None:
    await add(store, "veh-1", "veh-2")
    await _command(store, "c1", T0, device="veh-1")
    with pytest.raises(NotFound):
        await store.create_command("ghost", "c2", "reboot", {}, created_wall_ns=T0)
    with pytest.raises(AlreadyExists):
        await store.create_command("veh-2", "c1", "reboot", {}, created_wall_ns=T0)
    assert (await store.get_command("c1")) is not None
    assert (await store.stats()).counts["commands"] == 1


async def test_list_and_pending_commands_order(store: Store) -> None:
    await add(store, "veh-1", "veh-2")
    for i, created in enumerate((T0 + 2 * S, T0, T0 + S)):
        await _command(store, f"c{i}", created)
    await _command(store, "other", T0, device="veh-2")
    assert [c.command_id for c in await store.list_commands(DEV)] == ["c0", "c2", "c1"]
    assert [c.command_id for c in await store.list_commands(DEV, limit=2)] == ["c0", "c2"]
    assert [c.command_id for c in await store.pending_commands(DEV)] == ["c1", "c2", "c0"]
    await store.mark_command_sent("c2", T0 + 3 * S)
    assert [c.command_id for c in await store.pending_commands(DEV)] == ["c1", "c0"]
    assert [c.command_id for c in await store.list_commands(DEV, status="sent")] == ["c2"]
    assert [c.command_id for c in await store.list_commands(DEV, status="queued")] == ["c0", "c1"]
    assert await store.list_commands(DEV, status="done") == []


async def test_mark_sent_keeps_the_first_time_and_later_statuses(store: Store) -> None:
    await add(store)
    await _command(store, "c1", T0)
    sent = await store.mark_command_sent("c1", T0 + S)
    assert (sent.status, sent.sent_wall_ns) == ("sent", T0 + S)
    again = await store.mark_command_sent("c1", T0 + 2 * S)
    assert (again.status, again.sent_wall_ns) == ("sent", T0 + S)
    await store.record_command_ack(
        DEV, "c1", status="done", detail="ok", received_wall_ns=T0 + 3 * S
    )
    assert (await store.mark_command_sent("c1", T0 + 4 * S)).status == "done"
    with pytest.raises(NotFound):
        await store.mark_command_sent("nope", T0)


async def test_acks_move_status_forward_and_append_events(store: Store) -> None:
    await add(store)
    await _command(store, "c1", T0)
    await store.mark_command_sent("c1", T0 + S)
    accepted = await store.record_command_ack(
        DEV, "c1", status="accepted", detail="", received_wall_ns=T0 + 2 * S
    )
    assert accepted is not None
    assert (accepted.status, accepted.acked_wall_ns, accepted.detail) == (
        "accepted",
        T0 + 2 * S,
        "",
    )
    done = await store.record_command_ack(
        DEV, "c1", status="done", detail="applied", received_wall_ns=T0 + 3 * S
    )
    assert done is not None
    assert (done.status, done.acked_wall_ns, done.detail) == ("done", T0 + 3 * S, "applied")
    late = await store.record_command_ack(
        DEV, "c1", status="accepted", detail="late", received_wall_ns=T0 + 4 * S
    )
    assert late == done  # a late "accepted" never hides "done", and changes nothing
    redelivered = await store.record_command_ack(
        DEV, "c1", status="done", detail="applied", received_wall_ns=T0 + 5 * S
    )
    assert redelivered == done
    events = await store.stream_events_after(0)
    assert [(e.type, e.device_id, e.ts_wall_ns, dict(e.data)) for e in events] == [
        ("command.acked", DEV, T0 + 2 * S,
         {"command_id": "c1", "name": "config.set", "status": "accepted", "detail": ""}),
        ("command.acked", DEV, T0 + 3 * S,
         {"command_id": "c1", "name": "config.set", "status": "done", "detail": "applied"}),
    ]  # fmt: skip
    assert events[0].id < events[1].id == await store.latest_stream_event_id()


async def test_an_ack_of_an_unknown_or_foreign_command_stores_nothing(store: Store) -> None:
    await add(store, "veh-1", "veh-2")
    await _command(store, "c1", T0, device="veh-1")
    for device, command_id in (("veh-1", "nope"), ("veh-2", "c1")):
        row = await store.record_command_ack(
            device, command_id, status="done", detail="", received_wall_ns=T0 + S
        )
        assert row is None
    row = await store.get_command("c1")
    assert row is not None
    assert (row.status, row.acked_wall_ns, row.detail) == ("queued", None, "")
    assert await store.stream_events_after(0) == []


async def test_ack_detail_is_any_device_text(store: Store) -> None:
    await add(store)
    await _command(store, "c1", T0)
    row = await store.record_command_ack(
        DEV, "c1", status="failed", detail="bad\x00value\t\u00e9", received_wall_ns=T0 + S
    )
    assert row is not None
    assert row.detail == "bad\ufffdvalue\t\u00e9"
    assert (await store.stream_events_after(0))[0].data["detail"] == "bad\ufffdvalue\t\u00e9"


async def test_the_first_final_status_is_kept(store: Store) -> None:
    await add(store)
    await _command(store, "c1", T0)
    failed = await store.record_command_ack(
        DEV, "c1", status="failed", detail="no such key", received_wall_ns=T0 + S
    )
    assert failed is not None
    assert (failed.status, failed.detail) == ("failed", "no such key")
    after = await store.record_command_ack(
        DEV, "c1", status="done", detail="", received_wall_ns=T0 + 2 * S
    )
    assert after == failed
    assert [e.data["status"] for e in await store.stream_events_after(0)] == ["failed"]
