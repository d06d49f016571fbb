"""A real Prometheus scrapes real nodes, loads the alert rules and answers the dashboard's queries."""

from __future__ import annotations

import time

import pytest

import fleet as fleet_mod
import promql


@pytest.fixture(scope="module")
def prometheus(fleet):
    prom = fleet_mod.start_prometheus(
        targets=[node.http for node in fleet.nodes], rule_files=[promql.ALERTS]
    )
    try:
        yield prom
    finally:
        prom.stop()


def wait_for(prom, query: str, predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = prom.api("query", query=query)
        if predicate(last["result"]):
            return last["result"]
        time.sleep(0.5)
    raise AssertionError(f"{query}: {last}")


def test_prometheus_scrapes_the_nodes_and_answers_promql(prometheus, fleet):
    up = wait_for(prometheus, 'up{job="tiergate"}', lambda r: len(r) == 2 and all(s["value"][1] == "1" for s in r))
    assert {s["metric"]["instance"] for s in up} == {node.http for node in fleet.nodes}
    # The escalated answers of the traffic: served by the regional tier, reason low_confidence.
    result = wait_for(
        prometheus,
        'sum by (node, tier) (tiergate_requests_total{outcome="ok",reason="low_confidence"})',
        lambda r: bool(r),
    )
    assert result[0]["metric"] == {"node": "edge-1", "tier": "regional"}
    assert float(result[0]["value"][1]) >= 2


def test_alert_rules_load_and_evaluate(prometheus):
    expected = {where.removeprefix("rule ") for where, _ in promql.alert_exprs()}
    deadline = time.monotonic() + 30
    while True:
        groups = prometheus.api("rules")["groups"]
        rules = {r["name"]: r for g in groups for r in g["rules"]}
        evaluated = all(r.get("lastEvaluation", "").startswith("20") for r in rules.values())
        if set(rules) == expected and evaluated or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert set(rules) == expected
    for name, rule in rules.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))
    # A healthy fleet: no alert fires (pending or firing).
    assert prometheus.api("alerts")["alerts"] == []


def test_every_dashboard_query_evaluates(prometheus):
    """Each panel query, with Grafana's variables filled in, is valid PromQL for this Prometheus;
    after two scrapes most return series (a ratio with nothing to divide returns none)."""
    wait_for(prometheus, "count_over_time(tiergate_ready[1m])", lambda r: r and float(r[0]["value"][1]) >= 3)
    with_data = []
    for where, expr in promql.dashboard_exprs():
        result = prometheus.api("query", query=promql.grafana_to_promql(expr))["result"]
        if result:
            with_data.append(where)
    print(f"{len(with_data)} of {len(promql.dashboard_exprs())} dashboard queries returned series")
    assert len(with_data) >= len(promql.dashboard_exprs()) // 2, with_data
