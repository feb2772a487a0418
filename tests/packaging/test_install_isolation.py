"""The vehicle image carries no cloud dependencies, and the cloud carries no vehicle drivers.

Each distribution is installed alone (with fleetlink-protocols) into an empty virtual environment
from the workspace lock file; then every module of it is imported there and the other side's
libraries must be absent.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHECK = """
import importlib, importlib.util, pkgutil, sys
pkg = importlib.import_module(sys.argv[1])
names = [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
for name in names:
    importlib.import_module(name)
present = [m for m in sys.argv[2].split(",") if importlib.util.find_spec(m) is not None]
print(len(names), "modules imported")
if present:
    sys.exit("must be absent but installed: " + ", ".join(present))
"""

CASES = {
    "fleetlink-edge": (
        "fleetlink_edge",
        ["fastapi", "uvicorn", "vroom", "psycopg", "asyncpg", "starlette", "amqtt"],
    ),
    "fleetlink-cloud": ("fleetlink_cloud", ["serial", "can", "cantools", "pynmea2", "isotp"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("dist", sorted(CASES))
def test_distribution_installs_alone(dist: str, tmp_path: Path) -> None:
    uv = shutil.which("uv")
    assert uv is not None, "uv is required (tests/run puts it on PATH)"
    package, forbidden = CASES[dist]
    reqs = tmp_path / "requirements.txt"
    subprocess.run(
        [
            uv,
            "export",
            "--frozen",
            "--package",
            dist,
            "--no-dev",
            "--no-hashes",
            "--no-emit-workspace",
            "-o",
            str(reqs),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    venv = tmp_path / "venv"
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
    python = venv / "bin" / "python"
    members = ["protocols", dist.removeprefix("fleetlink-")]
    subprocess.run(
        [
            uv,
            "pip",
            "install",
            "--quiet",
            "--python",
            str(python),
            "-r",
            str(reqs),
            *(str(ROOT / m) for m in members),
        ],
        check=True,
        capture_output=True,
    )
    result = subprocess.run(
        [str(python), "-c", CHECK, package, ",".join(forbidden)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert "modules imported" in result.stdout
