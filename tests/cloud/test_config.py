"""Cloud settings: the shipped example loads, defaults are the embedded ones, errors are clear."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetlink_cloud.config import load_settings
from fleetlink_cloud.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "cloud" / "examples" / "cloud.toml"


def test_the_shipped_example_loads() -> None:
    s = load_settings(EXAMPLE)
    assert (s.broker.embedded, s.broker.shared_group, s.broker.tls is not None) == (
        False,
        "ingest",
        True,
    )
    assert s.database.url.startswith("postgresql://")
    assert s.api.cors_origins == ["https://dispatch.example.net"]


def test_defaults_need_nothing_installed() -> None:
    s = load_settings(None)
    assert s.broker.embedded
    assert s.database.url == "sqlite:///fleetlink.sqlite3"


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETLINK_CLOUD_BROKER__PASSWORD", "from-env")
    monkeypatch.setenv("FLEETLINK_CLOUD_API__PORT", "9090")
    s = load_settings(EXAMPLE)
    assert (s.broker.password, s.api.port) == ("from-env", 9090)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[database]\nurl = 'mysql://x'\n", "database.url"),
        ("[api]\nport = 70000\n", "api.port"),
        ("[broker]\ntopic_prefix = 'fleet/#'\n", "broker.topic_prefix"),
        ("[ingest]\nqueue_sise = 5\n", "ingest.queue_sise"),
    ],
)
def test_every_problem_is_named(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "cloud.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=problem.replace(".", r"\.")):
        load_settings(path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.toml")
