"""docs/dashboards/byok.json queries only metrics and labels byok exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from byok.server.observability.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "dashboards" / "byok.json"
SCRAPE_LABELS = {"job", "instance", "le"}  # added by Prometheus, or the bucket bound
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
            "group_right", "offset", "bool", "inf", "nan"}  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{([^{}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENT = re.compile(r"(?<![\w$.])([A-Za-z_:][A-Za-z0-9_:]*)\b(?!\s*\()")


def parse_expr(expr: str) -> tuple[set[str], set[str]]:
    """The metric names and the label names a PromQL expression uses."""
    labels: set[str] = set()
    text = _STRING.sub('""', expr)
    for body in _MATCHERS.findall(text):
        labels.update(_MATCHER_LABEL.findall(body))
    text = _MATCHERS.sub(" ", text)
    for body in _GROUPING.findall(text):
        labels.update(name.strip() for name in body.split(",") if name.strip())
    text = _GROUPING.sub(" ", text)
    text = _RANGE.sub(" ", text)
    names = {name for name in _IDENT.findall(text) if name.lower() not in KEYWORDS}
    return names, labels


def exported_names() -> set[str]:
    """Every sample name a fresh registry can expose, from its # TYPE lines."""
    body = Metrics().exposition()[0].decode()
    names: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", body, re.MULTILINE):
        names.add(name)
        if kind == "histogram":
            names.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
        elif kind == "summary":
            names.update({f"{name}_sum", f"{name}_count"})
    return names


def exported_labels() -> set[str]:
    """Every label name byok's metrics carry, once each metric has a sample."""
    m = Metrics(process=False)
    m.rpc_started("/byok.v1.ChatService/StreamChat", "unary")
    m.rpc_handled("/byok.v1.ChatService/StreamChat", "unary", "OK", 0.1)
    m.http_request("GET", "/healthz", 200, 0.01)
    m.llm_turn_started("r", "m", "p")
    m.llm_turn_finished(
        "r", "m", "p", ttft_s=None, duration_s=1, input_tokens=1, output_tokens=1,
        overhead_s=0.001, error_kind="x",
    )  # fmt: skip
    m.db_query("get", 0.001)
    labels: set[str] = set()
    for family in m.registry.collect():
        for sample in family.samples:
            labels.update(sample.labels)
    return labels


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def test_parse_expr() -> None:
    names, labels = parse_expr(
        'histogram_quantile(0.95, sum by (le, route) (rate(x_bucket{job=~"$job", a!="b{c}"}'
        "[$__rate_interval]))) / on (route) group_left sum(y_total offset 5m) > 0.5"
    )
    assert names == {"x_bucket", "y_total"}
    assert labels == {"le", "route", "job", "a"}


def test_dashboard_shape(dashboard: dict[str, Any]) -> None:
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    titles = " | ".join(p["title"] for p in panels)
    for wanted in ("RPC rate", "RPC errors", "latency", "Tokens per second", "first token",
                   "overhead", "Active streams", "Rate-limit", "Database query p99",
                   "Database size"):  # fmt: skip
        assert wanted in titles
    for panel in panels:
        assert panel["targets"], f"panel {panel['title']!r} has no targets"
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"]
            assert target["datasource"]["uid"] == "${datasource}"


def test_every_query_uses_exported_metrics_and_labels(dashboard: dict[str, Any]) -> None:
    names, labels = exported_names(), exported_labels() | SCRAPE_LABELS
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v.get("definition")]
    used: set[str] = set()
    for expr in exprs:
        if expr.startswith("label_values("):
            metric, label = expr.removeprefix("label_values(").rstrip(")").split(",")
            expr_names, expr_labels = {metric.strip()}, {label.strip()}
        else:
            expr_names, expr_labels = parse_expr(expr)
        assert expr_names, f"no metric found in {expr!r}"
        assert expr_names <= names, f"{expr!r} uses unknown {sorted(expr_names - names)}"
        assert expr_labels <= labels, f"{expr!r} uses unknown labels {expr_labels - labels}"
        used |= expr_names
    # the headline metrics are all on the board
    for name in ("grpc_server_handled_total", "byok_llm_output_tokens_total",
                 "byok_llm_time_to_first_token_seconds_bucket",
                 "byok_gateway_overhead_seconds_bucket", "byok_llm_active_streams",
                 "byok_ratelimit_refused_total", "byok_db_query_duration_seconds_bucket",
                 "byok_db_size_bytes"):  # fmt: skip
        assert name in used
