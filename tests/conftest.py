"""Fixtures for tests against real servers (see tests/support/: the one harness).

- `server_build`: parametrised over the four builds (ids redis-7.0, redis-6.2, valkey-8.1,
  valkey-9.1). A build that is not installed fails its tests when CI=true and skips them
  otherwise.
- `redis_servers`: a ServerSet of that build; every process it started is stopped at teardown,
  whatever the test did (paused processes are continued first).
- `debian_servers`: a ServerSet of Debian's redis-server 7.0, for scenarios that run on one
  build only (the `servers` of every module that needs a few servers of one build).
- `read_only_pair`: a Debian master and its replica, linked, started once per test process
  and shared by the tests that only read them (checked after each one).
- `runners`: sync task runners a test starts in threads, stopped at teardown.
- `starved_link`: a network namespace joined to the host by a veth pair (tests/support/netns.py),
  deleted at teardown; needs root and iproute2 (skipped without, failed when CI=true).
- `browser`: headless Chromium (tests/support/browser.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .support.browser import browser  # noqa: F401 (a fixture)
from .support.netns import StarvedLink, require_netns
from .support.servers import (
    EXPECTED_BUILDS,
    RedisProcess,
    ServerBuild,
    ServerSet,
    require_build,
    wait_synced,
)
from .support.syncing import RunnerThread


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


@pytest.fixture(scope="session")
def shared_pair(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RedisProcess, RedisProcess]]:
    """The world behind `read_only_pair`; use that one (it checks each user left it intact)."""
    with ServerSet(require_build("redis-7.0"), tmp_path_factory.mktemp("shared-pair")) as servers:
        master = servers.start("master")
        replica = servers.start("replica", replica_of=master)
        wait_synced(replica, master)
        yield master, replica


@pytest.fixture
def read_only_pair(
    shared_pair: tuple[RedisProcess, RedisProcess],
) -> Iterator[tuple[RedisProcess, RedisProcess]]:
    """A Debian master and its one replica, linked: one pair for every test of the process
    that only reads it. Such a test may poll both, write replwatch's own keys (heartbeats,
    probe keys) and WAIT on the master; it never stops, pauses or reconfigures either, and
    writes no data of its own. After each test both must still answer, linked and in sync."""
    master, replica = shared_pair
    wait_synced(replica, master)
    yield master, replica
    assert master.running and replica.running, "a test stopped the shared pair"
    assert not master.paused and not replica.paused, "a test left the shared pair paused"
    wait_synced(replica, master, timeout=5)  # (its replication id and offset are the master's)


@pytest.fixture
def runners() -> Iterator[list[RunnerThread]]:
    """Sync task runners a test starts (tests/support/syncing.py); any still running are
    stopped."""
    started: list[RunnerThread] = []
    try:
        yield started
    finally:
        for runner in started:
            if runner.thread.is_alive():
                runner.stop()


@pytest.fixture
def starved_link(request: pytest.FixtureRequest) -> Iterator[StarvedLink]:
    """A namespace + veth pair of the test's own; throttled by the test (StarvedLink.throttle /
    throttle_port). Stop the servers inside it before this fixture's teardown deletes it."""
    require_netns(request.node.name)
    link = StarvedLink()
    try:
        link.create()
        yield link
    finally:
        link.destroy()


# Modules whose assertions depend on timing or CPU share: lag truth within 0.25 s on a
# starved link, poll cadence and render pacing under load, routing trips within their `for:`,
# /metrics answer times during a partition, a page's delay behind Alertmanager's
# group_interval (test_paging_live). The test command runs them one at a time at
# normal priority, beside the rest (scripts/test). Scenarios that only wait (partitions of
# the syncer, kill -9 runs, alert delivery with real Prometheus, two-way sync) assert
# outcomes, not timings, and run with the rest.
SERIAL_MODULES = frozenset(
    {
        "test_demo",
        "test_fault_partition",
        "test_fault_scale",
        "test_paging_live",
        "test_render_gate",
        "test_routing_real",
        "test_scheduler_real",
        "test_shared_queue",
        "test_starved_replica",
        "test_surfaces_agree",
    }
)


# The modules that take longest, longest first (seconds of one worker each, from the
# --durations the test command prints). The parallel lane hands out whole files in collection
# order: these start first, so that the lane does not end on one worker with a long file.
LONGEST_FIRST = (
    "test_sync_outside_valkey",
    "test_sync_outside_redis",
    "test_compare",
    "test_lag_real",
    "test_readiness",
    "test_fault_sync",
    "test_sync_cluster_target",
    "test_tls_acl",
    "test_sync_engine",
    "test_cli_daemon",
    "test_status_page_browser",
    "test_sync_ops",
    "test_monitor_real",
)


# Timing-sensitive modules that also keep both cores busy (200 targets and 50 scrapers): the
# test command runs them after both lanes, alone, so that they neither starve the other lane
# (its servers run at nice 19) nor share the machine (marker `alone`, with `serial`).
ALONE_MODULES = frozenset({"test_fault_scale"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def module_of(item: pytest.Item) -> str:
        return "" if item.module is None else item.module.__name__.rpartition(".")[2]

    for item in items:
        if module_of(item) in SERIAL_MODULES:
            item.add_marker(pytest.mark.serial)
        if module_of(item) in ALONE_MODULES:
            item.add_marker(pytest.mark.serial)
            item.add_marker(pytest.mark.alone)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(module_of(item), len(rank)))  # (stable: else as found)
