"""Metric names in PromQL expressions, and the expressions of the dashboard and the alert rules."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "tiergate-dashboard.json"
ALERTS = ROOT / "deploy" / "alerts.yml"

# Series Prometheus makes itself, not the node: allowed in expressions without a scrape.
PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}

_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan", "atan2",
}
# Grafana's variables, replaced by values that PromQL accepts.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


def grafana_to_promql(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return re.sub(r"\$\{?(\w+)\}?", ".*", expr)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers that are not functions, keywords,
    label names, label values, grouping labels or durations."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges, subqueries
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # grouping label lists
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        rest = text[match.end():].lstrip()
        if rest.startswith("("):  # a function
            continue
        if word.lower() in _KEYWORDS:
            continue
        if match.start() > 0 and (text[match.start() - 1].isdigit() or text[match.start() - 1] == "."):
            continue  # the exponent or unit of a number (1e3, 5m)
        names.add(word)
    return names


def dashboard_exprs(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """(where, expr) for every query of the dashboard: panel targets and template variables."""
    dash = json.loads(path.read_text())
    out = []

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                out.append((f"panel {panel['title']!r} {target.get('refId')}", target["expr"]))
            walk(panel.get("panels", []))

    walk(dash["panels"])
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((.*),\s*\w+\)", query.strip())
        assert m, f"variable {var['name']}: unsupported query {query!r}"
        out.append((f"variable {var['name']}", m.group(1)))
    return out


def alert_exprs(path: Path = ALERTS) -> list[tuple[str, str]]:
    rules = yaml.safe_load(path.read_text())
    return [
        (f"rule {rule.get('alert') or rule.get('record')}", rule["expr"])
        for group in rules["groups"]
        for rule in group["rules"]
    ]
