"""The OpenAPI document of each listener, with schemathesis driving the real gateway by it.

schemathesis runs as its command-line tool against a gateway process: its pytest plugin
does not support this project's pytest. (It found the connection left behind an unread body.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.runtime import SHIPPERS, listener_routes
from tests.conftest import ROOT, Infra
from tests.processes import RunningGateway, running_gateway

pytestmark = [pytest.mark.integration, pytest.mark.fault]

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


@pytest.fixture(scope="module")
def gateway_process(infra: Infra) -> Iterator[RunningGateway]:
    with running_gateway(infra) as gateway:
        yield gateway


def test_each_listener_documents_exactly_its_route_table(gateway_process: RunningGateway) -> None:
    for listener in ("gateway", "application", "infrastructure", "transaction"):
        document = httpx.get(f"{gateway_process.urls[listener]}/openapi.json").json()
        assert document["openapi"].startswith("3.1")
        routes = {(route.method.lower(), route.path) for route in listener_routes(listener)}
        documented = {(method, path) for path, item in document["paths"].items() for method in item}
        assert routes <= documented, listener
        # Everything else documented is a Quart view: none takes a body.
        assert {(method, path) for method, path in documented - routes if method != "get"} == set(), listener
        assert {"/health", "/ready", "/metrics"} <= set(document["paths"])
    # The gateway serves every shipper's routes but those kept off it (Elasticsearch's GET /: the status page's path).
    gateway = {(route.method, route.path) for route in listener_routes("gateway")}
    assert gateway == {(route.method, route.path) for name in SHIPPERS for route in listener_routes(name) if route.gateway}


@pytest.mark.fuzz
@pytest.mark.parametrize("listener", ["gateway", "application", "infrastructure", "transaction"])
def test_schemathesis_finds_no_answer_that_breaks_the_document(
    gateway_process: RunningGateway, listener: str, tmp_path: Path
) -> None:
    url = gateway_process.urls[listener]
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"), "run", f"{url}/openapi.json", "--url", url,
            "--checks", CHECKS, "--max-examples", "25", "--suppress-health-check", "all",
        ],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.http.schemathesis_hooks", "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout.split("SUMMARY")[-1]
