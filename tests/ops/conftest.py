"""Shared fixtures of the ops tests: one small fleet of real nodes for the whole session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fleet as fleet_mod  # noqa: E402


@pytest.fixture(scope="session")
def fleet():
    running = fleet_mod.start_fleet()
    try:
        fleet_mod.drive_traffic(running)
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def scraped_names(fleet) -> set[str]:
    """Every series name in a real /metrics scrape of the fleet's nodes, after the traffic."""
    names: set[str] = set()
    for node in fleet.nodes:
        status, body = fleet_mod.http_get(f"{node.base}/metrics")
        assert status == 200, body
        names |= fleet_mod.metric_names(body)
    status, body = fleet_mod.http_get(f"{fleet.tls.base}/metrics", ca_file=fleet.ca_file)
    assert status == 200, body
    return names | fleet_mod.metric_names(body)
