"""The listener's HTTP plumbing on a real socket."""

from __future__ import annotations

import httpx
import pytest
import trio

from app.runtime import Runtime

pytestmark = pytest.mark.integration


async def test_a_refusal_that_leaves_a_body_unread_closes_the_connection(gateway: Runtime) -> None:
    """Reusing it would leave the next request behind the unread bytes (it used to hang now and then)."""
    async with httpx.AsyncClient(base_url=gateway.url("application"), timeout=2) as client:
        for i in range(30):
            refused = await client.put("/api/v1/logs", content=b'{"source":"a"}', headers={"Content-Type": "application/json"})
            assert refused.status_code == 405 and refused.headers["Connection"] == "close"
            with trio.fail_after(2):
                accepted = await client.post("/api/v1/logs", json={"source": "a", "level": "INFO", "message": str(i)})
            assert accepted.status_code == 202
        answered = await client.post("/api/v1/logs", json={"source": "a", "level": "INFO", "message": "kept"})
    assert "Connection" not in answered.headers or answered.headers["Connection"] != "close"
