"""An ingest worker in its own process, for tests that SIGKILL it, and its controller.

Run as ``python -m tests.cloud.ingest.worker_proc PORT DB CLIENT_ID [--hold before|after]``.
It prints one line to stdout per event: ``connected``, then ``committed <json counters>``
after every group (before its acks). ``--hold before`` stops at the first group before its
commit, ``--hold after`` after its commit and before its acks; both print ``holding <n>`` and
wait there for the signal that ends them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Literal

from fleetlink_cloud.config import BrokerSettings, IngestSettings
from fleetlink_cloud.ingest.consumer import MqttConsumer
from fleetlink_cloud.ingest.pipeline import Message, Pipeline
from fleetlink_cloud.ingest.worker import IngestWorker
from fleetlink_cloud.store import open_store
from fleetlink_cloud.store.base import Store
from tests.cloud.ingest.fleet import PREFIX, USERS

ROOT = Path(__file__).resolve().parents[3]
Hold = Literal["before", "after"] | None


def broker_settings(port: int, **kw: object) -> BrokerSettings:
    values: dict[str, object] = {
        "embedded": False,
        "host": "127.0.0.1",
        "port": port,
        "username": "backend",
        "password": USERS["backend"],
        "topic_prefix": PREFIX,
        "keepalive_s": 5,
    }
    values.update(kw)
    return BrokerSettings.model_validate(values)


INGEST = IngestSettings(group_max_messages=50, retry_initial_s=0.05, retry_max_s=0.5)


class Reporting(Pipeline):
    """The real pipeline, telling the controller what it does (and stopping where told)."""

    def __init__(self, store: Store, out: Callable[[str], None], hold: Hold) -> None:
        super().__init__(store, INGEST, topic_prefix=PREFIX)
        self._out = out
        self._hold = hold

    async def process(self, messages: Sequence[Message], *, wait_for_births: bool = True) -> None:
        if self._hold == "before":
            self._out(f"holding {len(messages)}")
            await asyncio.Event().wait()
        await super().process(messages, wait_for_births=wait_for_births)
        self._out(f"committed {json.dumps(dict(self.counters))}")
        if self._hold == "after":
            self._out(f"holding {len(messages)}")
            await asyncio.Event().wait()


async def main(port: int, db: Path, client_id: str, hold: Hold) -> None:
    def out(line: str) -> None:
        print(line, flush=True)

    async with open_store(f"sqlite:///{db}") as store:
        consumer = MqttConsumer(
            broker_settings(port), client_id=client_id, queue_size=200, backoff_s=(0.05, 0.5)
        )
        worker = IngestWorker(consumer, Reporting(store, out, hold), store, INGEST)
        task = asyncio.create_task(worker.run())
        await consumer.connected.wait()
        out("connected")
        await task


class WorkerProcess:
    """Controls one worker subprocess: start, read its lines, SIGKILL or SIGTERM it."""

    def __init__(self, port: int, db: Path, client_id: str, log_dir: Path) -> None:
        self.port, self.db, self.client_id = port, db, client_id
        self.log_file = log_dir / f"{client_id}.log"
        self.lines: list[str] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._log: IO[bytes] | None = None

    async def start(self, hold: Hold = None) -> None:
        self.lines = []
        self._log = self.log_file.open("ab")
        args = [str(self.port), str(self.db), self.client_id] + (["--hold", hold] if hold else [])
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.cloud.ingest.worker_proc", *args,
            stdout=asyncio.subprocess.PIPE, stderr=self._log, cwd=ROOT, env=env,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read())
        await self.wait_for("connected")

    async def _read(self) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        async for raw in self._proc.stdout:
            self.lines.append(raw.decode().strip())

    async def wait_for(self, prefix: str, timeout_s: float = 30.0) -> str:
        """The first line starting with ``prefix``; fails if the process ends first."""
        async with asyncio.timeout(timeout_s):
            while True:
                line = next((ln for ln in self.lines if ln.startswith(prefix)), None)
                if line is not None:
                    return line
                assert self._proc is not None
                if self._proc.returncode is not None:
                    raise AssertionError(f"worker exited {self._proc.returncode}: {self.log()}")
                await asyncio.sleep(0.02)

    def committed(self) -> list[dict[str, int]]:
        return [json.loads(ln.split(" ", 1)[1]) for ln in self.lines if ln.startswith("committed")]

    async def kill(self, sig: signal.Signals = signal.SIGKILL) -> int:
        proc, self._proc = self._proc, None
        assert proc is not None
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        code = await proc.wait()
        if self._reader is not None:
            await self._reader
        if self._log is not None:
            self._log.close()
        return code

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")[-4000:]

    async def close(self) -> None:
        if self._proc is not None:
            await self.kill()
        if self._log is not None:
            self._log.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("db", type=Path)
    parser.add_argument("client_id")
    parser.add_argument("--hold", choices=["before", "after"])
    a = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    asyncio.run(main(a.port, a.db, a.client_id, a.hold))
