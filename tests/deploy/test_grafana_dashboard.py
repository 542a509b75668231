"""deploy/grafana/kms-dashboard.json: Grafana import format, over series that /metrics exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.harness import KMSClient, b64, create_key, expect_json, unique_key_id

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "kms-dashboard.json"
METRIC = re.compile(r"\b(kms_[a-z_]+)\b")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def exported_series(client: KMSClient) -> set[str]:
    """The metric names of the live server's exposition, after traffic made every series."""
    key_id = unique_key_id("grafana")
    create_key(client, key_id=key_id)
    for _ in range(2):  # a miss, then a hit in the key cache (on at least one worker)
        body = {"key_id": key_id, "plaintext": b64(b"x")}
        expect_json(client.post("/v1/kms/encrypt", json=body), 200)
    response = client.get("/metrics")
    assert response.status_code == 200
    names = set()
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_the_dashboard_is_in_grafanas_import_format(dashboard: dict[str, Any]) -> None:
    assert dashboard["title"] == "kms" and dashboard["uid"]
    assert isinstance(dashboard["schemaVersion"], int)
    assert [i["pluginId"] for i in dashboard["__inputs"]] == ["prometheus"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        assert panel["targets"], panel["title"]


def test_the_dashboard_shows_what_operators_ask_for(dashboard: dict[str, Any]) -> None:
    titles = " | ".join(panel["title"].lower() for panel in dashboard["panels"])
    for wanted in ("request rate", "latency", "error rate", "by algorithm", "cache hit ratio"):
        assert wanted in titles, titles
    text = " ".join(expressions(dashboard))
    assert "histogram_quantile(0.95" in text and "histogram_quantile(0.99" in text
    assert 'status=~"5.."' in text


def test_every_expression_is_balanced(dashboard: dict[str, Any]) -> None:
    for expr in expressions(dashboard):
        depth = 0
        for char in expr:
            depth += {"(": 1, ")": -1}.get(char, 0)
            assert depth >= 0, expr
        assert depth == 0, expr
        assert expr.count("{") == expr.count("}"), expr


def test_every_series_it_queries_is_exported(dashboard: dict[str, Any], client: KMSClient) -> None:
    queried = {name for expr in expressions(dashboard) for name in METRIC.findall(expr)}
    assert queried
    missing = queried - exported_series(client)
    assert not missing, f"the dashboard queries series /metrics does not export: {missing}"
