"""deploy/k8s: every manifest against the Kubernetes schemas (offline, kubernetes-validate's bundled
ones, strict: unknown fields fail), the wiring between the objects, the node configs in the
ConfigMaps through `tiergate config validate`, and the shutdown budget."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest
import yaml

import fleet

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
KUBE_VERSION = "1.30.0"  # the oldest Kubernetes the manifests are checked against, besides the newest

# The node's shutdown after SIGTERM: NOT_SERVING, serving on for [server] drain_delay (so
# watchers move away), then in-flight requests get up to [server] drain_timeout. The node's
# defaults (crates/tiergate/src/config/node.rs) apply where a ConfigMap does not set them.
DEFAULT_DRAIN_DELAY_S = 5
DEFAULT_DRAIN_TIMEOUT_S = 30
MARGIN_S = 10


def validator() -> str:
    exe = Path(sys.executable).parent / "kubernetes-validate"
    assert exe.exists(), "kubernetes-validate is missing: `make ops-deps`"
    return str(exe)


def docs() -> list[dict]:
    out = []
    for path in MANIFESTS:
        out += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def find(kind: str, name: str) -> dict:
    for doc in docs():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name}")


def workloads() -> list[dict]:
    return [d for d in docs() if d["kind"] in ("Deployment", "DaemonSet")]


def node_config(workload: dict) -> dict:
    pod = workload["spec"]["template"]["spec"]
    vol = next(v for v in pod["volumes"] if v["name"] == "config")
    cm = find("ConfigMap", vol["configMap"]["name"])
    return tomllib.loads(cm["data"]["node.toml"])


def seconds(duration: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert m, duration
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


@pytest.mark.parametrize("version", [KUBE_VERSION, "1.37.0"])
def test_manifests_match_the_kubernetes_schemas(version):
    out = subprocess.run(
        [validator(), "--strict", "--quiet", "-k", version, *map(str, MANIFESTS)],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_schema_check_rejects_an_unknown_field():
    """A control: a misspelt field (terminationGracePeriod) fails the strict check."""
    text = (K8S / "regional.yaml").read_text().replace(
        "terminationGracePeriodSeconds:", "terminationGracePeriod:"
    )
    with tempfile.TemporaryDirectory() as tmp:
        bad = Path(tmp) / "bad.yaml"
        bad.write_text(text)
        out = subprocess.run([validator(), "--strict", "--quiet", str(bad)], capture_output=True, text=True)
    assert out.returncode != 0


def test_kustomization_lists_every_manifest_but_the_example_secrets():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kust["resources"])
    assert listed == {p.name for p in MANIFESTS} - {"secrets.example.yaml"}
    if shutil.which("kubectl"):  # not on every machine; the render is offline
        out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr


def test_the_tiers_are_the_objects_asked_for():
    regional = find("Deployment", "tiergate-regional")
    find("DaemonSet", "tiergate-edge")
    hpa = find("HorizontalPodAutoscaler", "tiergate-regional")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "tiergate-regional"
    }
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = find("PodDisruptionBudget", "tiergate-regional")
    labels = regional["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "a PDB that blocks every drain"


def test_services_select_pods_and_name_their_ports():
    pods = {w["metadata"]["name"]: w["spec"]["template"] for w in workloads()}
    for svc in (d for d in docs() if d["kind"] == "Service"):
        matched = [
            t for t in pods.values()
            if svc["spec"]["selector"].items() <= t["metadata"]["labels"].items()
        ]
        assert len(matched) == 1, svc["metadata"]["name"]
        port_names = {p["name"] for c in matched[0]["spec"]["containers"] for p in c["ports"]}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in port_names, (svc["metadata"]["name"], port)


@pytest.mark.parametrize("name", ["tiergate-regional", "tiergate-edge"])
def test_probes_ports_and_files_agree_with_the_node_config(name):
    workload = next(w for w in workloads() if w["metadata"]["name"] == name)
    pod = workload["spec"]["template"]["spec"]
    config = node_config(workload)
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert config["server"]["http_listen"] == f"0.0.0.0:{ports['http']}"
    assert config["server"]["grpc_listen"] == f"0.0.0.0:{ports['grpc']}"

    scheme = "HTTPS" if "tls" in config["server"] else "HTTP"
    for probe, path in [("startupProbe", "/readyz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")]:
        get = container[probe]["httpGet"]
        assert (get["path"], get["port"], get.get("scheme", "HTTP")) == (path, "http", scheme), probe

    # Every file the config names lies under a mounted volume, and the volumes exist.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(mounts.values()) <= set(volumes)
    files = [config["engine"]["model_dir"]]
    files += [v for v in config["server"].get("tls", {}).values()]
    for up in config.get("upstreams", {}).values():
        files += [v for k, v in up.items() if k.endswith("_file")]
        files += list(up.get("tls", {}).values())
    for path in files:
        assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts), path
    example_secrets = {
        d["metadata"]["name"]: d for d in yaml.safe_load_all((K8S / "secrets.example.yaml").read_text())
    }
    for vol in volumes.values():
        if "secret" in vol:
            secret = example_secrets[vol["secret"]["secretName"]]
            mount = next(m for m, n in mounts.items() if n == vol["name"])
            for path in files:
                if path.startswith(mount + "/"):
                    assert path.removeprefix(mount + "/") in secret["stringData"], path

    # Non-root, as the image (USER 10001).
    ctx = pod["securityContext"]
    assert ctx["runAsNonRoot"] and ctx["runAsUser"] == 10001
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "USER 10001:10001" in dockerfile


@pytest.mark.parametrize("name", ["tiergate-regional", "tiergate-edge"])
def test_grace_period_covers_prestop_health_interval_and_drain(name):
    workload = next(w for w in workloads() if w["metadata"]["name"] == name)
    pod = workload["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    server = node_config(workload).get("server", {})
    delay = seconds(server["drain_delay"]) if "drain_delay" in server else DEFAULT_DRAIN_DELAY_S
    drain = seconds(server["drain_timeout"]) if "drain_timeout" in server else DEFAULT_DRAIN_TIMEOUT_S
    needed = pre_stop + delay + drain + MARGIN_S
    assert pod["terminationGracePeriodSeconds"] >= needed, (pod["terminationGracePeriodSeconds"], needed)


@pytest.mark.parametrize("cm", ["tiergate-regional-config", "tiergate-edge-config"])
def test_node_configs_pass_config_validate(cm):
    """The TOML in each ConfigMap loads as `serve` would load it (files are not opened)."""
    text = find("ConfigMap", cm)["data"]["node.toml"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "node.toml"
        path.write_text(text)
        out = subprocess.run(
            [str(fleet.tiergate_bin()), "config", "validate", str(path)],
            capture_output=True, text=True, timeout=60,
        )
    assert out.returncode == 0, out.stdout + out.stderr


ADAPTER = K8S / "prometheus-adapter" / "config.yaml"


def adapter_rules() -> list[dict]:
    return yaml.safe_load(ADAPTER.read_text())["rules"]


def test_regional_hpa_scales_on_the_adapter_metric_with_cpu_as_fallback():
    hpa = find("HorizontalPodAutoscaler", "tiergate-regional")
    metrics = hpa["spec"]["metrics"]
    pods = [m["pods"] for m in metrics if m["type"] == "Pods"]
    assert pods, "no custom (Pods) metric"
    served = {rule["name"]["as"] for rule in adapter_rules()}
    for metric in pods:
        assert metric["metric"]["name"] in served, f"{metric} is not served by {ADAPTER}"
        assert metric["target"]["type"] == "AverageValue"
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in metrics)


def test_adapter_rules_name_exported_series_and_labels_the_scrape_sets(scraped_names):
    """Each rule's series is one a real node exports; the labels it maps to Kubernetes objects
    are the node's `node` (its pod name in regional.yaml) and the scrape config's `namespace`."""
    scrape = (K8S / "prometheus-scrape.yml").read_text()
    regional = find("Deployment", "tiergate-regional")
    env = regional["spec"]["template"]["spec"]["containers"][0]["env"]
    name_env = next(e for e in env if e["name"] == "TIERGATE__NODE__NAME")
    assert name_env["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    for rule in adapter_rules():
        series = re.match(r"[a-z_:]+", rule["seriesQuery"]).group(0)
        assert series in scraped_names, series
        overrides = rule["resources"]["overrides"]
        assert overrides["node"] == {"resource": "pod"}
        assert overrides["namespace"] == {"resource": "namespace"}
        assert "target_label: namespace" in scrape


def test_adapter_queries_are_valid_promql():
    """The adapter's templates, filled as the adapter fills them, pass promtool as recording rules."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed: `make ops-deps`"
    rules = []
    for i, rule in enumerate(adapter_rules()):
        series = re.match(r"[a-z_:]+", rule["seriesQuery"]).group(0)
        query = (
            rule["metricsQuery"]
            .replace("<<.Series>>", series)
            .replace("<<.LabelMatchers>>", 'namespace="tiergate",node=~"tiergate-regional-a|tiergate-regional-b"')
            .replace("<<.GroupBy>>", "node")
        )
        assert "<<" not in query, query
        rules.append({"record": f"adapter:rule{i}", "expr": query})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "adapter-rules.yml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "adapter", "rules": rules}]}))
        out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
