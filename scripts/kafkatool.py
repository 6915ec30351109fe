#!/usr/bin/env python3
"""Kafka's own command-line tools, and kcat, against the cluster the gateway is configured for.

``scripts/kafka-tool TOOL [ARGS...]`` runs a tool of the broker distribution from the jars
``scripts/infra.py`` fetches (``$INFRA_DIR/kafka/lib``, fetched now when missing), with the
bootstrap servers and the security settings of the gateway's environment (``KAFKA_BOOTSTRAP_SERVERS``,
``KAFKA_SECURITY_PROTOCOL``, ``KAFKA_SASL_*``, ``KAFKA_SSL_*``) written to a client properties file
that is handed to the tool (``--command-config``, ``--consumer.config``, ``--producer.config``) and
deleted when it exits. ``--bootstrap-server`` (``-b`` for kcat) given on the command line wins.
Without ``KAFKA_BOOTSTRAP_SERVERS``, the local cluster of ``$INFRA_DIR/infra.env``.

The reference design's commands keep their names, ``docker compose exec kafka`` left out::

    scripts/kafka-tool kafka-topics --list
    scripts/kafka-tool kafka-topics --describe --topic application-logs
    scripts/kafka-tool kafka-console-consumer --topic application-logs --from-beginning --max-messages 10
    scripts/kafka-tool kafka-consumer-groups --describe --group log-processors
    scripts/kafka-tool kcat -C -t application-logs -o beginning -c 10 -e

Standard library only (and app/config.py, which is too): it runs before the virtualenv exists.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.config import SettingsError, load_settings  # noqa: E402
from app.kafka.connection import connection_config  # noqa: E402
from scripts.localinfra import jars  # noqa: E402
from scripts.localinfra.kafka import java  # noqa: E402
from scripts.localinfra.settings import InfraError, Settings  # noqa: E402

TOOLS_LOG4J = ROOT / "ops" / "kafka" / "tools-log4j2.yaml"
# A tool's JVM: small and quick to start, as kafka-run-class.sh starts them.
JVM_OPTIONS = ["-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true"]


@dataclass(frozen=True)
class Tool:
    main_class: str
    config_option: str | None  # how the tool takes a client properties file
    help: str


TOOLS = {
    "topics": Tool("org.apache.kafka.tools.TopicCommand", "--command-config", "list, describe, create, alter topics"),
    "console-consumer": Tool(
        "org.apache.kafka.tools.consumer.ConsoleConsumer", "--consumer.config", "print a topic's records"
    ),
    "console-producer": Tool("org.apache.kafka.tools.ConsoleProducer", "--producer.config", "send stdin's lines"),
    "consumer-groups": Tool(
        "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand", "--command-config",
        "list and describe consumer groups: members, offsets, lag",
    ),
    "log-dirs": Tool("org.apache.kafka.tools.LogDirsCommand", "--command-config", "partition sizes on the brokers"),
    "get-offsets": Tool("org.apache.kafka.tools.GetOffsetShell", "--command-config", "partitions' offsets"),
}
KCAT = "kcat"


def tool_name(name: str) -> str:
    """``kafka-topics``, ``kafka-topics.sh`` and ``topics`` are one tool."""
    name = name.removesuffix(".sh")
    return name.removeprefix("kafka-") if name.removeprefix("kafka-") in TOOLS else name


def _jaas_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def java_properties(connection: Mapping[str, str], keystore: Path | None = None) -> dict[str, str]:
    """The Java client's settings for librdkafka's ``connection`` (app/kafka/connection.py).

    PEM files stay PEM files (Kafka reads them since 2.7); the client certificate and its key,
    separate for librdkafka, are one file for Java: ``keystore``, written by the caller.
    """
    properties = {"security.protocol": connection.get("security.protocol", "PLAINTEXT")}
    mechanism = connection.get("sasl.mechanism", "")
    if mechanism:
        module = (
            "org.apache.kafka.common.security.plain.PlainLoginModule"
            if mechanism == "PLAIN"
            else "org.apache.kafka.common.security.scram.ScramLoginModule"
        )
        properties["sasl.mechanism"] = mechanism
        properties["sasl.jaas.config"] = (
            f"{module} required username={_jaas_quote(connection.get('sasl.username', ''))}"
            f" password={_jaas_quote(connection.get('sasl.password', ''))};"
        )
    if connection.get("ssl.ca.location"):
        properties["ssl.truststore.type"] = "PEM"
        properties["ssl.truststore.location"] = connection["ssl.ca.location"]
    if keystore is not None:
        properties["ssl.keystore.type"] = "PEM"
        properties["ssl.keystore.location"] = str(keystore)
        if connection.get("ssl.key.password"):
            properties["ssl.key.password"] = connection["ssl.key.password"]
    return properties


def properties_text(properties: Mapping[str, str]) -> str:
    """A Java properties file (backslashes escaped: the format reads them as escapes)."""
    return "".join(f"{key}={value.replace(chr(92), chr(92) * 2)}\n" for key, value in properties.items())


def kcat_options(connection: Mapping[str, str]) -> list[str]:
    """kcat is librdkafka: the gateway's own settings, as ``-X key=value``."""
    options: list[str] = []
    for key, value in connection.items():
        if key != "bootstrap.servers":
            options += ["-X", f"{key}={value}"]
    return options


def bootstrap_servers(env: Mapping[str, str]) -> str:
    """``KAFKA_BOOTSTRAP_SERVERS``, else the local cluster's (``$INFRA_DIR/infra.env``), else the default."""
    if env.get("KAFKA_BOOTSTRAP_SERVERS"):
        return env["KAFKA_BOOTSTRAP_SERVERS"]
    try:
        for line in Settings.from_env(env).env_file.read_text().splitlines():
            key, _, value = line.partition("=")
            if key == "KAFKA_BOOTSTRAP_SERVERS" and value:
                return value
    except (OSError, InfraError):
        pass
    return load_settings({}).kafka_bootstrap_servers


def names_bootstrap(args: Sequence[str], options: Sequence[str]) -> bool:
    return any(arg in options or any(arg.startswith(f"{option}=") for option in options) for arg in args)


def project_librdkafka() -> Path | None:
    """The librdkafka of the virtualenv's confluent-kafka wheel, if it bundles one."""
    found = sorted(ROOT.glob(".venv/lib/python3*/site-packages/confluent_kafka.libs/librdkafka*.so*"))
    return found[-1] if found else None


def kcat_environment(workdir: Path) -> dict[str, str]:
    """kcat on the gateway's own librdkafka when the wheel has one: Debian 12's (2.0.2) fails SCRAM against
    Kafka 4 (the broker checks the nonce as RFC 5802 says; librdkafka 2.6.1 fixed it), and the gateway's
    clients are what kcat should behave like."""
    library = project_librdkafka()
    if library is None:
        return {}
    (workdir / "lib").mkdir(exist_ok=True)
    (workdir / "lib" / "librdkafka.so.1").symlink_to(library)
    return {"LD_LIBRARY_PATH": str(workdir / "lib")}


def command(name: str, args: Sequence[str], env: Mapping[str, str], workdir: Path) -> tuple[list[str], dict[str, str]]:
    """The command line that runs tool ``name`` with ``args``, and what it needs added to the environment;
    writes its client files under ``workdir``."""
    gateway_env = {key: value for key, value in env.items() if key.startswith("KAFKA_")}
    gateway_env["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap_servers(env)
    connection = connection_config(load_settings(gateway_env))
    if name == KCAT:
        bootstrap = [] if names_bootstrap(args, ("-b",)) else ["-b", connection["bootstrap.servers"]]
        return [KCAT, *bootstrap, *kcat_options(connection), *args], kcat_environment(workdir)
    if name == "run-class":
        if not args:
            raise SystemExit("kafka-tool run-class: name the class, e.g. org.apache.kafka.tools.JmxTool")
        return java_command(env, args[0], list(args[1:])), {}
    tool = TOOLS.get(tool_name(name))
    if tool is None:
        raise SystemExit(f"kafka-tool: no tool {name!r}\n\n{usage()}")
    keystore = None
    if connection.get("ssl.certificate.location") and connection.get("ssl.key.location"):
        keystore = workdir / "client-keystore.pem"
        keystore.write_text(
            Path(connection["ssl.key.location"]).read_text() + Path(connection["ssl.certificate.location"]).read_text()
        )
    config = workdir / "client.properties"
    config.write_text(properties_text(java_properties(connection, keystore)))
    extra: list[str] = []
    if not names_bootstrap(args, ("--bootstrap-server",)):
        extra += ["--bootstrap-server", connection["bootstrap.servers"]]
    if tool.config_option and not names_bootstrap(args, (tool.config_option,)):
        extra += [tool.config_option, str(config)]
    return java_command(env, tool.main_class, [*extra, *args]), {}


def java_command(env: Mapping[str, str], main_class: str, args: list[str]) -> list[str]:
    lib = jars.fetch(Settings.from_env(env))  # a no-op when the jars are there
    return [
        java(env), *JVM_OPTIONS, f"-Dlog4j2.configurationFile={TOOLS_LOG4J}",
        "-cp", f"{lib}/*", main_class, *args,
    ]


def usage() -> str:
    lines = ["usage: scripts/kafka-tool TOOL [ARGS...]   (make kafka-tool ARGS='TOOL ARGS...')", "", "tools:"]
    for name, tool in TOOLS.items():
        lines.append(f"  {name:<18} (kafka-{name}) {tool.help}: {tool.main_class}")
    lines.append(f"  {'run-class':<18} CLASS [ARGS...]: any class of the jars, as kafka-run-class")
    lines.append(f"  {KCAT:<18} kcat with the same settings (-L, -C -t TOPIC -o beginning -c 10 -e, ...)")
    lines.append("")
    lines.append("Bootstrap servers and security from KAFKA_BOOTSTRAP_SERVERS, KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*,")
    lines.append("KAFKA_SSL_* (as the gateway reads them); TOOL --help for the tool's own options.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(usage())
        return 0 if argv else 2
    with tempfile.TemporaryDirectory(prefix="kafka-tool-") as workdir:  # 0700: the properties hold the password
        try:
            cmd, added = command(argv[0], argv[1:], os.environ, Path(workdir))
        except (SettingsError, InfraError, OSError) as error:
            print(f"kafka-tool: {error}", file=sys.stderr)
            return 2
        try:
            return subprocess.call(cmd, env={**os.environ, **added})
        except FileNotFoundError:
            print(f"kafka-tool: {cmd[0]} is not installed (.ci/install-system-deps.sh installs it)", file=sys.stderr)
            return 127
        except KeyboardInterrupt:
            return 130


if __name__ == "__main__":
    sys.exit(main())
