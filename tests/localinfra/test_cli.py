"""scripts/infra.py: its command line, run by the system python3 without the virtualenv's packages."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from scripts.localinfra.cli import build_parser, main
from tests.conftest import ROOT

SYSTEM_PYTHON = "/usr/bin/python3"


def infra(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # -I -S: no site-packages, no PYTHON* variables: the standard library only, as before the venv exists.
    return subprocess.run(
        [SYSTEM_PYTHON, "-I", "-S", str(ROOT / "scripts" / "infra.py"), *args],
        capture_output=True, text=True, timeout=60, env=env, cwd="/",
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"], "INFRA_DIR": str(tmp_path / "state"),
        "KAFKA_PORT_BASE": "29192", "PG_PORT": "25533", "PROMETHEUS_PORT": "29190",
    }


@pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists(), reason="no system python3")
def test_status_of_a_new_state_directory_is_one_line_per_component(env: dict[str, str]) -> None:
    result = infra("status", env=env)
    assert result.returncode == 1, result.stderr  # the default stack is expected, and down
    lines = result.stdout.splitlines()
    assert lines[0] == "kafka-1node node 1: down pid=- broker=127.0.0.1:29192 controller=127.0.0.1:29193"
    assert lines[1].startswith("postgres: down pid=- address=127.0.0.1:25533 data=/")
    assert lines[2].startswith("prometheus: down (not expected) pid=- address=127.0.0.1:29190 config=")
    assert len(lines) == 3


@pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists(), reason="no system python3")
def test_errors_are_one_line_and_exit_1(env: dict[str, str]) -> None:
    result = infra("up", "--no-kafka", "--no-postgres", "--no-prometheus", env=env)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "infra.py up: error: nothing to do with --no-kafka, --no-postgres and --no-prometheus\n"
    assert infra("up", env={**env, "PG_PORT": "x"}).stderr == "infra.py up: error: PG_PORT='x' is not a port number\n"


@pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists(), reason="no system python3")
def test_down_without_state_does_nothing(env: dict[str, str]) -> None:
    result = infra("down", env=env)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert not Path(env["INFRA_DIR"]).exists()


def test_the_commands_and_their_options() -> None:
    parser = build_parser()
    assert parser.parse_args(["up", "--kafka-nodes", "3", "--no-postgres"]).kafka_nodes == 3
    assert parser.parse_args(["down"]).kafka_nodes == "all"
    assert parser.parse_args(["kill-broker", "2"]).kafka_nodes is None
    assert parser.parse_args(["start-broker", "2", "--kafka-nodes", "3"]).node == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["up", "--kafka-nodes", "2"])


def test_main_turns_an_infra_error_into_exit_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("INFRA_DIR", str(tmp_path))
    assert main(["kill-broker", "4", "--kafka-nodes", "3"]) == 1
    error = "infra.py kill-broker: error: node must be between 1 and 3 in the 3-node mode, not 4\n"
    assert capsys.readouterr().err == error
