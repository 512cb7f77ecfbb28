"""The syncer from outside (issue 17), on every pair of server builds: a mixed workload on a
source with a native replica (the ground truth), `replwatch sync run` killed -9 during its
full sync and at random moments of the stream, then an independent checker compares the
target with the replica (tests/support/outside_workload.py and outside_checker.py). This
module: the checker's own test and the long version; the short version, by source product, is
in tests/test_sync_outside_redis.py and tests/test_sync_outside_valkey.py (the pairs and
scenarios: tests/support/outside_pairs.py).

Short version (CI): a few seconds of workload per pair, one kill in the full sync and one
in the stream. Pairs share what can be shared: the targets of one source build that can hold
the same workload (functions, hash-field TTLs) run as one scenario — one source, one replica,
one workload, one task process per target — so 16 pairs cost 8 scenarios.

Long version (`-m soak`, or REPLWATCH_SOAK=1): minutes of workload and many kills per pair,
REPLWATCH_SOAK_SECONDS (default 180) of stream and REPLWATCH_SOAK_PAIRS (e.g.
"redis-7.0-to-redis-6.2,valkey-9.1-to-redis-7.0"; default all). CI's test command leaves it
out. REPLWATCH_TEST_SEED repeats a run's workload choices (the failure message names it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from replwatch.sync.checkpoint import checkpoint_key

from .support.outside_checker import Checker, raw_client
from .support.outside_pairs import (
    PAIR_IDS,
    PAIRS,
    Scenarios,
    check,
    selected_targets,
    soak_pair_selected,
    soak_requested,
    soak_settings,
)
from .support.outside_workload import (
    AUDIT,
    BIG_DB,
    ORDERS,
    STREAM_DB,
    Features,
    Workload,
)
from .support.servers import (
    ServerSet,
    require_build,
    wait_synced,
)
from .support.syncing import TASK


@pytest.fixture(scope="module")
def soak_runs(tmp_path_factory: pytest.TempPathFactory) -> Scenarios:
    return Scenarios(tmp_path_factory.mktemp("soak"), soak_settings())


@pytest.mark.timeout(60)
def test_checker_reports_each_kind_of_difference(tmp_path: Path) -> None:
    """The checker against a copy of the replica (a second replica, detached) that is then
    changed in known ways: equal at first (TTLs within the grace too), then exactly the
    changes are reported, each with its db, key and kind. A checker that cannot fail would
    let every syncer bug through."""
    servers = ServerSet(require_build("valkey-9.1"), tmp_path)
    try:
        source = servers.start("source")
        truth = servers.start("replica", replica_of=source)
        copy = servers.start("copy", replica_of=source)
        Workload(source, Features(functions=True, hash_field_ttl=True), seed=7).preload()
        wait_synced(truth, source)
        wait_synced(copy, source)
        with raw_client(copy) as db0:
            db0.execute_command("REPLICAOF", "NO", "ONE")
            db0.execute_command("HSET", checkpoint_key(TASK), "state", "incremental")
            # within the grace: the target may keep a key up to grace_ms longer
            db0.execute_command("PEXPIRE", b"ow:e:4", 1_000_000 + 150_000, "GT")
        checker = Checker(truth, copy, grace_ms=300_000, functions=True, field_ttls=True)
        assert checker.differences() == []
        assert checker.keys_compared > 1000

        expected = {
            (0, b"ow:s:1", "missing"),
            (2, b"ow:extra", "extra"),
            (1, b"ow:s:2", "value"),
            (1, b"ow:z:3", "value"),
            (3, b"ow:l:3", "type"),
            (0, b"ow:s:5", "ttl"),  # a TTL the source does not have
            (0, b"ow:e:8", "ttl"),  # shorter than the source's
            (0, b"ow:hfp:0", "field-ttl"),
            (STREAM_DB, ORDERS, "stream"),
            (STREAM_DB, AUDIT, "stream"),
            (BIG_DB, b"big:hash", "value"),
            (4, checkpoint_key(TASK).encode(), "checkpoint"),
            (None, None, "function"),
        }
        with raw_client(copy, 0) as db0:
            db0.execute_command("DEL", b"ow:s:1")
            db0.execute_command("PEXPIRE", b"ow:s:5", 600_000)
            db0.execute_command("PEXPIRE", b"ow:e:8", 5_000)
            db0.execute_command("HPEXPIRE", b"ow:hfp:0", 5_000, "FIELDS", 1, "a")
            db0.execute_command("FUNCTION", "DELETE", "owlib")
        with raw_client(copy, 1) as db1:
            db1.execute_command("SET", b"ow:s:2", b"changed")
            db1.execute_command("ZINCRBY", b"ow:z:3", 0.5, b"a")
        with raw_client(copy, 2) as db2:
            db2.execute_command("SET", b"ow:extra", 1)
        with raw_client(copy, 3) as db3:
            db3.execute_command("DEL", b"ow:l:3")
            db3.execute_command("SET", b"ow:l:3", b"now a string")
        with raw_client(copy, 4) as db4:
            db4.execute_command("HSET", checkpoint_key(TASK), "state", "incremental")
        with raw_client(copy, STREAM_DB) as streams:
            pending = streams.execute_command("XPENDING", ORDERS, "g1", "-", "+", 1)
            streams.execute_command("XACK", ORDERS, "g1", pending[0][0])
            streams.execute_command("XADD", AUDIT, "*", "extra", 1)
        with raw_client(copy, BIG_DB) as big:
            big.execute_command("HDEL", b"big:hash", b"f17")
        found = checker.differences()
        assert {(d.db, d.key, d.kind) for d in found} == expected, "\n".join(map(str, found))
        text = "\n".join(map(str, found))
        # the PEL entry with its consumer and delivery count
        assert f"{pending[0][0]!r}: ({pending[0][1]!r}, {pending[0][3]})" in text, text
        assert "last-generated-id" in text and "function library b'owlib' missing" in text
    finally:
        servers.close()


@pytest.mark.soak
@pytest.mark.timeout(3600)
@pytest.mark.parametrize(("source_name", "target_name"), PAIRS, ids=PAIR_IDS)
def test_outside_workload_soak(
    source_name: str, target_name: str, soak_runs: Scenarios, request: pytest.FixtureRequest
) -> None:
    """The same for minutes, with a kill -9 every few seconds (run on request only)."""
    if not soak_requested(request.config):
        pytest.skip("soak: run with -m soak or REPLWATCH_SOAK=1")
    if not soak_pair_selected(f"{source_name}-to-{target_name}"):
        pytest.skip("not in REPLWATCH_SOAK_PAIRS")
    source, target = require_build(source_name), require_build(target_name)
    selected = [
        t
        for t in selected_targets(request, source_name)
        if soak_pair_selected(f"{source_name}-to-{t}")
    ]
    check(soak_runs.outcome(source, target, selected))
