"""The job board: offer args (``offers``), the answer rules, pruning and bounds (``job_rules``),
then the board itself (``jobs``) on a real outbox (SQLite) and its file across restarts, and the
job commands through the command handler.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fleetlink_edge.commands import CommandHandler
from fleetlink_edge.config import CommandSettings, JobSettings, OutboxSettings
from fleetlink_edge.errors import OutboxError
from fleetlink_edge.job_rules import (
    Answer,
    AnswerKind,
    Job,
    JobState,
    answered,
    from_document,
    pruned,
    to_document,
    with_offer,
    with_update,
    with_withdrawal,
)
from fleetlink_edge.jobs import JobBoard
from fleetlink_edge.offers import (
    JobNotStored,
    JobRefused,
    UnknownJob,
    offer_args,
    parse_offer,
    parse_update,
)
from fleetlink_edge.outbox import Lane, Outbox
from fleetlink_protocols.messages import AckStatus, Command, CommandAck
from fleetlink_protocols.records import Event, Record
from fleetlink_protocols.topics import Topics

NS = 1_000_000_000
T0 = 1_717_243_200  # 2024-06-01T12:00:00Z, Unix s
NOW_NS = T0 * NS
RESPOND_BY = T0 + 600
KEEP_S = JobSettings().keep_finished_s
A, D, R = AckStatus.ACCEPTED, AckStatus.DONE, AckStatus.REJECTED


def shipment_args(job_id: str = "J-1001", version: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "kind": "shipment",
        "stops": [
            {
                "kind": "pickup",
                "lat": 52.52,
                "lon": 13.405,
                "windows": [[T0 + 1800, T0 + 3600]],
                "service_s": 300,
                "address": "Alexanderplatz 1, Berlin",
            },
            {
                "kind": "delivery",
                "lat": 52.5,
                "lon": 13.3,
                "windows": [[T0 + 5400, T0 + 7200], [T0 + 9000, T0 + 10800]],
                "service_s": 600,
                "note": "ring twice",
            },
        ],
        "customer_ref": "ACME-77",
        "respond_by": RESPOND_BY,
        "version": version,
        **extra,
    }


def single_args(job_id: str = "J-2001", version: int = 1) -> dict[str, Any]:
    stop = {"kind": "single", "lat": 48.1, "lon": 11.6, "windows": [], "service_s": 0}
    return {
        "job_id": job_id,
        "kind": "single",
        "stops": [stop],
        "respond_by": RESPOND_BY,
        "version": version,
    }


def job(args: dict[str, Any], state: JobState = JobState.OFFERED, **fields: Any) -> Job:
    return replace(Job(parse_offer(args), state, NOW_NS, NOW_NS), **fields)


def answer(j: Job, kind: str, now_ns: int = NOW_NS, **fields: Any) -> tuple[Job, Event]:
    return answered(j, Answer(j.job_id, AnswerKind(kind), **fields), now_ns)


# -- offer args ------------------------------------------------------------------------------


def test_an_offer_reads_every_field_and_writes_back_the_same_args() -> None:
    offer = parse_offer(shipment_args())
    assert (offer.job_id, offer.kind, offer.version, offer.respond_by_s) == (
        "J-1001",
        "shipment",
        1,
        RESPOND_BY,
    )
    assert [s.kind for s in offer.stops] == ["pickup", "delivery"]
    assert offer.stops[1].windows == ((T0 + 5400, T0 + 7200), (T0 + 9000, T0 + 10800))
    assert offer.stops[0].address == "Alexanderplatz 1, Berlin"
    assert offer.stops[1].note == "ring twice"
    assert offer.customer_ref == "ACME-77"
    assert offer_args(offer) == shipment_args()
    assert parse_offer(offer_args(offer)) == offer


def test_keys_this_agent_does_not_know_are_ignored() -> None:
    args = shipment_args(priority=7)
    args["stops"][0]["door_code"] = "1234"
    assert parse_offer(args) == parse_offer(shipment_args())


def _without(key: str) -> dict[str, Any]:
    args = shipment_args()
    del args[key]
    return args


def _stop(index: int, **changes: Any) -> dict[str, Any]:
    args = shipment_args()
    args["stops"][index].update(changes)
    return args


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (_without("job_id"), "job_id must be a non-empty string"),
        (shipment_args("J 1"), "is not a plain identifier"),
        (shipment_args("J" * 65), "is not a plain identifier"),
        ({**shipment_args(), "kind": "multi"}, "kind must be one of single, shipment"),
        ({**single_args(), "stops": []}, "a single job has 1 stop(s): single"),
        ({**shipment_args(), "stops": shipment_args()["stops"][:1]}, "2 stop(s): pickup, delivery"),
        (_stop(0, kind="delivery"), "stops[0].kind must be 'pickup'"),
        (_stop(1, lat=91.0), "stops[1].lat must be within ±90 degrees"),
        (_stop(0, lon="13.4"), "stops[0].lon must be a number of degrees"),
        (_stop(0, lon=True), "stops[0].lon must be a number of degrees"),
        (_stop(0, windows=[[T0 + 10, T0]]), "stops[0].windows[0] ends"),
        (_stop(0, windows=[[T0]]), "stops[0].windows[0] must be [start, end]"),
        (_stop(0, windows=[[T0, T0 + 1]] * 17), "at most 16 windows"),
        (_stop(1, service_s=-1), "stops[1].service_s must be an unsigned integer"),
        (_stop(1, service_s=90_000), "stops[1].service_s must be at most 86400"),
        (_stop(0, address="x" * 257), "stops[0].address must be a string of at most 256"),
        ({**shipment_args(), "respond_by": 1.5}, "respond_by must be an unsigned integer"),
        (_without("version"), "version must be an unsigned integer, not None"),
        ({**shipment_args(), "version": True}, "version must be an unsigned integer"),
    ],
)
def test_bad_offer_args_are_refused_naming_the_field(args: dict[str, Any], complaint: str) -> None:
    with pytest.raises(JobRefused, match=None) as caught:
        parse_offer(args)
    assert complaint in str(caught.value)


def test_an_update_must_change_something_known() -> None:
    with pytest.raises(JobRefused, match="neither was given"):
        parse_update({"job_id": "J-1", "priority": 3})
    jobs = {"J-2001": job(single_args(), eta_s=T0 + 99, note="gate 3")}
    cleared, detail = with_update(jobs, parse_update({"job_id": "J-2001", "eta": None}))
    assert (cleared["J-2001"].eta_s, cleared["J-2001"].note, detail) == (
        None,
        "gate 3",
        "job J-2001 updated",
    )
    noted, _ = with_update(jobs, parse_update({"job_id": "J-2001", "note": "gate 4"}))
    assert (noted["J-2001"].eta_s, noted["J-2001"].note) == (T0 + 99, "gate 4")
    with pytest.raises(UnknownJob):
        with_update(jobs, parse_update({"job_id": "J-1", "eta": T0}))


# -- the answer rules ------------------------------------------------------------------------


def test_accepting_an_offer_makes_an_event_with_the_offer_version() -> None:
    accepted, event = answer(job(shipment_args(version=3)), "accept", NOW_NS + 5 * NS)
    assert accepted.state is JobState.ACCEPTED
    assert accepted.changed_wall_ns == NOW_NS + 5 * NS
    assert event == Event(
        NOW_NS + 5 * NS,
        "job.answer",
        {"job_id": "J-1001", "answer": "accept", "offer_version": 3, "reason": "", "late": False},
    )


def test_a_shipment_goes_through_both_stops_to_completed() -> None:
    j, _ = answer(job(shipment_args()), "accept")
    j, pickup = answer(j, "arrived")
    assert (j.state, j.stops_arrived, pickup.data["stop"]) == (JobState.ARRIVED, 1, 0)
    with pytest.raises(JobRefused, match="has arrived at 1 of 2 stops"):
        answer(j, "completed")
    j, delayed = answer(j, "delayed", reason="traffic on A100", delay_s=900)
    assert (j.state, j.delay_s, delayed.data["delay_s"]) == (JobState.ARRIVED, 900, 900)
    j, delivery = answer(j, "arrived")
    assert (j.stops_arrived, delivery.data["stop"]) == (2, 1)
    with pytest.raises(JobRefused, match="arrived at its last stop already"):
        answer(j, "arrived")
    j, done = answer(j, "completed")
    assert (j.state, done.data["answer"]) == (JobState.COMPLETED, "completed")
    with pytest.raises(JobRefused, match="J-1001 is completed already"):
        answer(j, "delayed", reason="late", delay_s=60)


@pytest.mark.parametrize(
    ("state", "kind", "complaint"),
    [
        (
            JobState.OFFERED,
            "completed",
            "is offered; completed is possible only when it is arrived",
        ),
        (JobState.OFFERED, "arrived", "is offered; arrived is possible only when it is accepted"),
        (JobState.OFFERED, "delayed", "is offered; delayed is possible only"),
        (JobState.ACCEPTED, "accept", "is accepted; accept is possible only when it is offered"),
        (JobState.ACCEPTED, "completed", "is accepted; completed is possible only"),
        (JobState.ARRIVED, "reject", "is arrived; reject is possible only"),
        (JobState.REJECTED, "accept", "is rejected already"),
    ],
)
def test_an_answer_its_state_does_not_allow_is_refused(
    state: JobState, kind: str, complaint: str
) -> None:
    fields: dict[str, Any] = {"reason": "why not"}
    if kind == "delayed":
        fields["delay_s"] = 60
    with pytest.raises(JobRefused) as caught:
        answer(job(single_args(), state), kind, **fields)
    assert complaint in str(caught.value)


def test_a_withdrawn_job_takes_no_answer_and_says_why() -> None:
    jobs = {"J-2001": job(single_args(), JobState.ACCEPTED)}
    jobs, detail = with_withdrawal(jobs, "J-2001", "given to another vehicle", NOW_NS + NS)
    assert detail == "job J-2001 withdrawn (was accepted)"
    for kind in ("accept", "arrived", "completed"):
        with pytest.raises(JobRefused, match="withdrawn: given to another vehicle"):
            answer(jobs["J-2001"], kind)
    assert with_withdrawal(jobs, "J-2001", "again", NOW_NS)[0] is jobs
    assert with_withdrawal(jobs, "J-9", "", NOW_NS)[1] == "job J-9 is not on this device"


def test_answering_after_respond_by_is_allowed_but_flagged() -> None:
    offered = job(single_args())
    _, on_time = answer(offered, "accept", RESPOND_BY * NS)
    late_job, late = answer(offered, "reject", RESPOND_BY * NS + 1, reason="too far")
    assert (on_time.data["late"], late.data["late"]) == (False, True)
    assert late_job.state is JobState.REJECTED
    # Once accepted, the deadline is met: later answers are not late.
    accepted, _ = answer(offered, "accept")
    _, arrived = answer(accepted, "arrived", RESPOND_BY * NS + 3600 * NS)
    assert arrived.data["late"] is False


def test_reasons_and_delays_are_checked() -> None:
    offered, accepted = job(single_args()), job(single_args(), JobState.ACCEPTED)
    with pytest.raises(JobRefused, match="reject needs a reason"):
        answer(offered, "reject", reason="  ")
    with pytest.raises(JobRefused, match="delayed needs a reason"):
        answer(accepted, "delayed", delay_s=60)
    for delay in (None, 0, 86_401):
        with pytest.raises(JobRefused, match="delayed needs delay_s from 1 to 86400"):
            answer(accepted, "delayed", reason="traffic", delay_s=delay)
    with pytest.raises(JobRefused, match="delay_s goes only with delayed"):
        answer(offered, "accept", delay_s=60)
    with pytest.raises(JobRefused, match="longer than 256 characters"):
        answer(offered, "reject", reason="x" * 257)
    with pytest.raises(UnknownJob):
        answered(None, Answer("J-0", AnswerKind.ACCEPT), NOW_NS)


# -- offers on the board, bounds and pruning -------------------------------------------------


def test_offer_versions_repeat_replace_or_are_refused() -> None:
    jobs, detail = with_offer({}, parse_offer(single_args(version=2)), NOW_NS, 8, KEEP_S)
    assert detail == "job J-2001 version 2 stored"
    again, detail = with_offer(jobs, parse_offer(single_args(version=2)), NOW_NS + NS, 8, KEEP_S)
    assert again is jobs
    assert detail == "job J-2001 version 2 is stored already (offered)"
    accepted = {"J-2001": answer(jobs["J-2001"], "accept")[0]}
    newer, detail = with_offer(
        accepted, parse_offer(single_args(version=3)), NOW_NS + NS, 8, KEEP_S
    )
    assert detail == "job J-2001 version 3 stored over version 2 (accepted)"
    assert (newer["J-2001"].state, newer["J-2001"].offer.version) == (JobState.OFFERED, 3)
    with pytest.raises(JobRefused, match="is at version 3; version 1 is older"):
        with_offer(newer, parse_offer(single_args(version=1)), NOW_NS, 8, KEEP_S)


async def test_an_offer_the_board_would_drop_at_once_is_refused(tmp_path: Path) -> None:
    clock = Clock()
    board = JobBoard(
        JobSettings(keep_finished_s=60), tmp_path / "j.json", BrokenSink(), now_wall_ns=clock
    )
    clock.now_ns = (RESPOND_BY + 60) * NS  # respond_by passed, still within keep_finished_s
    assert await board.prepare("offer_job", single_args("A"))() == "job A version 1 stored"
    clock.now_ns += NS
    with pytest.raises(JobRefused, match="respond_by 1717243800 is 61 s past"):
        board.prepare("offer_job", single_args("B"))
    assert [j.job_id for j in board.jobs()] == []  # and A has gone meanwhile


def test_a_full_board_drops_its_oldest_finished_job_else_refuses_the_offer() -> None:
    jobs = {
        "A": job(single_args("A"), JobState.COMPLETED, changed_wall_ns=NOW_NS + 2 * NS),
        "B": job(single_args("B"), JobState.REJECTED, changed_wall_ns=NOW_NS + 1 * NS),
        "C": job(single_args("C"), JobState.ACCEPTED),
    }
    room, _ = with_offer(jobs, parse_offer(single_args("D")), NOW_NS, 3, KEEP_S)
    assert sorted(room) == ["A", "C", "D"]
    busy = {k: job(single_args(k), JobState.ACCEPTED) for k in "ABC"}
    with pytest.raises(JobNotStored, match="the job board is full: 3 open jobs"):
        with_offer(busy, parse_offer(single_args("D")), NOW_NS, 3, KEEP_S)


def test_finished_jobs_and_unanswered_offers_leave_after_keep_time() -> None:
    jobs = {
        "done": job(single_args("done"), JobState.COMPLETED),
        "open": job(single_args("open")),  # respond_by T0 + 600
        "busy": job(single_args("busy"), JobState.ACCEPTED),
    }
    assert pruned(jobs, NOW_NS + 100 * NS, keep_s=100) is jobs
    assert sorted(pruned(jobs, NOW_NS + 101 * NS, keep_s=100)) == ["busy", "open"]
    assert sorted(pruned(jobs, (RESPOND_BY + 101) * NS, keep_s=100)) == ["busy"]


def test_the_kept_document_reads_back_and_skips_a_broken_entry() -> None:
    jobs = {"J-1001": answer(job(shipment_args()), "accept")[0]}
    doc = json.loads(json.dumps(to_document(jobs)))
    assert from_document(doc) == (jobs, 0)
    doc["jobs"].append({"offer": {"job_id": "bad"}, "state": "offered"})
    assert from_document(doc) == (jobs, 1)
    with pytest.raises(ValueError, match="format 1"):
        from_document({"jobs": []})


# -- the board on a real outbox --------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now_ns = NOW_NS

    def __call__(self) -> int:
        return self.now_ns


async def events_in(outbox: Outbox) -> list[Record]:
    """Every pending record of the events lane (a take holds one boot: take until empty)."""
    records: list[Record] = []
    while taken := await outbox.take(Lane.EVENTS, 100):
        records += [s.record for s in taken]
    return records


def outbox_settings(tmp_path: Path) -> OutboxSettings:
    return OutboxSettings(path=tmp_path / "outbox.sqlite3")


async def test_answers_reach_the_outbox_and_the_board_survives_a_restart(tmp_path: Path) -> None:
    clock, path = Clock(), tmp_path / "outbox.jobs.json"
    async with Outbox(outbox_settings(tmp_path), boot_id=1) as outbox:
        board = JobBoard(JobSettings(), path, outbox, now_wall_ns=clock)
        await board.load()
        assert await board.prepare("offer_job", shipment_args())() == "job J-1001 version 1 stored"
        await board.prepare("offer_job", single_args())()
        clock.now_ns += 30 * NS
        accepted, event = await board.answer(Answer("J-1001", AnswerKind.ACCEPT))
        assert accepted.state is JobState.ACCEPTED
        assert await events_in(outbox) == [event]
    # A new agent process: a new outbox boot and a board read from the file.
    async with Outbox(outbox_settings(tmp_path), boot_id=2) as outbox:
        board = JobBoard(JobSettings(), path, outbox, now_wall_ns=clock)
        await board.load()
        assert [(j.job_id, j.state) for j in board.jobs()] == [
            ("J-1001", JobState.ACCEPTED),
            ("J-2001", JobState.OFFERED),
        ]
        assert board.job("J-1001").changed_wall_ns == NOW_NS + 30 * NS
        with pytest.raises(JobRefused, match="is accepted; accept is possible only"):
            await board.answer(Answer("J-1001", AnswerKind.ACCEPT))
        _, arrived = await board.answer(Answer("J-1001", AnswerKind.ARRIVED))
        pending = await events_in(outbox)  # the first boot's accept was never acked
        assert [e.data["answer"] for e in pending if isinstance(e, Event)] == [
            "accept",
            "arrived",
        ]
        assert pending[-1] == arrived
        assert board.counters["answers_refused"] == 1


async def test_an_unreadable_board_is_moved_aside_and_the_agent_starts_empty(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.jobs.json"
    path.write_text('{"format": 1, "jobs": [')
    async with Outbox(outbox_settings(tmp_path), boot_id=1) as outbox:
        board = JobBoard(JobSettings(), path, outbox, now_wall_ns=Clock())
        await board.load()
        assert board.jobs() == []
        assert board.counters["unreadable"] == 1
    assert set_aside(tmp_path) == {
        "outbox.jobs.json.corrupt-20240601T120000Z": '{"format": 1, "jobs": ['
    }
    folder = tmp_path / "a-folder.json"  # cannot be read as a file: left where it is
    folder.mkdir()
    board = JobBoard(JobSettings(), folder, BrokenSink(), now_wall_ns=Clock())
    await board.load()
    assert (board.jobs(), board.counters["unreadable"], folder.is_dir()) == ([], 1, True)


def set_aside(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in folder.glob("*.corrupt-*")}


class BrokenSink:
    """An outbox whose disk is full."""

    def __init__(self) -> None:
        self.calls = 0

    async def append(self, records: Sequence[Record]) -> list[int]:
        self.calls += 1
        raise OutboxError("database or disk is full")


async def test_an_answer_the_outbox_cannot_take_leaves_the_board_as_it_was(
    tmp_path: Path,
) -> None:
    path, sink = tmp_path / "jobs.json", BrokenSink()
    board = JobBoard(JobSettings(), path, sink, now_wall_ns=Clock())
    await board.prepare("offer_job", single_args())()
    with pytest.raises(JobNotStored, match="disk is full"):
        await board.answer(Answer("J-2001", AnswerKind.ACCEPT))
    assert sink.calls == 1
    assert board.job("J-2001").state is JobState.OFFERED
    assert json.loads(path.read_text())["jobs"][0]["state"] == "offered"


async def test_an_offer_that_cannot_be_kept_fails_and_is_not_on_the_board(
    tmp_path: Path,
) -> None:
    (tmp_path / "not-a-folder").write_text("")
    board = JobBoard(
        JobSettings(), tmp_path / "not-a-folder" / "jobs.json", BrokenSink(), now_wall_ns=Clock()
    )
    with pytest.raises(JobNotStored, match="cannot keep the job board"):
        await board.prepare("offer_job", single_args())()
    assert board.jobs() == []
    assert board.counters["persist_failures"] == 1


# -- the job commands through the command handler ---------------------------------------------


class Acks:
    def __init__(self) -> None:
        self.sent: list[CommandAck] = []

    def send(self, ack: CommandAck) -> None:
        self.sent.append(ack)

    def of(self, command_id: str) -> list[tuple[AckStatus, str]]:
        return [(a.status, a.detail) for a in self.sent if a.command_id == command_id]


def handler(acks: Acks, board: JobBoard | None) -> CommandHandler:
    return CommandHandler(
        CommandSettings(),
        Topics("fleet", "veh-jobs-01"),
        acks,
        agent_version="1.2.3",
        now_wall_ns=lambda: NOW_NS,
        uptime_s=lambda: 1.0,
        jobs=board,
    )


async def test_job_commands_are_acked_done_once_kept_or_rejected_with_the_reason(
    tmp_path: Path,
) -> None:
    acks = Acks()
    async with Outbox(outbox_settings(tmp_path), boot_id=1) as outbox:
        board = JobBoard(JobSettings(), tmp_path / "jobs.json", outbox, now_wall_ns=Clock())
        h = handler(acks, board)
        await h.execute(Command("c1", "offer_job", shipment_args(version=2)))
        await h.execute(Command("c2", "offer_job", shipment_args(version=1)))
        await h.execute(Command("c3", "offer_job", {**shipment_args(), "kind": "multi"}))
        await h.execute(Command("c4", "update_job", {"job_id": "J-1001", "eta": T0 + 2000}))
        await h.execute(Command("c5", "update_job", {"job_id": "J-404", "note": "x"}))
        await h.execute(Command("c6", "withdraw_job", {"job_id": "J-1001", "reason": "cancelled"}))
    assert acks.of("c1") == [(A, ""), (D, "job J-1001 version 2 stored")]
    assert acks.of("c2") == [(R, "job J-1001 is at version 2; version 1 is older")]
    assert acks.of("c3") == [(R, "kind must be one of single, shipment, not 'multi'")]
    assert acks.of("c4") == [(A, ""), (D, "job J-1001 updated")]
    assert acks.of("c5") == [(R, "no job 'J-404' on this device")]
    assert acks.of("c6") == [(A, ""), (D, "job J-1001 withdrawn (was offered)")]
    kept = json.loads((tmp_path / "jobs.json").read_text())["jobs"][0]
    assert (kept["state"], kept["eta"], kept["reason"]) == ("withdrawn", T0 + 2000, "cancelled")


async def test_job_commands_are_rejected_when_the_board_is_off() -> None:
    acks = Acks()
    await handler(acks, None).execute(Command("c1", "offer_job", single_args()))
    assert acks.of("c1") == [(R, "job offers are off on this agent (jobs.enabled)")]
