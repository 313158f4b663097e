"""Suite-wide checks.

Every asyncio test must leave no task running behind it (every async resource has an
owner): a lingering task is cancelled and the test fails, naming it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest


@pytest.fixture
async def _no_lingering_tasks() -> AsyncIterator[None]:
    yield
    me = asyncio.current_task()
    for _ in range(5):  # let tasks that are already finishing (last HCI events, closes) finish
        await asyncio.sleep(0)
    left = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
    for task in left:
        task.cancel()
    if left:
        await asyncio.gather(*left, return_exceptions=True)
        pytest.fail("tasks left running after the test: " + ", ".join(t.get_name() for t in left))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("asyncio") is not None and isinstance(item, pytest.Function):
            item.fixturenames.insert(0, "_no_lingering_tasks")  # torn down last
