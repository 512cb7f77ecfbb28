"""A sync task whose source is given by Sentinels: it finds the master through them, follows
a failover to the promoted replica and continues its stream there (PSYNC through the new
master's replid2, no full sync) when the failover was graceful; after a crash it follows too,
and the target ends equal to the new master whatever the path."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from replwatch.compare import CompareOptions, compare_databases
from replwatch.config import SyncTask, TLSConfig, config_from_data, node_at
from replwatch.errors import RedisError
from replwatch.sync.checkpoint import Checkpoint, checkpoint_key
from replwatch.sync.sources import parse_master_addr, source_locator
from replwatch.tasks.watch import SyncWatcher

from .support.sentinels import SentinelProcess, require_sentinel
from .support.servers import RedisProcess, ServerSet, wait_for
from .support.syncing import TASK, RunnerThread, start

NAME = "mymaster"
MASTER_PASSWORD = "m-secret-7"
SENTINEL_PASSWORD = "s-secret-9"
COUNTERS = [f"c:{i}" for i in range(8)]


# ------------------------------------------------------------------ pure parts


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ([b"10.0.0.1", b"6380"], ("10.0.0.1", 6380)),
        (["h", "1"], ("h", 1)),
        (None, None),
    ],
)
def test_parse_master_addr(reply: object, expected: tuple[str, int] | None) -> None:
    assert parse_master_addr(reply) == expected


@pytest.mark.parametrize("reply", [[b"h"], b"h:1", [b"h", b"x"], [b"", b"1"], [b"h", b"0"]])
def test_parse_master_addr_rejects_malformed(reply: object) -> None:
    with pytest.raises(RedisError):
        parse_master_addr(reply)


# ------------------------------------------------------------------ a Sentinel group


class Group:
    def __init__(self, servers: ServerSet, workdir: Path) -> None:
        # no replication PING on the master during the test: a PING that lands on the old
        # master after the promotion would put its stream past the new master's (then a full
        # sync is the right outcome, but not the path this test checks)
        quiet = ["--repl-ping-replica-period", "3600"]
        self.master = servers.start("master", extra=quiet)
        self.replica = servers.start("replica", replica_of=self.master, extra=quiet)
        self.target = servers.start("target")
        # passwords after the start (the harness's readiness PING has none)
        for proc in (self.replica, self.master):
            with proc.client() as client:
                client.config_set("masterauth", MASTER_PASSWORD)
                client.config_set("requirepass", MASTER_PASSWORD)
        self.sentinels: list[SentinelProcess] = []
        for i in range(3):
            self.sentinels.append(
                SentinelProcess(
                    workdir,
                    i,
                    NAME,
                    self.master,
                    auth_pass=MASTER_PASSWORD,
                    requirepass=SENTINEL_PASSWORD,
                )
            )

    def close(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()

    def client(self, proc: RedisProcess) -> redis.Redis:
        return redis.Redis(
            host=proc.host, port=proc.port, password=MASTER_PASSWORD, socket_timeout=5
        )

    def info(self, proc: RedisProcess) -> dict[str, object]:
        with self.client(proc) as client:
            return dict(client.info("replication"))

    def node_at(self, address: tuple[str, int]) -> RedisProcess:
        for proc in (self.master, self.replica):
            if (proc.host, proc.port) == address:
                return proc
        raise AssertionError(f"no node at {address}")

    def named_master(self) -> tuple[str, int] | None:
        return self.sentinels[0].master_address(NAME)

    def task(self, **options: object) -> SyncTask:
        source = {
            "sentinel": {
                # a dead address first: the next Sentinel is asked
                "addresses": ["127.0.0.1:1", *(s.address for s in self.sentinels)],
                "master_name": NAME,
                "password": SENTINEL_PASSWORD,
                "timeout": "500ms",
            },
            "password": MASTER_PASSWORD,
        }
        cfg = config_from_data(
            {
                "sync": {
                    "tasks": [
                        {
                            "name": TASK,
                            "source": source,
                            "target": self.target.url,
                            "reconnect_min": "200ms",
                            "reconnect_max": "1s",
                            **options,
                        }
                    ]
                }
            }
        )
        return cfg.sync.tasks[0]

    def wait_ready(self) -> None:
        """Every Sentinel knows the replica as a healthy one (a failover can pick it)."""

        def known() -> bool:
            for sentinel in self.sentinels:
                with sentinel.client() as client:
                    replicas = client.execute_command("SENTINEL", "replicas", NAME)
                ok = False
                for entry in replicas:
                    fields = _text_map(entry)
                    if (
                        fields.get("port") == str(self.replica.port)
                        and fields.get("flags") == "slave"
                        and fields.get("master-link-status") == "ok"
                    ):
                        ok = True
                if not ok:
                    return False
            return True

        wait_for(known, 30, "the Sentinels to know the replica")


def _text_map(entry: object) -> dict[str, str]:
    """One SENTINEL replicas entry (a flat list, or a dict when redis-py parsed it)."""
    if isinstance(entry, dict):
        items = list(entry.items())
    else:
        assert isinstance(entry, list)
        items = list(zip(entry[0::2], entry[1::2], strict=True))
    out = {}
    for key, value in items:
        if isinstance(value, set | frozenset):
            value = ",".join(sorted(value))
        out[_decoded(key)] = _decoded(value)
    return out


def _decoded(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.fixture
def group(debian_servers: ServerSet, tmp_path: Path) -> Iterator[Group]:
    require_sentinel()
    built = Group(debian_servers, tmp_path)
    try:
        yield built
    finally:
        built.close()


class CounterWriter:
    """INCRs counters on whatever master the Sentinels name, until stop(). `acked` counts the
    INCRs answered; `unsure` those whose connection failed (they may or may not have run)."""

    def __init__(self, group: Group, already: int = 0) -> None:
        self.group = group
        self.acked = dict.fromkeys(COUNTERS, already)  # `already`: INCRs done before
        self.unsure = dict.fromkeys(COUNTERS, 0)
        self.refused = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def total(self) -> int:
        return sum(self.acked.values())

    def _run(self) -> None:
        client: redis.Redis | None = None
        i = 0
        while not self._stop.is_set():
            if client is None:
                try:
                    address = self.group.named_master()
                except (redis.RedisError, OSError):
                    address = None
                if address is None:
                    self._stop.wait(0.05)
                    continue
                client = redis.Redis(
                    host=address[0], port=address[1], password=MASTER_PASSWORD, socket_timeout=2
                )
            key = COUNTERS[i % len(COUNTERS)]
            try:
                client.incr(key)
            except redis.ResponseError:  # READONLY: a replica now, the INCR did not run
                self.refused += 1
                client.close()
                client = None
                self._stop.wait(0.05)
                continue
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                self.unsure[key] += 1
                client.close()
                client = None
                self._stop.wait(0.05)
                continue
            self.acked[key] += 1
            i += 1
        if client is not None:
            client.close()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()


def read_checkpoint(group: Group) -> Checkpoint | None:
    with redis.Redis(host=group.target.host, port=group.target.port, socket_timeout=5) as c:
        return Checkpoint.from_hash(TASK, c.hgetall(checkpoint_key(TASK)))


def wait_caught_up_with(group: Group, node: RedisProcess, timeout: float = 30) -> Checkpoint:
    def caught_up() -> Checkpoint | None:
        cp = read_checkpoint(group)
        with group.client(node) as client:
            info = client.info("replication")
        if (
            cp is not None
            and cp.state == "incremental"
            and cp.replid == info["master_replid"]
            and cp.offset is not None
            and cp.offset >= int(info["master_repl_offset"])
        ):
            return cp
        return None

    return wait_for(caught_up, timeout, f"the task to catch up with {node.name}")


def assert_target_equals(group: Group, node: RedisProcess) -> None:
    task = group.task()
    source = node_at(task.source, node.host, node.port)  # type: ignore[arg-type]
    report = compare_databases(source, task.target, CompareOptions(all_dbs=True, recheck=0))
    assert report.equal, [(d.db, d.key, d.kind, d.detail) for d in report.differences][:20]


def assert_counters(group: Group, node: RedisProcess, writer: CounterWriter) -> None:
    """Each counter on the new master and on the target is the same, and it is what the
    writer got answers for (plus at most the INCRs whose answer was lost)."""
    with (
        group.client(node) as source,
        redis.Redis(host=group.target.host, port=group.target.port) as target,
    ):
        for key in COUNTERS:
            on_source = int(source.get(key) or 0)
            on_target = int(target.get(key) or 0)
            assert on_target == on_source, (key, on_target, on_source)
            assert writer.acked[key] <= on_source <= writer.acked[key] + writer.unsure[key], (
                key,
                on_source,
                writer.acked[key],
                writer.unsure[key],
            )


# ------------------------------------------------------------------ scenarios


def test_locator_asks_the_sentinels_and_checks_the_role(group: Group) -> None:
    task = group.task()
    locate = source_locator(task.source, TLSConfig(), 2.0)
    endpoint = locate()
    assert (endpoint.host, endpoint.port) == (group.master.host, group.master.port)
    assert endpoint.password is not None
    assert endpoint.password.get_secret_value() == MASTER_PASSWORD
    # every Sentinel down: one error naming each, without a password
    for sentinel in group.sentinels:
        sentinel.stop()
    with pytest.raises(RedisError) as info:
        locate()
    message = str(info.value)
    assert info.value.reason == "sentinel"
    assert all(s.address in message for s in group.sentinels), message
    assert SENTINEL_PASSWORD not in message and MASTER_PASSWORD not in message


@pytest.mark.timeout(120)
def test_graceful_failover_continues_on_the_new_master_without_a_full_sync(
    group: Group, runners: list[RunnerThread]
) -> None:
    with group.client(group.master) as client:
        for i in range(200):
            client.incr(COUNTERS[i % len(COUNTERS)])
        client.hset("h", mapping={"a": 1, "b": 2})
    group.wait_ready()
    runner = start(group.task(), runners)
    # the monitor's view of the task reads INFO from whatever master the Sentinels name
    watcher = SyncWatcher(group.task(), 2.0, TLSConfig())
    loop = asyncio.new_event_loop()
    writer = CounterWriter(group, already=200 // len(COUNTERS))
    try:
        wait_for(lambda: writer.total() > 500, 20, "writes before the failover")
        # the graceful part: writes paused on the old master (clients' and the Sentinels'
        # hello PUBLISHes), the replica (and the task) caught up, then the failover
        with group.client(group.master) as client:
            client.execute_command("CLIENT", "PAUSE", 60000, "WRITE")
        wait_caught_up_with(group, group.master)
        view = loop.run_until_complete(watcher.poll())
        assert view.source_up and view.lag_bytes == 0, view
        assert view.source == f"sentinel:{NAME}"
        wait_for(
            lambda: (
                group.info(group.replica)["slave_repl_offset"]
                == group.info(group.master)["master_repl_offset"]
            ),
            10,
            "the replica to catch up",
        )
        old_replid = group.info(group.master)["master_replid"]
        before = writer.total()
        with group.sentinels[0].client() as client:
            assert client.execute_command("SENTINEL", "FAILOVER", NAME)
        new_address = (group.replica.host, group.replica.port)
        wait_for(lambda: group.named_master() == new_address, 30, "the Sentinels to switch")
        new_master = group.node_at(new_address)
        # the old master becomes a replica of the new one now (the Sentinels would do it
        # only some seconds after the switch, and not while the pause holds back their
        # commands), then its clients go on: their INCRs meet a replica (READONLY)
        with group.client(group.master) as client:
            client.execute_command("REPLICAOF", *new_address)
            client.execute_command("CLIENT", "UNPAUSE")
        wait_for(lambda: writer.total() > before + 300, 30, "writes after the failover")
    finally:
        writer.stop()
    cp = wait_caught_up_with(group, new_master)
    assert writer.refused > 0 or sum(writer.unsure.values()) > 0, "no write met the failover"
    assert group.info(new_master)["master_replid2"] == old_replid
    assert cp.full_resyncs == 1, "the task did a full sync again after the failover"
    assert runner.runner.counters.full_syncs == 1
    assert runner.runner.counters.sessions >= 2
    assert cp.source == f"sentinel:{NAME}"
    assert_target_equals(group, new_master)
    assert_counters(group, new_master, writer)
    try:
        # its link to the old master (a replica now) is dropped; the next poll finds the new
        def watched_new_master() -> bool:
            view = loop.run_until_complete(watcher.poll())
            return view.source_up and view.source_replid == cp.replid and view.lag_bytes == 0

        wait_for(watched_new_master, 10, "the watcher to read the new master")
    finally:
        watcher.close()
        loop.close()


@pytest.mark.timeout(120)
def test_master_crash_the_task_follows_the_promoted_replica(
    group: Group, runners: list[RunnerThread]
) -> None:
    with group.client(group.master) as client:
        client.set("before", "1")
    group.wait_ready()
    runner = start(group.task(), runners)
    writer = CounterWriter(group)
    try:
        wait_for(lambda: writer.total() > 300, 20, "writes before the crash")

        def streaming() -> bool:
            cp = read_checkpoint(group)
            return cp is not None and cp.state == "incremental" and cp.applied_commands > 100

        wait_for(streaming, 30, "the task to apply the stream")
        group.master.kill()
        new_address = (group.replica.host, group.replica.port)
        wait_for(lambda: group.named_master() == new_address, 60, "the Sentinels to fail over")
        new_master = group.node_at(new_address)
        before = writer.total()
        wait_for(lambda: writer.total() > before + 300, 30, "writes after the failover")
    finally:
        writer.stop()
    cp = wait_caught_up_with(group, new_master)
    assert cp.source == f"sentinel:{NAME}"
    assert runner.runner.counters.sessions >= 2
    # writes the old master acknowledged but never replicated are lost on the new master
    # too (asynchronous replication): what the target must hold is the new master's data
    assert_target_equals(group, new_master)
    with (
        group.client(new_master) as source,
        redis.Redis(host=group.target.host, port=group.target.port) as target,
    ):
        for key in COUNTERS:
            assert int(target.get(key) or 0) == int(source.get(key) or 0), key
