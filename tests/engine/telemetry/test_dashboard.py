"""docs/grafana/moat.json: importable, and every query names a metric moat exports."""

from __future__ import annotations

import json
import re
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from engine.serve.metrics import Metrics
from tests.support.fast_graphs import ROOT

DASHBOARD = ROOT / "docs" / "grafana" / "moat.json"
SLO_PANELS = {
    "Latency p50 / p95 / p99",
    "Cost per case",
    "Cache hit rate per tenant",
    "Validation success",
    "Speculative waste",
    "Budget exhaustions",
    "Guard rollbacks",
}
_METRIC = re.compile(r"\bmoat_[a-z0-9_]+")
_SUFFIX = re.compile(r"_(bucket|sum|count)$")


def exported() -> set[str]:
    """The sample names a server's `/metrics` can hold (its families, with suffixes)."""
    text = Metrics().render(0).decode()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
    return names


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def test_the_dashboard_loads_with_a_datasource_and_graph_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert "moat_requests_total" in variables["graph"]["definition"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):  # no datasource fixed to someone else's uid
        assert panel["datasource"]["uid"] == "${datasource}"
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])


def test_the_slo_panels_are_there() -> None:
    titles = {p["title"] for p in panels(json.loads(DASHBOARD.read_text()))}
    assert titles >= SLO_PANELS


def test_every_query_names_only_metrics_moat_exports() -> None:
    names = exported()
    for panel in panels(json.loads(DASHBOARD.read_text())):
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            expr = target["expr"]
            used = set(_METRIC.findall(expr))
            assert used, f"panel {panel['title']!r}: {expr!r} names no moat metric"
            for name in used:
                base = _SUFFIX.sub("", name)
                assert name in names or base in names, f"{panel['title']!r}: {name} not exported"
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}")


def test_histogram_quantiles_read_histogram_buckets() -> None:
    text = Metrics().render(0).decode()
    histograms = {f.name for f in text_string_to_metric_families(text) if f.type == "histogram"}
    for panel in panels(json.loads(DASHBOARD.read_text())):
        for target in panel["targets"]:
            for name in re.findall(r"histogram_quantile\([^,]+,.*?(moat_\w+)", target["expr"]):
                assert name.endswith("_bucket") and name.removesuffix("_bucket") in histograms
