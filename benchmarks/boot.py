"""How long a new version takes until it could serve: a swap's `ready` step.

    .venv/bin/python benchmarks/boot.py [--rounds 4] [--env-manager local|uv]

Four ways to bring up the same local iris model, interleaved round by round so a drift in
the machine's speed hits all four alike:

  plain    `mlflow models serve -m DIR`, from launch to its first /ping 200 (the cold start
           users know)
  cli      the sidecar's worker started through that same command: its `ready` step
  direct   the sidecar's worker started as that command would start the scoring server
           (uvicorn on MLflow's scoring app, the model path in its environment): its `ready`
  spare    the same, from a pre-warmed spare (made and ready beforehand, as the sidecar
           keeps one between swaps): its `ready`

With `--env-manager uv` each way serves the model from the environment built for it, once,
before the first round (a swap builds it before its `ready` step, so no way times the build):
`plain` is `mlflow models serve --env-manager uv` in one built as MLflow builds it, the
sidecar's three in one built as the sidecar does (uv compiling bytecode: prepare.py), and the
spare waits there. Whether Python may write bytecode (PYTHONDONTWRITEBYTECODE) is printed: with
it set, as in our image, an environment uv built without bytecode compiles it on every boot.

Medians and each round's ratio to `plain` are printed and written to benchmarks/out/.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

from common import kill_group, machine, save_run, table, wait_ping

from mlflow_bluegreen.worker.model.prepare import prepare_env_command, prepare_env_environment
from mlflow_bluegreen.worker.model.venv import PreparedEnv, find_prepared_env
from mlflow_bluegreen.worker.model_worker import ModelWorker
from mlflow_bluegreen.worker.sandbox import iris_frame
from mlflow_bluegreen.worker.spare import SpareKeeper
from mlflow_bluegreen.worker.spec import WorkerSpec, free_port

WAYS = ("plain", "cli", "direct", "spare")


def save_iris(directory: Path) -> str:
    import mlflow.sklearn
    from sklearn.linear_model import LogisticRegression

    features, target = iris_frame()
    model = LogisticRegression(max_iter=500).fit(features, target)
    path = directory / "iris"
    mlflow.sklearn.save_model(model, str(path), input_example=features.iloc[:3])
    return str(path)


def worker_spec(env_manager: str, envs: Path, *, direct: bool) -> WorkerSpec:
    base = dict(os.environ, MLFLOW_ENV_ROOT=str(envs))
    return WorkerSpec(env_manager=env_manager, direct=direct, base_env=base)


def build_env(model: str, env_manager: str, envs: Path, *, ours: bool) -> PreparedEnv | None:
    """The model's environment, built by `mlflow models prepare-env` as a swap builds it
    (`ours`) or as `mlflow models serve` does."""
    if env_manager == "local":
        return None
    environment = worker_spec(env_manager, envs, direct=True).environment()
    began = time.monotonic()
    subprocess.run(
        prepare_env_command(model, env_manager),
        env=prepare_env_environment(environment, env_manager) if ours else environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        check=True,
        timeout=900,
    )
    how = "as the sidecar builds it" if ours else "as MLflow builds it"
    print(f"{env_manager} environment built {how} in {time.monotonic() - began:.1f} s")
    return find_prepared_env(model, env_manager, environment)


def plain(model: str, env_manager: str, envs: Path) -> float:
    spec = worker_spec(env_manager, envs, direct=False)
    port = free_port()
    began = time.monotonic()
    process = subprocess.Popen(
        spec.command(model, port),
        env=spec.environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_ping(port, 120, process)
        return time.monotonic() - began
    finally:
        kill_group(process)


async def sidecar_worker(
    model: str, way: str, env_manager: str, envs: Path, venv: PreparedEnv | None
) -> float:
    spec = worker_spec(env_manager, envs, direct=way != "cli")
    spares = (
        SpareKeeper(spec, preload=lambda: ["mlflow.sklearn"], where=lambda: venv)
        if way == "spare"
        else None
    )
    if spares is not None and not await spares.wait_ready(120):
        raise RuntimeError("the spare did not come up")
    worker = ModelWorker("blue", "1", model, spec, spares=spares)
    await worker.start()
    assert worker.launch == way
    began = time.monotonic()  # as the swap's clock: the boot alone, after the launch
    try:
        await worker.wait_ready(120)
        return time.monotonic() - began
    finally:
        await worker.stop(5)
        if spares is not None:
            await spares.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--env-manager", choices=("local", "uv"), default="local")
    args = parser.parse_args()
    began = time.monotonic()
    seconds: dict[str, list[float]] = {way: [] for way in WAYS}
    with tempfile.TemporaryDirectory(prefix="bench-boot-") as tmp:
        model = save_iris(Path(tmp))
        envs, plain_envs = Path(tmp) / "envs", Path(tmp) / "envs-mlflow"
        venv = build_env(model, args.env_manager, envs, ours=True)
        build_env(model, args.env_manager, plain_envs, ours=False)
        print(f"PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r}")
        for round_ in range(args.rounds):
            # Rotate the order so no way always runs right after another.
            order = WAYS[round_ % len(WAYS) :] + WAYS[: round_ % len(WAYS)]
            for way in order:
                if way == "plain":
                    seconds[way].append(plain(model, args.env_manager, plain_envs))
                else:
                    run = sidecar_worker(model, way, args.env_manager, envs, venv)
                    seconds[way].append(asyncio.run(run))
            print(f"round {round_ + 1}: " + ", ".join(f"{w} {seconds[w][-1]:.2f} s" for w in WAYS))
    ratios = {
        way: [mine / base for mine, base in zip(seconds[way], seconds["plain"], strict=True)]
        for way in WAYS
    }
    rows: list[list[Any]] = [
        [
            way,
            f"{median(seconds[way]):.2f}",
            f"{min(seconds[way]):.2f}-{max(seconds[way]):.2f}",
            f"{median(ratios[way]):.2f}",
        ]
        for way in WAYS
    ]
    print(table(["way", "median s", "range s", "x plain (median of rounds)"], rows))
    save_run(
        "boot" if args.env_manager == "local" else f"boot-{args.env_manager}",
        machine(),
        {**vars(args), "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE")},
        began,
        seconds=seconds,
        ratios={way: median(values) for way, values in ratios.items()},
    )


if __name__ == "__main__":
    main()
