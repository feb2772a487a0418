from __future__ import annotations

from pathlib import Path

import pytest

from fleetlink_edge.config import load_settings
from fleetlink_edge.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "firmware-config" / "agent.toml"


def test_shipped_example_config_loads() -> None:
    s = load_settings(EXAMPLE)
    assert s.device.id == "veh-0001"
    assert s.can.enabled
    assert s.uplink.port == 8883
    assert s.uplink.tls is not None
    assert s.uplink.tls.ca_file == Path("/etc/fleetlink/ca.pem")


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETLINK_EDGE_UPLINK__PASSWORD", "s3cret")
    monkeypatch.setenv("FLEETLINK_EDGE_UPLINK__PORT", "1884")
    s = load_settings(EXAMPLE)
    assert s.uplink.password == "s3cret"
    assert s.uplink.port == 1884


@pytest.mark.parametrize(
    ("toml", "complaint"),
    [
        ("[uplink]\nport = 0\n", "uplink.port"),
        ('[device]\nid = "bad id/with slash"\n', "device.id"),
        ('[gnss]\nsource = "carrier-pigeon"\n', "gnss.source"),
        ('[uplink]\ntopic_prefix = "fleet/#"\n', "uplink.topic_prefix"),
        ('[uplnk]\nhost = "x"\n', "uplnk"),
        ("this is not toml", "cannot read"),
    ],
)
def test_invalid_config_names_the_problem(tmp_path: Path, toml: str, complaint: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=complaint.replace(".", r"\.")):
        load_settings(path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")
