"""The pre-warmed spare against real processes: used by the next swap, replaced when it dies,
never used when stale."""

from __future__ import annotations

import os
import signal
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mlflow_bluegreen.proxy.demo import SidecarProcess
from mlflow_bluegreen.worker.sandbox import register_iris_version, set_alias

from .conftest import Registry

pytestmark = pytest.mark.integration


def spare_ready(status: dict[str, Any], other_than: int | None = None) -> bool:
    spare = status.get("spare") or {}
    return bool(spare.get("ready") and spare.get("alive") and spare.get("pid") != other_than)


def swap_to(sidecar: SidecarProcess, registry: Registry, name: str, version: str) -> dict:
    set_alias(registry.uri, name, "live", version)
    sidecar.wait_active(version, timeout=120)
    return sidecar.status()


@pytest.fixture
def spared(
    registry: Registry, start_sidecar: Callable[..., SidecarProcess]
) -> Iterator[tuple[SidecarProcess, str, str, str]]:
    """A sidecar tracking a new model's alias on its first version, with a spare ready:
    (sidecar, model name, first version, second version)."""
    name = "spared"
    first = register_iris_version(registry.uri, name, 1.0)
    second = register_iris_version(registry.uri, name, 0.05)
    set_alias(registry.uri, name, "live", first)
    sidecar = start_sidecar(f"models:/{name}@live", "--poll-interval", "0.5")
    sidecar.wait_active(first, timeout=120)
    assert sidecar.status()["active"]["launch"] == "direct"  # nothing pre-warmed yet
    sidecar.wait_until(spare_ready, 120, "a spare")
    yield sidecar, name, first, second


def test_the_next_swap_is_served_from_the_spare_and_a_new_one_is_made(
    registry: Registry,
    spared: tuple[SidecarProcess, str, str, str],
) -> None:
    sidecar, name, first, second = spared
    spare = sidecar.status()["spare"]
    assert spare["rss_bytes"] > 50 * 2**20  # MLflow's scoring server imported

    status = swap_to(sidecar, registry, name, second)
    active = status["active"]
    assert (active["launch"], active["pid"]) == ("spare", spare["pid"])
    assert status["spare"]["used"] == 1
    assert sidecar.get("/ping")[0] == 200
    # Another spare is made for the swap after.
    sidecar.wait_until(lambda s: spare_ready(s, other_than=spare["pid"]), 120, "a new spare")
    back = swap_to(sidecar, registry, name, first)
    assert back["active"]["launch"] == "spare"
    assert back["history"][0]["result"] == "succeeded"


def test_a_spare_that_dies_is_replaced_and_the_replacement_used(
    registry: Registry,
    spared: tuple[SidecarProcess, str, str, str],
) -> None:
    sidecar, name, _first, second = spared
    dead = sidecar.status()["spare"]["pid"]
    os.killpg(dead, signal.SIGKILL)
    sidecar.wait_until(lambda s: spare_ready(s, other_than=dead), 120, "a replacement spare")
    replacement = sidecar.status()["spare"]
    assert replacement["replaced"] == 1
    active = swap_to(sidecar, registry, name, second)["active"]
    assert (active["launch"], active["pid"]) == ("spare", replacement["pid"])


@pytest.fixture
def changed_packages() -> Iterator[Callable[[], None]]:
    """Install a (metadata-only) distribution into this environment, as a `pip install` would
    change it under a running spare; removed after the test."""
    dist_info = Path(sysconfig.get_paths()["purelib"], "bluegreen_stale_probe-1.0.dist-info")

    def install() -> None:
        dist_info.mkdir()
        (dist_info / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: bluegreen-stale-probe\nVersion: 1.0\n"
        )

    yield install
    for entry in dist_info.glob("*"):
        entry.unlink()
    if dist_info.exists():
        dist_info.rmdir()


def test_a_stale_spare_is_never_used_and_is_replaced(
    registry: Registry,
    spared: tuple[SidecarProcess, str, str, str],
    changed_packages: Callable[[], None],
) -> None:
    sidecar, name, _first, second = spared
    stale = sidecar.status()["spare"]["pid"]
    changed_packages()
    status = swap_to(sidecar, registry, name, second)
    assert status["active"]["launch"] == "direct"
    assert status["active"]["pid"] != stale
    assert "installed packages" in sidecar.log_text()
    # The stale one is gone, and a current one takes its place.
    sidecar.wait_until(lambda s: spare_ready(s, other_than=stale), 120, "a current spare")
    with pytest.raises(ProcessLookupError):
        os.kill(stale, 0)
