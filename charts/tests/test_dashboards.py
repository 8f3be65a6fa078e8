"""The Grafana dashboards and the alert rules query only metrics the gateway exports, with
labels those metrics carry (names and labels parsed from src/metrics.rs)."""

from __future__ import annotations

import json
import re

import pytest
import yaml

import promql
from vidgate_chart import CHART_DIR, TARGET_LABELS, exported_metrics, production_values, render

DASHBOARDS = sorted((CHART_DIR / "dashboards").glob("*.json"))
CONTRACT = {  # the product contract's metric table (docs: /work/shared/design.md)
    "vidgate_http_requests_total", "vidgate_http_request_duration_seconds_bucket",
    "vidgate_upstream_requests_total", "vidgate_upstream_request_duration_seconds_bucket",
    "vidgate_rejections_total", "vidgate_tasks_total", "vidgate_spend_total", "vidgate_refunds_total",
    "vidgate_billed_seconds_total", "vidgate_budget_limit", "vidgate_budget_spent",
    "vidgate_budget_reserved", "vidgate_probe_total", "vidgate_probe_bytes_total",
    "vidgate_callback_deliveries_total", "vidgate_store_operation_duration_seconds_bucket",
    "vidgate_store_errors_total", "vidgate_build_info",
}


def test_metric_names_are_parsed_from_the_source():
    assert CONTRACT <= set(exported_metrics()), CONTRACT - set(exported_metrics())
    assert exported_metrics()["vidgate_spend_total"] == {"tenant", "currency", "quality", "audio"}


def walk_queries(dashboard):
    """(where, PromQL, legend) for every panel target and variable query."""
    def panels(items):
        for p in items:
            yield p
            yield from panels(p.get("panels", []))
    for p in panels(dashboard["panels"]):
        for t in p.get("targets", []):
            yield f"panel {p['title']!r} {t['refId']}", t["expr"], t.get("legendFormat", "")
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            yield f"variable {v['name']}", q, ""


def check_expression(where, expr, legend=""):
    exported = exported_metrics()
    expr, label_read = promql.grafana_query(expr)
    scan = promql.scan(expr)
    assert scan.metrics, f"{where}: no metric in {expr!r}"
    assert not scan.unknown_functions, f"{where}: unknown functions {scan.unknown_functions}"
    available = set(TARGET_LABELS)
    for name, matcher_labels in scan.metrics.items():
        assert name in exported, f"{where}: {name} is not exported by src/metrics.rs"
        unknown = matcher_labels - exported[name] - TARGET_LABELS
        assert not unknown, f"{where}: {name} has no label {unknown}"
        available |= exported[name]
    assert scan.grouping <= available, f"{where}: grouping by {scan.grouping - available}"
    if label_read:
        assert label_read in available, f"{where}: label_values of {label_read}"
    legend_labels = set(re.findall(r"\{\{\s*([A-Za-z_]+)\s*\}\}", legend))
    assert legend_labels <= available, f"{where}: legend uses {legend_labels - available}"
    return set(scan.metrics)


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_dashboard_queries_only_exported_metrics(path):
    dashboard = json.loads(path.read_text())
    used = set()
    queries = list(walk_queries(dashboard))
    assert len(queries) >= 15
    for where, expr, legend in queries:
        used |= check_expression(where, expr, legend)
    assert used  # sanity


def test_dashboards_cover_what_finance_and_operators_asked_for():
    finance = json.loads((CHART_DIR / "dashboards" / "finance.json").read_text())
    ops = json.loads((CHART_DIR / "dashboards" / "operations.json").read_text())
    titles = lambda d: {p["title"] for p in d["panels"]}  # noqa: E731
    assert {
        "Charged per tenant", "Spent this period vs budget", "Top tenants in the time range",
        "Charged by quality and audio", "Billed seconds: input vs output", "Released holds (refunds)",
        "Budget rejections (402)", "Tenants near their budget",
    } <= titles(finance)
    assert {
        "Request rate by route", "Error rate by route (5xx)", "Latency by route (p50 / p95 / p99)",
        "Upstream latency by operation (p50 / p95 / p99)", "Upstream errors",
        "Rate-limit and concurrency rejections", "Callback deliveries by outcome",
        "Store latency by operation (p50 / p95 / p99)",
    } <= titles(ops)
    gauge = next(p for p in finance["panels"] if p["title"] == "Spent this period vs budget")
    assert gauge["type"] == "bargauge"
    # Budget gauges are refreshed from the store on every replica: never summed across replicas.
    for d in (finance, ops):
        for where, expr, _ in walk_queries(d):
            for m in re.finditer(r"(\w+)\s*(?:by\s*\([^)]*\)\s*)?\(\s*vidgate_budget_(?:limit|spent|reserved)\b", expr):
                assert m.group(1) in ("max", "label_values"), f"{where}: {m.group(0)}"


def test_dashboards_are_well_formed_and_use_the_datasource_variable():
    uids = set()
    for path in DASHBOARDS:
        d = json.loads(path.read_text())
        assert d["uid"] not in uids and len(d["uid"]) <= 40
        uids.add(d["uid"])
        assert d["title"].startswith("vidgate / ") and d["id"] is None
        assert d["templating"]["list"][0] == {**d["templating"]["list"][0], "name": "datasource", "type": "datasource"}
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids))
        for p in d["panels"]:
            if p["type"] not in ("row", "text"):
                assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
                assert p.get("description"), p["title"]
            g = p["gridPos"]
            assert g["x"] + g["w"] <= 24


def test_dashboards_ship_in_configmaps_for_the_grafana_sidecar():
    r = render()
    maps = [o for o in r.of_kind("ConfigMap") if "dashboard" in o["metadata"]["name"]]
    assert len(maps) == 2
    for cm in maps:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((name, text),) = cm["data"].items()
        shipped = json.loads(text)
        assert shipped == json.loads((CHART_DIR / "dashboards" / name.removeprefix("vidgate-")).read_text())
        assert len(text.encode()) < 900_000  # ConfigMaps hold at most 1 MiB
    assert not [o for o in render({"dashboards": {"enabled": False}}).of_kind("ConfigMap") if "dashboard" in o["metadata"]["name"]]


def test_alert_rules_query_only_exported_metrics():
    # PrometheusRule is a CRD (not schema-checked): check its structure and every expression.
    r = render(production_values())
    rule = r.one("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    alerts = [x for g in rule["spec"]["groups"] for x in g["rules"]]
    names = {a["alert"] for a in alerts}
    assert {"VidgateBudgetUsed", "VidgateUpstreamAuthFailed", "VidgateStoreErrors", "VidgateDown"} <= names
    for a in alerts:
        assert set(a) <= {"alert", "expr", "for", "labels", "annotations"}
        assert a["labels"]["severity"] in {"warning", "critical"} and a["labels"]["team"] == "platform"
        assert a["annotations"]["summary"]
        check_expression(a["alert"], a["expr"])
        assert 'job="vidgate",namespace="vidgate"' in a["expr"]  # this release only
    budget = [a for a in alerts if a["alert"] == "VidgateBudgetUsed"]
    assert [a["labels"]["threshold"] for a in budget] == ["0.8", "0.95", "1"]
    assert [a["labels"]["severity"] for a in budget] == ["warning", "warning", "critical"]
    assert budget[0]["expr"].rstrip().endswith(">= 0.8 < 0.95")
    # Alert templates reach Prometheus unrendered by Helm.
    assert "{{ $labels.tenant }}" in yaml.safe_dump(budget[0])
