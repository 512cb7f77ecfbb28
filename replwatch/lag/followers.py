"""Followers of a group's master that are none of the group's replicas: the master's INFO
lists every follower (its `slaveN:` lines), and WAIT counts every one of them, so those that
are not listed or discovered replicas are shown too (GroupSnapshot.others). Pure.

Rules (each has a table test, tests/test_followers.py):
- a line belongs to a replica of the group when it is the line compute.py reads for it: its
  address (mapped) is the replica's label, else it is the only line on the replica's port;
  every other line is another follower.
- a replwatch sync task names its replication connection `replwatch-sync:<task>` before
  PSYNC (sync/reader.py) and announces listening port 0; the master's CLIENT LIST TYPE
  replica shows the name and the peer address, its INFO line the peer ip and port 0. A line
  of port 0 is that task when the sync tasks named on its ip are as many as such lines there
  (one each: the task; several: one of those tasks, the two lists cannot be paired). Any
  other follower is shown by its address.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

from replwatch.observe.info import ClientEntry, ReplicaLine, ReplicationInfo
from replwatch.state import OtherFollower

# a sync task's client name on its source: sync/writer.CLIENT_NAME + ":" + the task's name
SYNC_CLIENT_PREFIX = "replwatch-sync:"


def _same(label: str) -> str:
    return label


def _host(address: str) -> str:
    host = address.rpartition(":")[0]
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def line_of(
    lines: Sequence[ReplicaLine], label: str, map_label: Callable[[str], str] = _same
) -> int | None:
    """The index of the line that is the replica `label` (compute.py reads the same one)."""
    for i, line in enumerate(lines):
        if map_label(line.address) == label:
            return i
    port = label.rpartition(":")[2]
    by_port = [i for i, line in enumerate(lines) if str(line.port) == port]
    return by_port[0] if len(by_port) == 1 else None


def match_line(
    lines: Sequence[ReplicaLine], label: str, map_label: Callable[[str], str] = _same
) -> ReplicaLine | None:
    """The line that is the replica `label`: by its announced address (mapped), else the one
    line on its port."""
    i = line_of(lines, label, map_label)
    return None if i is None else lines[i]


def other_followers(
    master: ReplicationInfo | None,
    clients: Sequence[ClientEntry] | None,
    replica_labels: Sequence[str],
    map_label: Callable[[str], str] = _same,
) -> tuple[OtherFollower, ...]:
    """The master's followers that are none of `replica_labels`, a sync task named by its
    task. `clients`: the master's CLIENT LIST TYPE replica (None: not read)."""
    if master is None:
        return ()
    lines = master.replicas
    taken = {line_of(lines, label, map_label) for label in replica_labels}
    others = [line for i, line in enumerate(lines) if i not in taken]
    tasks_on: dict[str, list[str]] = {}
    for entry in clients or ():
        if entry.name.startswith(SYNC_CLIENT_PREFIX):
            task = entry.name[len(SYNC_CLIENT_PREFIX) :]
            tasks_on.setdefault(_host(entry.addr), []).append(task)
    unnamed = Counter(line.ip for line in others if line.port == 0)
    out = []
    for line in others:
        tasks: tuple[str, ...] = ()
        named = sorted(tasks_on.get(line.ip, []))
        if line.port == 0 and named and len(named) == unnamed[line.ip]:
            tasks = tuple(dict.fromkeys(named))
        out.append(
            OtherFollower(
                address=line.address,
                state=line.state,
                acked_offset=line.offset,
                lag_bytes=max(0, master.master_repl_offset - line.offset),
                ack_age_seconds=line.ack_age,
                tasks=tasks,
            )
        )
    return tuple(out)
