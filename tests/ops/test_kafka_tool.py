"""scripts/kafka-tool: Kafka's own tools and kcat against the gateway's cluster, as the reference design's runbook
uses them (topics listed, described and altered, records the gateway wrote consumed, a consumer group described)."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from app.runtime import Runtime
from scripts import kafkatool
from tests.conftest import ROOT, Infra, PrivateKafka

TOOL = ROOT / "scripts" / "kafka-tool"
SECURE_PORT_BASE = 19492


async def kafka_tool(*args: str, env: dict[str, str], timeout: float = 60) -> str:
    with trio.fail_after(timeout):
        result = await trio.run_process(
            [str(TOOL), *args], env={**os.environ, **env}, capture_stdout=True, capture_stderr=True, check=False
        )
    assert result.returncode == 0, (args, result.stdout.decode()[-2000:], result.stderr.decode()[-2000:])
    return result.stdout.decode()


def test_the_reference_designs_tool_names_are_the_same_tools() -> None:
    assert {kafkatool.tool_name(name) for name in ("kafka-topics", "kafka-topics.sh", "topics")} == {"topics"}
    assert kafkatool.tool_name("kafka-consumer-groups") == "consumer-groups"
    assert kafkatool.tool_name("kafka-console-consumer") == "console-consumer"


def test_the_gateways_security_settings_become_the_java_clients(tmp_path: Path) -> None:
    scram = kafkatool.java_properties(
        {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "gateway",
         "sasl.password": 'se"cr\\et', "ssl.ca.location": "/etc/kafka/ca.pem"}
    )
    assert scram == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.jaas.config": 'org.apache.kafka.common.security.scram.ScramLoginModule required username="gateway"'
        ' password="se\\"cr\\\\et";',
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": "/etc/kafka/ca.pem",
    }
    plain = kafkatool.java_properties({"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
                                       "sasl.username": "u", "sasl.password": "p"})
    assert plain["sasl.jaas.config"].startswith("org.apache.kafka.common.security.plain.PlainLoginModule required")
    mutual = kafkatool.java_properties({"security.protocol": "SSL", "ssl.key.password": "k"}, tmp_path / "ks.pem")
    assert mutual == {"security.protocol": "SSL", "ssl.keystore.type": "PEM",
                      "ssl.keystore.location": str(tmp_path / "ks.pem"), "ssl.key.password": "k"}
    assert kafkatool.properties_text({"a": "x\\y"}) == "a=x\\\\y\n"
    assert kafkatool.kcat_options({"bootstrap.servers": "b:1", "security.protocol": "SSL"}) == [
        "-X", "security.protocol=SSL",
    ]


def test_a_bootstrap_server_on_the_command_line_wins(tmp_path: Path) -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092"}
    ours, _ = kafkatool.command("kafka-topics", ["--list"], env, tmp_path)
    assert ours[ours.index("--bootstrap-server") + 1] == "127.0.0.1:9092"
    assert ours[ours.index("--command-config") + 1] == str(tmp_path / "client.properties")
    theirs, _ = kafkatool.command("kafka-topics", ["--list", "--bootstrap-server", "localhost:9092"], env, tmp_path)
    assert theirs.count("--bootstrap-server") == 1 and theirs[-1] == "localhost:9092"
    kcat, added = kafkatool.command("kcat", ["-b", "x:1", "-L"], env, tmp_path)
    assert kcat == ["kcat", "-X", "security.protocol=PLAINTEXT", "-b", "x:1", "-L"]
    # kcat runs on the gateway's librdkafka (Debian's cannot SCRAM against Kafka 4).
    assert (Path(added["LD_LIBRARY_PATH"]) / "librdkafka.so.1").resolve() == kafkatool.project_librdkafka()


@pytest.mark.integration
async def test_the_runbooks_kafka_commands_against_the_gateways_topics(gateway: Runtime, infra: Infra) -> None:
    import httpx

    env = {"KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap_servers}
    topic = gateway.profiles["application"].topic
    marker = uuid.uuid4().hex[:8]
    async with httpx.AsyncClient(base_url=gateway.url("gateway"), timeout=10) as client:
        logs = [{"source": f"tool-{i % 3}", "level": "INFO", "message": f"{marker} {i}"} for i in range(10)]
        assert (await client.post("/api/v1/logs/batch", json={"logs": logs})).status_code == 202

    # "Verify topic exists"; "Topic details"
    assert topic in (await kafka_tool("kafka-topics", "--list", env=env)).split()
    described = await kafka_tool("kafka-topics", "--describe", "--topic", topic, env=env)
    assert "PartitionCount: 3" in described

    # "Check topic has data": the records the gateway wrote, as the console consumer prints them.
    group = f"log-processors-{marker}"
    printed = await kafka_tool(
        "kafka-console-consumer", "--topic", topic, "--from-beginning", "--max-messages", "10", "--group", group,
        env=env,
    )
    messages = sorted(json.loads(line)["message"] for line in printed.splitlines())
    assert messages == sorted(f"{marker} {i}" for i in range(10))
    same = await kafka_tool("kcat", "-C", "-t", topic, "-o", "beginning", "-c", "10", "-e", "-q", env=env)
    assert sorted(json.loads(line)["message"] for line in same.splitlines()) == messages

    # "Consumer lag": the group the console consumer committed for, caught up.
    table = await kafka_tool("kafka-consumer-groups", "--describe", "--group", group, env=env)
    rows = [line.split() for line in table.splitlines() if topic in line]
    header = next(line.split() for line in table.splitlines() if "LAG" in line.split())
    lag = [int(row[header.index("LAG")]) for row in rows if row[header.index("CURRENT-OFFSET")] != "-"]
    assert rows and sum(lag) == 0 and sum(int(row[header.index("LOG-END-OFFSET")]) for row in rows) == 10

    # "Increase partitions for better parallelism"; and the sizes on disk.
    await kafka_tool("kafka-topics", "--alter", "--topic", topic, "--partitions", "5", env=env)
    assert "PartitionCount: 5" in await kafka_tool("kafka-topics", "--describe", "--topic", topic, env=env)
    dirs = json.loads((await kafka_tool("log-dirs", "--describe", "--topic-list", topic, env=env)).splitlines()[-1])
    partitions = {p["partition"] for broker in dirs["brokers"] for d in broker["logDirs"] for p in d["partitions"]}
    assert partitions == {f"{topic}-{n}" for n in range(5)}
    assert topic in await kafka_tool("kcat", "-L", "-t", topic, env=env)

    # The console producer: lines in, records out.
    with trio.fail_after(60):
        produced = await trio.run_process(
            [str(TOOL), "kafka-console-producer", "--topic", topic], env={**os.environ, **env},
            stdin=b'{"from":"console-producer"}\n', capture_stdout=True, capture_stderr=True, check=False,
        )
    assert produced.returncode == 0, produced.stderr.decode()[-2000:]
    after = await kafka_tool("kcat", "-C", "-t", topic, "-o", "beginning", "-c", "11", "-e", "-q", env=env)
    assert '{"from":"console-producer"}' in after.splitlines()


@pytest.fixture(scope="module")
def secure_kafka() -> Iterator[PrivateKafka]:
    kafka = PrivateKafka(ROOT / ".local" / "kafka-tool-secure", port_base=SECURE_PORT_BASE, secure=True)
    kafka.up()
    yield kafka
    kafka.down()


@pytest.mark.integration
@pytest.mark.fault
async def test_the_tools_take_the_gateways_sasl_and_tls_settings(secure_kafka: PrivateKafka) -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{SECURE_PORT_BASE + 12}",  # SASL_SSL (scripts/infra.py KAFKA_SECURE=1)
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "gateway",
        "KAFKA_SASL_PASSWORD": "gateway-secret",
        "KAFKA_SSL_CA_LOCATION": str(secure_kafka.directory / "tls" / "ca.pem"),
    }
    topic = f"secured-{uuid.uuid4().hex[:8]}"
    await kafka_tool("kafka-topics", "--create", "--topic", topic, "--partitions", "2", env=env)
    assert topic in (await kafka_tool("kafka-topics", "--list", env=env)).split()
    assert f'topic "{topic}" with 2 partitions' in await kafka_tool("kcat", "-L", env=env)
    assert "GROUP" in await kafka_tool("consumer-groups", "--list", "--state", env=env)
