"""``fleetlink-edge``: run the agent, simulate hardware, decode captures."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any

from fleetlink_edge.config import EdgeSettings, load_settings
from fleetlink_edge.errors import ConfigError, EdgeError

log = logging.getLogger("fleetlink_edge")


def _print_json_lines(rows: Iterable[dict[str, Any]]) -> int:
    out = sys.stdout
    try:
        for row in rows:
            out.write(json.dumps(row, separators=(",", ":")) + "\n")
    except BrokenPipeError:  # `| head` closed the pipe: not an error
        sys.stderr.close()
    return 0


def _cmd_decode_nmea(args: argparse.Namespace) -> int:
    from fleetlink_edge.decode.nmea import tpv_lines

    path: Path = args.file
    if not path.is_file():
        print(f"fleetlink-edge: no such file: {path}", file=sys.stderr)
        return 2
    return _print_json_lines(tpv_lines(path.read_bytes()))


def _cmd_decode_can(args: argparse.Namespace) -> int:
    from fleetlink_edge.can_report import decoded_lines

    path: Path = args.file
    for p in (path, args.dbc):
        if p is not None and not p.is_file():
            print(f"fleetlink-edge: no such file: {p}", file=sys.stderr)
            return 2
    try:
        return _print_json_lines(decoded_lines(path, args.dbc))
    except EdgeError as exc:  # unknown log format, MF4 without asammdf, a DBC that won't load
        print(f"fleetlink-edge: {exc}", file=sys.stderr)
        return 1


def _run_until_signalled(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> int:
    """Run ``main(stop)``; SIGTERM and SIGINT set ``stop`` so the agent flushes and exits 0."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    try:
        asyncio.run(runner())
    except EdgeError as exc:
        log.error("%s", exc)
        return 1
    return 0


def _load(args: argparse.Namespace, **overrides: Any) -> EdgeSettings | None:
    try:
        return load_settings(args.config, **overrides)
    except ConfigError as exc:
        print(f"fleetlink-edge: {exc}", file=sys.stderr)
        return None


def _cmd_run(args: argparse.Namespace) -> int:
    from fleetlink_edge.app import Agent
    from fleetlink_edge.health import SystemdNotifier, watchdog_interval_s

    settings = _load(args)
    if settings is None:
        return 2
    agent = Agent(
        settings,
        notifier=SystemdNotifier(os.environ.get("NOTIFY_SOCKET")),
        watchdog_interval_s=watchdog_interval_s(os.environ.get("WATCHDOG_USEC")),
    )
    return _run_until_signalled(agent.run)


def _sim_extras(args: argparse.Namespace, ids: list[str]) -> dict[str, Any]:
    """The simulated drivers and injected failures of ``simulate``. Raises ConfigError."""
    from fleetlink_edge.sim.driver import DriverOptions
    from fleetlink_edge.sim.faults import Failures, injections

    drivers = None
    if args.drivers:
        drivers = DriverOptions(
            reject_rate=args.reject_rate, time_factor=args.time_factor, min_dwell_s=args.dwell
        )
    failures = Failures(
        silences=injections(args.silence, ids),
        faults=injections(args.fault, ids),
        fault_code=args.fault_code,
    )
    return {"drivers": drivers, "failures": failures}


def _cmd_simulate(args: argparse.Namespace) -> int:
    from fleetlink_edge.simulate import SimOptions, fleet_ids, simulate, simulate_fleet

    overrides: dict[str, Any] = {}
    state_dir: Path = args.state_dir or Path(tempfile.mkdtemp(prefix="fleetlink-sim-"))
    if args.config is None:
        overrides["outbox"] = {"path": state_dir / "outbox.sqlite3"}
        overrides["device"] = {"id": args.device}
        overrides["health"] = {"interval_s": 10.0}
    if args.broker:
        host, _, port = args.broker.rpartition(":")
        overrides["uplink"] = {"host": host or "127.0.0.1", "port": int(port)}
    settings = _load(args, **overrides)
    if settings is None:
        return 2
    if args.vehicles < 1:
        print("fleetlink-edge: --vehicles must be at least 1", file=sys.stderr)
        return 2
    ids = (
        fleet_ids(settings.device.id, args.vehicles) if args.vehicles > 1 else [settings.device.id]
    )
    try:
        extras = _sim_extras(args, ids)
    except ConfigError as exc:
        print(f"fleetlink-edge: {exc}", file=sys.stderr)
        return 2
    options = SimOptions(
        duration_s=args.duration,
        gnss_hz=args.gnss_hz,
        lat=args.lat,
        lon=args.lon,
        seed=args.seed,
        can_replay=args.can_replay,
        can_fps=args.can_fps,
        report_every_s=args.report_every,
        **extras,
    )
    if args.vehicles == 1:
        return _run_until_signalled(lambda stop: simulate(settings, options, sys.stdout, stop))
    return _run_until_signalled(
        lambda stop: simulate_fleet(settings, options, ids, state_dir, sys.stdout, stop)
    )


def _cmd_doctor(args: argparse.Namespace) -> int:
    from fleetlink_edge import doctor

    timeout_s: float = doctor.DEFAULT_TIMEOUT_S if args.timeout is None else args.timeout
    if timeout_s <= 0:
        print("fleetlink-edge: --timeout must be positive", file=sys.stderr)
        return 2
    return doctor.main(
        args.config, timeout_s=timeout_s, as_json=args.json, verbose=args.verbose, out=sys.stdout
    )


def _add_doctor(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    doc = sub.add_parser(
        "doctor", help="check config, GNSS, CAN, broker, clock and disk; say what to fix"
    )
    doc.add_argument("--config", type=Path, required=True, help="agent TOML file")
    doc.add_argument("--json", action="store_true", help="print a JSON list of findings")
    doc.add_argument(
        "--timeout", type=float, default=None, help="seconds per check (listening, connecting; 5)"
    )
    doc.set_defaults(func=_cmd_doctor)


# -- jobs: the driver's interface to the running agent -----------------------------------------

DEFAULT_CONFIG = Path("/etc/fleetlink/agent.toml")  # where systemd/fleetlink-edge.service reads it
JOBS_EXIT = {"ok": 0, "refused": 1, "usage": 2, "unavailable": 3}


def _jobs_request(args: argparse.Namespace) -> dict[str, Any]:
    action: str = args.jobs_action or "list"
    if action == "list":
        return {"op": "list"}
    if action == "show":
        return {"op": "show", "job_id": args.job_id}
    request: dict[str, Any] = {"op": "answer", "job_id": args.job_id, "answer": action}
    if getattr(args, "reason", None) is not None:
        request["reason"] = args.reason
    if action == "delayed":
        request["delay_s"] = round(args.minutes * 60)
    return request


def _jobs_socket(args: argparse.Namespace) -> Path | None:
    """``--socket``, else the one the agent's configuration names (``--config`` or the default)."""
    if args.socket is not None:
        return Path(args.socket)
    from fleetlink_edge.driver_socket import socket_path

    config = args.config
    if config is None and DEFAULT_CONFIG.is_file():
        config = DEFAULT_CONFIG
    try:
        settings = load_settings(config)
    except (ConfigError, OSError) as exc:
        print(f"fleetlink-edge: {exc} (or give --socket)", file=sys.stderr)
        return None
    return socket_path(settings)


def _cmd_jobs(args: argparse.Namespace) -> int:
    from fleetlink_edge.driver_socket import DriverUnavailable, request

    if getattr(args, "minutes", 1.0) <= 0:
        print("fleetlink-edge: --minutes must be positive", file=sys.stderr)
        return JOBS_EXIT["usage"]
    path = _jobs_socket(args)
    if path is None:
        return JOBS_EXIT["usage"]
    try:
        response = asyncio.run(request(path, _jobs_request(args)))
    except DriverUnavailable as exc:
        print(f"fleetlink-edge: {exc}", file=sys.stderr)
        return JOBS_EXIT["unavailable"]
    if args.json:
        print(json.dumps(response, indent=2))
    elif not response.get("ok"):
        print(f"fleetlink-edge: {response.get('message', response)}", file=sys.stderr)
    elif "jobs" in response:
        print("\n".join(_job_line(j) for j in response["jobs"]) or "no jobs")
    elif "event" in response:
        job, answer = response["job"], response["event"]["data"]["answer"]
        print(f"job {job['job_id']}: {answer} recorded; the job is {job['state']}")
    else:
        print("\n".join(_job_text(response["job"])))
    return JOBS_EXIT["ok" if response.get("ok") else "refused"]


def _when(unix_s: int) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(unix_s).astimezone().strftime("%Y-%m-%d %H:%M")


def _job_line(job: dict[str, Any]) -> str:
    late = " (late)" if job["late"] else ""
    return (
        f"{job['job_id']:<24} {job['state']:<10} {job['kind']:<9}"
        f" respond by {_when(job['respond_by'])}{late}"
    )


def _job_text(job: dict[str, Any]) -> list[str]:
    reason = f": {job['reason']}" if job["reason"] else ""
    lines = [
        f"job {job['job_id']} (version {job['version']}): {job['kind']}, {job['state']}{reason}",
        f"respond by {_when(job['respond_by'])}" + (" (late)" if job["late"] else ""),
    ]
    if job["customer_ref"]:
        lines.append(f"customer ref {job['customer_ref']}")
    if job["eta"] is not None:
        lines.append(f"expected arrival {_when(job['eta'])}")
    if job["delay_s"]:
        lines.append(f"announced delay {job['delay_s'] / 60:g} min")
    if job["note"]:
        lines.append(f"note: {job['note']}")
    for n, stop in enumerate(job["stops"], 1):
        windows = ", ".join(f"{_when(a)} to {_when(b)[-5:]}" for a, b in stop["windows"])
        arrived = " (arrived)" if n <= job["stops_arrived"] else ""
        lines.append(
            f"stop {n} {stop['kind']}{arrived}: {stop['lat']:.5f}, {stop['lon']:.5f};"
            f" {windows or 'any time'}; service {stop['service_s'] / 60:g} min"
        )
        lines += [f"  {k}: {stop[k]}" for k in ("address", "note") if stop.get(k)]
    return lines


def _add_jobs(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def options(p: argparse.ArgumentParser, default: Any) -> None:
        # Accepted before and after the action; SUPPRESS keeps an action's parser from
        # overwriting what was given before it.
        json_default = False if default is None else default
        p.add_argument("--json", action="store_true", default=json_default, help="print JSON")
        p.add_argument("--socket", default=default, help="the agent's driver socket")
        p.add_argument("--config", type=Path, default=default, help="agent TOML naming it")

    jobs = sub.add_parser("jobs", help="the driver's job offers: list, show and answer them")
    options(jobs, None)
    jobs.set_defaults(func=_cmd_jobs)
    actions = jobs.add_subparsers(dest="jobs_action", metavar="ACTION")
    for name, text in (
        ("list", "the jobs on the board (the default)"),
        ("show", "one job with its stops"),
        ("accept", "take the offered job"),
        ("reject", "decline the job (offered or accepted), with a reason"),
        ("arrived", "arrived at the job's next stop"),
        ("completed", "finished the job (after arriving at its last stop)"),
        ("delayed", "announce a delay, with a reason"),
    ):
        p = actions.add_parser(name, help=text)
        options(p, argparse.SUPPRESS)
        if name != "list":
            p.add_argument("job_id", metavar="ID")
        if name in ("reject", "delayed"):
            p.add_argument("--reason", required=True)
        if name == "delayed":
            p.add_argument("--minutes", type=float, required=True)


def _add_sim_drivers(sim: argparse.ArgumentParser) -> None:
    """``simulate``'s drivers and failure injection (docs/driver.md "Simulated drivers")."""
    on = sim.add_mutually_exclusive_group()
    on.add_argument(
        "--auto-drivers",
        dest="drivers",
        action="store_true",
        default=True,
        help="a simulated driver per vehicle answers offers, drives to jobs (default)",
    )
    on.add_argument(
        "--no-drivers", dest="drivers", action="store_false", help="leave job offers unanswered"
    )
    sim.add_argument("--reject-rate", type=float, default=0.1, help="share of offers rejected")
    sim.add_argument("--time-factor", type=float, default=1.0, help="service time multiplier")
    sim.add_argument("--dwell", type=float, default=70.0, help="least time at a stop, s")
    sim.add_argument(
        "--silence",
        action="append",
        default=[],
        metavar="VEHICLE@SECONDS",
        help="cut VEHICLE's uplink SECONDS after the start",
    )
    sim.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="VEHICLE@SECONDS",
        help="VEHICLE's ECU stores --fault-code (MIL on) SECONDS after the start",
    )
    sim.add_argument("--fault-code", default="P0300", help="DTC of --fault (SAE J2012)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleetlink-edge", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the agent")
    run.add_argument("--config", type=Path, required=True, help="agent TOML file")
    run.set_defaults(func=_cmd_run)

    sim = sub.add_parser("simulate", help="run the agent on simulated GNSS and CAN hardware")
    sim.add_argument("--config", type=Path, default=None, help="agent TOML (default: built in)")
    sim.add_argument("--device", default="veh-sim-001", help="device id (without --config)")
    sim.add_argument(
        "--vehicles", type=int, default=1, help="simulate N vehicles, ids counting up from --device"
    )
    sim.add_argument("--broker", default=None, help="MQTT broker HOST:PORT")
    sim.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    sim.add_argument("--gnss-hz", type=float, default=1.0, help="NMEA epochs per second")
    sim.add_argument("--lat", type=float, default=52.520, help="centre of the drive")
    sim.add_argument("--lon", type=float, default=13.405, help="centre of the drive")
    sim.add_argument("--seed", type=int, default=0, help="route seed")
    sim.add_argument("--state-dir", type=Path, default=None, help="outbox folder (default: temp)")
    sim.add_argument("--can-replay", type=Path, default=None, help="CAN log to replay on the bus")
    sim.add_argument("--can-fps", type=float, default=0.0, help="replay rate, frames per second")
    sim.add_argument("--report-every", type=float, default=5.0, help="status line period, s")
    _add_sim_drivers(sim)
    sim.set_defaults(func=_cmd_simulate)

    _add_doctor(sub)
    _add_jobs(sub)

    decode = sub.add_parser("decode", help="decode a capture file and print JSON lines")
    dsub = decode.add_subparsers(dest="what", required=True)
    nmea = dsub.add_parser("nmea", help="NMEA 0183 log -> one gpsd-style TPV object per fix")
    nmea.add_argument("file", type=Path)
    nmea.set_defaults(func=_cmd_decode_nmea)
    can = dsub.add_parser("can", help="CAN log (candump, ASC, BLF...) -> decoded signals")
    can.add_argument("file", type=Path)
    can.add_argument("--dbc", type=Path, default=None, help="DBC file for non-J1939 frames")
    can.set_defaults(func=_cmd_decode_can)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
