"""The ADSP bundle `make adsp-bundle` writes: laid out as `anaconda-project archive` lays a
project out, its env spec's pip list installs the wheel inside it into a fresh environment, and
the `serve` command starts from that environment alone, serves, and stops clean on SIGTERM.

Slow (pip resolves and installs mlflow and the rest into an empty venv: about a minute with a
warm pip cache), so `make test` skips it; `make adsp-bundle` builds the archive and runs this on
it (MLFLOW_BLUEGREEN_ADSP_BUNDLE=<archive>). conda is not here: the env spec's conda part
(python=3.11, pip) is a venv on Python 3.11, and its pip part is installed as anaconda-project
installs it, `<env>/bin/pip install <specs>` from the project directory, with dependencies.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from .adsp_run import (
    PROJECT_FILE,
    ProjectCommand,
    cmdline,
    free_port,
    load_project,
    project_env,
    save_iris_model,
    sigterm_leaves_nothing,
)

BUNDLE = os.environ.get("MLFLOW_BLUEGREEN_ADSP_BUNDLE")

pytestmark = pytest.mark.skipif(
    not BUNDLE, reason="installs the ADSP bundle into a fresh venv: `make adsp-bundle` runs it"
)


def pip_specs(project: dict[str, Any]) -> list[str]:
    packages = project["env_specs"]["default"]["packages"]
    return [spec for p in packages if isinstance(p, dict) for spec in p.get("pip", [])]


@pytest.fixture(scope="module")
def project_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert BUNDLE and Path(BUNDLE).is_file(), BUNDLE
    root = tmp_path_factory.mktemp("bundle")
    with tarfile.open(BUNDLE) as archive:
        names = archive.getnames()
        archive.extractall(root, filter="data")
    # One top directory named after the project, as `anaconda-project archive` writes.
    name = load_project()["name"]
    assert {n.split("/", 1)[0] for n in names} == {name}, names
    return root / name


def test_the_bundle_is_the_project_with_the_wheel_in_its_pip_list(project_dir: Path) -> None:
    bundled = yaml.safe_load((project_dir / "anaconda-project.yml").read_text())
    source = load_project()
    (wheel,) = [spec for spec in pip_specs(bundled) if spec.endswith(".whl")]
    assert (project_dir / wheel).is_file(), wheel
    assert Path(wheel).name.startswith("mlflow_bluegreen-")
    assert "mlflow-bluegreen" not in pip_specs(bundled)
    # Nothing else changed: same commands, variables, and the rest of the pip list.
    expected = [wheel if spec == "mlflow-bluegreen" else spec for spec in pip_specs(source)]
    assert pip_specs(bundled) == expected
    for key in ("name", "commands", "variables", "platforms"):
        assert bundled[key] == source[key], key


@pytest.mark.timeout(900)
def test_its_env_spec_installs_and_the_command_starts_from_it(
    project_dir: Path, tmp_path: Path
) -> None:
    bundled = yaml.safe_load((project_dir / "anaconda-project.yml").read_text())
    env_dir = project_dir / "envs" / "default"  # where anaconda-project puts the env
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, timeout=120)
    python = env_dir / "bin" / "python"
    fresh = subprocess.run([python, "-c", "import mlflow"], capture_output=True, check=False)
    assert fresh.returncode != 0, "the venv is not empty"
    version = subprocess.run(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "python=" + version.stdout.strip() in bundled["env_specs"]["default"]["packages"]

    installed = subprocess.run(
        [env_dir / "bin" / "pip", "install", "--quiet", *pip_specs(bundled)],
        cwd=project_dir, capture_output=True, text=True, timeout=800, check=False,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-3000:]
    where = subprocess.run(
        [python, "-c", "import mlflow_bluegreen.proxy as p; print(p.__file__)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert where.stdout.startswith(str(env_dir)), where.stdout

    model = tmp_path / "iris"
    save_iris_model(model)
    command = ProjectCommand(
        bundled["commands"]["serve"]["unix"],
        project_dir=project_dir,
        # Only the env's bin and the system's: nothing of ours on PATH.
        env=project_env(
            model,
            project_dir=project_dir,
            path=f"{env_dir / 'bin'}:/usr/bin:/bin",
            MLFLOW_BLUEGREEN_ADMIN_PORT=str(free_port()),
        ),
        log_path=tmp_path / "serve.log",
    )
    try:
        assert command.wait_scoring().startswith(b'{"predictions"')
        argv = cmdline(command.process.pid)
        # The env's own interpreter and console script (its shebang names python3.11).
        assert argv[0].startswith(str(python)), argv
        assert argv[1] == str(env_dir / "bin" / "mlflow-bluegreen"), argv
        sigterm_leaves_nothing(command)
    finally:
        command.kill_leftovers()


def test_the_source_project_is_unchanged_by_bundling() -> None:
    assert "- mlflow-bluegreen\n" in PROJECT_FILE.read_text()
