"""Alert rules, their unit tests and the example scrape config, checked by promtool; and the
metrics the sidecar really exports, which the rules and the dashboard may name."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from .promql import metric_names
from .support import DEPLOY, exported_names, exposition, promtool

PROMETHEUS = DEPLOY / "prometheus"

# The metrics this repository's deploy files are written against (the issue's list).
DOCUMENTED = {
    "mlflow_bluegreen_requests_total",
    "mlflow_bluegreen_request_duration_seconds_bucket",
    "mlflow_bluegreen_in_flight_requests",
    "mlflow_bluegreen_swaps_total",
    "mlflow_bluegreen_swap_duration_seconds_bucket",
    "mlflow_bluegreen_active_model_version",
    "mlflow_bluegreen_active_model_info",
    "mlflow_bluegreen_ready",
    "mlflow_bluegreen_worker_up",
    "mlflow_bluegreen_registry_errors_total",
    # How new versions are judged (shadow, canary, automatic rollback).
    "mlflow_bluegreen_shadow_requests_total",
    "mlflow_bluegreen_last_shadow_agreement_ratio",
    "mlflow_bluegreen_last_verdict_latency_ratio",
}
# A swaps_total{result=...} selector in an alert expression.
_SWAP_RESULT = re.compile(r'mlflow_bluegreen_swaps_total\{[^}]*result(=~|=)"([^"]*)"')


def run(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_documented_metrics_are_exported() -> None:
    assert exported_names() >= DOCUMENTED


def test_promtool_accepts_the_exported_metrics() -> None:
    result = subprocess.run(
        [promtool(), "check", "metrics"],
        input=exposition(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_alert_rules_are_valid() -> None:
    result = run("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_pass_their_unit_tests() -> None:
    result = run("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alerts_cover_the_issue() -> None:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert {
        "MlflowBluegreenNotReady",
        "MlflowBluegreenSwapFailed",
        "MlflowBluegreenHighErrorRatio",
        "MlflowBluegreenHighLatencyP99",
        "MlflowBluegreenVersionRolledBack",
    } <= set(alerts)
    tested = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())
    fired = {
        case["alertname"]
        for test in tested["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert fired == set(alerts), "every alert has a test in which it fires"


def test_every_swap_result_but_success_has_an_alert() -> None:
    """Each result swaps_total counts (read from the real exposition, so a new one shows up
    here) fires an alert, unless it is a success: a rejected version (failed, blocked) and one
    rolled back after its switch all leave the registry and what is served disagreeing."""
    results = set(
        re.findall(r'^mlflow_bluegreen_swaps_total\{result="([^"]+)"\}', exposition(), re.M)
    )
    assert results >= {"succeeded", "failed", "blocked", "rolled_back"}
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    alerted: dict[str, set[str]] = {}
    for group in rules["groups"]:
        for rule in group["rules"]:
            for op, value in _SWAP_RESULT.findall(rule["expr"]):
                for result in results:
                    if re.fullmatch(value, result) if op == "=~" else value == result:
                        alerted.setdefault(result, set()).add(rule["alert"])
    assert "succeeded" not in alerted
    assert set(alerted) == results - {"succeeded"}
    assert alerted["failed"] == alerted["blocked"] == {"MlflowBluegreenSwapFailed"}
    assert alerted["rolled_back"] == {"MlflowBluegreenVersionRolledBack"}


def test_alert_rules_name_only_exported_metrics() -> None:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    exported = exported_names()
    for group in rules["groups"]:
        for rule in group["rules"]:
            names = metric_names(rule["expr"])
            assert names, rule["alert"]
            assert names <= exported, (rule["alert"], names - exported)


def test_example_scrape_config_is_valid(tmp_path: Path) -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["mlflow-bluegreen"]["static_configs"][0]["targets"] == ["127.0.0.1:8081"]
    pods = jobs["mlflow-bluegreen-pods"]
    kept = {
        tuple(r["source_labels"]): r["regex"]
        for r in pods["relabel_configs"]
        if r.get("action") == "keep"
    }
    assert kept[("__meta_kubernetes_pod_annotation_prometheus_io_scrape",)] == "true"
    # Debian's promtool is built without Kubernetes service discovery: check the rest there.
    result = run("check", "config", "prometheus.yml")
    if "kubernetes_sd_configs not found" in result.stdout + result.stderr:
        config["scrape_configs"] = [
            j for j in config["scrape_configs"] if "kubernetes_sd_configs" not in j
        ]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        (tmp_path / "alerts.yml").write_text((PROMETHEUS / "alerts.yml").read_text())
        result = run("check", "config", "prometheus.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
