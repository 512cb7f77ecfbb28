"""The syncer from outside (issue 17), on every pair of server builds: a mixed workload on a
source with a native replica (the ground truth), `replwatch sync run` killed -9 during its
full sync and at random moments of the stream, then an independent checker compares the
target with the replica (tests/outside_workload.py, tests/outside_checker.py).

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

import os
from pathlib import Path

import pytest

from replwatch.sync.checkpoint import checkpoint_key

from .harness import (
    EXPECTED_BUILDS,
    ServerBuild,
    ServerSet,
    available_builds,
    require_build,
    wait_synced,
)
from .outside_checker import Checker, raw_client
from .outside_workload import (
    AUDIT,
    BIG_DB,
    ORDERS,
    STREAM_DB,
    Features,
    PairOutcome,
    Settings,
    Workload,
    run_scenario,
    seed_from_env,
)
from .syncing import TASK

PAIRS = [(s, t) for s in EXPECTED_BUILDS for t in EXPECTED_BUILDS]
PAIR_IDS = [f"{s}-to-{t}" for s, t in PAIRS]

SHORT = Settings(stream_seconds=4.0, full_sync_kills=1, stream_kills=1, max_downtime=1.0)


def soak_settings() -> Settings:
    seconds = float(os.environ.get("REPLWATCH_SOAK_SECONDS", "180"))
    return Settings(
        stream_seconds=seconds,
        full_sync_kills=3,
        stream_kills=max(2, int(seconds / 8)),  # one kill per task every ~8 s
        max_downtime=3.0,
        large_values=max(2, int(seconds / 20)),
        catch_up_timeout=180.0,
    )


class Scenarios:
    """Outcomes by (source, target), each scenario run once for the group of targets of its
    source build that takes the same workload and that this session runs."""

    def __init__(self, workdir: Path, settings: Settings) -> None:
        self.workdir = workdir
        self.settings = settings
        self.outcomes: dict[tuple[str, str], PairOutcome] = {}
        self.failures: dict[tuple[str, str], str] = {}

    def outcome(self, source: ServerBuild, target: ServerBuild, selected: list[str]) -> PairOutcome:
        key = (source.name, target.name)
        if key not in self.outcomes and key not in self.failures:
            self._run(source, target, selected)
        if key in self.failures:
            pytest.fail(self.failures[key], pytrace=False)
        return self.outcomes[key]

    def _run(self, source: ServerBuild, target: ServerBuild, selected: list[str]) -> None:
        builds = available_builds()
        same = Features.for_pair(source, target)
        group = [
            builds[name]
            for name in selected
            if name in builds
            and (source.name, name) not in self.outcomes
            and Features.for_pair(source, builds[name]) == same
        ]
        if target not in group:
            group.append(target)
        seed = seed_from_env()
        workdir = self.workdir / f"{source.name}-to-{'+'.join(b.name for b in group)}"
        try:
            results = run_scenario(source, group, workdir, self.settings, seed)
        except Exception as exc:
            message = (
                f"the scenario {source.name} -> {[b.name for b in group]} (seed {seed}) "
                f"failed: {exc}"
            )
            for build in group:
                self.failures[(source.name, build.name)] = message
            return
        for name, outcome in results.items():
            self.outcomes[(source.name, name)] = outcome


def selected_targets(request: pytest.FixtureRequest, source: str) -> list[str]:
    """The targets of `source` that this session runs this same test for."""
    names = []
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if (
            callspec is not None
            and getattr(item, "originalname", None) == request.node.originalname
            and callspec.params.get("source_name") == source
        ):
            names.append(str(callspec.params["target_name"]))
    return names


@pytest.fixture(scope="module")
def short_runs(tmp_path_factory: pytest.TempPathFactory) -> Scenarios:
    return Scenarios(tmp_path_factory.mktemp("outside"), SHORT)


@pytest.fixture(scope="module")
def soak_runs(tmp_path_factory: pytest.TempPathFactory) -> Scenarios:
    return Scenarios(tmp_path_factory.mktemp("soak"), soak_settings())


def check(outcome: PairOutcome) -> None:
    assert outcome.ok, outcome.report()
    # the faults really happened where they were meant to
    assert outcome.kills["full_sync"] >= 1, outcome.report()
    assert outcome.kills["incremental"] >= 1, outcome.report()
    assert outcome.keys_compared > 1000, outcome.report()


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


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("source_name", "target_name"), PAIRS, ids=PAIR_IDS)
def test_outside_workload_short(
    source_name: str, target_name: str, short_runs: Scenarios, request: pytest.FixtureRequest
) -> None:
    """Every pair ends equal to the native replica after a few seconds of the workload and
    one kill -9 in the full sync and one in the stream."""
    source, target = require_build(source_name), require_build(target_name)
    check(short_runs.outcome(source, target, selected_targets(request, source_name)))


def soak_requested(config: pytest.Config) -> bool:
    expression = str(config.getoption("markexpr", "") or "")
    asked = "soak" in expression and "not soak" not in expression
    return asked or os.environ.get("REPLWATCH_SOAK", "") == "1"


def soak_pair_selected(pair_id: str) -> bool:
    chosen = os.environ.get("REPLWATCH_SOAK_PAIRS", "all").strip()
    return chosen in ("", "all") or pair_id in {p.strip() for p in chosen.split(",")}


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
