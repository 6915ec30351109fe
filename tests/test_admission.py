"""Rate limits (429) and API keys (401, per-key quotas) on the real gateway."""

from __future__ import annotations

from functools import partial

import httpx
import pytest
import trio

from app.config import load_settings
from app.runtime import Runtime, run
from tests.conftest import wait_ready

pytestmark = pytest.mark.integration

LOG = {"source": "a", "level": "INFO", "message": "m"}
PAYMENT = {"userId": "u", "type": "PAYMENT", "amount": "1.00", "currency": "USD"}


async def start(nursery: trio.Nursery, env: dict[str, str]) -> Runtime:
    runtime: Runtime = await nursery.start(partial(run, load_settings(env), handle_signals=False))
    await wait_ready(runtime.url("application"))
    return runtime


async def test_a_batch_counts_as_its_events_and_over_the_limit_is_429(gateway_env: dict[str, str]) -> None:
    # 1 event/s with a burst of one full batch: the refusals below do not depend on timing.
    env = {**gateway_env, "APPLICATION_RATE_LIMIT": "1", "MAX_BATCH_EVENTS": "50"}
    async with trio.open_nursery() as nursery:
        runtime = await start(nursery, env)
        async with httpx.AsyncClient(base_url=runtime.url("gateway")) as client:
            batch = {"logs": [LOG] * 50}
            assert (await client.post("/api/v1/logs/batch", json=batch)).status_code == 202
            refused = await client.post("/api/v1/logs/batch", json=batch)
            single = await client.post("/api/v1/logs", json=LOG)
        assert refused.status_code == 429 and single.status_code == 429
        assert refused.json()["error"] == "rate limited"
        assert refused.headers["Retry-After"] == "50"
        throttled = runtime.metrics.registry.get_sample_value("producer_throttled_total", {"service": "application"})
        assert throttled == 51
        runtime.shutdown()


async def test_api_keys_guard_the_ingest_routes_with_per_key_quotas(gateway_env: dict[str, str]) -> None:
    env = {**gateway_env, "API_KEYS": "team-a:secret-a:0.05,team-b:secret-b", "MAX_BATCH_EVENTS": "20"}
    async with trio.open_nursery() as nursery:
        runtime = await start(nursery, env)
        async with httpx.AsyncClient(base_url=runtime.url("gateway")) as client:
            missing = await client.post("/api/v1/logs", json=LOG)
            wrong = await client.post("/api/v1/logs", json=LOG, headers={"Authorization": "Bearer nope"})
            basic = await client.post("/api/v1/logs", json=LOG, headers={"Authorization": "Basic c2VjcmV0LWE="})
            tx = await client.post("/api/v1/transactions", json=PAYMENT)
            a = {"Authorization": "Bearer secret-a"}
            b = {"Authorization": "Bearer secret-b"}
            assert (await client.post("/api/v1/logs/batch", json={"logs": [LOG] * 20}, headers=a)).status_code == 202
            over_quota = await client.post("/api/v1/logs", json=LOG, headers=a)
            other_team = await client.post("/api/v1/logs/batch", json={"logs": [LOG] * 20}, headers=b)
            tx_ok = await client.post("/api/v1/transactions", json=PAYMENT, headers=b)
            health = await client.get("/health")
            ready = await client.get("/ready")
        for response in (missing, wrong, basic, tx):
            assert response.status_code == 401, response.text
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert response.json()["error"] == "unauthorized"
        assert over_quota.status_code == 429
        assert other_team.status_code == 202 and tx_ok.status_code == 202
        assert health.status_code == 200 and ready.status_code == 200
        runtime.shutdown()


def test_a_bad_key_file_stops_start_up_with_a_configuration_error(tmp_path: object) -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    result = subprocess.run(
        [sys.executable, "-m", "app"],
        env={**os.environ, "API_KEYS_FILE": f"{tmp_path}/missing.json"},
        cwd=str(ROOT), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "configuration error: API_KEYS_FILE" in result.stderr
