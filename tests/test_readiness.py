"""GET /-/ready of `replwatch run` (issue 18): ready once the daemon has made its first round
and every group has been polled and every sync task looked at once (a side that does not
answer counts: the view says so); with no groups the sync tasks alone decide, with neither
the first round does. A task added later (admin API) waits for its first look. And the
bookkeeping behind it, WatcherSet.ready, over real servers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from replwatch.config import config_from_data
from replwatch.tasks.lifecycle import WatcherSet, make_watcher_factory
from replwatch.tasks.watch import SyncStore

from .support.daemons import RunningDaemon, value
from .support.servers import BlackHole, ServerSet, closed_port, free_port, wait_for

TASK = "t"
TOKEN = "ready-Token-5d2"
# poll interval and timeout: a sync task whose source is a black hole holds the daemon's
# first round (and any poll) this long, the window in which /-/ready must answer 503
SLOW = 5.0
NOT_READY = (503, "not ready: first poll pending\n")


def write_config(
    path: Path,
    port: int,
    *,
    groups: list[dict[str, Any]] | None = None,
    tasks: list[dict[str, Any]] | None = None,
    poll: float = 0.2,
    admin: bool = False,
) -> Path:
    data: dict[str, Any] = {
        "exporter": {"listen": f"127.0.0.1:{port}"},
        "poll": {"interval": poll, "timeout": poll},
        "groups": groups or [],
        "sync": {"tasks": tasks or []},
    }
    if admin:
        data["admin"] = {"token": TOKEN}
    path.write_text(yaml.safe_dump(data))
    return path


def task(source: str, target: str, name: str = TASK) -> dict[str, Any]:
    return {"name": name, "source": source, "target": target, "reconnect_min": "200ms"}


def is_ready(daemon: RunningDaemon) -> bool:
    return daemon.fetch("/-/ready")[0] == 200


@pytest.mark.timeout(90)
@pytest.mark.parametrize("with_group", [False, True], ids=["tasks-only", "group-and-task"])
def test_ready_once_the_sync_task_is_looked_at(
    debian_servers: ServerSet, tmp_path: Path, with_group: bool
) -> None:
    """A task whose source is a black hole: the first look at it takes poll.timeout; /-/ready
    says 503 until then (also when the group has long been polled), then 200, with the
    task's source shown down. Before issue 18 a daemon without groups stayed 503 for ever,
    and one with groups did not wait for its tasks."""
    target = debian_servers.start("target")
    groups = []
    if with_group:
        master = debian_servers.start("master")
        groups = [{"name": "g", "master": master.label}]
    port = free_port()
    with BlackHole() as hole:
        cfg = write_config(
            tmp_path / "c.yaml",
            port,
            groups=groups,
            tasks=[task(hole.url, target.url)],
            poll=SLOW,
        )
        with RunningDaemon(cfg, port) as daemon:
            wait_for(lambda: daemon.fetch("/-/healthy")[0] == 200, 20, "the daemon listening")
            if with_group:
                wait_for(
                    lambda: value(daemon.metrics(), "replwatch_node_up", group="g") == 1,
                    SLOW,
                    "the group's first poll",
                )
            assert daemon.fetch("/-/ready") == NOT_READY
            wait_for(lambda: is_ready(daemon), SLOW + 15, "/-/ready 200 after the task's look")
            text = daemon.metrics()
            assert value(text, "replwatch_sync_source_up", task=TASK) == 0
            assert value(text, "replwatch_sync_target_up", task=TASK) == 1


@pytest.mark.timeout(60)
def test_ready_with_a_cluster_task_whose_cluster_cannot_be_asked(
    debian_servers: ServerSet, tmp_path: Path
) -> None:
    """A cluster-source task whose startup nodes refuse has no shard to watch: trying the
    lookup is its look (as a Sentinel group whose Sentinels are down does not hold readiness),
    so the daemon is ready and the log says why the task shows nothing."""
    target = debian_servers.start("target")
    port = free_port()
    source = {"cluster": {"startup_nodes": [f"127.0.0.1:{closed_port()}"]}}
    cfg = write_config(
        tmp_path / "c.yaml", port, tasks=[{**task("x", target.url), "source": source}]
    )
    with RunningDaemon(cfg, port) as daemon:
        wait_for(lambda: is_ready(daemon), 20, "/-/ready 200")
        assert "cannot discover the cluster's shards" in daemon.log_text()


@pytest.mark.timeout(90)
def test_nothing_configured_is_ready_and_an_api_task_waits_for_its_look(
    debian_servers: ServerSet, tmp_path: Path
) -> None:
    """Neither groups nor tasks (an admin-API-only daemon): ready once it has started. A task
    created through the API then holds /-/ready at 503 until its first look (its source is a
    black hole: up to one interval plus the timeout), and /-/ready comes back."""
    target = debian_servers.start("target")
    port = free_port()
    cfg = write_config(tmp_path / "c.yaml", port, poll=SLOW, admin=True)
    with BlackHole() as hole, RunningDaemon(cfg, port) as daemon:
        wait_for(lambda: is_ready(daemon), 20, "/-/ready 200 with nothing configured")
        status, body = daemon.fetch(
            "/api/v1/tasks",
            "POST",
            TOKEN,
            data=json.dumps(task(hole.url, target.url)).encode(),
            timeout=30,
        )
        assert status in (200, 201), body
        assert daemon.fetch("/-/ready") == NOT_READY
        wait_for(lambda: is_ready(daemon), 2 * SLOW + 15, "/-/ready 200 after the task's look")
        assert value(daemon.metrics(), "replwatch_sync_source_up", task=TASK) == 0


def test_watcher_set_ready_follows_its_tasks(debian_servers: ServerSet) -> None:
    """WatcherSet.ready: True with no task; a task counts once a poll has been through its
    current watchers (a side down included); a task added or redefined counts again only
    after the next poll; a removed task no longer counts."""
    source = debian_servers.start("source")
    target = debian_servers.start("target")
    down = f"redis://127.0.0.1:{closed_port()}"
    cfg = config_from_data(
        {
            "poll": {"timeout": "300ms"},
            "sync": {"tasks": [task(source.url, target.url), task(down, target.url, name="down")]},
        },
        env={},
    )
    first, second = cfg.sync.tasks
    make = make_watcher_factory(cfg)

    async def scenario() -> list[bool]:
        seen: list[bool] = [WatcherSet(make, []).ready()]
        watchers = WatcherSet(make, [first])
        store = SyncStore()
        store.expect([first.name, second.name])
        try:
            seen.append(watchers.ready())  # built, not polled
            await watchers.poll_into(store)
            seen.append(watchers.ready())
            watchers.add(second)  # its source refuses: the look still counts
            seen.append(watchers.ready())
            await watchers.poll_into(store)
            seen.append(watchers.ready())
            view = store.get("down")
            assert view is not None and not view.source_up
            watchers.add(first)  # redefined
            seen.append(watchers.ready())
            watchers.remove(first.name)
            seen.append(watchers.ready())
        finally:
            watchers.close()
        return seen

    assert asyncio.run(scenario()) == [True, False, True, False, True, False, True]
