"""The driver's interface: JSON lines on a real Unix socket in front of a job board on a real
outbox, and ``fleetlink-edge jobs`` end to end against it (in a thread and as a process).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fleetlink_edge import cli
from fleetlink_edge.config import JobSettings, OutboxSettings
from fleetlink_edge.driver_socket import (
    MAX_REQUEST_BYTES,
    DriverSocket,
    DriverSocketError,
    DriverUnavailable,
    request,
)
from fleetlink_edge.jobs import JobBoard
from fleetlink_edge.outbox import Lane, Outbox
from fleetlink_protocols.records import Event
from tests.edge.test_jobs import NOW_NS, RESPOND_BY, Clock, shipment_args, single_args


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A folder with a short path: a Unix socket path has at most 107 bytes (sun_path)."""
    folder = Path(tempfile.mkdtemp(prefix="fl-drv-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Agent:
    board: JobBoard
    outbox: Outbox
    server: DriverSocket
    clock: Clock

    @property
    def path(self) -> Path:
        return self.server.path


@pytest.fixture
async def agent(tmp_path: Path, short_dir: Path) -> AsyncIterator[Agent]:
    """A board with a shipment and a single job, served on ``short_dir/driver.sock``."""
    clock = Clock()
    async with Outbox(OutboxSettings(path=tmp_path / "outbox.sqlite3"), boot_id=7) as outbox:
        board = JobBoard(JobSettings(), tmp_path / "jobs.json", outbox, now_wall_ns=clock)
        await board.prepare("offer_job", shipment_args())()
        clock.now_ns += 1_000_000_000
        await board.prepare("offer_job", single_args())()
        async with DriverSocket(board, short_dir / "driver.sock") as server:
            yield Agent(board, outbox, server, clock)


async def ask(agent: Agent, **message: Any) -> dict[str, Any]:
    return await request(agent.path, message)


async def test_the_socket_is_group_writable_only(agent: Agent) -> None:
    mode = stat.S_IMODE((await asyncio.to_thread(os.stat, agent.path)).st_mode)
    assert mode == 0o660


async def test_list_show_and_answer_over_the_socket(agent: Agent) -> None:
    listed = await ask(agent, op="list")
    assert listed["ok"] is True
    assert [(j["job_id"], j["state"], j["late"]) for j in listed["jobs"]] == [
        ("J-1001", "offered", False),
        ("J-2001", "offered", False),
    ]
    shown = await ask(agent, op="show", job_id="J-1001")
    assert shown["job"]["stops"] == shipment_args()["stops"]
    assert (shown["job"]["respond_by"], shown["job"]["customer_ref"]) == (RESPOND_BY, "ACME-77")

    agent.clock.now_ns = (RESPOND_BY + 60) * 1_000_000_000
    late = await ask(agent, op="list")
    assert [j["late"] for j in late["jobs"]] == [True, True]
    answer = await ask(agent, op="answer", job_id="J-1001", answer="accept")
    assert answer["job"]["state"] == "accepted"
    data = {"job_id": "J-1001", "answer": "accept", "offer_version": 1, "reason": "", "late": True}
    assert answer["event"] == {"kind": "job.answer", "ts_wall_ns": agent.clock.now_ns, "data": data}
    delayed = await ask(
        agent, op="answer", job_id="J-1001", answer="delayed", reason="traffic", delay_s=600
    )
    assert (delayed["job"]["delay_s"], delayed["event"]["data"]["delay_s"]) == (600, 600)
    stored = [s.record for s in await agent.outbox.take(Lane.EVENTS, 10)]
    assert stored == [
        Event(agent.clock.now_ns, "job.answer", d["event"]["data"]) for d in (answer, delayed)
    ]


@pytest.mark.parametrize(
    ("message", "code", "text"),
    [
        ({"op": "dance"}, "bad_request", "unknown op 'dance': list, show or answer"),
        ({"job_id": "J-1001"}, "bad_request", "unknown op None"),
        ({"op": "show", "job_id": 7}, "bad_request", "job_id must be a string"),
        ({"op": "show", "job_id": "J-9"}, "unknown_job", "no job 'J-9' on this device"),
        (
            {"op": "answer", "job_id": "J-1001", "answer": "maybe"},
            "bad_request",
            "answer must be one of accept, reject, arrived, completed, delayed, not 'maybe'",
        ),
        (
            {"op": "answer", "job_id": "J-1001", "answer": "completed"},
            "refused",
            "job J-1001 is offered; completed is possible only when it is arrived",
        ),
        ({"op": "answer", "job_id": "J-1001", "answer": "reject"}, "refused", "needs a reason"),
        (
            {"op": "answer", "job_id": "J-1001", "answer": "delayed", "delay_s": "10"},
            "bad_request",
            "delay_s must be an integer number of seconds",
        ),
        ({"op": "answer", "job_id": "J-404", "answer": "accept"}, "unknown_job", "no job"),
    ],
)
async def test_bad_requests_get_a_code_and_a_reason(
    agent: Agent, message: dict[str, Any], code: str, text: str
) -> None:
    response = await request(agent.path, message)
    assert (response["ok"], response["error"]) == (False, code)
    assert text in response["message"]
    assert agent.board.job("J-1001").state.value == "offered"


async def test_one_connection_carries_many_requests_and_survives_garbage(agent: Agent) -> None:
    reader, writer = await asyncio.open_unix_connection(os.fspath(agent.path))
    writer.write(
        b'not json\n\n[1, 2]\n{"op": "list"}\n\xff\xfe\n{"op": "show", "job_id": "J-2001"}\n'
    )
    await writer.drain()
    replies = [json.loads(await reader.readline()) for _ in range(5)]
    assert [r.get("error") for r in replies] == [
        "bad_request",
        "bad_request",
        None,
        "bad_request",
        None,
    ]
    assert replies[4]["job"]["kind"] == "single"
    writer.close()
    assert agent.server.counters["bad_requests"] == 3


async def test_an_over_long_request_is_refused_and_the_connection_closed(agent: Agent) -> None:
    reader, writer = await asyncio.open_unix_connection(os.fspath(agent.path))
    writer.write(b"x" * (MAX_REQUEST_BYTES + 10) + b"\n")
    await writer.drain()
    reply = json.loads(await reader.readline())
    assert (reply["error"], await reader.read()) == ("bad_request", b"")
    writer.close()


async def test_clients_beyond_the_limit_are_told_busy(agent: Agent, short_dir: Path) -> None:
    async with DriverSocket(agent.board, short_dir / "narrow.sock", max_clients=1) as narrow:
        _, first = await asyncio.open_unix_connection(os.fspath(narrow.path))
        await asyncio.sleep(0.05)  # the server took the first connection
        reply = await request(narrow.path, {"op": "list"})
        assert reply["error"] == "busy"
        first.close()


async def test_a_dead_agents_socket_is_replaced_and_a_live_one_is_not_taken(
    agent: Agent, short_dir: Path
) -> None:
    stale = short_dir / "stale.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(os.fspath(stale))  # bound, never listened: what a kill -9 leaves behind
    dead.close()
    async with DriverSocket(agent.board, stale) as server:
        assert (await request(stale, {"op": "list"}))["ok"] is True
    assert not server.path.exists()
    with pytest.raises(DriverSocketError, match="another process serves"):
        async with DriverSocket(agent.board, agent.path):
            pass
    assert (await ask(agent, op="list"))["ok"] is True


async def test_a_client_without_an_agent_says_so(short_dir: Path) -> None:
    with pytest.raises(DriverUnavailable, match="the agent is not running: no driver socket"):
        await request(short_dir / "none.sock", {"op": "list"})
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(os.fspath(short_dir / "dead.sock"))
    with pytest.raises(DriverUnavailable, match="the agent is not running: nobody serves"):
        await request(short_dir / "dead.sock", {"op": "list"})
    dead.close()


# -- the CLI ---------------------------------------------------------------------------------


async def run_cli(*argv: str) -> int:
    """``fleetlink-edge`` in a thread: it runs its own event loop, this one serves the socket."""
    return await asyncio.to_thread(cli.main, list(argv))


async def test_the_cli_lists_shows_and_answers(
    agent: Agent, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = os.fspath(agent.path)
    assert await run_cli("jobs", "--socket", sock) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in lines] == [
        ["J-1001", "offered", "shipment"],
        ["J-2001", "offered", "single"],
    ]
    assert await run_cli("jobs", "show", "J-1001", "--socket", sock) == 0
    shown = capsys.readouterr().out
    assert "job J-1001 (version 1): shipment, offered" in shown
    assert "customer ref ACME-77" in shown
    assert "stop 2 delivery: 52.50000, 13.30000;" in shown
    assert "  note: ring twice" in shown
    assert await run_cli("jobs", "--socket", sock, "accept", "J-1001") == 0
    assert capsys.readouterr().out == "job J-1001: accept recorded; the job is accepted\n"
    assert (
        await run_cli(
            "jobs",
            "delayed",
            "J-1001",
            "--minutes",
            "12.5",
            "--reason",
            "roadworks",
            "--socket",
            sock,
            "--json",
        )
        == 0
    )
    delayed = json.loads(capsys.readouterr().out)
    assert delayed["event"]["data"] == {
        "job_id": "J-1001",
        "answer": "delayed",
        "offer_version": 1,
        "reason": "roadworks",
        "late": False,
        "delay_s": 750,
    }
    assert await run_cli("jobs", "reject", "J-2001", "--reason", "too far", "--socket", sock) == 0
    capsys.readouterr()
    assert agent.board.job("J-2001").state.value == "rejected"


async def test_the_cli_says_what_is_wrong_with_an_exit_code(
    agent: Agent, short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = os.fspath(agent.path)
    assert await run_cli("jobs", "completed", "J-1001", "--socket", sock) == 1
    err = capsys.readouterr().err
    assert "job J-1001 is offered; completed is possible only when it is arrived" in err
    assert await run_cli("jobs", "show", "J-9", "--socket", sock, "--json") == 1
    assert json.loads(capsys.readouterr().out)["error"] == "unknown_job"
    assert await run_cli("jobs", "list", "--socket", os.fspath(short_dir / "gone.sock")) == 3
    assert "the agent is not running" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        await run_cli("jobs", "reject", "J-1001", "--socket", sock)  # --reason is required
    assert usage.value.code == 2
    capsys.readouterr()
    assert (
        await run_cli(
            "jobs", "delayed", "J-1001", "--minutes", "0", "--reason", "x", "--socket", sock
        )
        == 2
    )
    assert agent.board.job("J-1001").state.value == "offered"


async def test_the_cli_finds_the_socket_in_the_agent_config(agent: Agent, tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f'[jobs]\nsocket = "{agent.path}"\n')
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fleetlink_edge.cli",
        "jobs",
        "--config",
        os.fspath(config),
        "accept",
        "J-2001",
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert json.loads(out)["job"]["state"] == "accepted"
    assert agent.board.job("J-2001").state.value == "accepted"
    assert agent.board.job("J-2001").changed_wall_ns == NOW_NS + 1_000_000_000
