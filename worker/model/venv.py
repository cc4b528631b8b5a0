"""The environment `mlflow models serve --env-manager virtualenv|uv` serves a model in, once
`mlflow models prepare-env` has built it: where it is and what activating it changes.

MLflow serves such a model with `bash -c "source <env>/bin/activate && exec uvicorn ..."`
(mlflow/utils/environment.py, Environment.execute). Knowing the directory and the activation,
a worker starts as that very server without the CLI process that imports MLflow only to find
them, and a pre-warmed spare can wait in the same environment. conda environments activate in
ways of their own: they keep going through the CLI.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

VIRTUAL_ENV_MANAGERS = frozenset({"virtualenv", "uv"})
_MARK = "MLFLOW_BLUEGREEN_ACTIVATION_FOLLOWS"


class EnvNotFound(Exception):
    """Why a worker starts through the CLI: its environment could not be told apart."""


@dataclass(frozen=True)
class PreparedEnv:
    """A built virtual environment and what `source bin/activate` does to a process's
    environment there (variables it sets, variables it removes)."""

    directory: Path
    sets: Mapping[str, str] = field(default_factory=dict)
    unsets: frozenset[str] = frozenset()

    @property
    def python(self) -> str:
        return str(self.directory / "bin" / "python")

    @property
    def has_uvicorn(self) -> bool:
        """`exec uvicorn` after the activation runs this environment's own uvicorn only if it
        has one (else whichever is next on PATH: then the CLI does it, as it would)."""
        return (self.directory / "bin" / "uvicorn").is_file()

    def site_packages(self) -> list[str]:
        return sorted(str(p) for p in self.directory.glob("lib/python*/site-packages"))

    def activate(self, environment: Mapping[str, str]) -> dict[str, str]:
        """`environment` as it is after `source bin/activate`."""
        activated = {k: v for k, v in environment.items() if k not in self.unsets}
        activated.update(self.sets)
        return activated


def model_env_dir(model_path: str, env_manager: str, environment: Mapping[str, str]) -> Path:
    """Blocking: the directory `mlflow models serve --env-manager <env_manager>` activates for
    the model at `model_path` (a local directory), named by MLflow from the model's
    python_env.yaml and requirements, under MLFLOW_ENV_ROOT as the workers get it."""
    if env_manager not in VIRTUAL_ENV_MANAGERS:
        raise EnvNotFound(f"--env-manager {env_manager} activates no virtual environment")
    # MLflow's own naming, private: looked up with care, and another MLflow that names
    # environments differently makes workers start through the CLI instead.
    try:
        from mlflow.environment_variables import MLFLOW_ENV_ROOT
        from mlflow.utils.virtualenv import _get_python_env, _get_virtualenv_name
    except ImportError as error:  # another MLflow: its names are not ours to guess
        raise EnvNotFound(f"this MLflow names environments differently ({error})") from error
    local = Path(urlparse(model_path).path if model_path.startswith("file:") else model_path)
    root = Path(environment.get(MLFLOW_ENV_ROOT.name) or MLFLOW_ENV_ROOT.default)
    try:
        python_env = _get_python_env(local)  # type: ignore[no-untyped-call]
        name = str(_get_virtualenv_name(python_env, local, None))  # type: ignore[no-untyped-call]
    except Exception as error:  # whatever MLflow raises: the CLI will report it, if it matters
        raise EnvNotFound(f"{type(error).__name__}: {error}") from error
    directory = root / name
    if not (directory / "bin" / "activate").is_file():
        raise EnvNotFound(f"{directory} holds no built environment")
    return directory


def activation(directory: Path, environment: Mapping[str, str]) -> PreparedEnv:
    """Blocking: what `source <directory>/bin/activate` changes, found by running it in bash,
    as MLflow does, rather than by knowing what each tool's activate script writes (venv's,
    virtualenv's and uv's differ). bash's own bookkeeping (SHLVL, _, PWD) is not the
    activation's: a variable counts only if the script changed it."""
    script = f'env -0; printf "%s\\0" {_MARK}; source "$1"/bin/activate && env -0'
    result = subprocess.run(
        ["bash", "-c", script, "bash", str(directory)],
        env=dict(environment),
        capture_output=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        reason = result.stderr.decode(errors="replace").strip()[-300:]
        raise EnvNotFound(f"activating {directory} failed: {reason or result.returncode}")
    entries = result.stdout.split(b"\0")
    if _MARK.encode() not in entries:
        raise EnvNotFound(f"activating {directory} printed no environment")
    mark = entries.index(_MARK.encode())
    before, after = _variables(entries[:mark]), _variables(entries[mark + 1 :])
    sets = {k: v for k, v in after.items() if before.get(k) != v}
    unsets = frozenset(k for k in before if k not in after)
    return PreparedEnv(directory, sets, unsets)


def find_prepared_env(
    model_path: str, env_manager: str, environment: Mapping[str, str]
) -> PreparedEnv:
    """Blocking: the environment prepare-env built for the model, and its activation."""
    return activation(model_env_dir(model_path, env_manager, environment), environment)


def _variables(entries: list[bytes]) -> dict[str, str]:
    variables: dict[str, str] = {}
    for entry in entries:
        name, sep, value = entry.partition(b"=")
        if sep and name:
            variables[os.fsdecode(name)] = os.fsdecode(value)
    return variables
