"""Write an ADSP project archive that installs mlflow-bluegreen from a wheel inside it.

    python deploy/adsp/bundle.py [--output dist/mlflow-bluegreen-adsp.tar.gz] [--wheel FILE]

mlflow-bluegreen is not on PyPI, so the project's `pip: [mlflow-bluegreen]` cannot install. The
archive is laid out as `anaconda-project archive` writes one (a single top directory named after
the project, holding the project's files) and holds:

    mlflow-bluegreen/anaconda-project.yml   the project, its pip list naming the wheel below
    mlflow-bluegreen/wheels/<wheel>         mlflow-bluegreen built from this repository

anaconda-project runs pip in the project directory, where that relative path resolves. Without
--wheel the wheel is built from the repository (pip wheel, no dependencies).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PROJECT_FILE = HERE / "anaconda-project.yml"
# The pip entry the project ships with, replaced by the wheel's path.
PIP_ENTRY = re.compile(r"^(?P<indent>\s+)- mlflow-bluegreen\s*$", re.MULTILINE)
WHEELS = "wheels"
SOURCES = ("pyproject.toml", "README.md", "proxy", "worker")
BYTECODE = shutil.ignore_patterns("__pycache__", "*.py[co]")


def build_wheel(into: Path) -> Path:
    """Built from a copy of what the package is made of (what the Dockerfile copies too), so the
    build leaves no build/ or egg-info behind in the repository."""
    source = into / "source"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=BYTECODE)
        else:
            shutil.copy2(REPO / name, source / name)
    # Build isolation: pip fetches the build backend pyproject.toml asks for.
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir"]
    subprocess.run([*command, str(into), str(source)], check=True)
    (wheel,) = into.glob("mlflow_bluegreen-*.whl")
    return wheel


def project_text(wheel_name: str) -> str:
    """anaconda-project.yml with its pip entry for mlflow-bluegreen pointing at the wheel."""
    text = PROJECT_FILE.read_text()
    replaced, count = PIP_ENTRY.subn(
        lambda m: (
            f"{m['indent']}# Built from the repository; relative to the project directory.\n"
            f"{m['indent']}- {WHEELS}/{wheel_name}"
        ),
        text,
    )
    if count != 1:
        raise SystemExit(f"{PROJECT_FILE}: {count} '- mlflow-bluegreen' pip entries, not one")
    return replaced


def project_name() -> str:
    match = re.search(r"^name:\s*(\S+)\s*$", PROJECT_FILE.read_text(), re.MULTILINE)
    if not match:
        raise SystemExit(f"{PROJECT_FILE} has no name")
    return match.group(1)


def write_archive(output: Path, wheel: Path) -> Path:
    root = project_name()
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as staging:
        project = Path(staging) / root
        (project / WHEELS).mkdir(parents=True)
        (project / "anaconda-project.yml").write_text(project_text(wheel.name))
        (project / WHEELS / wheel.name).write_bytes(wheel.read_bytes())
        partial = output.with_name(output.name + ".partial")
        with tarfile.open(partial, "w:gz") as archive:
            for path in sorted(project.rglob("*")):
                if path.is_file():
                    archive.add(path, arcname=str(path.relative_to(staging)), recursive=False)
        partial.replace(output)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=REPO / "dist/mlflow-bluegreen-adsp.tar.gz")
    parser.add_argument("--wheel", type=Path, help="use this wheel instead of building one")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as built:
        wheel = args.wheel or build_wheel(Path(built))
        output = write_archive(args.output, wheel)
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
