"""``make drill``: the reference design's failure scenarios on a stack of the drill's own, every check PASS."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.fault]


def test_every_drill_passes() -> None:
    # Ports and state of this test's own, so that a `make drill` running meanwhile is not disturbed.
    env = {
        **os.environ,
        "INFRA_DIR": str(ROOT / ".local" / "drill-test"),
        "KAFKA_PORT_BASE": "19592",
        "PG_PORT": "19533",
    }
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "drill.py")],
        env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    report = result.stdout
    assert result.returncode == 0, report[-6000:] + result.stderr[-2000:]
    checks = re.findall(r"^   (PASS|FAIL)  ", report, flags=re.MULTILINE)
    assert checks and set(checks) == {"PASS"}, report
    summary = report.split("== summary")[1]
    assert re.findall(r"PASS  ([\w-]+):", summary) == ["broker-down", "partition", "crash", "overload"], summary
