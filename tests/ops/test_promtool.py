"""promtool (Debian's prometheus package) on every Prometheus config and rule file under deploy/."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

# Each Prometheus config, with the rule files it names (relative paths, resolved beside it: the
# compose file mounts alerts.yml beside the compose Prometheus config, so it is copied there too).
CONFIGS = [
    DEPLOY / "prometheus.yml",
    DEPLOY / "compose" / "prometheus.yml",
    DEPLOY / "k8s" / "prometheus-scrape.yml",
]


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    assert binary, "promtool is not installed: `make ops-deps` installs Debian's prometheus package"
    return subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("config", [pytest.param(c, id=str(c.relative_to(ROOT))) for c in CONFIGS])
def test_check_config(config: Path):
    assert config.exists(), config
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(config, Path(tmp) / "prometheus.yml")
        shutil.copy(DEPLOY / "alerts.yml", Path(tmp) / "alerts.yml")
        out = promtool("check", "config", "prometheus.yml", cwd=Path(tmp))
    assert out.returncode == 0, out.stdout + out.stderr


def test_check_rules():
    out = promtool("check", "rules", str(DEPLOY / "alerts.yml"))
    assert out.returncode == 0, out.stdout + out.stderr


def test_alert_rule_unit_tests():
    """deploy/alerts.test.yml: each alert fires on the series it is for, and not before its `for`."""
    out = promtool("test", "rules", str(DEPLOY / "alerts.test.yml"))
    assert out.returncode == 0, out.stdout + out.stderr
