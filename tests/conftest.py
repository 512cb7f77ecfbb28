"""Fixtures for tests against real servers (see tests/harness.py).

- `server_build`: parametrised over the four builds (ids redis-7.0, redis-6.2, valkey-8.1,
  valkey-9.1). A build that is not installed fails its tests when CI=true and skips them
  otherwise.
- `redis_servers`: a ServerSet of that build; every process it started is stopped at teardown,
  whatever the test did (paused processes are continued first).
- `debian_servers`: a ServerSet of Debian's redis-server 7.0, for scenarios that run on one
  build only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import EXPECTED_BUILDS, ServerBuild, ServerSet, require_build
from .syncing import RunnerThread


@pytest.fixture(params=EXPECTED_BUILDS)
def server_build(request: pytest.FixtureRequest) -> ServerBuild:
    return require_build(request.param)


@pytest.fixture
def redis_servers(server_build: ServerBuild, tmp_path: Path) -> Iterator[ServerSet]:
    servers = ServerSet(server_build, tmp_path)
    try:
        yield servers
    finally:
        servers.close()


@pytest.fixture
def debian_servers(tmp_path: Path) -> Iterator[ServerSet]:
    servers = ServerSet(require_build("redis-7.0"), tmp_path)
    try:
        yield servers
    finally:
        servers.close()


@pytest.fixture
def runners() -> Iterator[list[RunnerThread]]:
    """Sync task runners a test starts (tests/syncing.py); any still running are stopped."""
    started: list[RunnerThread] = []
    try:
        yield started
    finally:
        for runner in started:
            if runner.thread.is_alive():
                runner.stop()


# Modules whose assertions depend on timing or CPU share (lag truth within 0.5 s, poll
# cadence under load, render pacing, bandwidth-starved links, long write-and-kill runs): the
# test command runs them on their own after the rest, which runs two at a time (README).
SERIAL_MODULES = frozenset(
    {
        "test_alerting_e2e",
        "test_demo",
        "test_fault_partition",
        "test_fault_scale",
        "test_fault_sync",
        "test_netns_starved",
        "test_render_gate",
        "test_routing_real",
        "test_scheduler_real",
        "test_shared_queue",
        "test_starved_replica",
        "test_surfaces_agree",
        "test_sync_engine",
        "test_sync_pair",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.module is not None and item.module.__name__.rpartition(".")[2] in SERIAL_MODULES:
            item.add_marker(pytest.mark.serial)
