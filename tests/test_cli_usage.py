"""The command line's usage errors and help, as a user meets them (issue 21): every bad
invocation of every command exits 2 with one line on stderr that names the option (or the
config key), prints nothing on stdout and no traceback; every command that takes -c shows its
default the same way in --help; check-config on a shard that owns nothing says so; and
`sync status --url` against a daemon whose admin API is off says what to do.

No Redis is needed but for the daemon test: the configs name closed ports, and every error
here is found before anything is dialled."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from replwatch.cli import main
from replwatch.topology.sharding import owner

from .support.daemons import RunningDaemon, cli
from .support.servers import closed_port

SECRET = "us4ge-pw-Zq9"


@dataclass(frozen=True)
class Files:
    """The configs the bad invocations point at."""

    cfg: Path  # one group "a" (probes off) and one sync task "t"
    no_tasks: Path  # one group, probes on, no sync task
    empty: Path  # nothing to run
    missing: Path  # no such file
    directory: Path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    root = tmp_path_factory.mktemp("usage")
    port = closed_port()
    cfg = root / "c.yaml"
    cfg.write_text(
        "probe: {enabled: false}\n"
        f'groups:\n  - name: a\n    master: "redis://127.0.0.1:{port}"\n'
        f'sync:\n  tasks:\n    - {{name: t, source: "redis://127.0.0.1:{port}", '
        f'target: "redis://127.0.0.1:{port + 1}"}}\n'
    )
    no_tasks = root / "groups.yaml"
    no_tasks.write_text(f'groups:\n  - name: a\n    master: "redis://127.0.0.1:{port}"\n')
    empty = root / "empty.yaml"
    empty.write_text("poll: {interval: 1s}\n")
    (root / "dir.yaml").mkdir()
    return Files(cfg, no_tasks, empty, root / "missing.yaml", root / "dir.yaml")


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment without a daemon address or token, and a HOME without a client
    config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLWATCH_")}
    env.pop("XDG_CONFIG_HOME", None)
    return {**env, "HOME": str(home), **extra}


# (id, argv built from the files, env additions, the one line's expected start)
Case = tuple[str, Callable[[Files], list[str]], dict[str, str], str]
CLOSED = "http://127.0.0.1:1"

CASES: list[Case] = [
    # ---- replwatch itself
    ("no-command", lambda f: [], {}, "replwatch: name a command: run, check-config, status, "),
    ("unknown-command", lambda f: ["nope"], {}, "replwatch: argument COMMAND: invalid choice: "),
    (
        "bad-log-level",
        lambda f: ["--log-level", "loud", "status"],
        {},
        "replwatch: argument --log-level: invalid choice: 'loud'",
    ),
    ("unknown-option", lambda f: ["status", "--nope"], {}, "replwatch: unrecognized arguments: "),
    # ---- run
    ("run-missing-config", lambda f: ["run", "-c", str(f.missing)], {}, "{missing}: <file>: "),
    ("run-config-is-a-dir", lambda f: ["run", "-c", str(f.directory)], {}, "{directory}: "),
    ("run-nothing-to-run", lambda f: ["run", "-c", str(f.empty)], {}, "{empty}: groups: "),
    ("run-bad-shard", lambda f: ["run", "-c", str(f.cfg), "--shard", "4/3"], {}, "--shard: "),
    # ---- check-config
    (
        "check-bad-shard",
        lambda f: ["check-config", "-c", str(f.cfg), "--shard", "x"],
        {},
        "--shard: ",
    ),
    ("check-missing", lambda f: ["check-config", "-c", str(f.missing)], {}, "{missing}: "),
    # ---- status, probe
    (
        "status-unknown-group",
        lambda f: ["status", "-c", str(f.cfg), "--group", "nope"],
        {},
        "--group: no group named 'nope' in {cfg}",
    ),
    (
        "status-group-of-another-shard",
        lambda f: [
            "status",
            "-c",
            str(f.cfg),
            "--shard",
            f"{owner('a', 2) % 2 + 1}/2",
            "--group",
            "a",
        ],
        {},
        f"--group: group 'a' belongs to shard {owner('a', 2)}/2, not to this one",
    ),
    ("status-missing", lambda f: ["status", "-c", str(f.missing)], {}, "{missing}: "),
    (
        "probe-unknown-group",
        lambda f: ["probe", "-c", str(f.cfg), "--group", "nope"],
        {},
        "--group: no group named 'nope'",
    ),
    (
        "probe-disabled",
        lambda f: ["probe", "-c", str(f.cfg)],
        {},
        "{cfg}: probe.enabled: no group has probes enabled",
    ),
    # ---- demo: checked before any server starts
    (
        "demo-bad-duration",
        lambda f: ["demo", "--duration", "soon"],
        {},
        "--duration: invalid duration 'soon'",
    ),
    (
        "demo-zero-duration",
        lambda f: ["demo", "--duration", "0s"],
        {},
        "--duration: must be above 0",
    ),
    (
        "demo-bad-listen",
        lambda f: ["demo", "--listen", "nowhere"],
        {},
        "--listen: must be host:port",
    ),
    ("demo-bad-port", lambda f: ["demo", "--listen", "127.0.0.1:99999"], {}, "--listen: port "),
    (
        "demo-no-server",
        lambda f: ["demo", "--server", str(f.missing)],
        {},
        "--server: {missing}: no such file",
    ),
    # ---- sync run, sync status from a config
    ("sync-no-command", lambda f: ["sync"], {}, "replwatch sync: name a command: "),
    (
        "sync-run-no-task",
        lambda f: ["sync", "run", "-c", str(f.cfg)],
        {},
        "replwatch sync run: the following arguments are required: --task",
    ),
    (
        "sync-run-unknown-task",
        lambda f: ["sync", "run", "-c", str(f.cfg), "--task", "nope"],
        {},
        "{cfg}: sync.tasks: no task named nope",
    ),
    (
        "sync-status-unknown-task",
        lambda f: ["sync", "status", "-c", str(f.cfg), "nope"],
        {},
        "sync status: no task named nope in {cfg}",
    ),
    (
        "sync-status-no-tasks",
        lambda f: ["sync", "status", "-c", str(f.no_tasks)],
        {},
        "sync status: no sync tasks in {no_tasks}",
    ),
    # ---- the daemon's client: its address, its files (nothing is dialled)
    (
        "sync-status-url-not-a-url",
        lambda f: ["sync", "status", "--url", "localhost"],
        {},
        "replwatch: --url: 'localhost' is not a daemon address",
    ),
    (
        "sync-list-url-bad-port",
        lambda f: ["sync", "list", "--url", "http://127.0.0.1:99999"],
        {},
        "replwatch: --url: 'http://127.0.0.1:99999' is not a daemon address",
    ),
    (
        "sync-list-url-with-password",
        lambda f: ["sync", "list", "--url", f"http://admin:{SECRET}@127.0.0.1:1"],
        {},
        "replwatch: --url: put no user or password in the address",
    ),
    (
        "sync-list-env-url-bad",
        lambda f: ["sync", "list"],
        {"REPLWATCH_URL": "ftp://127.0.0.1:1"},
        "replwatch: REPLWATCH_URL: 'ftp://127.0.0.1:1' is not a daemon address",
    ),
    ("sync-list-no-address", lambda f: ["sync", "list"], {}, "replwatch: no daemon address: "),
    (
        "sync-status-no-client-config",
        lambda f: ["sync", "status", "--client-config", str(f.missing)],
        {},
        "replwatch: --client-config: {missing}: no such file",
    ),
    (
        "sync-create-no-file",
        lambda f: ["sync", "create", str(f.missing), "--url", CLOSED],
        {},
        "replwatch: {missing}: cannot read: ",
    ),
    (
        "sync-start-no-task",
        lambda f: ["sync", "start", "--url", CLOSED],
        {},
        "replwatch sync start: the following arguments are required: task",
    ),
    # ---- compare
    ("compare-no-source", lambda f: ["compare"], {}, "replwatch compare: --source: required"),
    (
        "compare-bad-batch",
        lambda f: [
            "compare",
            "--source",
            CLOSED.replace("http", "redis"),
            "--target",
            "redis://127.0.0.1:2",
            "--batch",
            "0",
        ],
        {},
        "replwatch compare: --batch: must be a whole number >= 1, got '0'",
    ),
    (
        "compare-bad-url",
        lambda f: ["compare", "--source", "http://127.0.0.1:1", "--target", "redis://127.0.0.1:2"],
        {},
        "replwatch compare: --source: ",
    ),
    (
        "compare-no-ca-file",
        lambda f: [
            "compare",
            "--source",
            "rediss://127.0.0.1:1",
            "--target",
            "redis://127.0.0.1:2",
            "--tls-ca-file",
            str(f.missing),
        ],
        {},
        "replwatch compare: --tls-ca-file: {missing}: no such file",
    ),
    (
        "compare-unknown-option",
        lambda f: ["compare", "--colour"],
        {},
        "replwatch: unrecognized arguments: --colour",
    ),
]


@pytest.mark.parametrize(
    ("argv", "env", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_usage_error_exits_2_with_one_line(
    files: Files,
    tmp_path: Path,
    argv: Callable[[Files], list[str]],
    env: dict[str, str],
    expected: str,
) -> None:
    result = cli(*argv(files), env=clean_env(tmp_path, **env), timeout=30)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    names = {k: str(v) for k, v in vars(files).items()}
    assert lines[0].startswith(expected.format(**names)), lines[0]
    assert SECRET not in result.stderr


def test_standalone_compare_usage_error_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from replwatch import compare

    with pytest.raises(SystemExit) as stopped:
        compare.main(["--colour"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "replwatch compare: unrecognized arguments: --colour (see replwatch compare --help)"
    ]


# ----------------------------------------------------------------------------- --help


def help_text(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main([*argv, "--help"])
    assert stopped.value.code == 0
    return capsys.readouterr().out


def subcommands(text: str) -> list[str]:
    """The command names a --help lists (4-space indented, under COMMAND/SYNC_COMMAND)."""
    return re.findall(r"^    ([a-z][a-z-]*)\b", text, re.MULTILINE)


def option_help(text: str, option: str) -> str | None:
    """The help of `option` (its first line starts with it), whitespace collapsed."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith(option):
            block = [line.strip()[len(option) :]]
            for more in lines[i + 1 :]:
                if not more.strip() or re.match(r"^ {1,4}-", more):  # the next option
                    break
                block.append(more.strip())
            return " ".join(" ".join(block).split())
    return None


def test_every_config_option_shows_its_default_the_same_way(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    commands = subcommands(help_text(capsys))
    assert {"run", "check-config", "status", "probe", "demo", "compare", "sync"} <= set(commands)
    paths = [(c,) for c in commands if c != "sync"]
    paths += [("sync", c) for c in subcommands(help_text(capsys, "sync"))]
    assert ("sync", "status") in paths and ("sync", "create") in paths
    with_config = {}
    for path in paths:
        shown = option_help(help_text(capsys, *path), "-c FILE, --config FILE")
        if shown is not None:
            with_config[path] = shown
    assert set(with_config) == {
        ("run",),
        ("check-config",),
        ("status",),
        ("probe",),
        ("sync", "run"),
        ("sync", "status"),
    }
    for path, shown in with_config.items():
        assert shown.startswith("config file (YAML)"), (path, shown)
        assert shown.endswith("(default: config.yaml)"), (path, shown)


# ----------------------------------------------------------------------------- check-config


def test_check_config_of_a_shard_that_owns_nothing(tmp_path: Path) -> None:
    cfg = tmp_path / "one.yaml"
    cfg.write_text('groups:\n  - name: only\n    master: "127.0.0.1:6390"\n')
    empty = next(i for i in (1, 2, 3) if owner("only", 3) != i)
    result = cli("check-config", "-c", str(cfg), "--shard", f"{empty}/3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{cfg}: OK (1 group(s), 1 node(s) configured)",
        f"shard {empty}/3 owns no groups and no sync tasks (of the config's 1 group(s) and "
        "0 sync task(s))",
    ]
    mine = cli("check-config", "-c", str(cfg), "--shard", f"{owner('only', 3)}/3")
    assert mine.stdout.splitlines()[1:] == [
        f"shard {owner('only', 3)}/3 owns 1 of 1 group(s) and 0 of 0 sync task(s):",
        "  group only",
    ]


# ----------------------------------------------------------------------------- admin API off


@pytest.mark.timeout(60)
def test_sync_status_url_against_a_daemon_without_admin_token(tmp_path: Path) -> None:
    """Reads need the admin token too; a daemon without one has its admin API off (403),
    and `sync status` / `sync list` say so and name the way without it (issue 21)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        'exporter: {listen: "127.0.0.1:0"}\nprobe: {enabled: false}\n'
        f'groups:\n  - name: a\n    master: "redis://127.0.0.1:{closed_port()}"\n'
    )
    with RunningDaemon(cfg) as daemon:
        env = clean_env(tmp_path)
        for argv in (["sync", "status"], ["sync", "list"], ["sync", "status", "x", "--json"]):
            result = cli(*argv, "--url", daemon.base, env=env)
            assert result.returncode == 1, result.stderr
            assert result.stdout == ""
            [line] = result.stderr.splitlines()
            assert line.startswith(
                f"replwatch: the daemon at {daemon.base}: the admin API is disabled: set "
                "admin.token or admin.token_file in the config and restart replwatch run (403)"
            ), line
            assert line.endswith("`replwatch sync status -c FILE` polls the tasks of a config")
        stop = cli("sync", "stop", "x", "--url", daemon.base, env=env)
        assert stop.returncode == 1
        assert stop.stderr.strip().endswith("restart replwatch run (403)"), stop.stderr
