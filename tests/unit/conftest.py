from pathlib import Path

import pytest

from .proxying import echo_upstream, make_proxy, proxy  # noqa: F401 - shared fixtures

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Unit tests run in milliseconds; one that waits seconds is stuck, not slow.
    for item in items:
        if HERE in Path(item.fspath).parents:
            item.add_marker(pytest.mark.timeout(20))
