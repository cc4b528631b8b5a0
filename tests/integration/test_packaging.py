"""A plain (non-editable) install ships proxy/ and worker/ under one namespace and nothing else."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
        check=True,
    )
    (built,) = out.glob("mlflow_bluegreen-*.whl")
    return built


def test_wheel_installs_only_the_mlflow_bluegreen_namespace(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert {t for t in top_level if not t.endswith(".dist-info")} == {"mlflow_bluegreen"}
    for module in (
        "proxy/cli.py",
        "proxy/relay/forward.py",
        "worker/control/supervisor.py",
        "worker/process/child.py",
    ):
        assert f"mlflow_bluegreen/{module}" in names
    # No tests, deploy files or benchmarks in the package.
    assert not [n for n in names if n.startswith(("tests/", "deploy/", "benchmarks/"))]
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "mlflow-bluegreen = mlflow_bluegreen.proxy.cli:main" in text


def test_the_installed_copy_runs_from_the_wheel_alone(wheel: Path, tmp_path: Path) -> None:
    zipfile.ZipFile(wheel).extractall(tmp_path)
    probe = (
        "import mlflow_bluegreen.proxy.cli as cli;"
        "import mlflow_bluegreen.worker.control.supervisor as swap;"
        "print(cli.__file__); print(swap.__file__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    for line in result.stdout.splitlines():
        assert line.startswith(str(tmp_path)), line
    help_text = subprocess.run(
        [sys.executable, "-m", "mlflow_bluegreen.proxy.cli", "serve", "--help"],
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "MLFLOW_BLUEGREEN_MODEL_URI" in help_text
