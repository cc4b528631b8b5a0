"""The Grafana dashboard: valid JSON, the panels the issue asks for, PromQL that parses, and
only metrics the sidecar really exports."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .promql import metric_names
from .support import DEPLOY, exported_names, promtool

DASHBOARD = DEPLOY / "grafana" / "dashboard.json"


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every query: panels, annotations and variables."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r}", target["expr"]
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            yield f"annotation {annotation['name']!r}", annotation["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield f"variable {variable['name']!r}", variable["query"]["query"]


def test_panels_the_issue_asks_for(dashboard: dict[str, Any]) -> None:
    exprs = {
        p["title"]: " ".join(t["expr"] for t in p.get("targets", [])) for p in panels(dashboard)
    }
    assert "mlflow_bluegreen_requests_total" in exprs["Request rate by status code"]
    assert "by (code)" in exprs["Request rate by status code"]
    assert 'code=~"5.."' in exprs["Error ratio (5xx / all)"]
    latency = exprs["Latency"]
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}," in latency
    assert "mlflow_bluegreen_request_duration_seconds_bucket" in latency
    assert "mlflow_bluegreen_in_flight_requests" in exprs["In-flight requests"]
    assert "mlflow_bluegreen_active_model_version" in exprs["Active model version"]
    assert "slot" in exprs["Worker up per slot"]
    swaps = [a for a in dashboard["annotations"]["list"] if "swaps_total" in a.get("expr", "")]
    assert swaps and all(a["enable"] for a in swaps)
    assert any('result="rolled_back"' in a["expr"] for a in swaps)


def test_panels_for_judging_new_versions(dashboard: dict[str, Any]) -> None:
    by_title = {p["title"]: p for p in panels(dashboard)}
    rejected = by_title["Rolled-back and rejected versions"]
    (target,) = rejected["targets"]
    # Counted over the dashboard's time range, one figure per result.
    assert "increase(mlflow_bluegreen_swaps_total{" in target["expr"]
    assert "[$__range]" in target["expr"]
    assert "sum by (result)" in target["expr"]
    assert 'result=~"rolled_back|failed|blocked"' in target["expr"]
    assert target["legendFormat"] == "{{result}}"

    verdicts = by_title["Canary / shadow verdicts"]
    exprs = {t["refId"]: t["expr"] for t in verdicts["targets"]}
    assert len(exprs) == len(verdicts["targets"])
    joined = " ".join(exprs.values())
    assert "rate(mlflow_bluegreen_shadow_requests_total{" in joined
    assert "by (outcome)" in joined
    assert "mlflow_bluegreen_last_shadow_agreement_ratio" in joined
    assert "mlflow_bluegreen_last_verdict_latency_ratio" in joined
    assert "judged_by" in joined
    # Each override names a query of this panel.
    for override in verdicts["fieldConfig"]["overrides"]:
        assert override["matcher"]["id"] == "byFrameRefID"
        assert override["matcher"]["options"] in exprs


def test_panels_have_unique_ids_and_fit_the_grid(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    placed = [(p["title"], p["gridPos"]) for p in panels(dashboard)]
    for index, (title, a) in enumerate(placed):
        for other, b in placed[index + 1 :]:
            apart = (
                a["x"] + a["w"] <= b["x"]
                or b["x"] + b["w"] <= a["x"]
                or a["y"] + a["h"] <= b["y"]
                or b["y"] + b["h"] <= a["y"]
            )
            assert apart, (title, other)


def test_queries_name_only_exported_metrics(dashboard: dict[str, Any]) -> None:
    exported = exported_names()
    found = list(queries(dashboard))
    assert len(found) > 10
    for where, expr in found:
        names = metric_names(expr)
        assert names, where
        assert names <= exported, (where, names - exported)


def test_queries_parse_as_promql(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """promtool parses every query, as a recording rule, with Grafana's variables filled in."""
    substitutions = {
        "$__rate_interval": "5m",
        "$__interval": "1m",
        "$__range": "1h",
        "$job": ".*",
        "$instance": ".*",
    }
    rules = []
    for index, (_, expr) in enumerate(queries(dashboard)):
        if expr.lstrip().startswith("label_values("):
            continue
        filled = expr
        for variable, value in substitutions.items():
            filled = filled.replace(variable, value)
        assert "$" not in filled, filled
        rules.append({"record": f"dashboard:query_{index}:check", "expr": filled})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool(), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
