"""Elasticsearch ``_bulk``: the real clients against the gateway, proven by reading Kafka back.

elasticsearch-py (``helpers.bulk``, its product check, its retries of a 429) runs in worker
threads: it is blocking. rsyslog's ``omelasticsearch`` runs as its own process with a
configuration and a work folder of the test's, fed syslog lines over TCP.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import elasticsearch
import httpx
import pytest
import trio
from elasticsearch import Elasticsearch, helpers

from app.config import load_settings
from app.runtime import Runtime, run
from tests.conftest import wait_ready
from tests.kafka_reader import ConsumedRecord, KafkaReader
from tests.processes import free_port

pytestmark = pytest.mark.integration


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def by_key(records: list[ConsumedRecord], key: str) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in records if r.key == key.encode()]


def assert_no_duplicates(records: list[ConsumedRecord]) -> None:
    ids = [r.headers["event-id"] for r in records]
    assert len(ids) == len(set(ids)), "an event twice"


@pytest.mark.parametrize("listener", ["application", "gateway"])
async def test_python_client_helpers_bulk(gateway: Runtime, kafka: KafkaReader, listener: str) -> None:
    host = unique("py")
    count = 120
    actions: list[dict[str, Any]] = [
        {
            "_index": f"logs-{host}",
            "message": f"{host} {i}",
            "host": {"name": host},
            "log.level": ["info", "warn", "error"][i % 3],
            "@timestamp": f"2026-01-02T03:04:{i % 60:02d}.5Z",
            "order": {"id": i},
            **({"_id": f"doc-{i}"} if i % 2 else {}),
        }
        for i in range(count)
    ]
    # gzip on the gateway listener, plain on the shipper's: both bodies the client sends.
    client = Elasticsearch(gateway.url(listener), request_timeout=10, http_compress=listener == "gateway")

    def ship() -> tuple[int, list[Any], dict[str, Any] | None]:
        info = client.info().body if listener == "application" else None
        assert client.cluster.health()["status"] == "green"
        assert client.indices.exists_index_template(name="logs")
        assert client.indices.put_index_template(name="logs", index_patterns=["logs-*"])["acknowledged"]
        ok, errors = helpers.bulk(client, actions, chunk_size=50)
        assert isinstance(errors, list)  # a count only with stats_only
        return ok, errors, info

    with trio.fail_after(60):
        ok, errors, info = await trio.to_thread.run_sync(ship)
    client.close()
    assert ok == count and errors == []
    if info is not None:
        assert info["version"]["number"] == gateway.settings.es_compat_version
    records = await kafka.read(gateway.profiles["application"].topic, count=count, settle=1.0, timeout=60)
    mine = [r for r in records if r.key == host.encode()]
    assert len(mine) == count
    assert_no_duplicates(mine)
    events = {event["message"]: event for event in by_key(records, host)}
    assert set(events) == {f"{host} {i}" for i in range(count)}
    first, second = events[f"{host} 0"], events[f"{host} 1"]
    assert first["source"] == host and first["level"] == "INFO" and first["timestamp"] == "2026-01-02T03:04:00.500000Z"
    assert first["attributes"] == {"order": {"id": 0}, "_index": f"logs-{host}"}
    assert second["level"] == "WARN" and second["attributes"]["_id"] == "doc-1"


async def test_python_client_refusals_and_the_handshake(gateway: Runtime) -> None:
    """The product check passes on answers and refusals; GET / is the version document on 8081
    and the status page on 8080; delete and update are refused item by item."""
    def check() -> None:
        application = Elasticsearch(gateway.url("application"), request_timeout=10)
        assert application.ping()
        assert application.info()["tagline"] == "You Know, for Search"
        with pytest.raises(helpers.BulkIndexError) as refused:
            helpers.bulk(application, [{"_op_type": "delete", "_index": "x", "_id": "1"}, {"_index": "x", "message": "kept"}])
        [error] = refused.value.errors
        assert error["delete"]["status"] == 400 and error["delete"]["error"]["type"] == "illegal_argument_exception"
        with pytest.raises(elasticsearch.BadRequestError) as malformed:
            # A str body is sent as it is, though the client's types name only a sequence of actions.
            application.bulk(body='{"index": {}}\n{"message": \n', index="x")  # type: ignore[arg-type]
        assert malformed.value.meta.headers["X-Elastic-Product"] == "Elasticsearch"
        assert malformed.value.error == "x_content_parse_exception"
        application.close()

    with trio.fail_after(60):
        await trio.to_thread.run_sync(check)
    async with httpx.AsyncClient(timeout=10) as client:
        page = await client.get(gateway.url("gateway") + "/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        health = await client.get(gateway.url("gateway") + "/_cat/health", headers={"Content-Type": "application/json"})
        assert health.status_code == 200 and health.headers["X-Elastic-Product"] == "Elasticsearch"


@contextlib.asynccontextmanager
async def running(env: dict[str, str]) -> AsyncIterator[Runtime]:
    async with trio.open_nursery() as nursery:
        runtime: Runtime = await nursery.start(partial(run, load_settings(env), handle_signals=False))
        for listener in runtime.addresses:
            await wait_ready(runtime.url(listener))
        yield runtime
        runtime.shutdown()


@pytest.fixture
async def rate_limited(gateway_env: dict[str, str]) -> AsyncIterator[Runtime]:
    """A gateway taking 40 application events a second, in bursts of at most 40."""
    async with running({**gateway_env, "APPLICATION_RATE_LIMIT": "40", "MAX_BATCH_EVENTS": "40"}) as runtime:
        yield runtime


async def test_python_client_api_keys(gateway_env: dict[str, str], kafka: KafkaReader) -> None:
    """The key as api_key or as Basic credentials' password; none is a 401 the client does not retry."""
    host = unique("keyed")
    async with running({**gateway_env, "API_KEYS": "shipper:s3cret"}) as runtime:
        url = runtime.url("gateway")

        def ship() -> None:
            for client in (Elasticsearch(url, api_key="s3cret"), Elasticsearch(url, basic_auth=("rsyslog", "s3cret"))):
                assert helpers.bulk(client, [{"_index": "logs", "message": "m", "host": host}]) == (1, [])
                client.close()
            anonymous = Elasticsearch(url)
            with pytest.raises(elasticsearch.AuthenticationException) as refused:
                helpers.bulk(anonymous, [{"_index": "logs", "message": "m", "host": host}])
            assert refused.value.meta.headers["X-Elastic-Product"] == "Elasticsearch"
            assert refused.value.error == "security_exception"
            anonymous.close()

        with trio.fail_after(30):
            await trio.to_thread.run_sync(ship)
        records = await kafka.read(runtime.profiles["application"].topic, count=2, settle=1.0)
    assert len([r for r in records if r.key == host.encode()]) == 2


async def test_python_client_retries_429s_and_kafka_holds_each_event_once(rate_limited: Runtime, kafka: KafkaReader) -> None:
    """helpers.bulk with max_retries retries a chunk refused 429 (es_rejected_execution_exception)
    with its backoff, as its documentation says: every event arrives, and only once."""
    host = unique("retry")
    count = 200
    actions = [{"_index": "logs", "message": str(i), "host": host} for i in range(count)]
    # The transport's own retries off: each 429 reaches helpers.bulk, which backs off and retries.
    client = Elasticsearch(rate_limited.url("application"), request_timeout=10, max_retries=0)

    def ship() -> tuple[int, list[Any]]:
        ok, errors = helpers.bulk(client, actions, chunk_size=40, max_retries=20, initial_backoff=0.25, max_backoff=1)
        assert isinstance(errors, list)  # a count only with stats_only
        return ok, errors

    with trio.fail_after(60):
        ok, errors = await trio.to_thread.run_sync(ship)
    client.close()
    assert ok == count and errors == []
    throttled = rate_limited.metrics.throttled.labels("application")._value.get()
    assert throttled >= 40, "the client met 429s"
    records = await kafka.read(rate_limited.profiles["application"].topic, count=count, settle=1.5, timeout=60)
    mine = [r for r in records if r.key == host.encode()]
    assert sorted(int(json.loads(r.value)["message"]) for r in mine) == list(range(count))
    assert_no_duplicates(mine)


async def test_python_client_without_retries_reports_the_429_and_kafka_holds_what_was_taken(
    rate_limited: Runtime, kafka: KafkaReader
) -> None:
    host = unique("noretry")
    actions = [{"_index": "logs", "message": str(i), "host": host} for i in range(200)]
    client = Elasticsearch(rate_limited.url("gateway"), request_timeout=10, max_retries=0)
    taken: list[int] = []

    def ship() -> elasticsearch.ApiError:
        try:
            for ok, item in helpers.streaming_bulk(client, actions, chunk_size=20):
                assert ok
                taken.append(1)
        except elasticsearch.ApiError as error:
            return error
        raise AssertionError("no 429 at 200 events in a burst of 40")

    with trio.fail_after(30):
        error = await trio.to_thread.run_sync(ship)
    client.close()
    assert error.meta.status == 429 and error.error == "es_rejected_execution_exception"
    assert int(error.meta.headers["Retry-After"]) >= 1
    assert error.meta.headers["X-Elastic-Product"] == "Elasticsearch"
    assert 40 <= len(taken) < 200
    records = await kafka.read(rate_limited.profiles["application"].topic, count=len(taken), settle=1.5, timeout=60)
    mine = [r for r in records if r.key == host.encode()]
    assert sorted(int(json.loads(r.value)["message"]) for r in mine) == list(range(len(taken)))
    assert_no_duplicates(mine)


# -- rsyslog's omelasticsearch --------------------------------------------------------------

RSYSLOG_TEMPLATE = r"""
template(name="es-json" type="list" option.json="on") {
  constant(value="{\"@timestamp\":\"") property(name="timereported" dateFormat="rfc3339")
  constant(value="\",\"host\":\"") property(name="hostname")
  constant(value="\",\"severity\":\"") property(name="syslogseverity-text")
  constant(value="\",\"program\":\"") property(name="programname")
  constant(value="\",\"message\":\"") property(name="msg")
  constant(value="\"}")
}
"""


def rsyslog_config(work: Path, port: int, targets: dict[str, int]) -> str:
    actions = "\n".join(
        f'action(type="omelasticsearch" server="127.0.0.1" serverport="{target}" template="es-json"\n'
        f'       searchIndex="{index}" bulkmode="on" queue.type="linkedList" queue.dequeueBatchSize="64"\n'
        f'       action.resumeRetryCount="-1" action.resumeInterval="1")'
        for index, target in targets.items()
    )
    return (
        f'global(workDirectory="{work}")\n'
        'module(load="imtcp")\nmodule(load="omelasticsearch")\n'
        f'input(type="imtcp" address="127.0.0.1" port="{port}")\n'
        f"{RSYSLOG_TEMPLATE}\n{actions}\n"
    )


@pytest.fixture
def rsyslogd() -> str:
    found = shutil.which("rsyslogd")
    if found is None or not list(Path("/usr/lib").glob("*/rsyslog/omelasticsearch.so")):
        pytest.fail("rsyslog and rsyslog-elasticsearch are missing: .ci/install-system-deps.sh installs them")
    return found


async def test_rsyslog_omelasticsearch_through_both_listeners(
    gateway: Runtime, kafka: KafkaReader, rsyslogd: str, tmp_path: Path
) -> None:
    host = unique("rsys")
    count = 150
    work = tmp_path / "work"
    work.mkdir()
    port = free_port()
    targets = {
        f"app-{host}": int(gateway.url("application").rsplit(":", 1)[1]),
        f"gw-{host}": int(gateway.url("gateway").rsplit(":", 1)[1]),
    }
    config = tmp_path / "rsyslog.conf"
    config.write_text(rsyslog_config(work, port, targets))
    check = subprocess.run([rsyslogd, "-N1", "-f", str(config)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    log = (tmp_path / "rsyslogd.log").open("w")
    process = subprocess.Popen(
        [rsyslogd, "-n", "-f", str(config), "-i", str(tmp_path / "rsyslogd.pid")], stdout=log, stderr=subprocess.STDOUT
    )
    severities = {14: "INFO", 11: "ERROR", 12: "WARN", 15: "DEBUG"}
    lines = [
        f"<{list(severities)[i % 4]}>Oct 11 22:14:{i % 60:02d} {host} shop[42]: order {i} done\n" for i in range(count)
    ]
    try:
        with trio.fail_after(30):
            while True:  # until imtcp listens
                try:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=1)
                    break
                except OSError:
                    assert process.poll() is None, (tmp_path / "rsyslogd.log").read_text()
                    await trio.sleep(0.1)
        with sock:
            sock.sendall("".join(lines).encode())
        records = await kafka.read(gateway.profiles["application"].topic, count=2 * count, settle=2.0, timeout=60)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
    mine = [r for r in records if r.key == host.encode()]
    assert_no_duplicates(mine)
    events = by_key(records, host)
    for index in targets:
        arrived = sorted(int(e["message"].split()[1]) for e in events if e["attributes"]["_index"] == index)
        assert arrived == list(range(count)), (index, len(arrived), (tmp_path / "rsyslogd.log").read_text()[-2000:])
    assert len(mine) == 2 * count
    event = next(e for e in events if e["message"].strip() == "order 1 done")
    assert event["level"] == "ERROR" and event["source"] == host and event["timestamp"].endswith("22:14:01Z")
    assert event["attributes"]["program"] == "shop"
    assert {e["level"] for e in events} == set(severities.values())
