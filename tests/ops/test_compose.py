"""deploy/compose/compose.yaml: the compose spec's JSON schema (bundled in check-jsonschema,
offline) and the fleet's wiring: configs, ports, volumes, start order, Prometheus targets, Grafana
provisioning. No container engine runs here, so the file is checked, not run."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

import fleet

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
NODES = ["edge", "regional", "cloud"]


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # merge keys (<<) resolved


def check_schema(path: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "check-jsonschema"
    assert exe.exists(), "check-jsonschema is missing: `make ops-deps`"
    return subprocess.run(
        [str(exe), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True, timeout=60,
    )


def binds(service: dict) -> dict[str, str]:
    """target -> source of a service's short-syntax volumes (read-only flags dropped)."""
    out = {}
    for spec in service.get("volumes", []):
        source, target = spec.split(":")[:2]
        out[target] = source
    return out


def node_config(name: str) -> dict:
    source = binds(compose()["services"][name])["/etc/tiergate/node.toml"]
    return tomllib.loads((COMPOSE_DIR / source).read_text())


def port(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


def test_compose_spec_schema():
    out = check_schema(COMPOSE)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_schema_check_rejects_an_unknown_key():
    """A control: a misspelt service key (stop_grace) fails the schema."""
    with tempfile.TemporaryDirectory() as tmp:
        bad = Path(tmp) / "compose.yaml"
        bad.write_text(COMPOSE.read_text().replace("stop_grace_period:", "stop_grace:"))
        assert check_schema(bad).returncode != 0


def test_services_are_the_fleet():
    assert set(compose()["services"]) == {"model-import", *NODES, "prometheus", "grafana"}


def test_bind_mount_sources_exist():
    for name, service in compose()["services"].items():
        for target, source in binds(service).items():
            if source.startswith("."):
                assert (COMPOSE_DIR / source).exists(), (name, source)
            else:
                assert source in compose()["volumes"], (name, source)


def test_build_targets_exist_in_the_dockerfile():
    stages = set(re.findall(r"(?im)^FROM\s+\S+\s+AS\s+(\S+)", (ROOT / "Dockerfile").read_text()))
    for name, service in compose()["services"].items():
        if "build" in service:
            assert (COMPOSE_DIR / service["build"]["context"] / service["build"]["dockerfile"]).exists()
            assert service["build"]["target"] in stages, (name, service["build"]["target"])


@pytest.mark.parametrize("name", NODES)
def test_node_config_validates_and_matches_the_container(name):
    source = binds(compose()["services"][name])["/etc/tiergate/node.toml"]
    out = subprocess.run(
        [str(fleet.tiergate_bin()), "config", "validate", str(COMPOSE_DIR / source)],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    config = node_config(name)
    service = compose()["services"][name]
    # The image's health check asks 127.0.0.1:8080; EXPOSE says 8080 and 50051.
    assert config["server"]["http_listen"] == "0.0.0.0:8080"
    assert config["server"]["grpc_listen"] == "0.0.0.0:50051"
    assert config["node"]["tier"] == name
    # The model comes from the models volume that model-import seeds, under the import's name.
    mounts = binds(service)
    assert mounts["/var/lib/tiergate/models"] == "models"
    assert binds(compose()["services"]["model-import"])["/var/lib/tiergate/models"] == "models"
    out_dir = re.search(r'OUT="\$CACHE/([^"]+)"', (ROOT / "scripts" / "import-real-model.sh").read_text())
    assert config["engine"]["model_dir"] == f"/var/lib/tiergate/models/{out_dir.group(1)}"
    assert service["depends_on"]["model-import"]["condition"] == "service_completed_successfully"
    # Host ports on loopback only.
    for spec in service.get("ports", []):
        assert spec.startswith("127.0.0.1:"), spec


def healthy_before(services: dict, name: str) -> set[str]:
    """Services that are healthy before `name` starts: its service_healthy dependencies, theirs..."""
    out: set[str] = set()
    todo = [name]
    while todo:
        for dep, cond in services[todo.pop()].get("depends_on", {}).items():
            if cond["condition"] == "service_healthy" and dep not in out:
                out.add(dep)
                todo.append(dep)
    return out


def test_upstreams_point_at_services_and_start_after_them():
    services = compose()["services"]
    for name in NODES:
        config = node_config(name)
        for kind, up in config.get("upstreams", {}).items():
            urls = up["endpoints"] if kind == "regional" else [up["base_url"]]
            for url in urls:
                parsed = urlparse(url)
                target = parsed.hostname
                assert target in NODES, url
                listen = node_config(target)["server"]["grpc_listen" if kind == "regional" else "http_listen"]
                assert parsed.port == port(listen), url
                # docker compose starts the node after the one above it is healthy (directly, or
                # through the node it depends on).
                assert target in healthy_before(services, name), (name, target)


def test_published_host_ports_are_unique():
    seen = []
    for service in compose()["services"].values():
        seen += [spec.rsplit(":", 1)[0] for spec in service.get("ports", [])]
    assert len(seen) == len(set(seen)), seen


def test_prometheus_scrapes_every_node_and_loads_the_alerts():
    service = compose()["services"]["prometheus"]
    mounts = binds(service)
    config_path = "/etc/prometheus/prometheus.yml"
    assert f"--config.file={config_path}" in service["command"]
    prom = yaml.safe_load((COMPOSE_DIR / mounts[config_path]).read_text())
    for rule_file in prom["rule_files"]:
        target = str(Path(config_path).parent / rule_file)
        assert (COMPOSE_DIR / mounts[target]).resolve() == (ROOT / "deploy" / "alerts.yml").resolve()
    targets = {
        t: sc["labels"]["node_tier"]
        for job in prom["scrape_configs"]
        for sc in job["static_configs"]
        for t in sc["targets"]
    }
    assert targets == {f"{n}:{port(node_config(n)['server']['http_listen'])}": n for n in NODES}


def test_grafana_provisions_the_datasource_and_the_dashboard():
    service = compose()["services"]["grafana"]
    mounts = binds(service)
    prov = COMPOSE_DIR / mounts["/etc/grafana/provisioning"]
    (ds,) = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())["datasources"]
    prom_port = compose()["services"]["prometheus"]["ports"][0].rsplit(":", 1)[1]
    assert ds["url"] == f"http://prometheus:{prom_port}"
    (provider,) = yaml.safe_load((prov / "dashboards" / "tiergate.yml").read_text())["providers"]
    dashboards = [t for t in mounts if t.startswith(provider["options"]["path"] + "/")]
    assert dashboards, mounts
    for target in dashboards:
        assert (COMPOSE_DIR / mounts[target]).resolve() == (ROOT / "deploy/grafana/tiergate-dashboard.json").resolve()
