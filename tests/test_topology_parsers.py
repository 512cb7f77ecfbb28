"""Table tests of the discovery parsers: SENTINEL MASTER / REPLICAS (RESP2 lists and RESP3
maps), the epoch vote between Sentinels, CLUSTER SHARDS and CLUSTER NODES (replicas, a failed
master, a promoted replica, migrating slots, a master without slots, handshake nodes).
The literals follow replies captured from Redis 7.0."""

from __future__ import annotations

from typing import Any

import pytest

from replwatch.topology.cluster import (
    fold_failed_masters,
    parse_cluster_nodes_groups,
    parse_cluster_shards_groups,
)
from replwatch.topology.model import Address
from replwatch.topology.sentinel import SentinelView, choose, parse_sentinel_view


def flat(**fields: Any) -> list[bytes]:
    out: list[bytes] = []
    for key, value in fields.items():
        out += [key.replace("_", "-").encode(), str(value).encode()]
    return out


MASTER = flat(name="m", ip="10.0.0.1", port=6379, flags="master", config_epoch=3)
REPLICAS = [
    flat(name="10.0.0.2:6379", ip="10.0.0.2", port=6379, flags="slave"),
    flat(name="10.0.0.3:6379", ip="10.0.0.3", port=6379, flags="s_down,slave,disconnected"),
]


@pytest.mark.parametrize(
    ("master", "replicas", "expected"),
    [
        (
            MASTER,
            REPLICAS,
            SentinelView(
                Address("10.0.0.1", 6379),
                3,
                False,
                (Address("10.0.0.2", 6379), Address("10.0.0.3", 6379)),  # down ones kept
            ),
        ),
        (  # RESP3 maps
            {b"ip": b"10.0.0.1", b"port": b"6379", b"flags": b"master", b"config-epoch": b"0"},
            [{b"ip": b"10.0.0.2", b"port": b"6380"}],
            SentinelView(Address("10.0.0.1", 6379), 0, False, (Address("10.0.0.2", 6380),)),
        ),
        (  # a master Sentinel sees down
            flat(ip="10.0.0.1", port=6379, flags="master,s_down,o_down", config_epoch=7),
            [],
            SentinelView(Address("10.0.0.1", 6379), 7, True, ()),
        ),
        (  # a replica without an address yet is skipped
            MASTER,
            [flat(ip="", port=0, flags="slave")],
            SentinelView(Address("10.0.0.1", 6379), 3, False, ()),
        ),
    ],
)
def test_parse_sentinel_view(master: Any, replicas: Any, expected: SentinelView) -> None:
    assert parse_sentinel_view(master, replicas) == expected


@pytest.mark.parametrize(
    ("master", "replicas"),
    [
        ([b"ip"], []),  # odd list
        (flat(ip="10.0.0.1", port="x"), []),  # no port
        (flat(ip="10.0.0.1", port=99999), []),
        (MASTER, b"not a list"),
    ],
)
def test_parse_sentinel_view_rejects(master: Any, replicas: Any) -> None:
    with pytest.raises(ValueError):
        parse_sentinel_view(master, replicas)


A, B = Address("10.0.0.1", 6379), Address("10.0.0.2", 6379)


@pytest.mark.parametrize(
    ("views", "winner"),
    [
        ([SentinelView(A, 1, False, ()), SentinelView(B, 2, False, ())], B),  # newer epoch
        ([SentinelView(B, 2, False, ()), SentinelView(A, 1, False, ())], B),
        (  # equal epochs: the majority
            [
                SentinelView(A, 2, False, ()),
                SentinelView(B, 2, False, ()),
                SentinelView(B, 2, False, ()),
            ],
            B,
        ),
        ([SentinelView(A, 0, False, ())], A),
    ],
)
def test_choose_newest_then_majority(views: list[SentinelView], winner: Address) -> None:
    assert choose(views).master == winner


# node ids are 40 hex characters in real replies; short ones keep the lines readable
NODES = """\
a01 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
a02 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10921 [5461->-a03]
a03 127.0.0.1:7002@17002 master - 0 0 3 connected 10922-16383
b01 127.0.0.1:7003@17003 slave a01 0 0 1 connected
b02 127.0.0.1:7004@17004 slave a02 0 0 2 connected
c01 127.0.0.1:7005@17005 master - 0 0 0 connected
d01 127.0.0.1:7006@17006 handshake - 0 0 0 connected
"""

FAILED = """\
a01 127.0.0.1:7000@17000 master,fail - 0 0 1 disconnected
b01 127.0.0.1:7003@17003 myself,master - 0 0 4 connected 0-16383
"""

FAILED_NOT_REPLACED = """\
a01 127.0.0.1:7000@17000 master,fail - 0 0 1 disconnected 0-16383
b01 127.0.0.1:7003@17003 myself,slave a01 0 0 1 connected
"""


def test_parse_cluster_nodes() -> None:
    groups = parse_cluster_nodes_groups(NODES)
    assert [g.key for g in groups] == ["s0", "s5461", "s10922", "nc01"]
    first, second, third, empty = groups
    assert first.master == Address("127.0.0.1", 7000)
    assert first.replicas == (Address("127.0.0.1", 7003),)
    assert first.slots == ((0, 5460),) and first.epoch == 1
    assert first.node_ids == {
        "a01",
        "b01",
    }
    assert second.slots == ((5461, 10921),)  # the migrating marker is not a slot
    assert third.replicas == () and not third.master_down
    assert empty.slots == () and empty.master_id == "c01"


@pytest.mark.parametrize(
    ("text", "previous", "master", "down", "replicas"),
    [
        # the promoted replica took over; the failed old master is a down node of its shard
        (
            FAILED,
            [frozenset({"a01", "b01"})],
            Address("127.0.0.1", 7003),
            False,
            (Address("127.0.0.1", 7000),),
        ),
        # ... when replwatch knew the shard; else it is no group, and not shown
        (FAILED, [], Address("127.0.0.1", 7003), False, ()),
        (FAILED, [frozenset({"zz"})], Address("127.0.0.1", 7003), False, ()),
        (
            FAILED_NOT_REPLACED,
            [],
            Address("127.0.0.1", 7000),
            True,
            (Address("127.0.0.1", 7003),),
        ),
    ],
)
def test_parse_cluster_nodes_failed_master(
    text: str,
    previous: list[frozenset[str]],
    master: Address,
    down: bool,
    replicas: tuple[Address, ...],
) -> None:
    (group,) = fold_failed_masters(parse_cluster_nodes_groups(text), previous)
    assert (group.master, group.master_down, group.replicas) == (master, down, replicas)
    assert group.slots == ((0, 16383),)


def node(id_: str, port: int, role: str, health: str = "online") -> list[Any]:
    return [
        b"id", id_.encode(), b"port", port, b"ip", b"127.0.0.1", b"endpoint", b"127.0.0.1",
        b"role", role.encode(), b"replication-offset", 0, b"health", health.encode(),
    ]  # fmt: skip


SHARDS = [
    [b"slots", [10922, 16383], b"nodes", [node("c1", 7002, "master")]],
    [
        b"slots",
        [0, 100, 101, 5460],
        b"nodes",
        [node("a1", 7000, "master"), node("a2", 7003, "replica")],
    ],
    [b"slots", [], b"nodes", [node("e1", 7005, "master")]],
    [  # after a failover: the old master failed, listed as a replica in the same shard
        b"slots",
        [5461, 10921],
        b"nodes",
        [node("b1", 7001, "replica", "fail"), node("b2", 7004, "master")],
    ],
]


def test_parse_cluster_shards() -> None:
    groups = parse_cluster_shards_groups(SHARDS)
    assert [g.key for g in groups] == ["s0", "s5461", "s10922", "ne1"]
    first, second, _third, empty = groups
    assert first.slots == ((0, 5460),)  # adjacent ranges merged
    assert first.replicas == (Address("127.0.0.1", 7003),) and first.master_id == "a1"
    assert second.master == Address("127.0.0.1", 7004)
    assert second.replicas == (Address("127.0.0.1", 7001),) and not second.master_down
    assert second.node_ids == {"b1", "b2"}
    assert empty.slots == () and empty.master == Address("127.0.0.1", 7005)


def test_cluster_shards_failed_master_in_a_shard_of_its_own() -> None:
    """Redis 7.0 lists a killed master whose replica took over as a shard of its own with
    no slots: after the fold it is a down node of the shard it was in, not a group."""
    shards = [
        [b"slots", [0, 16383], b"nodes", [node("b2", 7004, "master")]],
        [b"slots", [], b"nodes", [node("b1", 7001, "master", "fail")]],
    ]
    parsed = parse_cluster_shards_groups(shards)
    assert [g.key for g in parsed] == ["s0", "nb1"]
    (group,) = fold_failed_masters(parsed, [frozenset({"b1", "b2"})])
    assert group.master == Address("127.0.0.1", 7004) and not group.master_down
    assert group.replicas == (Address("127.0.0.1", 7001),)
    assert group.node_ids == {"b1", "b2"}  # so the next discovery folds it again
    # a slotless master that is up is a group of its own (an empty new master)
    assert [g.key for g in fold_failed_masters(parse_cluster_shards_groups(SHARDS), [])] == [
        "s0",
        "s5461",
        "s10922",
        "ne1",
    ]


def test_parse_cluster_shards_failed_master_not_replaced() -> None:
    shards = [[b"slots", [0, 16383], b"nodes", [node("a1", 7000, "master", "fail")]]]
    (group,) = parse_cluster_shards_groups(shards)
    assert group.master_down and group.master == Address("127.0.0.1", 7000)


@pytest.mark.parametrize("reply", [b"x", [[b"slots"]], [[b"slots", [1], b"nodes", []]]])
def test_parse_cluster_shards_rejects(reply: Any) -> None:
    with pytest.raises(ValueError):
        parse_cluster_shards_groups(reply)
