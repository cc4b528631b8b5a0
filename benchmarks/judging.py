"""Judging new versions by what clients see, under open-loop load: canary, shadow, auto-rollback.

    .venv/bin/python benchmarks/judging.py [--rate 60] [--only canary|shadow|rollback] ...

An embedded MLflow registry holds four versions of one pyfunc
(tests/integration/models/judged_model.py): a base, one that raises (MLflow answers 400) on rows
whose first column is above 6.5, one 0.12 s slower per prediction, and a good one. Clients send a
fixed arrival rate (open loop, latency counted from each request's scheduled start) of a mix:
60 % ordinary rows (first column 5.1), 30 % edge rows (7.2: the raising version fails them) and
10 % malformed JSON, which every version answers with 400: expected, not a failure. A failure is
any answer but a 2xx to a well-formed request, and anything but a 400 to a malformed one.

Each scenario has a sidecar of its own, following its own alias (models:/judged@<scenario>):

  canary    --canary-percent 20 --canary-seconds 5; the alias moves to the raising version
            (rejected), then the slow one (rejected), then the good one (promoted).
  shadow    --shadow-percent 50 --shadow-seconds 5 --shadow-min-agreement 0.95; the raising
            version (rejected, no client request may fail), then the good one (promoted). What
            shadowing costs clients: p99 during the shadow run against p99 in as long a window
            of steady load just before the alias move.
  rollback  --linger 20 --auto-rollback; the raising version, then the slow one: each switched
            to, then rolled back. How long from the switch to the rollback, by the sidecar's
            records and by what clients saw (first to last answer from the bad version).

A thread polls GET /status every 0.1 s, so that the canary, shadow and active windows are known
on the load's timeline. Output: a summary on stdout, every request and the sidecars' history as
JSON in benchmarks/out/ (sidecar logs beside it). Exits 1 if a verdict was not the expected one,
a shadow run cost a client request, or a sidecar did not exit 0.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import random
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import REPO, machine, out_path, percentile, table, versions, write_json
from openloop import (
    ERROR,
    LATENCY,
    SCHEDULED,
    SEND_LAG,
    STATUS,
    VERSION,
    LoadChild,
    Record,
    open_loop,
)
from swap_under_load import p99_ratio_interval

KIND = 7  # appended to openloop's Record fields: which part of the mix a request was
MODEL_CODE = REPO / "tests" / "integration" / "models" / "judged_model.py"
MODEL_NAME = "judged"
CONFIGS: dict[str, dict[str, Any] | None] = {
    "base": None,
    "raises": {"raise_above": 6.5},  # fails the edge rows
    "slow": {"sleep": 0.12},
    "good": None,
}
COLUMNS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]


def _rows(first: float) -> bytes:
    data = [[first, 3.5, 1.4, 0.2]]
    return json.dumps({"dataframe_split": {"columns": COLUMNS, "data": data}}).encode()


PAYLOADS = {"ordinary": _rows(5.1), "edge": _rows(7.2), "malformed": b'{"dataframe_split": '}
MIX = (("ordinary", 0.6), ("edge", 0.3), ("malformed", 0.1))


@dataclass(frozen=True)
class Scenario:
    options: tuple[str, ...]
    moves: tuple[str, ...]  # version labels, in order
    expected: tuple[str, ...]  # the result each move's record should have
    lead: float  # steady seconds before the first move
    pause: float  # seconds between a verdict and the next move


SCENARIOS = {
    "canary": Scenario(
        ("--canary-percent", "20", "--canary-seconds", "5"),
        ("raises", "slow", "good"),
        ("failed", "failed", "succeeded"),
        lead=5.0,
        # At once: a rejected version is tried again after the failure backoff (1-2 s, then
        # 2-4 s, ...), each try another canary of it. Moving on first keeps one try per move.
        pause=0.0,
    ),
    "shadow": Scenario(
        ("--shadow-percent", "50", "--shadow-seconds", "5", "--shadow-min-agreement", "0.95"),
        # The good one first: after its switch comes a steady window on it before the raising
        # one's shadow run (the other way round, the raising one would be tried again in it).
        ("good", "raises"),
        ("succeeded", "failed"),
        lead=10.0,
        pause=12.0,  # > the shadow run + the spare's re-warm (its imports 2-4 s after a switch)
    ),
    "rollback": Scenario(
        ("--linger", "20", "--auto-rollback"),
        ("raises", "slow"),
        ("rolled_back", "rolled_back"),
        lead=8.0,
        pause=4.0,  # a rolled-back version is not tried again while the registry names it
    ),
}


# -- load: openloop.py's generator, sending the mix ----------------------------------------------


def kinds_for(count: int, seed: int = 0) -> list[str]:
    """The kind of each request, by index: the same sequence on every run."""
    rng = random.Random(seed)
    names, weights = zip(*MIX, strict=True)
    return rng.choices(names, weights, k=count)


async def mixed_open_loop(
    url: str, rate: float, max_outstanding: int, timeout: float, max_seconds: float
) -> dict[str, Any]:
    """openloop.open_loop with a payload per request from the mix; each record gets its kind."""
    kinds = kinds_for(int(rate * max_seconds) + 1)
    return await open_loop(
        url,
        rate,
        max_outstanding,
        timeout,
        max_seconds,
        body_for=lambda index: PAYLOADS[kinds[index]],
        label_for=kinds.__getitem__,
    )


class MixedLoad(LoadChild):
    """LoadChild running this file's mixed generator (`judging.py --load-child ...`)."""

    program = (__file__, "--load-child")


def load_child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--max-outstanding", type=int, default=256)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    from mlflow_bluegreen.proxy.cli import run_with_uvloop

    result = run_with_uvloop(
        mixed_open_loop(args.url, args.rate, args.max_outstanding, args.timeout, args.max_seconds)
    )
    Path(args.out).write_text(json.dumps(result))
    return 0


# -- registry ------------------------------------------------------------------------------------


def register_judged(registry_uri: str) -> dict[str, str]:
    """One version per label of CONFIGS, as tests/integration/conftest.py::register_from_code
    does; MLflow's chatter is shown only if registering fails."""
    import mlflow
    import pandas as pd

    chatter = io.StringIO()
    mlflow_log = logging.getLogger("mlflow")
    level = mlflow_log.level
    mlflow_log.setLevel(logging.WARNING)
    example = pd.DataFrame({column: [0.0] for column in COLUMNS})
    found: dict[str, str] = {}
    try:
        with (
            contextlib.redirect_stdout(chatter),
            contextlib.redirect_stderr(chatter),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            mlflow.set_tracking_uri(registry_uri)
            mlflow.set_experiment("mlflow-bluegreen-bench-judging")
            for label, config in CONFIGS.items():
                with mlflow.start_run():
                    info = mlflow.pyfunc.log_model(
                        name="model",
                        python_model=str(MODEL_CODE),
                        registered_model_name=MODEL_NAME,
                        input_example=example,
                        model_config=config,
                    )
                found[label] = str(info.registered_model_version)
    except Exception:
        print(chatter.getvalue(), file=sys.stderr)
        raise
    finally:
        mlflow_log.setLevel(level)
    return found


# -- watching the sidecar ------------------------------------------------------------------------


class StatusWatch:
    """GET /status every `interval` s in a thread; who was active (and since when), canary,
    shadow and lingering, on the load's timeline. Only changes are kept."""

    FIELDS = ("active", "canary", "shadow", "lingering")

    def __init__(self, sidecar: Any, load: LoadChild, interval: float = 0.1) -> None:
        self.samples: list[dict[str, Any]] = []
        self.polls = 0
        self._sidecar, self._load, self._interval = sidecar, load, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                status = self._sidecar.status()
            except (OSError, RuntimeError, ValueError):
                continue
            self.polls += 1
            now = self._load.now()
            sample = {name: (status.get(name) or {}).get("version") for name in self.FIELDS}
            since = (status.get("active") or {}).get("since")
            sample["active_since"] = None if since is None else self.to_load(since)
            if not self.samples or any(
                self.samples[-1][k] != v for k, v in sample.items() if k != "active_since"
            ):
                self.samples.append({"t": now, **sample})

    def to_load(self, wall: float) -> float:
        """A time.time() reading on the load's timeline."""
        return self._load.now() - (time.time() - wall)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def window(samples: list[dict[str, Any]], role: str, version: str) -> tuple[float, float] | None:
    """From the first sample with `role` held by `version` to the first sample after that
    without it (the last sample, if none)."""
    start = end = None
    for sample in samples:
        if start is None and sample[role] == version:
            start = sample["t"]
        elif start is not None and sample[role] != version:
            end = sample["t"]
            break
    if start is None:
        return None
    return (start, end if end is not None else samples[-1]["t"])


def wait_record(
    sidecar: Any, match: Any, timeout: float, what: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The first history record `match` accepts, and the status it came in."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sidecar.process.poll() is not None:
            raise RuntimeError(f"sidecar exited with {sidecar.process.returncode} awaiting {what}")
        with contextlib.suppress(OSError, RuntimeError, ValueError):
            status = sidecar.status()
            for record in status["history"]:
                if match(record):
                    return record, status
        time.sleep(0.2)
    raise TimeoutError(f"no {what} after {timeout} s:\n{sidecar.log_text()[-3000:]}")


# -- one scenario --------------------------------------------------------------------------------


@dataclass
class Move:
    label: str  # raises, slow, good
    version: str
    moved: float  # the alias call returned, seconds since the load began
    verdict_at: float  # the deciding record finished (canary, shadow) or the rollback began
    record: dict[str, Any]  # the swap's history record
    rollback: dict[str, Any] | None = None
    marks: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "version": self.version,
            "moved_s": self.moved,
            "verdict_at_s": self.verdict_at,
            "record": self.record,
            "rollback": self.rollback,
            "marks": self.marks,
        }


def run_scenario(
    name: str, args: argparse.Namespace, registry_uri: str, labels: dict[str, str]
) -> dict[str, Any]:
    from mlflow_bluegreen.proxy.demo import SidecarProcess
    from mlflow_bluegreen.worker.sandbox import set_alias

    scenario = SCENARIOS[name]
    alias = name
    set_alias(registry_uri, MODEL_NAME, alias, labels["base"])
    log_path = out_path(f"judging-{name}-sidecar", ".log")
    extra = (
        "--poll-interval", str(args.poll_interval),
        "--log-level", "INFO",
        *scenario.options,
    )  # fmt: skip
    moves: list[Move] = []
    with SidecarProcess(
        f"models:/{MODEL_NAME}@{alias}",
        tracking_uri=registry_uri,
        extra_args=extra,
        log_path=log_path,
    ) as sidecar:
        sidecar.wait_active(labels["base"], timeout=args.swap_timeout)
        load = MixedLoad(f"{sidecar.url}/invocations", rate=args.rate, timeout=args.timeout)
        watch = StatusWatch(sidecar, load)
        try:
            time.sleep(scenario.lead)
            for n, label in enumerate(scenario.moves):
                if n:
                    time.sleep(scenario.pause if args.pause is None else args.pause)
                version = labels[label]
                set_alias(registry_uri, MODEL_NAME, alias, version)
                moved = load.now()
                print(f"  {name}: alias -> v{version} ({label}) at {moved:6.1f} s", flush=True)
                move = await_verdict(
                    name, sidecar, watch=watch, version=version, label=label, moved=moved, args=args
                )
                moves.append(move)
                result = move.rollback["result"] if move.rollback else move.record["result"]
                print(
                    f"  {name}: v{version} {result} at {move.verdict_at:6.1f} s"
                    f" ({move.verdict_at - moved:.1f} s after the move)",
                    flush=True,
                )
            time.sleep(args.tail)
        finally:
            watch.stop()
            records = load.stop()
        status = sidecar.status()
        exit_code = sidecar.stop()
    for move in moves:
        add_windows(move, watch.samples)
    history = list(reversed(status["history"]))  # oldest first
    for record in history:
        record["started_load_s"] = watch.to_load(record["started_at"])
    return {
        "options": list(scenario.options),
        "records": records,
        "moves": moves,
        "samples": watch.samples,
        "status_polls": watch.polls,
        "history": history,
        "failed_versions": status.get("failed_versions"),
        "exit_code": exit_code,
        "log": str(log_path),
        "log_problems": log_problems(log_path),
    }


def await_verdict(
    name: str,
    sidecar: Any,
    *,
    watch: StatusWatch,
    version: str,
    label: str,
    moved: float,
    args: argparse.Namespace,
) -> Move:
    if name == "rollback" and label != "good":
        rollback, _ = wait_record(
            sidecar,
            lambda r: r["from"] == version and r["result"] == "rolled_back",
            args.swap_timeout,
            f"rollback from v{version}",
        )
        swap, _ = wait_record(
            sidecar,
            lambda r: r["to"] == version and r["result"] != "in_progress",
            5,
            f"swap to v{version}",
        )
        return Move(label, version, moved, watch.to_load(rollback["started_at"]), swap, rollback)
    record, _ = wait_record(
        sidecar,
        lambda r: r["to"] == version and r["result"] != "in_progress",
        args.swap_timeout,
        f"verdict on v{version}",
    )
    return Move(
        label, version, moved, watch.to_load(record["started_at"] + record["seconds"]), record
    )


def add_windows(move: Move, samples: list[dict[str, Any]]) -> None:
    """The move's canary, shadow and active spans, from the /status samples."""
    for role in ("canary", "shadow", "active"):
        span = window([s for s in samples if s["t"] >= move.moved - 0.5], role, move.version)
        if span is not None:
            move.marks[f"{role}_from"], move.marks[f"{role}_to"] = span
    # When the version became active, by the sidecar's own clock (wall time of the switch).
    for sample in samples:
        if sample["active"] == move.version and sample["active_since"] is not None:
            move.marks["switched"] = sample["active_since"]
            break


def log_problems(path: Path, limit: int = 12) -> list[str]:
    """The sidecar log's tracebacks, errors and warnings, first `limit` of them."""
    found = []
    with contextlib.suppress(OSError), open(path, errors="replace") as log:
        for line in log:
            if any(word in line for word in ("Traceback", " ERROR ", " CRITICAL ", " WARNING ")):
                found.append(line.rstrip()[:400])
                if len(found) >= limit:
                    break
    return found


# -- analysis ------------------------------------------------------------------------------------


def as_expected(record: Record) -> bool:
    """A malformed request is answered 400 by every version; anything else should be a 2xx."""
    status = record[STATUS]
    if record[KIND] == "malformed":
        return bool(status == 400)
    return status is not None and 200 <= status < 300


def completed(record: Record) -> float:
    return float(record[SCHEDULED] + record[LATENCY])


def p99_ms(rows: list[Record]) -> float | None:
    value = percentile([r[LATENCY] * 1000 for r in rows], 99)
    return None if value is None else round(value, 2)


def failure_kinds(rows: list[Record]) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for r in rows:
        if not as_expected(r):
            what = r[ERROR].split(":")[0] if r[ERROR] else f"HTTP {r[STATUS]}"
            key = f"{r[KIND]}: {what} from v{r[VERSION]}"
            kinds[key] = kinds.get(key, 0) + 1
    return kinds


def analyse_move(
    name: str, move: Move, run: dict[str, Any], end: float, late_ms: float
) -> dict[str, Any]:
    """A move's figures: requests scheduled from the move up to `end` (the next move)."""
    records = run["records"]
    span = [r for r in records if move.moved <= r[SCHEDULED] < end]
    failed = [r for r in span if not as_expected(r)]
    new = [r for r in span if r[VERSION] == move.version]
    record = move.record
    entry: dict[str, Any] = {
        "scenario": name,
        "label": move.label,
        "version": move.version,
        "requests": len(span),
        "failed": len(failed),
        "failed_by_new": sum(1 for r in failed if r[VERSION] == move.version),
        "answered_by_new": len(new),
        "failure_kinds": failure_kinds(span),
        "late": sum(1 for r in span if r[SEND_LAG] * 1000 > late_ms),
        "result": record["result"],
        # swaps to it begun in the span: more than one when a rejected version was tried again
        "attempts": sum(
            1
            for h in run["history"]
            if h["to"] == move.version and move.moved <= h["started_load_s"] < end
        ),
        "error": record.get("error"),
        "verdict_s": round(move.verdict_at - move.moved, 2),
        "steps": record.get("steps", {}),
    }
    trial = record.get(name) if name in ("canary", "shadow") else record.get("after_switch")
    entry["figures"] = trial
    if trial:
        entry["verdict"] = trial.get("verdict")
        entry["reason"] = trial.get("reason")
    else:
        entry["verdict"], entry["reason"] = None, record.get("error")
    role = {"canary": "canary", "shadow": "shadow"}.get(name)
    if role and f"{role}_from" in move.marks:
        lo, hi = move.marks[f"{role}_from"], move.marks[f"{role}_to"]
        during = [r for r in records if lo <= r[SCHEDULED] < hi]
        entry["window_s"] = round(hi - lo, 2)
        entry["window_requests"] = len(during)
        entry["window_failed"] = sum(1 for r in during if not as_expected(r))
    if move.rollback is not None:
        rollback = move.rollback
        entry["result"] = rollback["result"]
        entry["cause"] = rollback["cause"]
        judged = rollback.get("after_switch") or {}
        entry["figures"] = judged
        entry["verdict"], entry["reason"] = judged.get("verdict"), judged.get("reason")
        entry["judged_after_s"] = judged.get("seconds")
        switched = move.marks.get("switched")
        rolled = move.verdict_at
        entry["switch_to_rollback_s"] = None if switched is None else round(rolled - switched, 2)
        answers = sorted(completed(r) for r in new)
        entry["bad_answers_s"] = round(answers[-1] - answers[0], 2) if answers else None
        entry["bad_active_s"] = (
            round(move.marks["active_to"] - move.marks["active_from"], 2)
            if "active_from" in move.marks
            else None
        )
    if name == "shadow":
        entry["shadow_cost"] = shadow_cost(move, records)
    return entry


def shadow_cost(move: Move, records: list[Record]) -> dict[str, Any] | None:
    """Client-facing p99 (answers as expected) during the shadow run against as long a window
    of steady load just before the alias move."""
    if "shadow_from" not in move.marks:
        return None
    lo, hi = move.marks["shadow_from"], move.marks["shadow_to"]
    length = hi - lo
    ok = [r for r in records if as_expected(r)]
    during = [r for r in ok if lo <= r[SCHEDULED] < hi]
    before = [r for r in ok if move.moved - length <= r[SCHEDULED] < move.moved]
    steady, shadowed = p99_ms(before), p99_ms(during)
    interval = p99_ratio_interval(during, before)
    return {
        "window_s": round(length, 2),
        "steady_n": len(before),
        "shadow_n": len(during),
        "steady_p50_ms": percentile([r[LATENCY] * 1000 for r in before], 50),
        "shadow_p50_ms": percentile([r[LATENCY] * 1000 for r in during], 50),
        "steady_p99_ms": steady,
        "shadow_p99_ms": shadowed,
        "ratio": round(shadowed / steady, 2) if steady and shadowed else None,
        "ratio_interval_90": None if interval is None else [round(x, 2) for x in interval],
    }


def analyse(name: str, run: dict[str, Any], late_ms: float) -> dict[str, Any]:
    records, moves = run["records"], run["moves"]
    entries = []
    for n, move in enumerate(moves):
        end = moves[n + 1].moved if n + 1 < len(moves) else float("inf")
        entries.append(analyse_move(name, move, run, end, late_ms))
    expected = SCENARIOS[name].expected
    for entry, wanted in zip(entries, expected, strict=False):
        entry["expected_result"] = wanted
        entry["as_expected"] = entry["result"] == wanted
    return {
        "requests": len(records),
        "failed": sum(1 for r in records if not as_expected(r)),
        "failure_kinds": failure_kinds(records),
        "late": sum(1 for r in records if r[SEND_LAG] * 1000 > late_ms),
        "max_send_lag_ms": round(max((r[SEND_LAG] * 1000 for r in records), default=0.0), 1),
        "kinds": {k: sum(1 for r in records if r[KIND] == k) for k, _ in MIX},
        "moves": entries,
    }


# -- output --------------------------------------------------------------------------------------


def _short(text: str | None, width: int = 70) -> str | None:
    if text is None:
        return None
    return text if len(text) <= width else text[: width - 1] + "…"


def figures_line(figures: dict[str, Any] | None) -> str:
    """The judged figures in one line: both arms of a canary or after-switch comparison, or a
    shadow run's agreement."""
    if not figures:
        return "no figures"
    if "agreement" in figures:
        active, shadow = figures["active"], figures["shadow"]
        return (
            f"shadow: {figures['agreed']}/{figures['compared']} agreed ({figures['sent']} sent,"
            f" {figures['dropped']} dropped); p50/p99 ms active {active['p50_ms']}/"
            f"{active['p99_ms']}, shadow {shadow['p50_ms']}/{shadow['p99_ms']}"
        )
    parts = []
    for arm in ("old", "new"):
        a = figures[arm]
        parts.append(
            f"{arm} v{a['version']}: {a['answered']} answered, {a['4xx']} 4xx, {a['5xx']} 5xx,"
            f" p50/p99 {a['p50_ms']}/{a['p99_ms']} ms"
        )
    ratio = figures.get("latency_ratio")
    return "; ".join(parts) + ("" if ratio is None else f"; p99 ratio {ratio}")


def print_summary(runs: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"\nOpen loop {args.rate:g} req/s: 60 % ordinary rows, 30 % edge rows, 10 % malformed"
        " (400 expected). failed = not a 2xx to a well-formed request, or not a 400 to a"
        " malformed one."
    )
    print(
        table(
            ["scenario", "requests", "failed", "late", "exit"],
            [
                [name, s["requests"], s["failed"], s["late"], run["exit_code"]]
                for name, run in runs.items()
                for s in [run["summary"]]
            ],
        )
    )
    rows = []
    for name, run in runs.items():
        for m in run["summary"]["moves"]:
            judged = m.get("window_s") or m.get("judged_after_s")
            rows.append(
                [
                    name,
                    f"v{m['version']} {m['label']}",
                    m["requests"],
                    m["failed"],
                    m["failed_by_new"],
                    m["attempts"],
                    m["result"] + ("" if m["as_expected"] else " (UNEXPECTED)"),
                    m["verdict"],
                    m["verdict_s"],
                    judged,
                    m.get("switch_to_rollback_s"),
                    m.get("bad_answers_s"),
                ]
            )
    print("\nper alias move (requests scheduled from the move to the next one; seconds)")
    print(
        table(
            [
                "scenario",
                "to",
                "requests",
                "failed",
                "by new",
                "tries",
                "result",
                "verdict",
                "move→verdict",
                "judged for",
                "switch→rollback",
                "bad answers span",
            ],
            rows,
        )
    )
    print(
        "  move→verdict: alias move to the record's end (canary, shadow) or the rollback's"
        " switch;\n  judged for: the canary/shadow run as /status showed it, or after_switch"
        " seconds;\n  switch→rollback: rollback record's started_at minus the switch (active"
        " since);\n  bad answers span: first to last answer clients got from the bad version"
    )
    print("\nreasons")
    for name, run in runs.items():
        for m in run["summary"]["moves"]:
            print(f"  {name} v{m['version']} {m['label']}: {m['reason'] or '-'}")
            print(f"      {figures_line(m.get('figures'))}")
            if m["attempts"] > 1:
                print(f"      tried {m['attempts']} times before the alias moved on")
            if m["failure_kinds"]:
                kinds = ", ".join(f"{n}× {k}" for k, n in m["failure_kinds"].items())
                print(f"      failures: {kinds}")
    shadow = runs.get("shadow")
    if shadow:
        print("\nwhat shadowing cost the clients (answers as expected; ms)")
        cost_rows = []
        for m in shadow["summary"]["moves"]:
            cost = m.get("shadow_cost") or {}
            interval = cost.get("ratio_interval_90")
            cost_rows.append(
                [
                    f"v{m['version']} {m['label']}",
                    cost.get("window_s"),
                    cost.get("steady_n"),
                    cost.get("steady_p50_ms"),
                    cost.get("steady_p99_ms"),
                    cost.get("shadow_n"),
                    cost.get("shadow_p50_ms"),
                    cost.get("shadow_p99_ms"),
                    cost.get("ratio"),
                    "-" if not interval else f"{interval[0]:.2f}-{interval[1]:.2f}",
                ]
            )
        print(
            table(
                [
                    "shadowed",
                    "window s",
                    "steady n",
                    "steady p50",
                    "steady p99",
                    "shadow n",
                    "shadow p50",
                    "shadow p99",
                    "p99 ratio",
                    "90% interval",
                ],
                cost_rows,
            )
        )
        print("  steady: as long a window just before the alias move; whole seconds resampled")
    for name, run in runs.items():
        if run["log_problems"]:
            print(f"\n{name} sidecar log, warnings and errors ({run['log']}):")
            for line in run["log_problems"]:
                print(f"  {line}")


def serialisable(run: dict[str, Any]) -> dict[str, Any]:
    data = {k: v for k, v in run.items() if k not in ("records", "moves")}
    data["moves"] = [m.as_dict() for m in run["moves"]]
    data["records"] = [
        {
            "i": r[0],
            "kind": r[KIND],
            "scheduled_s": round(r[SCHEDULED], 6),
            "send_lag_ms": round(r[SEND_LAG] * 1000, 3),
            "latency_ms": round(r[LATENCY] * 1000, 3),
            "status": r[STATUS],
            "version": r[VERSION],
            "error": r[ERROR],
        }
        for r in run["records"]
    ]
    return data


def problems(runs: dict[str, dict[str, Any]]) -> list[str]:
    found = []
    for name, run in runs.items():
        if run["exit_code"] != 0:
            found.append(f"{name}: sidecar exited with {run['exit_code']}")
        for m in run["summary"]["moves"]:
            if not m["as_expected"]:
                found.append(
                    f"{name}: v{m['version']} ({m['label']}) {m['result']},"
                    f" expected {m['expected_result']}"
                )
            if name == "shadow" and m["failed"]:
                found.append(f"shadow: {m['failed']} client requests failed around v{m['version']}")
    return found


# -- main ----------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=60.0, help="requests per second")
    parser.add_argument(
        "--only", choices=sorted(SCENARIOS), action="append", help="these scenarios only"
    )
    parser.add_argument(
        "--pause",
        type=float,
        default=None,
        help="seconds from a verdict to the next move (default: canary 0, shadow 12, rollback 4)",
    )
    parser.add_argument("--tail", type=float, default=2.0, help="load after the last verdict")
    parser.add_argument("--poll-interval", type=float, default=0.5, help="sidecar registry poll")
    parser.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    parser.add_argument("--late-ms", type=float, default=10.0)
    parser.add_argument("--swap-timeout", type=float, default=120.0)
    return parser.parse_args()


def main() -> int:
    if sys.argv[1:2] == ["--load-child"]:
        return load_child_main(sys.argv[2:])
    args = parse_args()
    from mlflow_bluegreen.worker.sandbox import EmbeddedRegistry

    began = time.monotonic()
    info = machine()
    names = [n for n in SCENARIOS if not args.only or n in args.only]
    runs: dict[str, dict[str, Any]] = {}
    print("• starting an embedded MLflow registry and registering four versions …", flush=True)
    with EmbeddedRegistry() as registry:
        labels = register_judged(registry.uri)
        print(f"  versions: {labels}", flush=True)
        for name in names:
            print(f"• {name}: {args.rate:g} req/s …", flush=True)
            run = run_scenario(name, args, registry.uri, labels)
            run["summary"] = analyse(name, run, args.late_ms)
            runs[name] = run
    info["loadavg_at_end"] = os.getloadavg()
    print(f"\n=== judging new versions — {info['date']}, {info['cpus']} cores (shared) ===")
    print(f"load average at start {info['loadavg_at_start']}, at end {info['loadavg_at_end']}")
    print_summary(runs, args)
    data = {
        "machine": info,
        "versions": versions(),
        "config": vars(args),
        "model_versions": labels,
        "runs": {name: serialisable(run) for name, run in runs.items()},
        "seconds": round(time.monotonic() - began, 1),
    }
    path = out_path("judging", ".json")
    write_json(path, data)
    print(f"\nrecords: {path}\n({data['seconds']:.0f} s)")
    found = problems(runs)
    for line in found:
        print(f"PROBLEM: {line}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
