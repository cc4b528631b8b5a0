"""The PromQL reader the deploy tests rely on to list metric names."""

from __future__ import annotations

import pytest

from .promql import metric_names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("mlflow_bluegreen_ready == 0", {"mlflow_bluegreen_ready"}),
        (
            'sum by (job) (rate(a_total{code=~"5.."}[5m])) / sum by (job) (rate(a_total[5m]))',
            {"a_total"},
        ),
        (
            "histogram_quantile(0.99, sum by (job, le) "
            '(rate(x_bucket{j=~"$job"}[$__rate_interval])))',
            {"x_bucket"},
        ),
        ('max by (instance, version, slot) (info{a="b"}) == 1', {"info"}),
        ("rate(up[5m]) > 1e3 and on (instance) typo_metric", {"up", "typo_metric"}),
        ("label_values(mlflow_bluegreen_ready, job)", {"mlflow_bluegreen_ready"}),
        ('label_values(m{job=~"$job"}, instance)', {"m"}),
        ("label_values(job)", set()),
    ],
)
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names
