"""The broker's runtime jars, resolved from Maven Central by ops/kafka/pom.xml into ``$INFRA_DIR/kafka/lib``."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from . import kafka
from .process import LOG_TAIL_LINES, log, run, which, write_text
from .settings import KAFKA_MODES, POM_FILE, REPO_ROOT, InfraError, Settings
from .state import locked

SLF4J_BINDINGS = (
    "log4j-slf4j-impl-",
    "log4j-slf4j2-impl-",
    "slf4j-reload4j-",
    "slf4j-log4j12-",
    "slf4j-simple-",
    "slf4j-nop-",
    "slf4j-jdk14-",
    "logback-classic-",
)


def pom_hash() -> str:
    return hashlib.sha256(POM_FILE.read_bytes()).hexdigest()


def jars_complete(s: Settings | None = None) -> bool:
    """True when the jar directory matches the current pom.xml and every recorded jar is present."""
    s = s or Settings.from_env()
    try:
        stamp = json.loads(s.fetch_stamp.read_text())
    except (FileNotFoundError, ValueError):
        return False
    jars = stamp.get("jars") or []
    return stamp.get("pom_sha256") == pom_hash() and bool(jars) and all((s.lib_dir / j).is_file() for j in jars)


def check_classpath(jars: Sequence[str]) -> None:
    """Exactly one slf4j-api (1.7.x) and exactly one SLF4J binding, or the broker logs nothing / warns."""
    apis = [j for j in jars if j.startswith("slf4j-api-")]
    bindings = [j for j in jars if j.startswith(SLF4J_BINDINGS)]
    if len(apis) != 1 or not apis[0].startswith("slf4j-api-1.7."):
        raise InfraError(f"expected exactly one slf4j-api 1.7.x jar, found {apis or 'none'}; fix {POM_FILE}")
    if len(bindings) != 1:
        raise InfraError(f"expected exactly one SLF4J binding, found {bindings or 'none'}; fix {POM_FILE}")


def fetch(s: Settings | None = None, force: bool = False) -> Path:
    """Copy the broker's runtime jars into ``$INFRA_DIR/kafka/lib`` with Maven, unless already complete.

    The jars are copied into a temporary directory which replaces ``lib`` only when Maven succeeded, so an
    interrupted download never leaves a half-filled classpath behind.
    """
    s = s or Settings.from_env()
    if not force and jars_complete(s):
        return s.lib_dir
    with locked(s):
        if not force and jars_complete(s):
            return s.lib_dir
        brokers = [n.name for mode in KAFKA_MODES for n in kafka.running(kafka.node_layout(mode, s))]
        if brokers and s.lib_dir.exists():
            raise InfraError(f"{POM_FILE} changed while brokers are running ({', '.join(brokers)}); run `down` first")
        mvn = which("MVN", "mvn", "Install Maven (.ci/install-system-deps.sh).")
        partial = s.lib_dir.with_name("lib.partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
        log(f"fetching Kafka jars with Maven into {s.lib_dir} ...")
        started = time.monotonic()
        cmd: list[str | Path] = [
            mvn,
            "-q",
            "-B",
            "-Dstyle.color=never",
            "-f",
            POM_FILE,
            "dependency:copy-dependencies",
            f"-Dkafka.lib.dir={partial}",
        ]
        result = run(cmd, cwd=REPO_ROOT)
        if result.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            output = (result.stdout + result.stderr).strip().splitlines()[-LOG_TAIL_LINES:]
            raise InfraError("Maven failed:\n" + "\n".join(output))
        jars = sorted(p.name for p in partial.glob("*.jar"))
        if not jars:
            raise InfraError(f"Maven copied no jars into {partial}")
        check_classpath(jars)
        write_text(partial / s.fetch_stamp.name, json.dumps({"pom_sha256": pom_hash(), "jars": jars}, indent=1) + "\n")
        shutil.rmtree(s.lib_dir, ignore_errors=True)
        partial.rename(s.lib_dir)
        log(f"fetched {len(jars)} jars in {time.monotonic() - started:.1f}s")
    return s.lib_dir
