"""The structure the code promises in its docstrings, checked: the boundary between the state
machine and the rest runs one way, and modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = ("proxy", "worker")
MAX_LINES = 500


def modules(*parts: str) -> list[Path]:
    return sorted(REPO.joinpath(*parts).rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Every module `path` imports, relative imports resolved against its package."""
    package = path.relative_to(REPO).with_suffix("").parts[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", modules("worker", "control"), ids=lambda p: p.name)
def test_the_state_machine_imports_no_http_client_and_no_process_module(path: Path) -> None:
    forbidden = ("aiohttp", "subprocess", "httptools", "worker.process", "worker.model_worker")
    found = {
        name
        for name in imported(path)
        if any(name == f or name.startswith(f"{f}.") or f".{f}" in f".{name}" for f in forbidden)
    }
    assert found == set()


@pytest.mark.parametrize(
    "path", [p for d in PACKAGE_DIRS for p in modules(d)], ids=lambda p: str(p.relative_to(REPO))
)
def test_no_module_is_over_500_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_the_worker_process_module_knows_nothing_of_models_or_http() -> None:
    names = imported(REPO / "worker" / "process" / "child.py")
    assert not {n for n in names if n.startswith(("aiohttp", "mlflow", "worker.model"))}


def test_only_the_roster_assigns_roles() -> None:
    """Every change of role is made in roster.py (which tells the observer), nowhere else."""
    assigning = []
    for path in modules("worker", "control"):
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else []
            for target in targets:
                for leaf in ast.walk(target):
                    if (
                        isinstance(leaf, ast.Attribute)
                        and isinstance(leaf.value, ast.Attribute)
                        and leaf.value.attr == "roles"
                    ):
                        assigning.append(path.name)
    assert set(assigning) == {"roster.py"}


def test_every_package_directory_is_listed_for_the_wheel() -> None:
    """pyproject names the packages one by one (they install under mlflow_bluegreen.): a
    folder left off would be missing from the wheel and the image."""
    import tomllib

    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    present = {
        "mlflow_bluegreen." + ".".join(init.parent.relative_to(REPO).parts)
        for top in PACKAGE_DIRS
        for init in REPO.joinpath(top).rglob("__init__.py")
    }
    assert present == listed
