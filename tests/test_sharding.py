"""Fleet sharding (`--shard i/n`, docs/sharding.md): the parser, rendezvous ownership (every
name in exactly one shard, balanced, stable when a shard is added, pinned to the hash), the
config key and its publish.key rule, `check-config --shard` as a user runs it, two real
daemons splitting groups of real redis-servers between them, and the Prometheus files of
docs/prometheus/ (promtool-checked and embedded verbatim in docs/sharding.md)."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from replwatch.config import Config, apply_shard, config_from_data
from replwatch.errors import ConfigError
from replwatch.topology.sharding import ShardSpec, owner, owns, parse_shard

from .support.daemons import RunningDaemon, cli, parse_metrics
from .support.servers import ServerSet, wait_for

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "sharding.md"
PROM_DIR = ROOT / "docs" / "prometheus"
GROUPS = [f"group-{i:03d}" for i in range(60)]


# ----------------------------------------------------------------------------- parse_shard


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("1/1", ShardSpec(1, 1)),
        ("2/3", ShardSpec(2, 3)),
        ("3/3", ShardSpec(3, 3)),
        (" 1 / 16 ", ShardSpec(1, 16)),
        ("07/10", ShardSpec(7, 10)),
    ],
)
def test_parse_shard(text: str, spec: ShardSpec) -> None:
    assert parse_shard(text) == spec


@pytest.mark.parametrize(
    "text",
    ["", "2", "0/3", "4/3", "1/0", "0/0", "-1/3", "1/-3", "a/b", "2/3/4", "2.0/3", "½", "２/３"],
)
def test_parse_shard_rejects(text: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_shard(text)
    assert str(err.value) == f"{text!r}: must be i/n with 1 <= i <= n, e.g. 2/3"


@pytest.mark.parametrize(("index", "count"), [(0, 3), (4, 3), (1, 0)])
def test_shard_spec_checks_its_range(index: int, count: int) -> None:
    with pytest.raises(ValueError, match="must be i/n"):
        ShardSpec(index, count)


def test_shard_spec_text() -> None:
    assert (str(ShardSpec(2, 3)), ShardSpec(2, 3).slug) == ("2/3", "2-of-3")


# ----------------------------------------------------------------------------- ownership


@pytest.mark.parametrize("kind", ["group", "task"])
def test_three_shards_cover_every_name_once_and_balanced(kind: Any) -> None:
    mine = {i: {n for n in GROUPS if owns(ShardSpec(i, 3), n, kind)} for i in (1, 2, 3)}
    assert sorted(n for names in mine.values() for n in names) == sorted(GROUPS)  # once each
    for i, names in mine.items():
        assert 0.10 * len(GROUPS) <= len(names) <= 0.60 * len(GROUPS), (i, len(names))


@pytest.mark.parametrize("kind", ["group", "task"])
def test_a_fourth_shard_takes_only_its_share(kind: Any) -> None:
    before = {n: owner(n, 3, kind) for n in GROUPS}
    after = {n: owner(n, 4, kind) for n in GROUPS}
    moved = [n for n in GROUPS if before[n] != after[n]]
    assert all(after[n] == 4 for n in moved), "a group moved between the old shards"
    assert moved == [n for n in GROUPS if after[n] == 4]
    assert 0.10 * len(GROUPS) <= len(moved) <= 0.45 * len(GROUPS), len(moved)


@pytest.mark.parametrize("count", range(1, 9))
def test_growing_by_one_moves_names_only_to_the_new_shard(count: int) -> None:
    names = [f"n{i}" for i in range(3000)]
    before = {n: owner(n, count) for n in names}
    after = {n: owner(n, count + 1) for n in names}
    moved = [n for n in names if before[n] != after[n]]
    assert {after[n] for n in moved} == {count + 1}
    share = len(moved) / len(names)
    assert abs(share - 1 / (count + 1)) < 0.05, share
    sizes = Counter(after.values())
    assert set(sizes) == set(range(1, count + 2))
    even = len(names) / (count + 1)
    assert all(0.8 * even <= s <= 1.2 * even for s in sizes.values()), sizes


@pytest.mark.parametrize(
    ("name", "kind", "owners"),
    [
        # owner(name, n) for n = 1..8; a change of hash or key layout changes these
        ("orders-eu", "group", [1, 1, 3, 4, 4, 4, 7, 7]),
        ("orders-eu", "task", [1, 2, 2, 4, 4, 4, 4, 4]),
        ("cache-01", "group", [1, 1, 3, 3, 3, 6, 7, 7]),
        ("cache-01", "task", [1, 2, 2, 4, 4, 6, 6, 6]),
    ],
)
def test_owner_is_pinned(name: str, kind: Any, owners: list[int]) -> None:
    assert [owner(name, n, kind) for n in range(1, 9)] == owners


def test_owner_is_the_same_in_another_process() -> None:
    """Python's hash() of a str is salted per process; the owner must not be."""
    code = (
        "from replwatch.topology.sharding import owner;"
        f"print([owner(n, 5) for n in {GROUPS[:20]!r}])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.strip() == str([owner(n, 5) for n in GROUPS[:20]])


def test_groups_and_tasks_of_one_name_are_placed_independently() -> None:
    differ = [n for n in GROUPS if owner(n, 3, "group") != owner(n, 3, "task")]
    assert len(differ) > len(GROUPS) // 3


# ----------------------------------------------------------------------------- config


def _fleet(groups: list[str], tasks: Sequence[str] = (), **extra: Any) -> dict[str, Any]:
    return {
        "groups": [
            {"name": name, "master": f"127.0.0.1:{10000 + i}"} for i, name in enumerate(groups)
        ],
        "sync": {
            "tasks": [
                {
                    "name": name,
                    "source": f"127.0.0.1:{20000 + i}",
                    "target": f"127.0.0.1:{30000 + i}",
                }
                for i, name in enumerate(tasks)
            ]
        },
        **extra,
    }


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"shard": "4/3"}, "shard: '4/3': must be i/n with 1 <= i <= n, e.g. 2/3"),
        ({"shard": "two"}, "shard: 'two': must be i/n with 1 <= i <= n, e.g. 2/3"),
        ({"shard": 2}, 'shard: must be a string i/n, e.g. "2/3"'),
        (
            {"shard": "1/2", "publish": {"url": "redis://127.0.0.1:1"}},
            "publish.key: must contain {shard} when the fleet is split into shards (shard "
            "1/2): each shard publishes the routing table of its own groups, e.g. "
            "replwatch:routing:{shard}",
        ),
        (
            {"shard": "1/2", "publish": {"url": "redis://127.0.0.1:1", "key": "rt:{shard}"}},
            "publish.channel: must contain {shard} when the fleet is split into shards (shard "
            "1/2): each shard publishes the routing table of its own groups, e.g. "
            "replwatch:routing:{shard}",
        ),
    ],
    ids=["out-of-range", "not-i-n", "not-a-string", "publish-key", "publish-channel"],
)
def test_config_shard_problems(data: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_data(data, "c.yaml", env={})
    assert err.value.problems == [problem]


@pytest.mark.parametrize(
    "data",
    [
        {"shard": "1/1", "publish": {"url": "redis://127.0.0.1:1"}},  # not split: one table
        {"shard": "2/3"},  # nothing published
        {"publish": {"url": "redis://127.0.0.1:1"}},
    ],
)
def test_config_shard_accepted(data: dict[str, Any]) -> None:
    config_from_data(data, "c.yaml", env={})


def test_for_shard_keeps_what_the_shard_owns_and_names_its_key() -> None:
    tasks = [f"task-{i}" for i in range(12)]
    publish = {"url": "redis://127.0.0.1:1", "key": "rt:{shard}", "channel": "ch.{shard}"}
    whole = config_from_data(_fleet(GROUPS, tasks, publish=publish), env={})
    parts = [apply_shard(whole, "c.yaml", f"{i}/3") for i in (1, 2, 3)]
    assert sorted(g.name for p in parts for g in p.groups) == GROUPS
    assert sorted(t.name for p in parts for t in p.sync.tasks) == sorted(tasks)
    for i, part in enumerate(parts, 1):
        assert part.shard == ShardSpec(i, 3)
        assert [g.name for g in part.groups] == [n for n in GROUPS if owner(n, 3) == i]
        assert [t.name for t in part.sync.tasks] == [n for n in tasks if owner(n, 3, "task") == i]
        assert (part.publish.key, part.publish.channel) == (f"rt:{i}-of-3", f"ch.{i}-of-3")
    assert whole.publish.key == "rt:{shard}" and len(whole.groups) == 60  # unchanged


@pytest.mark.parametrize(
    ("config_shard", "cli_shard", "expected"),
    [
        (None, None, ShardSpec(1, 1)),
        ("2/3", None, ShardSpec(2, 3)),
        ("2/3", "1/2", ShardSpec(1, 2)),
        (None, "3/4", ShardSpec(3, 4)),
    ],
)
def test_cli_shard_wins_over_the_config(
    config_shard: str | None, cli_shard: str | None, expected: ShardSpec
) -> None:
    extra = {"shard": config_shard} if config_shard else {}
    whole: Config = config_from_data(_fleet(GROUPS, **extra), env={})
    part = apply_shard(whole, "c.yaml", cli_shard)
    assert part.shard == expected
    assert [g.name for g in part.groups] == [n for n in GROUPS if owns(expected, n)]


def test_cli_shard_is_checked_against_publish() -> None:
    whole = config_from_data(_fleet(GROUPS, publish={"url": "redis://127.0.0.1:1"}), env={})
    with pytest.raises(ConfigError) as err:
        apply_shard(whole, "c.yaml", "2/3")
    assert err.value.source == "c.yaml"
    assert [p.split(":")[0] for p in err.value.problems] == ["publish.key"]
    with pytest.raises(ConfigError) as bad:
        apply_shard(whole, "c.yaml", "0/3")
    assert (bad.value.source, bad.value.problems) == (
        "--shard",
        ["'0/3': must be i/n with 1 <= i <= n, e.g. 2/3"],
    )


# ----------------------------------------------------------------------------- CLI


def _write_fleet(path: Path, groups: list[str], extra: str = "") -> Path:
    lines = ["groups:"]
    for i, name in enumerate(groups):
        lines += [f"  - name: {name}", f'    master: "127.0.0.1:{10000 + i}"']
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def test_check_config_shards_print_a_partition(tmp_path: Path) -> None:
    tasks = "sync:\n  tasks:\n" + "".join(
        f'    - {{name: t{i}, source: "127.0.0.1:{20000 + i}", target: "127.0.0.1:{30000 + i}"}}\n'
        for i in range(9)
    )
    cfg = _write_fleet(tmp_path / "fleet.yaml", GROUPS, tasks)
    printed: dict[int, tuple[list[str], list[str]]] = {}
    for i in (1, 2, 3):
        result = cli("check-config", "-c", str(cfg), "--shard", f"{i}/3")
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == f"{cfg}: OK (60 group(s), 60 node(s) configured)"
        groups = [ln.split()[1] for ln in lines if ln.startswith("  group ")]
        tasks_ = [ln.split()[1] for ln in lines if ln.startswith("  task ")]
        assert lines[1] == (
            f"shard {i}/3 owns {len(groups)} of 60 group(s) and {len(tasks_)} of 9 sync task(s):"
        )
        printed[i] = groups, tasks_
    all_groups = [g for groups, _ in printed.values() for g in groups]
    all_tasks = [t for _, tasks_ in printed.values() for t in tasks_]
    assert sorted(all_groups) == sorted(GROUPS) and len(set(all_groups)) == len(all_groups)
    assert sorted(all_tasks) == sorted(f"t{i}" for i in range(9))
    assert all(groups for groups, _ in printed.values())


def test_check_config_without_a_shard_prints_one_line(tmp_path: Path) -> None:
    cfg = _write_fleet(tmp_path / "fleet.yaml", GROUPS[:3])
    result = cli("check-config", "-c", str(cfg))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{cfg}: OK (3 group(s), 3 node(s) configured)"]


def test_check_config_prints_the_shards_publish_key(tmp_path: Path) -> None:
    cfg = _write_fleet(
        tmp_path / "fleet.yaml",
        GROUPS[:6],
        'shard: "2/3"\npublish: {url: "redis://127.0.0.1:1", key: "rt:{shard}", '
        'channel: "rt:{shard}"}\n',
    )
    result = cli("check-config", "-c", str(cfg))  # the config's shard
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-2:] == [
        "  publish.key rt:2-of-3",
        "  publish.channel rt:2-of-3",
    ]
    assert result.stdout.splitlines()[1].startswith("shard 2/3 owns ")


@pytest.mark.parametrize("command", ["check-config", "run", "status", "probe"])
@pytest.mark.parametrize("value", ["4/3", "x"])
def test_bad_shard_is_one_line_and_exit_2(tmp_path: Path, command: str, value: str) -> None:
    cfg = _write_fleet(tmp_path / "fleet.yaml", GROUPS[:3])
    result = cli(command, "-c", str(cfg), "--shard", value)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"--shard: {value!r}: must be i/n with 1 <= i <= n, e.g. 2/3"
    ]


def test_publish_without_shard_placeholder_is_refused_on_the_command_line(tmp_path: Path) -> None:
    cfg = _write_fleet(tmp_path / "fleet.yaml", GROUPS[:3], 'publish: {url: "127.0.0.1:1"}\n')
    result = cli("run", "-c", str(cfg), "--shard", "1/2")
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"{cfg}: publish.key: must contain {{shard}} ")


def test_status_group_of_another_shard(tmp_path: Path) -> None:
    cfg = _write_fleet(tmp_path / "fleet.yaml", GROUPS)
    other = next(n for n in GROUPS if owner(n, 3) == 2)
    result = cli("status", "-c", str(cfg), "--shard", "1/3", "--group", other)
    assert result.returncode == 2  # a usage error (issue 21)
    assert result.stderr.splitlines() == [
        f"--group: group {other!r} belongs to shard 2/3, not to this one (1/3)"
    ]


# ----------------------------------------------------------------------------- daemons


def shard_daemon(cfg: Path, shard: str, workdir: Path) -> RunningDaemon:
    """`replwatch run --shard i/n` on 127.0.0.1:0 (the port it bound is in its log)."""
    log = workdir / f"daemon-{shard.replace('/', '-of-')}.stderr"
    return RunningDaemon(cfg, None, "--shard", shard, log=log)


def samples_of(daemon: RunningDaemon, name: str) -> list[dict[str, str]]:
    """The samples of metric `name`: each one's labels, and its value under "value"."""
    return [
        dict(labels) | {"value": str(value)}
        for (sample, labels), value in parse_metrics(daemon.metrics()).items()
        if sample == name
    ]


@pytest.fixture
def masters(debian_servers: ServerSet) -> dict[str, int]:
    """Six groups, each a real redis-server master: name → port."""
    return {name: debian_servers.start(name).port for name in GROUPS[:6]}


@pytest.mark.timeout(120)
def test_two_daemons_watch_every_group_exactly_once(
    masters: dict[str, int], tmp_path: Path
) -> None:
    expected = {name: owner(name, 2) for name in masters}
    assert set(expected.values()) == {1, 2}, "both shards must own a group for this test"
    cfg = tmp_path / "fleet.yaml"
    cfg.write_text(
        'exporter: {listen: "127.0.0.1:0"}\n'
        "poll: {interval: 200ms, timeout: 150ms}\n"
        "probe: {enabled: false}\n"
        "groups:\n"
        + "".join(
            f'  - {{name: {name}, master: "127.0.0.1:{port}"}}\n' for name, port in masters.items()
        )
    )
    daemons = [shard_daemon(cfg, f"{i}/2", tmp_path) for i in (1, 2)]
    try:
        for d in daemons:
            assert d.base

        def groups_of(d: RunningDaemon) -> set[str] | None:
            """The groups whose master the daemon has polled as up, once it polled them all."""
            role_ok = samples_of(d, "replwatch_master_role_ok")
            groups = {s["group"] for s in role_ok}
            if not groups or any(s["value"] != "1.0" for s in role_ok):
                return None
            return groups if samples_of(d, "replwatch_last_poll_timestamp_seconds") else None

        owned = [{n for n, shard in expected.items() if shard == i} for i in (1, 2)]
        # each daemon's groups appear as their first cycles finish: wait for its whole set
        # (a daemon that polled a group of the other shard would never match)
        seen: list[set[str] | None] = []
        for d, mine in zip(daemons, owned, strict=True):
            with contextlib.suppress(AssertionError):  # the assertion below says what differs
                wait_for(lambda d=d, mine=mine: groups_of(d) == mine, 20, "its groups polled")
            seen.append(groups_of(d))
        for i, groups in enumerate(seen, 1):
            assert groups == owned[i - 1]
            assert samples_of(daemons[i - 1], "replwatch_shard_info") == [
                {"index": str(i), "count": "2", "value": "1.0"}
            ]
        assert seen[0] | seen[1] == set(masters) and not seen[0] & seen[1]
        assert "(shard 1/2)" in daemons[0].log_text() and "(shard 2/2)" in daemons[1].log_text()
    finally:
        for d in daemons:
            d.stop()


# ----------------------------------------------------------------------------- Prometheus


PROM_FILES = sorted(PROM_DIR.glob("*.yml"))
RULE_FILES = [p for p in PROM_FILES if p.name.endswith("-rules.yml")]
CONFIG_FILES = [p for p in PROM_FILES if p not in RULE_FILES]


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not installed (Debian package prometheus; scripts/test installs it)")
    return path


def test_docs_prometheus_files_exist() -> None:
    names = {p.name for p in PROM_FILES}
    assert {"sharded-jobs.yml", "one-job.yml", "hashmod.yml", "federation.yml"} <= names
    assert {"remote-write.yml", "shard-rules.yml"} <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_promtool_check_config(path: Path) -> None:
    result = subprocess.run(
        [_promtool(), "check", "config", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_promtool_check_rules(path: Path) -> None:
    result = subprocess.run(
        [_promtool(), "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


SHARD_RULE_TESTS = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'replwatch_shard_info{{instance="a:9750",index="1",count="3"}}'
        values: '1x20'
      - series: 'replwatch_shard_info{{instance="b:9750",index="2",count="3"}}'
        values: '1x20'
      - series: 'replwatch_shard_info{{instance="c:9750",index="3",count="3"}}'
        values: '1x5 _x15'
    alert_rule_test:
      - {{eval_time: 5m, alertname: ReplwatchShardMissing, exp_alerts: []}}
      - {{eval_time: 5m, alertname: ReplwatchShardCountMismatch, exp_alerts: []}}
      # shard 3 is last seen at 5m: gone after the 5m lookback (10m), then `for: 5m`
      - {{eval_time: 14m, alertname: ReplwatchShardMissing, exp_alerts: []}}
      - eval_time: 16m
        alertname: ReplwatchShardMissing
        exp_alerts:
          - exp_labels: {{severity: critical}}
            exp_annotations:
              summary: "Only 2 of 3 replwatch shards are scraped"
              description: "{missing}"
  - interval: 1m
    input_series:
      - series: 'replwatch_shard_info{{instance="a:9750",index="1",count="3"}}'
        values: '1x30'
      - series: 'replwatch_shard_info{{instance="b:9750",index="2",count="3"}}'
        values: '1x30'
      - series: 'replwatch_shard_info{{instance="c:9750",index="3",count="3"}}'
        values: '1x30'
      - series: 'replwatch_shard_info{{instance="d:9750",index="4",count="4"}}'
        values: '1x30'
    alert_rule_test:
      - {{eval_time: 10m, alertname: ReplwatchShardCountMismatch, exp_alerts: []}}
      - eval_time: 20m
        alertname: ReplwatchShardCountMismatch
        exp_alerts:
          - exp_labels: {{severity: warning}}
            exp_annotations:
              summary: "replwatch instances disagree on the number of shards"
              description: "{mismatch}"
      - {{eval_time: 20m, alertname: ReplwatchShardMissing, exp_alerts: []}}
"""


def test_shard_rules_fire_when_they_should(tmp_path: Path) -> None:
    import yaml

    rules = PROM_DIR / "shard-rules.yml"
    described = {
        r["alert"]: r["annotations"]["description"]
        for g in yaml.safe_load(rules.read_text())["groups"]
        for r in g["rules"]
    }
    tests = tmp_path / "shard-rules.test.yml"
    tests.write_text(
        SHARD_RULE_TESTS.format(
            rules=rules,
            missing=described["ReplwatchShardMissing"],
            mismatch=described["ReplwatchShardCountMismatch"],
        )
    )
    result = subprocess.run(
        [_promtool(), "test", "rules", str(tests)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_doc_embeds_exactly_the_prometheus_files() -> None:
    doc = DOC.read_text()
    embedded = dict(
        re.findall(r"<!-- docs/prometheus/([\w.-]+) -->\n```yaml\n(.*?)```\n", doc, re.S)
    )
    assert sorted(embedded) == sorted(p.name for p in PROM_FILES)
    for path in PROM_FILES:
        assert embedded[path.name] == path.read_text(), f"{path.name} differs from the doc"
