"""The gateway's status page: ``/status.json`` follows what was posted, ``/`` is self-contained,
and headless Chromium shows live numbers while load runs.

Chromium is driven by its command line. ``--virtual-time-budget`` lets the page's timers and
fetches run: virtual time fast-forwards between polls, so a dump holds about one poll per
virtual second, taken tens of milliseconds apart in real time. The page times its rates by the
server's clock, so they stay true however fast the browser's clock runs.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from PIL import Image

import app.status
from app.runtime import Runtime

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--run-all-compositor-stages-before-draw",
]
# Virtual milliseconds: about 40 polls of status.json, spanning a second or two of real time.
VIRTUAL_TIME_BUDGET_MS = 40_000
SERVICES = ("application", "infrastructure", "transaction")
EXTERNAL_REFERENCE = re.compile(r"""(?:src|href|action)\s*=\s*["']?\s*(?:[a-z][a-z0-9+.-]*:)?//""", re.IGNORECASE)


async def status_json(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/status.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    result: dict[str, Any] = response.json()
    return result


async def test_status_json_counts_what_was_posted(gateway: Runtime) -> None:
    async with httpx.AsyncClient(base_url=gateway.url("gateway")) as status:
        before = (await status_json(status))["services"]["application"]
        assert before["acked"] == 0 and before["requests"] == {}
        assert before["breaker"] == "closed"

        source = f"status-{uuid.uuid4().hex[:6]}"
        async with httpx.AsyncClient(base_url=gateway.url("application")) as application:
            for n in range(5):
                response = await application.post("/api/v1/logs", json={"source": source, "level": "INFO", "message": f"m{n}"})
                assert response.status_code == 202
            batch = {"logs": [{"source": source, "level": "WARN", "message": f"b{n}"} for n in range(20)]}
            response = await application.post("/api/v1/logs/batch", json=batch)
            assert response.status_code == 202
        response = await status.post("/api/v1/logs", json={"source": source, "level": "INFO", "message": "via 8080"})
        assert response.status_code == 202

        with trio.fail_after(15):
            while (service := (await status_json(status))["services"]["application"])["acked"] < 26:
                await trio.sleep(0.1)
        await trio.sleep(0.3)  # nothing more may arrive
        service = (await status_json(status))["services"]["application"]
    assert service["acked"] == 26
    assert service["requests"] == {"202": 7}
    # Delivery latencies are sampled in memory mode (a request per 100 ms, the first one among them).
    assert 1 <= service["send"]["count"] <= 26 and service["send"]["counts"][-1] <= service["send"]["count"]
    assert service["http"]["count"] == 7
    assert service["errors"] == service["lost"] == service["deadLetters"] == 0
    assert service["bufferFill"] == 0.0 and service["bufferEvents"] == 0.0


async def test_page_is_served_by_the_gateway_alone_and_fetches_nothing_elsewhere(gateway: Runtime) -> None:
    async with httpx.AsyncClient(base_url=gateway.url("gateway")) as client:
        page = await client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "connect-src 'self'" in page.headers["content-security-policy"]
        references = re.findall(r"""(?:src|href)="([^"]+)\"""", page.text)
        assert set(references) >= {"status.css", "status.js", "status.json"}
        served = {"/": page.text}
        for reference in references:
            if reference.startswith("data:"):
                continue
            answer = await client.get(f"/{reference}")
            assert answer.status_code == 200, reference
            served[reference] = answer.text
        assert served["status.css"].startswith(":root") and "fetch(" in served["status.js"]
        for name, text in served.items():
            assert not EXTERNAL_REFERENCE.search(text), name
            assert "http://" not in text and "https://" not in text, name
            assert not re.search(r"""url\(\s*["']?(?!data:)[a-z]+:""", text), name
        document = (await client.get("/openapi.json")).json()
        assert document["paths"]["/"]["get"]["responses"]["200"]["content"].keys() == {"text/html"}
        assert "/status.json" in document["paths"]
    for listener in ("application", "infrastructure", "transaction"):
        async with httpx.AsyncClient(base_url=gateway.url(listener)) as client:
            root = await client.get("/")
            if listener == "application":  # Elasticsearch clients' version document, not the page
                assert root.status_code == 200 and root.headers["x-elastic-product"] == "Elasticsearch"
            else:
                assert root.status_code == 404, listener
            assert (await client.get("/status.json")).status_code == 404, listener


class Fields(HTMLParser):
    """The text of every ``data-field`` element, keyed by (service card or section id, field)."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[tuple[str, str], str] = {}
        self._scope: list[str] = []
        self._open: list[tuple[str, str, str]] = []  # (tag, scope, field) of elements being read
        self._text: dict[int, list[str]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        scope = attributes.get("data-service") or attributes.get("id")
        if tag == "section":
            self._scope.append(scope or "")
        current = self._scope[-1] if self._scope else ""
        field = attributes.get("data-field")
        if field:
            self._open.append((tag, current, field))
            self._text[len(self._open)] = []
        elif self._open:
            self._open.append((tag, "", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "section" and self._scope:
            self._scope.pop()
        if self._open and self._open[-1][0] == tag:
            depth = len(self._open)
            _, scope, field = self._open.pop()
            if field:
                self.values[(scope, field)] = "".join(self._text.pop(depth)).strip()

    def handle_data(self, data: str) -> None:
        for depth, (_, _, field) in enumerate(self._open, start=1):
            if field:
                self._text[depth].append(data)


async def chromium(url: str, *extra: str, user_data: Path) -> str:
    assert shutil.which(CHROMIUM), "chromium is missing: .ci/install-system-deps.sh installs it"
    with trio.fail_after(120):  # about 2 s when the machine is idle
        result = await trio.run_process(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={user_data}",
             f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}", *extra, url],
            capture_stdout=True, capture_stderr=True, check=False,
        )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    return result.stdout.decode()


async def page_fields(url: str, user_data: Path) -> dict[tuple[str, str], str]:
    parser = Fields()
    parser.feed(await chromium(url, "--dump-dom", user_data=user_data))
    return parser.values


def number(text: str) -> float:
    return float(text.replace(",", ""))


async def post_batches(url: str, stop: trio.Event) -> None:
    """Batches of 50 logs, back to back, until told to stop (at most 4 minutes)."""
    batch = {"logs": [{"source": f"load-{n % 4}", "level": "INFO", "message": f"event {n}"} for n in range(50)]}
    async with httpx.AsyncClient(base_url=url) as client:
        with trio.move_on_after(240):
            while not stop.is_set():
                response = await client.post("/api/v1/logs/batch", json=batch)
                assert response.status_code == 202, response.text
                await trio.sleep(0.02)


async def test_chromium_shows_live_numbers_under_load(gateway: Runtime, tmp_path: Path) -> None:
    url = f"{gateway.url('gateway')}/"

    # Idle: no traffic yet, so the page must say so; this is what the checks under load rule out.
    idle = await page_fields(url, tmp_path / "profile-idle")
    for service in SERVICES:
        assert idle[(service, "throughput")] == "0", idle
        assert idle[(service, "acked")] == "0"
    assert idle[("application", "breaker")] == "closed"
    assert idle[("application", "send-p99")] == "–"

    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(post_batches, gateway.url("application"), stop)
        async with httpx.AsyncClient(base_url=gateway.url("gateway")) as client:
            with trio.fail_after(15):
                while (await status_json(client))["services"]["application"]["acked"] == 0:
                    await trio.sleep(0.1)
        first = await page_fields(url, tmp_path / "profile-1")
        await trio.sleep(2)
        second = await page_fields(url, tmp_path / "profile-2")
        screenshot = tmp_path / "status.png"
        await chromium(url, f"--screenshot={screenshot}", "--window-size=1280,900", "--hide-scrollbars",
                       user_data=tmp_path / "profile-shot")
        stop.set()

    for fields in (first, second):
        assert number(fields[("application", "throughput")]) > 0, fields
        assert number(fields[("application", "requests")]) > 0
        assert fields[("application", "breaker")] == "closed"
        assert fields[("application", "send-p99")] not in ("–", "")
        assert fields[("application", "errors")] == "0"
        assert fields[("infrastructure", "throughput")] == "0"
        assert "application" not in fields[("", "overall")]  # neither degraded nor unhealthy on its account
    assert number(second[("application", "acked")]) > number(first[("application", "acked")])
    assert second[("application", "throughput")] != first[("application", "throughput")]

    assert screenshot.stat().st_size > 20_000
    with Image.open(screenshot) as image:
        assert image.size == (1280, 900)
        rgb = image.convert("RGB")
        header, background = rgb.getpixel((5, 5)), rgb.getpixel((5, 300))
        colours = rgb.getcolors(maxcolors=1 << 16)
    assert header != background
    assert colours is None or len(colours) > 50  # text, badges and sparklines: far from a single colour


MATH_PAGE = """<!doctype html><html><body><pre id="out"></pre>
<script src="%s"></script>
<script>
const s = globalThis.gatewayStatus;
const h = (counts, count) => ({ le: [0.01, 0.1, 1], counts, count });
const none = { le: [], counts: [], count: 0 };
document.getElementById("out").textContent = JSON.stringify({
  fresh: [0.5, 0.95, 0.99].map((q) => s.percentile(h([0, 0, 0], 0), h([10, 90, 100], 100), q)),
  noSeriesYet: s.percentile(none, h([10, 90, 100], 100), 0.5),
  deltaOnly: s.percentile(h([5, 5, 5], 5), h([5, 15, 15], 15), 0.5),
  beyondLastBound: s.percentile(h([0, 0, 0], 0), h([10, 90, 100], 110), 0.99),
  nothingNew: s.percentile(h([10, 90, 100], 100), h([10, 90, 100], 100), 0.5),
  rate: s.rate({ time: 100, v: 10 }, { time: 102, v: 30 }, (snap) => snap.v),
  rateWithoutBaseline: s.rate(null, { time: 102, v: 30 }, (snap) => snap.v),
  formatted: [s.formatRate(1234.4), s.formatRate(0), s.formatRate(3.14159), s.formatRate(null),
              s.formatSeconds(0.0123), s.formatSeconds(0.0004), s.formatSeconds(2.5), s.formatBytes(3 * 1048576)],
});
</script></body></html>"""


async def test_page_arithmetic_in_chromium(tmp_path: Path) -> None:
    """Percentiles interpolate within buckets like Prometheus's histogram_quantile, over deltas only."""
    script = Path(app.status.__file__).parent / "static" / "status.js"
    page = tmp_path / "math.html"
    page.write_text(MATH_PAGE % script.as_uri())
    dom = await chromium(page.as_uri(), "--dump-dom", user_data=tmp_path / "profile")
    match = re.search(r'<pre id="out">(.*)</pre>', dom)
    assert match, dom[-2000:]
    result = json.loads(match.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
    assert result["fresh"] == pytest.approx([0.055, 0.55, 0.91])
    assert result["noSeriesYet"] == pytest.approx(0.055)
    assert result["deltaOnly"] == pytest.approx(0.055)  # the 5 old observations in the first bucket do not count
    assert result["beyondLastBound"] == 1
    assert result["nothingNew"] is None
    assert result["rate"] == 10 and result["rateWithoutBaseline"] is None
    assert result["formatted"] == ["1,234", "0", "3.14", "–", "12 ms", "<1 ms", "2.50 s", "3.0 MiB"]
