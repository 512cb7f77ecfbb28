"""Followers of a master that are none of its group's replicas (lag/followers.py): table tests
of the pure rules, then real servers: a replwatch sync task reading from a watched master is
named by its task in the snapshot and in `replwatch status`."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from replwatch.lag.followers import SYNC_CLIENT_PREFIX, other_followers
from replwatch.observe.info import ClientEntry, ReplicaLine, ReplicationInfo
from replwatch.state import OtherFollower
from replwatch.sync.writer import CLIENT_NAME

from .support.daemons import cli
from .support.monitor import make_monitor
from .support.servers import ServerSet, wait_for, wait_synced
from .support.syncing import RunnerThread, make_task, start, wait_caught_up

M = "127.0.0.1:7000"


def info(*lines: ReplicaLine, offset: int = 1_000) -> ReplicationInfo:
    return ReplicationInfo(
        role="master",
        replid="a" * 40,
        replid2="0" * 40,
        master_repl_offset=offset,
        second_repl_offset=-1,
        backlog_size=1 << 20,
        backlog_first_byte_offset=1,
        backlog_histlen=offset,
        replicas=lines,
    )


def line(address: str, offset: int = 1_000, state: str = "online") -> ReplicaLine:
    host, _, port = address.rpartition(":")
    return ReplicaLine(host.strip("[]"), int(port), state, offset, 0.0)


def client(addr: str, name: str = "") -> ClientEntry:
    return ClientEntry(addr, M, "S", 0, 0, name)


def sync_client(addr: str, task: str) -> ClientEntry:
    return client(addr, SYNC_CLIENT_PREFIX + task)


def other(address: str, *tasks: str, offset: int = 1_000, state: str = "online") -> OtherFollower:
    return OtherFollower(address, state, offset, 1_000 - offset, 0.0, tasks)


CASES: list[
    tuple[str, ReplicationInfo | None, list[ClientEntry], list[str], list[OtherFollower]]
] = [
    ("master unseen", None, [], ["127.0.0.1:7001"], []),
    ("only listed replicas", info(line("127.0.0.1:7001")), [], ["127.0.0.1:7001"], []),
    (
        "a listed replica matched by its port alone (configured by host name)",
        info(line("10.0.0.5:7001")),
        [],
        ["redis-a.example:7001"],
        [],
    ),
    (
        "a sync task: port 0, named on its ip",
        info(line("127.0.0.1:7001"), line("127.0.0.1:0", offset=900)),
        [client("127.0.0.1:40001"), sync_client("127.0.0.1:40002", "a_to_b")],
        ["127.0.0.1:7001"],
        [other("127.0.0.1:0", "a_to_b", offset=900)],
    ),
    (
        "a sync task still loading its snapshot",
        info(line("10.1.1.1:0", offset=0, state="send_bulk")),
        [sync_client("10.1.1.1:5000", "copy")],
        [],
        [other("10.1.1.1:0", "copy", offset=0, state="send_bulk")],
    ),
    (
        "a follower of port 0 that is not named (another tool, an older replwatch)",
        info(line("127.0.0.1:0")),
        [client("127.0.0.1:40002")],
        [],
        [other("127.0.0.1:0")],
    ),
    (
        "a replica nobody listed, by its address",
        info(line("127.0.0.1:7001"), line("10.0.0.9:6390")),
        [],
        ["127.0.0.1:7001"],
        [other("10.0.0.9:6390")],
    ),
    (
        "a named task on another host is not this line",
        info(line("10.0.0.1:0")),
        [sync_client("10.0.0.2:40002", "a_to_b")],
        [],
        [other("10.0.0.1:0")],
    ),
    (
        "two tasks on one host cannot be told apart: each line is one of them",
        info(line("127.0.0.1:0"), line("127.0.0.1:0", offset=500)),
        [sync_client("127.0.0.1:40002", "b"), sync_client("127.0.0.1:40003", "a")],
        [],
        [other("127.0.0.1:0", "a", "b"), other("127.0.0.1:0", "a", "b", offset=500)],
    ),
    (
        "two followers of port 0, one named: neither is said to be the task",
        info(line("127.0.0.1:0"), line("127.0.0.1:0")),
        [sync_client("127.0.0.1:40002", "a"), client("127.0.0.1:40003")],
        [],
        [other("127.0.0.1:0"), other("127.0.0.1:0")],
    ),
    (
        "an IPv6 follower (CLIENT LIST brackets the address, INFO does not)",
        info(line("[::1]:0")),
        [sync_client("[::1]:40002", "v6")],
        [],
        [other("[::1]:0", "v6")],
    ),
    (
        "a discovered replica is a replica (it is in the labels)",
        info(line("127.0.0.1:7001"), line("127.0.0.1:7002")),
        [],
        ["127.0.0.1:7001", "127.0.0.1:7002"],
        [],
    ),
]


@pytest.mark.parametrize(
    ("master", "clients", "labels", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_other_followers(
    master: ReplicationInfo | None,
    clients: Sequence[ClientEntry],
    labels: list[str],
    expected: list[OtherFollower],
) -> None:
    assert list(other_followers(master, clients, labels)) == expected


def test_an_announced_address_mapped_to_a_listed_label_is_that_replica() -> None:
    mapped = {"10.0.0.5:7001": "redis-a:7001", "10.0.0.6:7001": "redis-b:7001"}
    lines = info(line("10.0.0.5:7001"), line("10.0.0.6:7001"))
    found = other_followers(lines, [], ["redis-a:7001"], lambda a: mapped.get(a, a))
    assert [o.address for o in found] == ["10.0.0.6:7001"]


@pytest.mark.parametrize(
    ("follower", "name"),
    [
        (other("127.0.0.1:0", "a_to_b"), "sync task a_to_b"),
        (other("127.0.0.1:0", "a", "b"), "sync task a or b (127.0.0.1:0)"),
        (other("10.0.0.9:6390"), "10.0.0.9:6390"),
    ],
)
def test_name(follower: OtherFollower, name: str) -> None:
    assert follower.name == name


def test_the_prefix_is_the_name_a_task_gives_its_links() -> None:
    assert SYNC_CLIENT_PREFIX == CLIENT_NAME + ":"


# ----------------------------------------------------------------------------- real servers


def test_a_sync_task_reading_from_the_master_is_named_by_its_task(
    debian_servers: ServerSet, runners: list[RunnerThread], tmp_path: Path
) -> None:
    """The task names its replication connection (sync/reader.py): the master's CLIENT LIST
    shows it, the monitor's snapshot carries it as another follower by its task name (not
    as a replica), and `replwatch status` prints it under the group."""
    master = debian_servers.start("master")
    replica = debian_servers.start("replica", replica_of=master)
    target = debian_servers.start("target")
    wait_synced(replica, master)
    task = make_task(master, target)
    start(task, runners, io_timeout=2)
    wait_caught_up(master, target)
    # (a diskless master marks the task online once it has reaped its snapshot's child, up
    # to a serverCron later: the task may have loaded the snapshot and caught up before)
    wait_for(
        lambda: all(
            v.get("state") == "online"
            for k, v in master.client().info("replication").items()
            if k.startswith("slave") and isinstance(v, dict)
        ),
        10,
        "the master to mark its followers online",
    )

    names = [c.get("name") for c in master.client().client_list(_type="replica")]
    assert f"{CLIENT_NAME}:{task.name}" in names, names

    monitor = make_monitor(master.url, [replica.url])

    async def others() -> tuple[OtherFollower, ...]:
        try:
            return (await monitor.poll_cycle()).others
        finally:
            monitor.close()

    found = asyncio.run(others())
    assert [(o.name, o.address, o.state) for o in found] == [
        (f"sync task {task.name}", "127.0.0.1:0", "online")
    ]

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f'groups: [{{name: g, master: "{master.label}", replicas: ["{replica.label}"]}}]\n'
    )

    def printed() -> str:
        out = cli("status", "-c", str(cfg), timeout=30)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    line_ = wait_for(
        lambda: next((ln for ln in printed().splitlines() if "other followers" in ln), None),
        10,
        "the task under the group",
    )
    assert line_.strip().startswith(
        f"other followers of the master: sync task {task.name} (127.0.0.1:0, online, "
    ), line_
