"""The container deploy surface (ops/compose.yaml, ops/Dockerfile), checked without a container engine.

The compose file is validated against the Compose Specification's JSON schema, the Dockerfile
with hadolint; the rest checks what neither tool knows: that mounted files exist, that the
application service scales, and that every variable handed to the app is a setting it reads.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.config import ProfileSettings, Settings, SettingsError, load_settings
from tests.conftest import ROOT

OPS = ROOT / "ops"
COMPOSE = OPS / "compose.yaml"
DOCKERFILE = OPS / "Dockerfile"
ROLES = ("gateway", "application", "infrastructure", "transaction")
PROFILES = ("application", "infrastructure", "transaction")
# Mounted into Prometheus and Grafana; maintained with the dashboards and alert rules.
MONITORING_MOUNTS = {
    "prometheus": ["prometheus/prometheus.yml", "prometheus/alerts.yml"],
    "grafana": ["grafana/provisioning", "grafana/dashboards"],
}
TOOL_TIMEOUT = 60


def venv_tool(name: str) -> str:
    """A console script of the dev extra, from the interpreter's own environment first."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"{name} is not installed: pip install -e '.[dev]'"
    return found


def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


def services() -> dict[str, dict[str, Any]]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def app_services() -> dict[str, dict[str, Any]]:
    """The services that run the gateway's own image."""
    return {name: service for name, service in services().items() if "build" in service}


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, in either of the two forms compose accepts."""
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [venv_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
    )


def hadolint(path: Path) -> tuple[int, list[dict[str, Any]]]:
    """hadolint's exit code and findings, failing at warning level, inline ignores disregarded."""
    result = subprocess.run(
        [
            venv_tool("hadolint"),
            "--no-color",
            "--format=json",
            "--failure-threshold=warning",
            "--disable-ignore-pragma",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
    )
    assert result.stdout.strip(), result.stderr
    findings = json.loads(result.stdout)
    assert isinstance(findings, list)
    return result.returncode, findings


def test_compose_file_follows_the_compose_specification() -> None:
    result = check_compose_schema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda doc: doc["services"]["application"].update(containr_name="typo"), "containr_name"),
        (lambda doc: doc["services"]["gateway"].update(ports="8080:8080"), "ports"),
        (lambda doc: doc["services"]["gateway"]["depends_on"]["application"].update(condition="up"), "condition"),
    ],
    ids=["unknown key", "ports not a list", "unknown depends_on condition"],
)
def test_the_schema_check_rejects_a_broken_compose_file(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], named: str
) -> None:
    document = compose()
    unchanged = tmp_path / "unchanged.yaml"
    unchanged.write_text(yaml.safe_dump(document))
    assert check_compose_schema(unchanged).returncode == 0
    change(document)
    broken = tmp_path / "compose.yaml"
    broken.write_text(yaml.safe_dump(document))
    result = check_compose_schema(broken)
    assert result.returncode != 0
    assert named in result.stdout + result.stderr


def build_paths(service: dict[str, Any]) -> tuple[Path, Path]:
    """A service's build context and Dockerfile; compose reads both relative to the compose file."""
    build = service["build"]
    if isinstance(build, str):
        return (OPS / build).resolve(), (OPS / build / "Dockerfile").resolve()
    context = (OPS / build.get("context", ".")).resolve()
    return context, (context / build.get("dockerfile", "Dockerfile")).resolve()


def mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, is a bind mount) of each of a service's volumes, in either syntax."""
    found = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            found.append((source, rest.split(":")[0], source.startswith((".", "/", "~"))))
        else:
            found.append((volume.get("source", ""), volume["target"], volume.get("type") == "bind"))
    return found


def bind_targets(service: dict[str, Any]) -> dict[Path, str]:
    """Where a service sees each file or directory of the repository it mounts."""
    return {(OPS / source).resolve(): target for source, target, bind in mounts(service) if bind}


def test_every_built_or_mounted_path_exists() -> None:
    document = compose()
    declared_volumes = set(document.get("volumes") or {})
    missing: list[str] = []
    mounted: dict[str, set[Path]] = {}
    for name, service in document["services"].items():
        if "build" in service:
            context, dockerfile = build_paths(service)
            if not context.is_dir():
                missing.append(f"{name}: build context {context}")
            if not dockerfile.is_file():
                missing.append(f"{name}: Dockerfile {dockerfile}")
        for source, _, bind in mounts(service):
            if not bind:
                if source and source not in declared_volumes:
                    missing.append(f"{name}: volume {source} is not declared")
                continue
            path = (OPS / source).resolve()
            mounted.setdefault(name, set()).add(path)
            if not path.is_relative_to(ROOT):
                missing.append(f"{name}: {source} is outside the repository")
            elif not path.exists():
                missing.append(f"{name}: {path.relative_to(ROOT)}")
    for name, wanted in MONITORING_MOUNTS.items():
        for source in wanted:
            if OPS / source not in mounted.get(name, set()):
                missing.append(f"{name}: ops/{source} is not mounted")
    dashboards = OPS / "grafana" / "dashboards"
    if not any(dashboards.glob("*.json")):
        missing.append(f"grafana: no dashboard in {dashboards.relative_to(ROOT)}/*.json")
    assert not missing, "\n".join(missing)


def test_prometheus_and_grafana_read_their_files_where_compose_mounts_them() -> None:
    every = services()
    prometheus = bind_targets(every["prometheus"])
    config = yaml.safe_load((OPS / "prometheus" / "prometheus.yml").read_text())
    # The image's default --config.file; rule files are relative to the configuration's directory.
    assert prometheus[OPS / "prometheus" / "prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    for rules in config.get("rule_files", []):
        assert f"/etc/prometheus/{rules}" in prometheus.values(), f"rule file {rules} is not mounted"
    discovered = {
        name for job in config["scrape_configs"] for sd in job.get("dns_sd_configs", []) for name in sd["names"]
    }
    assert set(ROLES) <= discovered <= set(every), discovered

    grafana = bind_targets(every["grafana"])
    assert grafana[OPS / "grafana" / "provisioning"] == "/etc/grafana/provisioning"
    provisioning = OPS / "grafana" / "provisioning"
    providers = [
        provider
        for file in sorted((provisioning / "dashboards").glob("*.y*ml"))
        for provider in yaml.safe_load(file.read_text())["providers"]
    ]
    assert providers, f"no dashboard provider in {provisioning.relative_to(ROOT)}/dashboards"
    for provider in providers:
        assert provider["options"]["path"] == grafana[OPS / "grafana" / "dashboards"], provider
    datasources = [
        source
        for file in sorted((provisioning / "datasources").glob("*.y*ml"))
        for source in yaml.safe_load(file.read_text())["datasources"]
        if source["type"] == "prometheus"
    ]
    assert datasources, f"no Prometheus data source in {provisioning.relative_to(ROOT)}/datasources"
    for source in datasources:
        url = urllib.parse.urlsplit(source["url"])
        assert (url.hostname, url.port) == ("prometheus", 9090), source["url"]


def test_dockerfile_copies_only_what_the_build_context_holds() -> None:
    for name, service in app_services().items():
        assert build_paths(service) == (ROOT, DOCKERFILE), f"{name} builds from elsewhere than ops/Dockerfile"
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", ".local"} <= ignored
    sources = []
    for line in DOCKERFILE.read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(word.startswith("--from") for word in words):
            sources.extend(words[1:-1])
    assert sources, "the Dockerfile copies nothing from the build context"
    for source in sources:
        assert (ROOT / source).exists(), source
        assert source.rstrip("/") not in ignored, f"{source} is excluded by .dockerignore"


def test_the_role_services_run_one_role_each_on_its_own_port() -> None:
    every = services()
    defaults = Settings()
    for role in ROLES:
        assert role in every, f"{role} is missing (Prometheus finds it by this name)"
        service = every[role]
        assert "build" in service, f"{role} does not run the gateway's image"
        settings = load_settings(environment(service))
        assert settings.role_set() == {role}
        assert settings.host == "0.0.0.0"
        port = getattr(defaults, f"{role}_port")
        assert f"127.0.0.1:{port}/ready" in " ".join(service["healthcheck"]["test"]), role
    gateway = load_settings(environment(every["gateway"]))
    for profile in PROFILES:
        assert gateway.shipper_urls(profile) == [f"http://{profile}:{getattr(defaults, f'{profile}_port')}"]


def test_the_application_service_scales() -> None:
    application = services()["application"]
    assert "container_name" not in application
    for port in application.get("ports", []):
        if isinstance(port, dict):
            assert "published" not in port, port
        else:
            # "8081", or "127.0.0.1::8081": the host port is left to Docker.
            host, _, _ = str(port).rpartition(":")
            assert not host or host.endswith(":"), f"fixed host port {port}"


def test_healthy_dependencies_have_healthchecks() -> None:
    every = services()
    for name, service in every.items():
        depends = service.get("depends_on", {})
        if isinstance(depends, list):
            depends = {dependency: {"condition": "service_started"} for dependency in depends}
        for dependency, how in depends.items():
            assert dependency in every, f"{name} depends on unknown {dependency}"
            if how.get("condition") == "service_healthy":
                assert "healthcheck" in every[dependency] or "build" in every[dependency], (
                    f"{name} waits for {dependency} to be healthy, which has no healthcheck"
                )


def test_images_are_pinned() -> None:
    for name, service in services().items():
        if "build" in service:
            continue
        image = service["image"]
        _, _, tag = image.rpartition(":")
        assert tag and tag != "latest" and any(c.isdigit() for c in tag), f"{name}: {image} is not pinned"
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("FROM "):
            image = line.split()[1]
            assert image.count(":") == 1 and image.split(":")[1][0].isdigit(), line


def known_variables() -> set[str]:
    names = {"ROLES"}
    for field in dataclasses.fields(Settings):
        if field.type == "ProfileSettings":
            continue
        names.add(field.name.upper())
    for field in dataclasses.fields(ProfileSettings):
        names.update(f"{profile.upper()}_{field.name.upper()}" for profile in PROFILES)
    return names


def test_the_app_is_configured_only_with_settings_it_reads() -> None:
    known = known_variables()
    unknown = {
        f"{name}: {variable}"
        for name, service in app_services().items()
        for variable in environment(service)
        if variable not in known
    }
    assert not unknown, f"not settings of app.config: {sorted(unknown)}"
    for name, service in app_services().items():
        try:
            load_settings(environment(service))
        except SettingsError as error:
            pytest.fail(f"{name}: {error}")


def test_dockerfile_passes_hadolint() -> None:
    code, findings = hadolint(DOCKERFILE)
    serious = [finding for finding in findings if finding["level"] in {"error", "warning"}]
    assert code == 0 and not serious, json.dumps(findings, indent=1)


def test_image_runs_the_app_unprivileged_on_every_interface() -> None:
    lines = DOCKERFILE.read_text().replace("\\\n", " ").splitlines()
    instructions = [line.split(None, 1) for line in lines if line and not line.startswith("#")]
    last_stage = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    final = dict(instructions[last_stage:])
    env = dict(word.split("=", 1) for word in final["ENV"].split())
    assert env["HOST"] == "0.0.0.0"
    assert final["USER"].split(":")[0] not in {"root", "0"}
    assert final["EXPOSE"] == "8080-8083"
    assert json.loads(final["CMD"]) == ["python", "-m", "app"]
    assert "/ready" in final["HEALTHCHECK"]
