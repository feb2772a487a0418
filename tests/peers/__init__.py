"""Real peer programs for integration tests: find them, or skip loudly (fail under CI=true)."""

from __future__ import annotations

import os
import shutil
import socket

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_binary(name: str, package: str) -> str:
    """Path of program ``name``; skip the test with a loud reason, or fail when CI=true."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        reason = (
            f"PEER MISSING: '{name}' not found; install the Debian package '{package}' "
            "(tests/run does this when run as root)"
        )
        if IN_CI:
            pytest.fail(reason + " [CI=true: a missing peer is a failure]", pytrace=False)
        pytest.skip(reason)
    return path


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the OS picks it; tiny race accepted in tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
