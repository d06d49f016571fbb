"""Real `tiergate serve` processes and a real Prometheus on 127.0.0.1 for the ops tests.

Three nodes, all on the bundled toy models (they load in about a second):
- `regional-1` (tier regional, models/regional): its early-exit gate always commits;
- `edge-1` (tier edge, models/edge): its gate always abandons, so every local attempt escalates
  to regional-1 over gRPC; regional-1's HTTP API also stands in for the cloud tier; the response
  cache is on (mode `always`), so a repeated request is a hit;
- `tls-1` (tier regional, TLS on both listeners with a fresh self-signed certificate): the families
  only a TLS node exports.
A few requests then make every metric family the dashboard and the alert rules use appear in a
scrape (a labelled family with no series yet is not exported at all).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0
# The edge's one tenant (its key's SHA-256 is in EDGE_TOML); the regional node has no tenants.
TENANT_KEY = "tg_ops-fleet-key-0123456789abcdef"


def tiergate_bin() -> Path:
    """The binary `make build` made (TIERGATE_BIN overrides; CARGO_TARGET_DIR is honoured)."""
    if os.environ.get("TIERGATE_BIN"):
        return Path(os.environ["TIERGATE_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return target / "debug" / "tiergate"


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    grpc: str
    http: str
    workdir: tempfile.TemporaryDirectory = field(repr=False)

    scheme: str = "http"

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.http}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.workdir.cleanup()


def start_node(name: str, config_toml: str) -> Node:
    """Starts `tiergate serve` on 127.0.0.1:0 (both listeners) and waits for its listening line."""
    binary = tiergate_bin()
    if not binary.exists():
        raise RuntimeError(f"{binary} is missing: run `make build` first")
    workdir = tempfile.TemporaryDirectory(prefix=f"tiergate-ops-{name}-")
    config = Path(workdir.name) / f"{name}.toml"
    config.write_text(config_toml)
    env = dict(os.environ)
    env.update(
        TIERGATE__SERVER__GRPC_LISTEN='"127.0.0.1:0"',
        TIERGATE__SERVER__HTTP_LISTEN='"127.0.0.1:0"',
        TIERGATE_LOG="warn",
    )
    proc = subprocess.Popen(
        [str(binary), "serve", "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + START_TIMEOUT
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("event") == "listening":
            proc.stdout.close()
            return Node(name, proc, event["grpc"], event["http"], workdir)
    proc.kill()
    proc.wait()
    workdir.cleanup()
    raise RuntimeError(f"node {name} did not print its listening line (exit code {proc.poll()})")


def http_get(url: str, timeout: float = 10.0, ca_file: Path | None = None) -> tuple[int, str]:
    context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def chat(
    node: Node, prompt: str, *, stream: bool = False, max_tokens: int = 8, key: str | None = TENANT_KEY
) -> int:
    body = json.dumps(
        {
            "model": "tiergate",
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": stream,
            "messages": [{"role": "user", "content": prompt}],
        }
    ).encode()
    req = urllib.request.Request(
        f"{node.base}/v1/chat/completions",
        data=body,
        headers={"content-type": "application/json"},
    )
    if key is not None:
        req.add_header("authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


REGIONAL_TOML = """
[node]
name = "regional-1"
tier = "regional"
[engine]
model_dir = "models/regional"
[router]
local_max_complexity = 1.0
[router.confidence]
min_mean_top1 = 0.0
min_token_top1 = 0.0
"""

EDGE_TOML = """
[node]
name = "edge-1"
tier = "edge"
[engine]
model_dir = "models/edge"
[router]
local_max_complexity = 1.0
[router.confidence]
min_mean_top1 = 1.0
[upstreams.regional]
endpoints = ["http://{regional_grpc}"]
health_check_interval = "100ms"
[upstreams.cloud]
base_url = "http://{regional_http}/v1"
model = "tiergate"
[cache]
enabled = true
mode = "always"
[device]
memory_budget_mb = 8192
latency_budget_ms = 60000
[[tenants]]
name = "ops"
key_sha256 = ["ff2c88a4ab37962005f4d0a6bcf33f40eaf7c4ce2e62882adc91d908f871a69c"]
"""


# A node with TLS on its listeners: the families only such a node exports (its certificate's expiry,
# its reloads) must be in the scrape the alert rules are checked against. Not in `Fleet.nodes`: the
# Prometheus of the live test scrapes plain HTTP.
TLS_TOML = """
[node]
name = "tls-1"
tier = "regional"
[engine]
model_dir = "models/regional"
[server.tls]
cert_file = "{cert}"
key_file = "{key}"
"""


def write_self_signed(directory: Path, days: int = 90) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 valid for `days`, and its key (PEM files in `directory`)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tiergate-ops")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "node.crt", directory / "node.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


@dataclass
class Fleet:
    regional: Node
    edge: Node
    tls: Node
    tls_files: tempfile.TemporaryDirectory = field(repr=False)

    @property
    def nodes(self) -> list[Node]:
        return [self.edge, self.regional]

    @property
    def ca_file(self) -> Path:
        return Path(self.tls_files.name) / "node.crt"

    def stop(self) -> None:
        for node in [*self.nodes, self.tls]:
            node.stop()
        self.tls_files.cleanup()


def start_fleet() -> Fleet:
    started: list[Node] = []
    tls_files = tempfile.TemporaryDirectory(prefix="tiergate-ops-tls-")
    try:
        regional = start_node("regional-1", REGIONAL_TOML)
        started.append(regional)
        edge = start_node(
            "edge-1",
            EDGE_TOML.format(regional_grpc=regional.grpc, regional_http=regional.http),
        )
        started.append(edge)
        cert, key = write_self_signed(Path(tls_files.name))
        tls = start_node("tls-1", TLS_TOML.format(cert=cert, key=key))
        tls.scheme = "https"
    except Exception:
        for node in started:
            node.stop()
        tls_files.cleanup()
        raise
    return Fleet(regional, edge, tls, tls_files)


def drive_traffic(fleet: Fleet) -> None:
    """Requests that make every metric family appear: an escalated answer (abandon at the edge,
    regional answers), the same again (a cache hit), a streamed one, a committed local answer at
    the regional node, a refused one (an error outcome) and one with a wrong key (the edge's
    tenant counts the others)."""
    assert chat(fleet.edge, "What is the capital of France?") == 200
    assert chat(fleet.edge, "What is the capital of France?") == 200
    assert chat(fleet.edge, "Name a colour.", stream=True) == 200
    assert chat(fleet.regional, "Name a fruit.") == 200
    assert chat(fleet.edge, "too many tokens", max_tokens=10**6) == 400
    # A wrong key: an authentication failure.
    assert chat(fleet.edge, "Name a colour.", key="tg_not-a-key-0123456789abcdef") == 401


def metric_names(exposition: str) -> set[str]:
    """Series names of a Prometheus text exposition (histograms give _bucket, _sum, _count)."""
    names = set()
    for line in exposition.splitlines():
        if not line or line.startswith("#"):
            continue
        names.add(line.split("{", 1)[0].split(" ", 1)[0])
    return names


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Prometheus:
    proc: subprocess.Popen
    base: str
    workdir: tempfile.TemporaryDirectory = field(repr=False)
    log: Path = field(repr=False)

    def api(self, path: str, **params: str) -> dict:
        url = f"{self.base}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        status, body = http_get(url)
        data = json.loads(body)
        if status != 200 or data.get("status") != "success":
            raise AssertionError(f"{url}: {status} {body}")
        return data["data"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.workdir.cleanup()


def start_prometheus(targets: list[str], rule_files: list[Path]) -> Prometheus:
    """A real Prometheus on 127.0.0.1 (temporary storage) scraping `targets` every second and
    evaluating `rule_files`."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("prometheus is not installed: `make ops-deps` installs it")
    workdir = tempfile.TemporaryDirectory(prefix="tiergate-ops-prometheus-")
    wd = Path(workdir.name)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {
                "job_name": "tiergate",
                "static_configs": [{"targets": targets, "labels": {"node_tier": "test"}}],
            }
        ],
    }
    # JSON is YAML: no YAML writer needed.
    (wd / "prometheus.yml").write_text(json.dumps(config))
    log = wd / "prometheus.log"
    last_error: Exception | None = None
    for _ in range(3):  # a port picked free can be taken before Prometheus binds it
        port = free_port()
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={wd / 'prometheus.yml'}",
                f"--storage.tsdb.path={wd / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-lifecycle",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        prom = Prometheus(proc, f"http://127.0.0.1:{port}", workdir, log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if http_get(f"{prom.base}/-/ready", timeout=2)[0] == 200:
                    return prom
            except (urllib.error.URLError, ConnectionError, OSError) as err:
                last_error = err
            time.sleep(0.2)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    workdir.cleanup()
    raise RuntimeError(f"prometheus did not become ready: {last_error}")
