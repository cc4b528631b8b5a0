"""Finding a virtual environment's activation: what a process started in it directly sees must
be what `source bin/activate && exec ...` gives it, as `mlflow models serve` starts it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlflow_bluegreen.worker.model.prepare import prepare_env_environment
from mlflow_bluegreen.worker.model.venv import (
    EnvNotFound,
    PreparedEnv,
    activation,
    model_env_dir,
)
from mlflow_bluegreen.worker.sandbox import iris_frame

# What bash itself adds to what it runs: not the activation's, and a direct start has none.
BASH_OWN = {"SHLVL", "_", "PWD", "OLDPWD"}
SHOW_ENVIRONMENT = "import json, os; print(json.dumps(dict(os.environ)))"


def make_env(kind: str, directory: Path) -> Path:
    if kind == "venv":
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(directory)], check=True)
    else:
        uv = shutil.which("uv", path=str(Path(sys.executable).parent))
        if uv is None:
            pytest.skip("uv is not installed")
        subprocess.run([uv, "venv", "-q", str(directory)], check=True)
    return directory


@pytest.mark.parametrize("kind", ["venv", "uv"])
def test_a_direct_start_sees_the_environment_activation_gives(kind: str, tmp_path: Path) -> None:
    directory = make_env(kind, tmp_path / f"env-{kind}")
    base = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONHOME": "/nowhere", "X": "1"}
    env = activation(directory, base)
    direct = subprocess.run(
        [env.python, "-c", SHOW_ENVIRONMENT],
        env=env.activate(base),
        capture_output=True,
        check=True,
    )
    # PYTHONHOME pointing nowhere would stop the interpreter: activation removes it, in both.
    script = f'source "{directory}/bin/activate" && exec python -c "{SHOW_ENVIRONMENT}"'
    activated = subprocess.run(["bash", "-c", script], env=base, capture_output=True, check=True)
    theirs = {k: v for k, v in json.loads(activated.stdout).items() if k not in BASH_OWN}
    assert json.loads(direct.stdout) == theirs
    assert env.sets["VIRTUAL_ENV"] == str(directory)
    assert "PYTHONHOME" in env.unsets and "X" not in env.sets
    assert not env.has_uvicorn  # nothing installed: `exec uvicorn` would find another one


def test_a_directory_that_is_no_environment_is_reported(tmp_path: Path) -> None:
    with pytest.raises(EnvNotFound, match="activating"):
        activation(tmp_path, {"PATH": "/usr/bin:/bin"})


def test_activate_sets_and_removes_what_the_script_did() -> None:
    env = PreparedEnv(Path("/envs/a"), {"VIRTUAL_ENV": "/envs/a", "PATH": "/envs/a/bin:/bin"},
                      frozenset({"PYTHONHOME"}))  # fmt: skip
    activated = env.activate({"PATH": "/bin", "PYTHONHOME": "/x", "HOME": "/h"})
    assert activated == {"PATH": "/envs/a/bin:/bin", "VIRTUAL_ENV": "/envs/a", "HOME": "/h"}
    assert env.python == "/envs/a/bin/python"


def test_conda_and_local_have_no_virtual_environment(tmp_path: Path) -> None:
    for manager in ("conda", "local"):
        with pytest.raises(EnvNotFound, match="no virtual environment"):
            model_env_dir(str(tmp_path), manager, {})


def test_the_environment_named_by_mlflow_for_the_model_is_found_once_built(
    tmp_path: Path,
) -> None:
    import mlflow.sklearn
    from sklearn.linear_model import LogisticRegression

    features, target = iris_frame()
    model = tmp_path / "model"
    fitted = LogisticRegression(max_iter=200).fit(features, target)
    # Requirements given: inferring them runs the model in a child process, for seconds.
    mlflow.sklearn.save_model(fitted, str(model), pip_requirements=["scikit-learn"])
    workers_env = {"MLFLOW_ENV_ROOT": str(tmp_path / "envs")}
    with pytest.raises(EnvNotFound, match="holds no built environment") as raised:
        model_env_dir(str(model), "uv", workers_env)
    # Named by MLflow from the requirements, under the root the workers get.
    named = re.search(r"(\S+/mlflow-\w+) holds", str(raised.value))
    assert named is not None and Path(named[1]).parent == tmp_path / "envs"
    make_env("venv", Path(named[1]))
    assert model_env_dir(f"file://{model}", "virtualenv", workers_env) == Path(named[1])


def test_uv_builds_compile_bytecode_unless_the_operator_said_otherwise() -> None:
    given = {"PATH": "/bin", "PYTHONDONTWRITEBYTECODE": "1"}
    assert prepare_env_environment(given, "uv") == {**given, "UV_COMPILE_BYTECODE": "1"}
    assert given == {"PATH": "/bin", "PYTHONDONTWRITEBYTECODE": "1"}  # not changed in place
    told = {"UV_COMPILE_BYTECODE": "0"}
    assert prepare_env_environment(told, "uv") == told
    # pip compiles bytecode as it installs; conda's packages come compiled.
    for env_manager in ("virtualenv", "conda"):
        assert prepare_env_environment(given, env_manager) == given
