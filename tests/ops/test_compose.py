"""docker-compose.yml and deploy/: what an operator runs must hang together (no Docker engine needed).

Every stage has a service running it; every setting passed exists in the settings model; every
Prometheus target is a service on the port it serves metrics on; Grafana gets its data source and the
dashboard; and `docker-compose config` accepts the file.
"""

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from reelstream.service import STAGE_NAMES
from reelstream.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PROMETHEUS = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return command.split() if isinstance(command, str) else list(command)


def _reelstream_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in SERVICES.items() if _command(s)[:1] == ["reelstream"]}


def test_every_stage_and_the_gateway_have_a_service() -> None:
    commands = {name: _command(s) for name, s in _reelstream_services().items()}
    assert commands.pop("gateway") == ["reelstream", "gateway"]
    assert sorted(commands.values()) == sorted(["reelstream", "stage", n] for n in STAGE_NAMES)


def test_every_setting_passed_exists_in_the_settings_model() -> None:
    known = set(Settings.model_fields)
    for name, service in _reelstream_services().items():
        environment = service["environment"]
        passed = [key for key in environment if key.startswith("REELSTREAM_")]
        assert len(passed) > 5, name
        unknown = [key for key in passed if key.removeprefix("REELSTREAM_").lower() not in known]
        assert unknown == [], f"{name} passes settings that do not exist: {unknown}"
        # And their values are ones the model accepts (compose's ${VAR:-default} taking its default).
        values = {
            key.removeprefix("REELSTREAM_").lower(): str(value).split(":-", 1)[-1].rstrip("}")
            if str(value).startswith("${")
            else str(value)
            for key, value in environment.items()
            if key.startswith("REELSTREAM_")
        }
        Settings.model_validate(values)


def _metrics_port(service: str) -> int:
    """The port ``service`` serves /metrics on: the gateway's HTTP port, else the stage's metrics port."""
    environment = SERVICES[service]["environment"]
    if service == "gateway":
        return int(environment.get("REELSTREAM_HTTP_PORT", Settings.model_fields["http_port"].default))
    assert environment.get("REELSTREAM_METRICS_HOST") == "0.0.0.0", f"{service} must listen beyond itself"
    return int(environment.get("REELSTREAM_METRICS_PORT", Settings.model_fields["metrics_port"].default))


def test_every_prometheus_target_is_a_service_on_its_metrics_port() -> None:
    scraped: set[str] = set()
    for job in PROMETHEUS["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        targets = [
            (host, int(port))
            for static in job.get("static_configs", [])
            for host, port in (target.rsplit(":", 1) for target in static["targets"])
        ] + [(host, int(dns["port"])) for dns in job.get("dns_sd_configs", []) for host in dns["names"]]
        assert targets, job["job_name"]
        for host, port in targets:
            assert host in SERVICES, f"{job['job_name']}: no service {host}"
            assert port == _metrics_port(host), f"{job['job_name']}: {host} serves metrics elsewhere"
            scraped.add(host)
    assert scraped == set(_reelstream_services())  # every process is scraped


def test_prometheus_and_grafana_are_provisioned() -> None:
    prometheus, grafana = SERVICES["prometheus"], SERVICES["grafana"]
    assert any(v.startswith("./deploy/prometheus.yml:") for v in prometheus["volumes"])
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    for source in mounts:
        assert (ROOT / source).exists(), source
    datasources = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"]
    assert datasources[0]["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/reelstream.yml").read_text())
    assert providers["providers"][0]["options"]["path"] == mounts["./deploy/grafana/dashboards"]
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/reelstream.json").read_text())
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert uids == {datasources[0]["uid"]}
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("by stage", "latency", "lag", "failures", "dead letters", "generation", "compute", "cost"):
        assert topic in titles, topic


@pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="needs the Debian package docker-compose (tests/system-packages.txt)",
)
def test_docker_compose_accepts_the_file() -> None:
    result = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
