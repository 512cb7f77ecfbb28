"""Pure parts of the monitored-group topology: address mapping, shard naming, discovered
groups (replwatch/topology/groups.py), and the discovery-aware compute (announced upstream
addresses mapped before chains are recognised)."""

from __future__ import annotations

from typing import Any

import pytest

from replwatch.config import GroupConfig, config_from_data, group_sentinels
from replwatch.topology.groups import (
    AddressMap,
    MonitoredGroup,
    discovered_group,
    name_shards,
    slot_ranges_text,
)
from replwatch.topology.model import Address, DiscoveredGroup

# ------------------------------------------------------------------ AddressMap

MAP = {
    "10.0.0.5:6379": "127.0.0.1:16379",
    "10.0.0.6": "192.168.1.6",
    "[fd00::1]:6379": "[::1]:7000",
}


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("10.0.0.5", 6379, ("127.0.0.1", 16379)),  # exact entry
        ("10.0.0.5", 6380, ("10.0.0.5", 6380)),  # another port of that host: no entry
        ("10.0.0.6", 6380, ("192.168.1.6", 6380)),  # host entry keeps the port
        ("fd00::1", 6379, ("::1", 7000)),  # IPv6 exact entry
        ("10.9.9.9", 6379, ("10.9.9.9", 6379)),  # unmapped
    ],
)
def test_address_map(host: str, port: int, expected: tuple[str, int]) -> None:
    assert AddressMap(MAP).map(host, port) == expected


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("10.0.0.5:6379", "127.0.0.1:16379"),
        ("10.0.0.6:1", "192.168.1.6:1"),
        ("[fd00::1]:6379", "[::1]:7000"),
        ("10.9.9.9:6379", "10.9.9.9:6379"),
        ("no-port", "no-port"),
    ],
)
def test_address_map_labels(label: str, expected: str) -> None:
    assert AddressMap(MAP).label(label) == expected


def test_address_map_equality_and_emptiness() -> None:
    assert AddressMap(MAP) == AddressMap(dict(MAP))
    assert AddressMap(MAP) != AddressMap({"10.0.0.6": "192.168.1.7"})
    assert not AddressMap() and AddressMap(MAP)
    assert AddressMap().label("a:1") == "a:1"


# ------------------------------------------------------------------ shard naming


def shard(key: str, lo: int, hi: int, ids: set[str], master_id: str = "") -> DiscoveredGroup:
    return DiscoveredGroup(
        key=key,
        master=Address("127.0.0.1", 7000 + lo),
        slots=((lo, hi),),
        node_ids=frozenset(ids),
        master_id=master_id or sorted(ids)[0],
    )


A = shard("s0", 0, 5460, {"a1", "a2"})
B = shard("s5461", 5461, 10922, {"b1", "b2"})
C = shard("s10923", 10923, 16383, {"c1", "c2"})


def names(result: list[tuple[str, DiscoveredGroup]]) -> dict[str, str]:
    return {name: found.key for name, found in result}


@pytest.mark.parametrize(
    ("case", "shards", "previous", "expected"),
    [
        ("first-time", [A, B, C], {}, {"c:s0": "s0", "c:s5461": "s5461", "c:s10923": "s10923"}),
        (
            "failover keeps names (same nodes)",
            [A, B, C],
            {"c:s0": {"a1", "a2"}, "c:s5461": {"b1", "b2"}, "c:s10923": {"c1", "c2"}},
            {"c:s0": "s0", "c:s5461": "s5461", "c:s10923": "s10923"},
        ),
        (
            # slots 0-99 moved from shard A to shard B: B's lowest slot is 0 now, A's 100;
            # both keep their names because their nodes did
            "resharding keeps names",
            [shard("s100", 100, 5460, {"a1", "a2"}), shard("s0", 0, 99, {"b1", "b2"})],
            {"c:s0": {"a1", "a2"}, "c:s5461": {"b1", "b2"}},
            {"c:s0": "s100", "c:s5461": "s0"},
        ),
        (
            "a new shard whose natural name is taken is named by its master id",
            [shard("s100", 100, 200, {"a1"}), shard("s0", 0, 99, {"zz9"}, "zz9abcdef0123456")],
            {"c:s0": {"a1"}},
            {"c:s0": "s100", "c:nzz9abcdef012": "s0"},
        ),
        (
            "a replaced node set gets a fresh name",
            [shard("s0", 0, 16383, {"x1"})],
            {"c:s0": {"a1"}},
            {"c:s0": "s0"},
        ),
        (
            "largest overlap wins a contested name",
            [shard("s0", 0, 10, {"a1"}), shard("s11", 11, 20, {"a2", "a3"})],
            {"c:s0": {"a1", "a2", "a3"}},
            {"c:s0": "s11", "c:na1": "s0"},
        ),
    ],
)
def test_name_shards(
    case: str,
    shards: list[DiscoveredGroup],
    previous: dict[str, set[str]],
    expected: dict[str, str],
) -> None:
    result = name_shards("c", shards, {k: frozenset(v) for k, v in previous.items()})
    assert names(result) == expected, case
    assert len({n for n, _ in result}) == len(shards)  # every shard one distinct name


@pytest.mark.parametrize(
    ("slots", "expected"),
    [
        ([(0, 5460)], "0-5460"),
        ([(0, 0), (5, 9)], "0,5-9"),
        ([], ""),
    ],
)
def test_slot_ranges_text(slots: list[tuple[int, int]], expected: str) -> None:
    assert slot_ranges_text(slots) == expected


def test_slot_ranges_text_is_cut() -> None:
    text = slot_ranges_text([(i, i) for i in range(0, 400, 2)], limit=40)
    assert len(text) == 40 and text.endswith("…")


# ------------------------------------------------------------------ discovered groups


def cfg_group(data: dict[str, Any]) -> GroupConfig:
    return config_from_data({"groups": [data]}, env={}).groups[0]


def test_sentinel_group_takes_credentials_tls_and_mapping() -> None:
    group = cfg_group(
        {
            "name": "cache",
            "sentinel": {
                "addresses": ["10.0.0.1:26379"],
                "master_name": "mymaster",
                "auth": {"password": "sentinel-pw"},
                "tls": True,
            },
            "auth": {"username": "mon", "password": "node-pw"},
        }
    )
    found = DiscoveredGroup(
        key="",
        master=Address("10.0.0.5", 6379),
        replicas=(Address("10.0.0.6", 6379), Address("10.0.0.5", 6379)),
    )
    mg = discovered_group(group, "cache", found, AddressMap({"10.0.0.5:6379": "127.0.0.1:1"}))
    assert mg.master.label == "127.0.0.1:1"
    assert mg.master.tls is True and mg.master.username == "mon"
    assert mg.master.password is not None
    assert mg.master.password.get_secret_value() == "node-pw"
    # the master listed among the replicas (as Sentinel lists a demoted one) is dropped
    assert [r.label for r in mg.replicas] == ["10.0.0.6:6379"]
    assert mg.source == "sentinel" and mg.parent == "cache"
    # the Sentinels' own credentials stay the Sentinels'
    assert group.sentinel is not None
    sentinel_pw = group_sentinels(group.sentinel)[0].password
    assert sentinel_pw is not None and sentinel_pw.get_secret_value() == "sentinel-pw"


def test_cluster_shard_group() -> None:
    group = cfg_group(
        {
            "name": "sessions",
            "cluster": {"startup_nodes": ["rediss://10.0.1.1:7000"], "auth": {"password": "c"}},
        }
    )
    mg = discovered_group(group, "sessions:s0", A, AddressMap())
    assert mg.name == "sessions:s0" and mg.parent == "sessions" and mg.source == "cluster"
    assert mg.slots == ((0, 5460),) and mg.node_ids == frozenset({"a1", "a2"})
    assert mg.master.tls is True
    assert mg.master.password is not None and mg.master.password.get_secret_value() == "c"


def test_static_group_refuses_a_discovered_one() -> None:
    group = cfg_group({"name": "x", "cluster": {"startup_nodes": ["h:7000"]}})
    with pytest.raises(ValueError, match="discovered"):
        MonitoredGroup.static(group)


def test_group_address_map_overrides_the_top_level_one() -> None:
    cfg = config_from_data(
        {
            "address_map": {"10.0.0.1": "127.0.0.1", "10.0.0.2": "127.0.0.2"},
            "groups": [{"name": "a", "master": "h:1", "address_map": {"10.0.0.2": "127.0.0.9"}}],
        },
        env={},
    )
    amap = AddressMap(cfg.address_map_of(cfg.groups[0]))
    assert amap.map("10.0.0.1", 1) == ("127.0.0.1", 1)
    assert amap.map("10.0.0.2", 1) == ("127.0.0.9", 1)
