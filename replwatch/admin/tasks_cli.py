"""`replwatch sync create|start|stop|remove|list` and `sync status` against a running daemon
(the admin API, replwatch/admin/api.py), through replwatch/admin/client.py.

Output: a table, or `--json` (the API's own JSON). Exit status: 0 done (for list/status:
every task shown runs: desired running, process up, checkpoint in full_sync or incremental);
1 the daemon refused or failed (unreachable, 401 no or a wrong token, 403 admin API disabled,
409 conflict, 5xx) or a task shown is not running; 2 bad input (no or a malformed daemon
address, unreadable task file, 400 bad definition, 404 unknown task).

Reads need the admin token too (replwatch/admin/client.py); when the daemon's admin API is
disabled, `sync status` and `sync list` say that `sync status -c FILE` reads the tasks
without it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import yaml

from replwatch.admin.client import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    AdminClient,
    ClientError,
    resolve_settings,
)
from replwatch.sync.checkpoint import Checkpoint
from replwatch.tasks.status_cli import render_task
from replwatch.tasks.watch import SyncTaskView

CLIENT_COMMANDS = ("create", "start", "stop", "remove", "list")
_EPILOG = (
    "daemon address and token: --url/--token, else REPLWATCH_URL/REPLWATCH_TOKEN, else "
    "--client-config FILE (default ~/.config/replwatch/client.yaml: url, token, token_file). "
    "every call needs the token, reads included. exit status: 0 done, 1 the daemon refused "
    "or failed (or a task shown is not running), 2 bad input (no or a bad address, bad task "
    "file, bad definition, unknown task)"
)


def add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="the daemon's address, e.g. http://127.0.0.1:9750")
    parser.add_argument("--token", help="the admin token (better: REPLWATCH_TOKEN)")
    parser.add_argument("--client-config", metavar="FILE", help="client config (url, token)")
    if parser.epilog is None:
        parser.epilog = _EPILOG


def add_task_client_parsers(sync_sub: Any) -> None:
    """The client subcommands of `replwatch sync` (status is added by the caller)."""
    create = sync_sub.add_parser("create", help="create a task on the daemon (YAML or JSON)")
    create.add_argument("file", help="the task definition: a file, or - for stdin")
    p = [create]
    for name, text in (
        ("start", "start a task on the daemon"),
        ("stop", "stop a task (it keeps its checkpoint)"),
        ("remove", "stop and forget a task created through the API"),
    ):
        sub = sync_sub.add_parser(name, help=text)
        sub.add_argument("task", help="the task's name")
        p.append(sub)
        if name == "start":
            sub.add_argument("--afresh", action="store_true", help="start with a full sync")
        if name == "remove":
            sub.add_argument(
                "--purge", action="store_true", help="also delete its checkpoint on the target"
            )
    listing = sync_sub.add_parser("list", help="list the daemon's tasks")
    p.append(listing)
    for parser in p:
        add_client_options(parser)
        parser.add_argument("--json", action="store_true", help="print JSON")


# --------------------------------------------------------------------------- rendering


def view_from_dict(data: Mapping[str, Any]) -> SyncTaskView:
    """The API's `sync` object back into a SyncTaskView (for the shared table renderer)."""
    names = {f.name for f in dataclasses.fields(SyncTaskView)}
    values = {k: v for k, v in data.items() if k in names}
    cp = values.get("checkpoint")
    if isinstance(cp, dict):
        cp_names = {f.name for f in dataclasses.fields(Checkpoint)}
        values["checkpoint"] = Checkpoint(**{k: v for k, v in cp.items() if k in cp_names})
    return SyncTaskView(**values)


def _process_text(process: Mapping[str, Any] | None) -> str:
    if process is None:
        return "-"
    state = f"running, pid {process['pid']}" if process["running"] else "not running"
    last = process["last_exit"]
    return f"{state}; {process['restarts']} restart(s); last exit {'-' if last is None else last}"


def task_running(record: Mapping[str, Any]) -> bool:
    process, sync = record.get("process"), record.get("sync")
    return bool(
        record.get("desired") == "running"
        and process
        and process.get("running")
        and sync
        and sync.get("running")
    )


def render_record(record: Mapping[str, Any], is_tty: bool) -> str:
    config = record["origin"] == "config"
    origin = "defined in config.yaml" if config else "created through the admin API"
    extra = [
        ("desired", f"{record['desired']} ({origin})"),
        ("process", _process_text(record.get("process"))),
    ]
    sync = record.get("sync")
    if sync:
        return render_task(view_from_dict(sync), is_tty, extra)
    ends = f"{record['source']} -> {record['target']}"
    width = max(len(k) for k, _ in extra)
    head = f"sync task {record['name']}: not polled yet  {ends}"
    return "\n".join([head, *(f"  {k.ljust(width)}  {v}" for k, v in extra)])


def render_list(records: Sequence[Mapping[str, Any]]) -> str:
    header = ("NAME", "ORIGIN", "DESIRED", "PROCESS", "STATE", "LAG", "SOURCE -> TARGET")
    rows = [header]
    for r in records:
        sync = r.get("sync") or {}
        process = r.get("process") or {}
        lag = sync.get("lag_bytes")
        rows.append(
            (
                r["name"],
                r["origin"],
                r["desired"],
                f"pid {process['pid']}" if process.get("running") else "-",
                sync.get("state", "-"),
                "-" if lag is None else f"{lag}B",
                f"{r['source']} -> {r['target']}",
            )
        )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header) - 1)]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in rows
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- commands


def read_task_file(name: str, stdin: TextIO) -> Any:
    """One task definition from a YAML or JSON file (or stdin for '-')."""
    where = "stdin" if name == "-" else name
    try:
        text = stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
    except OSError as exc:
        raise ClientError(f"{where}: cannot read: {exc.strerror or exc}", EXIT_USAGE) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ClientError(f"{where}: not valid YAML or JSON", EXIT_USAGE) from None
    if not isinstance(data, dict):
        raise ClientError(
            f"{where}: must hold one task (a mapping with name, source, target, …)", EXIT_USAGE
        )
    return data


def _client(args: argparse.Namespace) -> AdminClient:
    return AdminClient(resolve_settings(args.url, args.token, args.client_config, os.environ))


def _task_path(name: str) -> str:
    return "/api/v1/tasks/" + quote(name, safe="")


def run_task_client(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """One client command; prints the result. ClientError for the caller to print."""
    try:
        return _run_client_command(args, out if out is not None else sys.stdout)
    except ClientError as exc:
        if exc.status == 403 and args.sync_command in ("status", "list"):
            raise ClientError(
                f"{exc}; without the daemon, `replwatch sync status -c FILE` polls the tasks "
                "of a config",
                exc.exit_code,
                exc.status,
            ) from None
        raise


def _run_client_command(args: argparse.Namespace, out: TextIO) -> int:
    is_tty = out.isatty()
    command = args.sync_command
    client = _client(args)
    if command == "list":
        data = client.request("GET", "/api/v1/tasks")
        records = data.get("tasks", [])
        out.write(
            json.dumps(data, indent=2, sort_keys=True) + "\n" if args.json else render_list(records)
        )
        return EXIT_OK
    if command == "status":
        if args.task:
            records = [client.request("GET", _task_path(args.task))["task"]]
        else:
            records = client.request("GET", "/api/v1/tasks").get("tasks", [])
        ok = all(task_running(r) for r in records)
        if args.json:
            out.write(json.dumps({"tasks": records, "ok": ok}, indent=2, sort_keys=True) + "\n")
        elif records:
            out.write("\n\n".join(render_record(r, is_tty) for r in records) + "\n")
        else:
            out.write("no sync tasks\n")
        return EXIT_OK if ok else EXIT_FAILURE
    if command == "create":
        record = client.request("POST", "/api/v1/tasks", read_task_file(args.file, sys.stdin))
        record = record["task"]
        message = f"created sync task {record['name']}: {record['source']} -> {record['target']}"
    elif command == "start":
        body = {"afresh": True} if args.afresh else None
        record = client.request("POST", _task_path(args.task) + "/start", body)["task"]
        message = f"started sync task {args.task}" + (" afresh (full sync)" if args.afresh else "")
    elif command == "stop":
        record = client.request("POST", _task_path(args.task) + "/stop")["task"]
        message = f"stopped sync task {args.task}"
    elif command == "remove":
        path = _task_path(args.task) + ("?purge=1" if args.purge else "")
        record = client.request("DELETE", path)
        message = f"removed sync task {args.task}"
        if record.get("purged"):
            message += " (checkpoint deleted on the target)"
        elif record.get("purge_error"):
            message += f" ({record['purge_error']})"
    else:  # pragma: no cover - argparse only routes the commands above here
        raise ClientError(f"unknown command {command}", EXIT_USAGE)
    out.write(json.dumps(record, indent=2, sort_keys=True) + "\n" if args.json else message + "\n")
    return EXIT_OK


__all__ = ["CLIENT_COMMANDS", "EXIT_FAILURE", "add_task_client_parsers", "run_task_client"]
