"""scripts/localinfra/settings.py and state.py: the environment's ports and directories, and what `up` records."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.localinfra.settings import REPO_ROOT, InfraError, Settings, check_mode
from scripts.localinfra.state import State, load_state, save_state


def test_defaults_keep_state_in_the_checkout() -> None:
    s = Settings.from_env({})
    assert s.infra_dir == REPO_ROOT / ".local"
    assert (s.kafka_port_base, s.pg_port, s.prometheus_port, s.kafka_secure) == (9092, 5433, 9090, False)


def test_the_environment_moves_state_and_ports(tmp_path: Path) -> None:
    s = Settings.from_env(
        {"INFRA_DIR": str(tmp_path / "x"), "KAFKA_PORT_BASE": " 29092 ", "PG_PORT": "25433",
         "PROMETHEUS_PORT": "29090", "KAFKA_SECURE": "1"}
    )
    assert s == Settings(tmp_path / "x", kafka_port_base=29092, pg_port=25433, kafka_secure=True, prometheus_port=29090)
    assert s.lib_dir == tmp_path / "x" / "kafka" / "lib"
    assert s.kafka_mode_dir(3) == tmp_path / "x" / "kafka-3node"


@pytest.mark.parametrize("raw", ["http", "0", "65530", "-1"])
def test_a_bad_port_is_named(raw: str) -> None:
    with pytest.raises(InfraError, match=f"PG_PORT={raw!r}|PG_PORT={raw} is out of range"):
        Settings.from_env({"PG_PORT": raw})


def test_kafka_modes() -> None:
    assert (check_mode(1), check_mode(3)) == (1, 3)
    with pytest.raises(InfraError, match="must be 1 or 3, not 2"):
        check_mode(2)


def test_state_round_trips_and_defaults_when_unreadable(tmp_path: Path) -> None:
    s = Settings(tmp_path / "state")
    assert load_state(s) == State()
    save_state(s, State(kafka_mode=3, postgres=True))
    assert load_state(s) == State(kafka_mode=3, postgres=True, prometheus=False)
    assert (s.infra_dir / ".gitignore").read_text().endswith("*\n")
    s.state_file.write_text('{"kafka_mode": 2, "postgres": 1}')
    assert load_state(s) == State(kafka_mode=None, postgres=True)
    s.state_file.write_text("not json")
    assert load_state(s) == State()
