"""Command-line entry points. User errors print one line each and exit non-zero, no traceback.

Exit status, every command: 0 ok; 1 a failure (a node down, a task not running, the daemon
refused); 2 a usage or configuration error: a bad option value, an unknown group or task
name, a config that does not load (one line per problem on stderr, naming the option or
the config key; replwatch/usage.py). `compare` adds 3 (could not complete) and keeps 1 for
"different"."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from replwatch import __version__
from replwatch.config import Config, apply_shard, load_config, read_config
from replwatch.errors import ConfigError, ReplwatchError
from replwatch.topology.sharding import owner
from replwatch.usage import (
    CONFIG_DEFAULT_SHOWN,
    CONFIG_HELP,
    DEFAULT_CONFIG,
    EXIT_USAGE,
    UsageError,
    UsageParser,
)

log = logging.getLogger("replwatch")

if TYPE_CHECKING:
    from replwatch.topology.fleet import Fleet

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = EXIT_USAGE  # a config that does not load is a usage error too
COMMANDS = ("run", "check-config", "status", "probe", "demo", "compare", "sync")


def _parser() -> argparse.ArgumentParser:
    parser = UsageParser(
        prog="replwatch",
        description="Redis replication lag monitor: true time lag, byte lag, Prometheus exporter.",
    )
    parser.add_argument("--version", action="version", version=f"replwatch {__version__}")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity (default: info)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", metavar="FILE", default=DEFAULT_CONFIG, help=CONFIG_HELP)

    def with_shard(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--shard",
            metavar="I/N",
            help="only the groups and sync tasks of shard I of N (e.g. 2/3; overrides the "
            "config's shard; see docs/sharding.md)",
        )

    p_run = sub.add_parser("run", help="run the monitor and exporter (the daemon)")
    with_config(p_run)
    with_shard(p_run)
    p_check = sub.add_parser(
        "check-config", help="validate a config file (with a shard: list what it owns)"
    )
    with_config(p_check)
    with_shard(p_check)
    p_status = sub.add_parser("status", help="poll once and print lag per replica")
    with_config(p_status)
    with_shard(p_status)
    p_status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p_status.add_argument("--group", action="append", help="only this group (repeatable)")
    p_probe = sub.add_parser("probe", help="run one WAIT probe per group and print the result")
    with_config(p_probe)
    with_shard(p_probe)
    p_probe.add_argument("--group", action="append", help="only this group (repeatable)")
    p_probe.add_argument("--json", action="store_true", help="print JSON")
    p_demo = sub.add_parser(
        "demo", help="start a local master with two replicas, a write load and the exporter"
    )
    p_demo.add_argument(
        "--listen",
        default="127.0.0.1:0",
        help="exporter address (default: a free port on 127.0.0.1)",
    )
    p_demo.add_argument("--server", help="path of a redis-server / valkey-server binary")
    p_demo.add_argument(
        "--duration", default=None, help="stop after this long (e.g. 30s); default: until Ctrl-C"
    )
    from replwatch.compare import add_compare_parser
    from replwatch.tasks.status_cli import add_sync_status_arguments

    add_compare_parser(sub)
    p_sync = sub.add_parser("sync", help="the bundled syncer: run a task, show task status")
    sync_sub = p_sync.add_subparsers(dest="sync_command", metavar="SYNC_COMMAND")
    p_sync_run = sync_sub.add_parser(
        "run", help="run one sync task in the foreground (replwatch run supervises them)"
    )
    with_config(p_sync_run)
    p_sync_run.add_argument("--task", required=True, help="the task's name in sync.tasks")
    p_sync_run.add_argument(
        "--afresh", action="store_true", help="start with a full sync even if it could continue"
    )
    p_sync_status = sync_sub.add_parser(
        "status",
        help="sync tasks' state, lag and full-sync progress: from the daemon (--url, "
        "REPLWATCH_URL, client config) or polled once from the config (-c)",
    )
    p_sync_status.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        default=None,  # None: ask the daemon if one is named, else read DEFAULT_CONFIG
        help="config file (YAML) whose tasks to poll, instead of asking the daemon that "
        f"--url, REPLWATCH_URL or the client config names {CONFIG_DEFAULT_SHOWN}",
    )
    add_sync_status_arguments(p_sync_status)
    from replwatch.admin.tasks_cli import add_client_options, add_task_client_parsers

    add_client_options(p_sync_status)
    add_task_client_parsers(sync_sub)
    return parser


def _load(path: str) -> Config:
    return load_config(path)


def _load_shard(args: argparse.Namespace) -> tuple[Config, Config]:
    """The whole config, and the part of it this instance runs (its shard: --shard, else the
    config's `shard`, else everything)."""
    whole, cfg, _ = _load_shard_advised(args)
    return whole, cfg


def _load_shard_advised(args: argparse.Namespace) -> tuple[Config, Config, list[str]]:
    """_load_shard, and the advice on the file ('path: reason' lines: the secrets written in
    it as plain text)."""
    whole, advice = read_config(args.config)
    return whole, apply_shard(whole, args.config, args.shard), advice


def _check_groups(args: argparse.Namespace, whole: Config, cfg: Config) -> None:
    """--group names must be groups of the config, and of this shard."""
    ours = {g.name for g in cfg.groups}
    for name in args.group or []:
        if name in ours:
            continue
        if cfg.shard is not None and any(g.name == name for g in whole.groups):
            count = cfg.shard.count
            raise UsageError(
                "--group",
                f"group {name!r} belongs to shard {owner(name, count)}/{count}, "
                f"not to this one ({cfg.shard})",
            )
        raise UsageError("--group", f"no group named {name!r} in {args.config}")


def _cmd_check_config(args: argparse.Namespace) -> int:
    whole, cfg, advice = _load_shard_advised(args)
    _require_something_to_run(args.config, whole, cfg)
    for line in advice:  # valid, but worth changing: on stderr, exit code 0
        where, _, why = line.partition(": ")
        print(f"{args.config}: {where}: warning: {why}", file=sys.stderr)
    nodes = sum(len(whole.nodes_of(g)) for g in whole.groups)
    discovered = sum(1 for g in whole.groups if g.source != "static")
    more = f", {discovered} discovered through Sentinel/Cluster" if discovered else ""
    print(f"{args.config}: OK ({len(whole.groups)} group(s), {nodes} node(s) configured{more})")
    if cfg.shard is not None and (args.shard is not None or whole.shard is not None):
        _print_shard(whole, cfg)
    return EXIT_OK


def _print_shard(whole: Config, cfg: Config) -> None:
    """What check-config's shard owns: a heading, then one line per group, task and publish
    key; a shard that owns nothing says so in its heading (and ends without a colon when
    no line follows)."""
    lines = [f"  group {group.name}" for group in cfg.groups]
    lines += [f"  task {task.name}" for task in cfg.sync.tasks]
    if cfg.publish.url is not None:
        lines += [f"  publish.key {cfg.publish.key}", f"  publish.channel {cfg.publish.channel}"]
    if cfg.groups or cfg.sync.tasks:
        heading = (
            f"shard {cfg.shard} owns {len(cfg.groups)} of {len(whole.groups)} group(s) and "
            f"{len(cfg.sync.tasks)} of {len(whole.sync.tasks)} sync task(s)"
        )
    else:
        heading = (
            f"shard {cfg.shard} owns no groups and no sync tasks (of the config's "
            f"{len(whole.groups)} group(s) and {len(whole.sync.tasks)} sync task(s))"
        )
    print(heading + (":" if lines else ""))
    for line in lines:
        print(line)


def _require_something_to_run(path: str, whole: Config, cfg: Config) -> None:
    """`run` refuses a config with nothing to do (no group, no sync task, no admin API and
    no task created through it): an empty or truncated file; check-config says the same."""
    from replwatch.tasks.task_state import TaskStateFile, state_dir_of

    if (
        not whole.groups
        and not whole.sync.tasks
        and cfg.admin.token is None
        and not TaskStateFile(state_dir_of(cfg, path)).load().created
    ):
        raise ConfigError(
            path,
            ["groups: at least one group (or one sync task, or admin.token) is needed to run"],
        )


def _cmd_run(args: argparse.Namespace) -> int:
    from replwatch.app import run_daemon

    whole, cfg, advice = _load_shard_advised(args)
    _require_something_to_run(args.config, whole, cfg)
    for line in advice:
        log.warning("%s: %s", args.config, line)
    if cfg.shard is not None and cfg.shard.count > 1 and not cfg.groups and not cfg.sync.tasks:
        log.warning(
            "shard %s owns none of the %d group(s) and %d sync task(s) of %s",
            cfg.shard,
            len(whole.groups),
            len(whole.sync.tasks),
            args.config,
        )

    def reload_config() -> Config:
        # a reload runs the same shard (--shard given at start wins, as at start)
        return apply_shard(_load(args.config), args.config, args.shard)

    run_daemon(cfg, config_path=args.config, log_level=args.log_level, reload_config=reload_config)
    return EXIT_OK


def _only_groups(cfg: Config, only: list[str] | None) -> Config:
    if not only:
        return cfg
    return cfg.model_copy(update={"groups": [g for g in cfg.groups if g.name in only]})


async def _discovered_fleet(cfg: Config) -> tuple[Fleet, list[str]]:
    """The groups of `cfg` with Sentinel and cluster groups discovered once; the second
    value: one line per discovery that failed."""
    from replwatch.state import SnapshotStore
    from replwatch.topology.fleet import Fleet

    fleet = Fleet(cfg, SnapshotStore())
    await fleet.discover()
    failed = [
        f"{s.group}: discovery failed: {s.error}" for s in fleet.discovery.values() if s.ok is False
    ]
    return fleet, failed


async def _status_snapshots(cfg: Config, only: list[str] | None) -> tuple[list[object], list[str]]:
    fleet, failed = await _discovered_fleet(_only_groups(cfg, only))
    monitors = list(fleet.monitors.values())
    try:
        await asyncio.gather(*(m.write_heartbeat() for m in monitors))
        snapshots = await asyncio.gather(*(m.poll_cycle() for m in monitors))
        if any(m.group.discover for m in monitors):
            # discovered replicas are polled from the second cycle on
            await asyncio.gather(*(m.write_heartbeat() for m in monitors))
            snapshots = await asyncio.gather(*(m.poll_cycle() for m in monitors))
    finally:
        fleet.close()
    return list(snapshots), failed


def _cmd_status(args: argparse.Namespace) -> int:
    import time

    from replwatch.state import GroupSnapshot
    from replwatch.status_view import render_json, render_table, status_ok

    whole, cfg = _load_shard(args)
    _check_groups(args, whole, cfg)
    polled, failed = asyncio.run(_status_snapshots(cfg, args.group))
    snapshots = [s for s in polled if isinstance(s, GroupSnapshot)]
    now = time.time()  # lag as of the moment it is printed (ReplicaView.lag_at)
    print(render_json(snapshots, now) if args.json else render_table(snapshots, now))
    for line in failed:
        print(line, file=sys.stderr)
    return EXIT_OK if status_ok(snapshots) and not failed else EXIT_FAILURE


def _cmd_probe(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from replwatch.observe.probe import ProbeResult

    whole, cfg = _load_shard(args)
    _check_groups(args, whole, cfg)
    if not any(cfg.probe_of(g).enabled for g in _only_groups(cfg, args.group).groups):
        which = "of the groups named by --group" if args.group else "group"
        raise ConfigError(args.config, [f"probe.enabled: no {which} has probes enabled"])

    async def run() -> tuple[list[ProbeResult], list[str]]:
        fleet, failed = await _discovered_fleet(_only_groups(cfg, args.group))
        probers = [p for p, _ in fleet.probers.values()]
        try:
            return list(await asyncio.gather(*(p.probe() for p in probers))), failed
        finally:
            fleet.close()

    results, failed = asyncio.run(run())
    for line in failed:
        print(line, file=sys.stderr)
    if args.json:
        print(json.dumps({"probes": [asdict(r) for r in results]}, indent=2))
    else:
        for r in results:
            if r.result == "error":
                print(f"{r.group}: error ({r.reason}): {r.message}")
            else:
                ms = (r.seconds or 0) * 1000
                print(
                    f"{r.group}: {r.result}: {r.acked}/{r.wanted} replicas acknowledged "
                    f"in {ms:.1f} ms"
                )
    ok = all(r.result == "ok" for r in results) and not failed
    return EXIT_OK if ok else EXIT_FAILURE


def _sync_status_asks_daemon(args: argparse.Namespace) -> bool:
    """--url asks the daemon; -c reads the config; else the daemon when REPLWATCH_URL or the
    client config names one, else config.yaml."""
    import os

    from replwatch.admin.client import has_daemon_address

    if args.url:
        return True
    if args.config is not None:
        return False
    return has_daemon_address(None, args.client_config, os.environ)


def _cmd_sync(args: argparse.Namespace) -> int:
    from replwatch.admin.client import ClientError
    from replwatch.admin.tasks_cli import CLIENT_COMMANDS, run_task_client

    if args.sync_command in CLIENT_COMMANDS or (
        args.sync_command == "status" and _sync_status_asks_daemon(args)
    ):
        try:
            return run_task_client(args)
        except ClientError as exc:
            print(f"replwatch: {exc}", file=sys.stderr)
            return exc.exit_code
    if args.sync_command == "status":
        from replwatch.tasks.status_cli import run_sync_status
        from replwatch.tasks.task_state import state_dir_of

        config = args.config or DEFAULT_CONFIG
        cfg = _load(config)
        return run_sync_status(
            cfg,
            args.task,
            args.json,
            sys.stdout,
            sys.stdout.isatty(),
            source=config,
            state_dir=state_dir_of(cfg, config),  # the tasks' local reports
        )
    if args.sync_command == "run":
        from replwatch.sync.foreground import run_task_foreground
        from replwatch.tasks.task_state import find_task, state_dir_of

        cfg = _load(args.config)
        task = find_task(cfg, args.config, args.task)  # config, else created through the API
        if task is None:
            names = ", ".join(t.name for t in cfg.sync.tasks) or "none"
            raise ConfigError(
                args.config,
                [
                    f"sync.tasks: no task named {args.task} (configured: {names}; "
                    "none created through the admin API either)"
                ],
            )
        if args.afresh:
            task = task.model_copy(update={"afresh": True})
        return run_task_foreground(task, cfg.tls, state_dir_of(cfg, args.config))
    print(
        "replwatch sync: name a command: run, status, create, start, stop, remove, list "
        "(see replwatch sync --help)",
        file=sys.stderr,
    )
    return EXIT_CONFIG


def _cmd_compare(args: argparse.Namespace) -> int:
    from replwatch.compare import run_compare

    return run_compare(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from replwatch.demo import check_demo_options, run_demo

    check_demo_options(args.listen, args.server, args.duration)  # before any server starts
    return run_demo(args.listen, args.server, args.duration)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    commands = {
        "run": _cmd_run,
        "check-config": _cmd_check_config,
        "status": _cmd_status,
        "probe": _cmd_probe,
        "demo": _cmd_demo,
        "sync": _cmd_sync,
        "compare": _cmd_compare,
    }
    if args.command is None:
        print(
            f"replwatch: name a command: {', '.join(COMMANDS)} (see replwatch --help)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        return commands[args.command](args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{exc.source}: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except ReplwatchError as exc:
        print(f"replwatch: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
