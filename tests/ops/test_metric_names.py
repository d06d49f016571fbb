"""Every metric the dashboard and the alert rules query is one a real node exports."""

from __future__ import annotations

import json
import re

import pytest

import promql


def test_extractor_finds_names_not_labels_or_functions():
    expr = (
        'histogram_quantile(0.95, sum by (le, tier) (rate(tiergate_time_to_first_token_seconds_bucket'
        '{node=~"$node",reason="tiergate_fake"}[5m]))) / on(node) group_left(x) up > 1e3 and bool foo:bar'
    )
    assert promql.metric_names(expr) == {
        "tiergate_time_to_first_token_seconds_bucket",
        "up",
        "foo:bar",
    }


def test_every_expression_names_a_metric():
    for where, expr in promql.dashboard_exprs() + promql.alert_exprs():
        assert promql.metric_names(expr), f"{where}: no metric in {expr!r}"


@pytest.mark.parametrize(
    "where,expr",
    [pytest.param(where, expr, id=where) for where, expr in promql.dashboard_exprs() + promql.alert_exprs()],
)
def test_metric_exported_by_a_real_node(where, expr, scraped_names):
    unknown = promql.metric_names(expr) - scraped_names - promql.PROMETHEUS_OWN
    assert not unknown, (
        f"{where}: {sorted(unknown)} not in a real /metrics scrape "
        f"(exported: {sorted(n for n in scraped_names if n.startswith('tiergate_'))})"
    )


def test_dashboard_covers_the_asked_views():
    """The views the dashboard exists for: tiers served, escalation reasons, early-exit rate,
    TTFT and tokens/s per tier, link state, queue depth (in flight, refusals), RSS."""
    names = set()
    for _, expr in promql.dashboard_exprs():
        names |= promql.metric_names(expr)
    for needed in [
        "tiergate_requests_total",
        "tiergate_local_abandons_total",
        "tiergate_local_attempts_total",
        "tiergate_time_to_first_token_seconds_bucket",
        "tiergate_generated_tokens_total",
        "tiergate_upstream_available",
        "tiergate_in_flight_requests",
        "tiergate_process_resident_memory_bytes",
    ]:
        assert needed in names, needed


def test_dashboard_layout_is_sound():
    dash = json.loads(promql.DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dash["panels"]:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs)), panel["title"]
    assert dash["uid"] == "tiergate-overview"


def test_operations_doc_lists_every_exported_family(scraped_names):
    """docs/operations.md's metrics table names every family a node exported in the scrape."""
    doc = (promql.ROOT / "docs" / "operations.md").read_text()
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in scraped_names if n.startswith("tiergate_")}
    missing = sorted(
        f for f in families
        if f"`{f}`" not in doc and not (f.startswith("tiergate_process_") and "`tiergate_process_*`" in doc)
    )
    assert not missing, f"exported but not in docs/operations.md: {missing}"


def test_every_exported_family_has_a_panel(scraped_names):
    """Each tiergate family a real node exports is queried by some dashboard panel."""
    queried = set()
    for _, expr in promql.dashboard_exprs():
        queried |= {re.sub(r"_(bucket|sum|count)$", "", n) for n in promql.metric_names(expr)}
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in scraped_names if n.startswith("tiergate_")}
    # The process collector's families: memory, CPU and fds have panels; the rest are the
    # collector's detail (start time, virtual memory, thread count).
    missing = sorted(f for f in families - queried if not f.startswith("tiergate_process_"))
    assert not missing, f"exported but on no dashboard panel: {missing}"
