"""When `mlflow-bluegreen status --watch` says a rollout has ended, and with which exit code,
from /status answers of the shape the admin port gives (the end to end run is in
tests/integration/test_operator_cli.py)."""

from __future__ import annotations

from typing import Any

from mlflow_bluegreen.proxy.operator import OK, REFUSED, describe_status, watch_outcome


def status(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model_uri": "models:/iris@champion",
        "tracked": True,
        "ready": True,
        "active": {"slot": "blue", "version": "1", "pid": 10, "port": 5000, "in_flight": 0},
        "registry": {"state": "ok", "resolved_version": "1"},
        "pinned": None,
        "swap_in_progress": None,
        "failed_versions": {},
        "history": [],
    }
    return {**base, **fields}


def test_serving_what_the_registry_names_ends_the_watch() -> None:
    assert watch_outcome(status()) == (OK, "serving version 1: rollout complete")


def test_a_swap_in_progress_or_not_started_yet_does_not() -> None:
    moving = {"state": "ok", "resolved_version": "2"}
    assert watch_outcome(status(registry=moving)) is None
    swap = {"from": "1", "to": "2", "step": "ready", "steps": {"download": 0.1}}
    assert watch_outcome(status(registry=moving, swap_in_progress=swap)) is None


def test_a_failed_or_blocked_version_ends_it_with_exit_1() -> None:
    moving = {"state": "ok", "resolved_version": "2"}
    for result in ("failed", "blocked"):
        last = {"from": "1", "to": "2", "result": result, "error": "input a removed"}
        code, message = watch_outcome(status(registry=moving, history=[last])) or (None, "")
        assert code == REFUSED
        assert message == f"version 2 {result}: input a removed"
    backing_off = {"2": {"message": "exited with code 1", "retry_in": 30}}
    assert watch_outcome(status(registry=moving, failed_versions=backing_off)) == (
        REFUSED,
        "version 2 failed: exited with code 1",
    )


def test_a_rollback_pins_the_target_whatever_the_registry_names() -> None:
    pinned = {"version": "1", "since": 0.0, "registry_version": "2"}
    moved = status(registry={"state": "ok", "resolved_version": "2"}, pinned=pinned)
    assert watch_outcome(moved) == (OK, "serving version 1: rollout complete")
    assert "pinned:     version 1 by a rollback" in describe_status(moved)
    # `pinned` as a bare version is read the same way.
    assert watch_outcome(status(pinned="1")) == (OK, "serving version 1: rollout complete")


def test_a_shadow_run_is_shown_with_its_agreement_so_far() -> None:
    shadow = {"slot": "green", "version": "2", "pid": 11, "port": 5001, "in_flight": 1}
    shadow |= {"percent": 25, "seconds": 60, "sent": 41, "dropped": 2, "compared": 40}
    shown = describe_status(status(shadow={**shadow, "agreed": 38}))
    assert (
        "shadow:     version 2 (slot green, pid 11, port 5001, 1 in flight), a copy of 25 % of "
        "predictions: 41 sent, 2 dropped, 38 of 40 answers agree (95.0 %)"
    ) in shown
    assert "shadow:" not in describe_status(status(shadow=None))
