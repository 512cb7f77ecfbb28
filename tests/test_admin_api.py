"""The sync task lifecycle as an operator drives it: `replwatch run` as a subprocess with a
source and targets started here, tasks created, listed, stopped, started afresh and removed
through the admin API (HTTP) and the CLI (`replwatch sync …`), a daemon restart that brings
created tasks back (a stopped one stays stopped), and the refusals: 401 (nothing changes),
400 naming the field, 404, 409 (duplicate name, config task)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from replwatch.sync.checkpoint import Checkpoint, checkpoint_key

from .support.daemons import RunningDaemon, cli, fetch
from .support.datasets import connect
from .support.servers import RedisProcess, ServerSet, closed_port, wait_for
from .support.syncing import TASK, checkpoint, wait_caught_up

TOKEN = "adm1n-T0ken-xyz"
SECRET = "pa55-In-Url-q7"
CONFIG_TASK = "from-config"


def api(
    base: str, method: str, path: str, body: Any = None, token: str | None = TOKEN
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    status, text = fetch(base + path, method, token, data=data, timeout=30)
    return status, json.loads(text)


def sync_cli(base: str, *args: str, token: str = TOKEN, stdin: str | None = None) -> Any:
    """`replwatch sync …` against the daemon at `base` (REPLWATCH_URL / REPLWATCH_TOKEN)."""
    env = {**os.environ, "REPLWATCH_URL": base, "REPLWATCH_TOKEN": token}
    env.pop("XDG_CONFIG_HOME", None)
    return cli("sync", *args, env=env, input=stdin)


def task_names(base: str) -> list[str]:
    status, data = api(base, "GET", "/api/v1/tasks")
    assert status == 200, data
    return [t["name"] for t in data["tasks"]]


def pid_alive(pid: int) -> bool:
    return subprocess.run(["kill", "-0", str(pid)], check=False).returncode == 0


def state_of(target: RedisProcess) -> str | None:
    cp = checkpoint(target)
    return cp.state if cp is not None else None


def config_task_checkpoint(target: RedisProcess) -> Checkpoint | None:
    with connect(target) as client:
        return Checkpoint.from_hash(CONFIG_TASK, client.hgetall(checkpoint_key(CONFIG_TASK)))


@pytest.mark.timeout(240)
def test_task_lifecycle_through_api_and_cli(debian_servers: ServerSet, tmp_path: Path) -> None:
    source = debian_servers.start("source", extra=["--repl-backlog-size", "32mb"])
    target = debian_servers.start("target")
    target2 = debian_servers.start("target2")
    with connect(source) as client:
        client.set("before", "1")
    token_file = tmp_path / "admin-token"
    token_file.write_text(TOKEN + "\n")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "exporter": {"listen": "127.0.0.1:0"},
                "poll": {"interval": "200ms", "timeout": "150ms"},
                "admin": {"token_file": str(token_file)},
                "sync": {
                    "tasks": [{"name": CONFIG_TASK, "source": source.url, "target": target2.url}]
                },
            }
        )
    )
    state_file = tmp_path / "replwatch-state" / "tasks.json"
    log = tmp_path / "daemon.log"
    definition = {"name": TASK, "source": source.url, "target": target.url, "batch_size": 100}
    outputs: list[str] = []
    daemon = RunningDaemon(cfg, log=log)
    try:
        base = daemon.base
        # ---- refusals that change nothing: no token, wrong token
        for token in (None, "wrong-" + TOKEN):
            status, body = api(base, "POST", "/api/v1/tasks", definition, token=token)
            assert status == 401 and "token" in body["error"], body
            status, body = api(base, "POST", f"/api/v1/tasks/{CONFIG_TASK}/stop", token=token)
            assert status == 401, body
            status, _ = api(base, "GET", "/api/v1/tasks", token=token)
            assert status == 401
        assert task_names(base) == [CONFIG_TASK]
        assert not state_file.exists()
        result = sync_cli(base, "list", token="wrong")
        assert result.returncode == 1
        assert result.stderr.strip().startswith(f"replwatch: the daemon at {base}: the token")
        # reads need the token too, and the CLI says how to give it (issue 21)
        for args in (["status"], ["status", CONFIG_TASK, "--json"], ["list"]):
            result = sync_cli(base, *args, token="")
            assert result.returncode == 1 and result.stdout == "", result.stdout
            assert result.stderr.splitlines() == [
                f"replwatch: the daemon at {base}: no token was sent, and its admin API needs "
                "one for every call, reads included (401): pass --token or set "
                "REPLWATCH_TOKEN (or token_file: in the client config)"
            ], result.stderr
        # ---- bad definitions: 400 naming the field
        for bad, field in (
            ({**definition, "batch_size": 0}, "tasks.batch_size: "),
            ({**definition, "target": "redis://127.0.0.1:99999"}, "tasks.target: port"),
            ({**definition, "colour": "red"}, "tasks.colour: unknown key"),
            ({k: v for k, v in definition.items() if k != "name"}, "tasks.name: "),
        ):
            status, body = api(base, "POST", "/api/v1/tasks", bad)
            assert status == 400 and body["error"].startswith(field), body
        result = sync_cli(
            base, "create", "-", stdin=yaml.safe_dump({**definition, "batch_size": 0})
        )
        assert result.returncode == 2
        assert result.stderr.strip().startswith("replwatch: tasks.batch_size: "), result.stderr
        # ---- conflicts and unknown tasks
        status, body = api(base, "POST", "/api/v1/tasks", {**definition, "name": CONFIG_TASK})
        assert status == 409 and "defined in config.yaml" in body["error"], body
        status, body = api(base, "DELETE", f"/api/v1/tasks/{CONFIG_TASK}")
        assert status == 409 and "defined in config.yaml" in body["error"], body
        assert api(base, "GET", "/api/v1/tasks/nope")[0] == 404
        assert api(base, "POST", "/api/v1/tasks/nope/stop")[0] == 404
        # an unknown task is a usage error: exit 2, one line (issue 21)
        for args in (["remove", "nope"], ["stop", "nope"], ["start", "nope"], ["status", "nope"]):
            result = sync_cli(base, *args)
            assert result.returncode == 2, (args, result.stderr)
            assert result.stderr.splitlines() == ["replwatch: no sync task named 'nope' (404)"]
        assert task_names(base) == [CONFIG_TASK]

        # ---- create (CLI, YAML on stdin): it runs and copies the data
        result = sync_cli(base, "create", "-", stdin=yaml.safe_dump(definition))
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"created sync task {TASK}:")
        wait_caught_up(source, target)
        with connect(target) as client:
            assert client.get("before") == b"1"
        status, body = api(base, "POST", "/api/v1/tasks", definition)
        assert status == 409 and "exists already" in body["error"], body
        # a task with a password in its URL: never shown (it cannot connect: closed port)
        locked = {
            "name": "locked",
            "source": f"redis://user:{SECRET}@127.0.0.1:{closed_port()}",
            "target": target2.url,
        }
        status, body = api(base, "POST", "/api/v1/tasks", locked)
        assert status == 201, body
        outputs.append(json.dumps(body))
        assert body["task"]["source"].startswith("redis://user:***@")
        assert sorted(task_names(base)) == sorted([CONFIG_TASK, TASK, "locked"])

        def status_shows_running() -> dict[str, Any] | None:
            status, body = api(base, "GET", f"/api/v1/tasks/{TASK}")
            outputs.append(json.dumps(body))
            task = body["task"]
            ok = task["sync"] and task["sync"]["state"] == "incremental"
            return task if status == 200 and ok and task["process"]["running"] else None

        record = wait_for(status_shows_running, 10, "the task's status to show it running")
        assert record["origin"] == "api" and record["desired"] == "running"
        assert record["definition"]["batch_size"] == 100
        pid = record["process"]["pid"]
        assert pid in daemon.children()
        result = sync_cli(base, "status", TASK)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"sync task {TASK}: incremental" in result.stdout
        assert "created through the admin API" in result.stdout
        result = sync_cli(base, "list", "--json")
        assert result.returncode == 0
        listed = {t["name"]: t for t in json.loads(result.stdout)["tasks"]}
        assert listed[CONFIG_TASK]["origin"] == "config"
        outputs.append(result.stdout)

        # ---- stop (CLI): the process is gone, the checkpoint says stopped
        result = sync_cli(base, "stop", TASK)
        assert result.returncode == 0, result.stderr
        assert not pid_alive(pid)
        assert state_of(target) == "stopped"
        with connect(source) as client:
            client.set("while-stopped", "2")
        # a config task can be stopped too (the stop is persisted)
        status, body = api(base, "POST", f"/api/v1/tasks/{CONFIG_TASK}/stop")
        assert status == 200 and body["task"]["desired"] == "stopped", body
        wait_for(
            lambda: (cp := config_task_checkpoint(target2)) is not None and cp.state == "stopped",
            10,
            "the config task's checkpoint to say stopped",
        )
        assert json.loads(state_file.read_text())["stopped"] == [CONFIG_TASK, TASK]
        result = sync_cli(base, "status", TASK)
        assert result.returncode == 1 and "stopped" in result.stdout
    finally:
        daemon.stop(grace=30)

    # ---- restart: created tasks are back, the stopped ones stay stopped
    daemon = RunningDaemon(cfg, log=log)
    try:
        base = daemon.base
        assert sorted(task_names(base)) == sorted([CONFIG_TASK, TASK, "locked"])
        status, body = api(base, "GET", f"/api/v1/tasks/{TASK}")
        assert body["task"]["desired"] == "stopped" and not body["task"]["process"]["running"]
        status, body = api(base, "GET", f"/api/v1/tasks/{CONFIG_TASK}")
        assert body["task"]["desired"] == "stopped"
        status, body = api(base, "GET", "/api/v1/tasks/locked")
        assert body["task"]["desired"] == "running"
        wait_for(lambda: len(daemon.children()) == 1, 10, "only the 'locked' task to run")
        assert state_of(target) == "stopped"
        with connect(target) as client:
            assert client.get("while-stopped") is None

        # ---- start --afresh (CLI): a full sync again
        resyncs_before = checkpoint(target).full_resyncs  # type: ignore[union-attr]
        result = sync_cli(base, "start", TASK, "--afresh")
        assert result.returncode == 0, result.stderr
        cp = wait_caught_up(source, target)
        assert cp.full_resyncs == resyncs_before + 1
        with connect(target) as client:
            assert client.get("while-stopped") == b"2"
        # ... and a plain start of the config task continues from its checkpoint
        status, body = api(base, "POST", f"/api/v1/tasks/{CONFIG_TASK}/start", {"afresh": False})
        assert status == 200 and body["task"]["desired"] == "running", body
        wait_for(
            lambda: (
                (cp := config_task_checkpoint(target2)) is not None and cp.state == "incremental"
            ),
            15,
            "the config task to run again",
        )
        cp2 = config_task_checkpoint(target2)
        assert cp2 is not None and cp2.full_resyncs == 1
        assert json.loads(state_file.read_text())["stopped"] == []

        # ---- remove (CLI): gone from the list and the state file; its checkpoint stays
        pid = api(base, "GET", f"/api/v1/tasks/{TASK}")[1]["task"]["process"]["pid"]
        result = sync_cli(base, "remove", TASK)
        assert result.returncode == 0, result.stderr
        assert not pid_alive(pid)
        assert sorted(task_names(base)) == sorted([CONFIG_TASK, "locked"])
        assert TASK not in json.loads(state_file.read_text())["created"]
        assert state_of(target) == "stopped"
        status, body = api(base, "DELETE", "/api/v1/tasks/locked?purge=1")
        assert status == 200 and body["removed"] == "locked", body
        assert task_names(base) == [CONFIG_TASK]
    finally:
        daemon.stop(grace=30)

    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]
    for out in [*outputs, text]:
        assert SECRET not in out
        assert TOKEN not in out
