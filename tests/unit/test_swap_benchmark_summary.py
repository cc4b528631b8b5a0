"""The swap benchmark's verdict on p99 around swaps: its interval, and a saved run read back."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import swap_under_load

        yield swap_under_load
    finally:
        sys.path.remove(str(BENCHMARKS))


def records(seconds: range, latency_ms, status: int = 200, per_second: int = 100) -> list[list]:
    """Open-loop records, `per_second` a second; latency_ms(second, n) gives each latency."""
    return [
        [s * per_second + n, s + n / per_second, 0.0, latency_ms(s, n) / 1000, status, "1", None]
        for s in seconds
        for n in range(per_second)
    ]


def test_twice_as_slow_everywhere_is_a_ratio_of_two_with_no_doubt(bench) -> None:
    steady = records(range(0, 30), lambda s, n: 5.0 + n / 100)
    swapping = records(range(30, 60), lambda s, n: 10.0 + n / 50)
    low, high = bench.p99_ratio_interval(swapping, steady)
    assert low == pytest.approx(2.0, rel=0.01) and high == pytest.approx(2.0, rel=0.01)
    assert bench._verdict((low, high)) == "MISSES"


def test_one_slow_second_makes_the_interval_wide_around_the_ratio(bench) -> None:
    steady = records(range(0, 30), lambda s, n: 5.0)
    # One second of the swap window is slow throughout: a cluster, as a host stall makes.
    swapping = records(range(30, 60), lambda s, n: 40.0 if s == 45 else 5.0)
    point = bench.percentile([r[3] for r in swapping], 99) / bench.percentile(
        [r[3] for r in steady], 99
    )
    low, high = bench.p99_ratio_interval(swapping, steady)
    assert low < point <= high
    assert low == pytest.approx(1.0) and high > 4, "with or without the slow second"
    assert bench._verdict((low, high)).startswith("cannot tell")
    assert bench._verdict((1.1, 1.4)) == "meets"


def test_a_saved_run_reads_back_to_the_same_summary(bench, tmp_path: Path) -> None:
    rows = records(range(0, 40), lambda s, n: 5.0 + (20.0 if 14 <= s <= 16 else 0.0))
    rows[2000][4] = 502  # one failed request
    moves = [bench.Move("2", 15.0, 21.0, {"switched": 20.5})]
    run = {"records": rows, "moves": moves, "swaps": [], "exit_code": 0}
    run["summary"] = bench.analyse(rows, moves, late_ms=10.0)
    saved = tmp_path / "run.json"
    saved.write_text(
        json.dumps(
            {
                "config": {"late_ms": 10.0, "rate": 100, "moves": 1},
                "runs": {"ours": bench.serialisable(run)},
            }
        )
    )
    runs, config = bench.loaded(str(saved))
    again = runs["ours"]["summary"]
    assert again["failed"] == 1
    assert again["steady"] == pytest.approx(run["summary"]["steady"])
    assert again["swap_span"] == pytest.approx(run["summary"]["swap_span"])
    assert again["swap_steady_p99_interval"] == pytest.approx(
        run["summary"]["swap_steady_p99_interval"]
    )
    assert config.late_ms == 10.0
