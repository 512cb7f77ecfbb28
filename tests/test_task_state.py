"""The pure parts of the task lifecycle: the state file (round trip, atomic writes), task
definitions validated with the SyncTask model (the field named), the admin token check, the
admin API's answers without a lifecycle, and the client's address/token resolution."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from replwatch.admin.api import DISABLED_MESSAGE, AdminAPI, parse_body, token_matches
from replwatch.admin.client import ClientError, resolve_settings
from replwatch.atomic_file import write_atomic
from replwatch.config import config_from_data, sync_task_from_data
from replwatch.errors import ConfigError
from replwatch.tasks.task_state import (
    StateFileError,
    TaskState,
    TaskStateFile,
    find_task,
    state_dir_of,
)

BODY = {"name": "a", "source": "redis://:pw@127.0.0.1:7001", "target": "redis://127.0.0.1:7002"}


def test_state_round_trip(tmp_path: Path) -> None:
    state_file = TaskStateFile(tmp_path / "state")
    assert state_file.load() == TaskState()  # no file yet: empty
    state = TaskState().with_created("a", BODY).with_desired("a", False)
    state = state.with_desired("from-config", False).with_desired("from-config", True)
    state_file.save(state)
    loaded = state_file.load()
    assert loaded.created == {"a": BODY}
    assert loaded.stopped == frozenset({"a"})
    assert (state_file.path.stat().st_mode & 0o777) == 0o600  # it holds passwords
    assert (state_file.directory.stat().st_mode & 0o777) == 0o700
    tasks, problems = loaded.created_tasks("f")
    assert [t.name for t in tasks] == ["a"] and problems == []
    assert tasks[0].source.password is not None
    assert loaded.without("a") == TaskState()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{", "not valid JSON"),
        ('{"version": 2}', "not a version 1 task state file"),
        ("[]", "not a version 1 task state file"),
        ('{"version": 1, "created": []}', "created: must map task names"),
        ('{"version": 1, "stopped": "a"}', "stopped: must be a list"),
    ],
)
def test_state_file_problems(tmp_path: Path, text: str, problem: str) -> None:
    state_file = TaskStateFile(tmp_path)
    state_file.path.write_text(text)
    with pytest.raises(StateFileError, match=problem) as err:
        state_file.load()
    assert str(state_file.path) in str(err.value)


def test_a_stored_definition_that_no_longer_validates_is_reported_not_fatal() -> None:
    state = TaskState({"a": BODY, "b": {**BODY, "name": "b", "batch_size": 0}})
    tasks, problems = state.created_tasks("tasks.json")
    assert [t.name for t in tasks] == ["a"]
    assert problems == ["tasks.json: created.b.batch_size: must be at least 1"]


class Boom(OSError):
    pass


def _failing_fsync(fd: int) -> None:
    raise Boom(28, "No space left on device")


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    path = tmp_path / "tasks.json"
    write_atomic(path, b"old\n")
    with pytest.raises(Boom):
        write_atomic(path, b"new, never complete\n", fsync=_failing_fsync)
    assert path.read_bytes() == b"old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tasks.json"]  # no temp file left


def test_save_failure_is_one_line_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("a file where the directory should be")
    state_file = TaskStateFile(tmp_path / "state")
    with pytest.raises(StateFileError, match="cannot write") as err:
        state_file.save(TaskState())
    assert str(state_file.path) in str(err.value)


@pytest.mark.parametrize(
    ("state_dir", "expected"),
    [
        (None, "conf/replwatch-state"),
        ("st", "conf/st"),
        ("/abs/st", "/abs/st"),
    ],
)
def test_state_dir_is_relative_to_the_config_file(
    tmp_path: Path, state_dir: str | None, expected: str
) -> None:
    cfg = config_from_data({"sync": {"state_dir": state_dir}} if state_dir else {})
    got = state_dir_of(cfg, tmp_path / "conf" / "config.yaml")
    want = Path(expected) if expected.startswith("/") else tmp_path / expected
    assert got == want


def test_find_task_looks_in_config_then_state(tmp_path: Path) -> None:
    config_task = {**BODY, "name": "c"}
    cfg = config_from_data({"sync": {"tasks": [config_task]}})
    config_path = tmp_path / "config.yaml"
    TaskStateFile(state_dir_of(cfg, config_path)).save(TaskState().with_created("a", BODY))
    found_c = find_task(cfg, config_path, "c")
    found_a = find_task(cfg, config_path, "a")
    assert found_c is not None and found_c.name == "c"
    assert found_a is not None and found_a.target.port == 7002
    assert find_task(cfg, config_path, "nope") is None


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({**BODY, "batch_size": 0}, "tasks.batch_size: must be at least 1"),
        ({**BODY, "colour": "red"}, "tasks.colour: unknown key"),
        ({**BODY, "source": "http://x"}, "tasks.source: unsupported scheme 'http'"),
        ({**BODY, "target": "redis://h:99999"}, "tasks.target: port must be 1-65535"),
        ({**BODY, "target": BODY["source"]}, "tasks.target: must not be the source itself"),
        ({**BODY, "name": "a b"}, "tasks.name: must be letters, digits"),
        ({"source": BODY["source"], "target": BODY["target"]}, "tasks.name: required"),
        (["a"], "tasks: must be a mapping"),
    ],
)
def test_task_definition_problems_name_the_field(body: Any, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        sync_task_from_data(body)
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems
    assert "pw" not in str(err.value)


@pytest.mark.parametrize(
    ("header", "token", "ok"),
    [
        ("Bearer s3cret", "s3cret", True),
        ("bearer  s3cret ", "s3cret", True),
        ("Bearer s3cre", "s3cret", False),
        ("Bearer s3cret2", "s3cret", False),
        ("Basic s3cret", "s3cret", False),
        ("s3cret", "s3cret", False),
        ("Bearer ", "s3cret", False),
        (None, "s3cret", False),
        ("Bearer s3cret", None, False),
    ],
)
def test_token_matches(header: str | None, token: str | None, ok: bool) -> None:
    assert token_matches(header, SecretStr(token) if token else None) is ok


@pytest.mark.parametrize(
    ("token", "header", "status", "message"),
    [
        (None, "Bearer x", 403, DISABLED_MESSAGE),
        ("t", None, 401, "missing or wrong admin token"),
        ("t", "Bearer u", 401, "missing or wrong admin token"),
        ("t", "Bearer t", 503, "sync tasks need replwatch run -c"),
    ],
)
def test_api_refuses_before_any_task_work(
    token: str | None, header: str | None, status: int, message: str
) -> None:
    api = AdminAPI(SecretStr(token) if token else None, None)
    for method, path in (("GET", "/api/v1/tasks"), ("POST", "/api/v1/tasks/x/stop")):
        response = api.handle(method, path, header, b'{"name": "x"}')
        assert response.status == status
        assert str(response.body["error"]).startswith(message)
    if status == 401:
        assert response.headers.get("WWW-Authenticate", "").startswith("Bearer")


def test_api_unknown_endpoint_is_404_after_auth() -> None:
    api = AdminAPI(SecretStr("t"), None)
    assert api.handle("GET", "/api/v1/nope", "Bearer t", b"").status == 404
    assert api.handle("GET", "/api/v1/nope", None, b"").status == 401


@pytest.mark.parametrize(
    ("raw", "content_type", "expected"),
    [
        (b"", None, None),
        (b'{"a": 1}', "application/json", {"a": 1}),
        (b"a: 1\nb: [2]\n", "application/yaml", {"a": 1, "b": [2]}),
        (b"a: 1\n", None, {"a": 1}),
    ],
)
def test_parse_body(raw: bytes, content_type: str | None, expected: Any) -> None:
    assert parse_body(raw, content_type) == expected


def test_client_settings_precedence(tmp_path: Path) -> None:
    client_cfg = tmp_path / "client.yaml"
    token_file = tmp_path / "tok"
    token_file.write_text("from-file\n")
    client_cfg.write_text(f"url: http://file:1/\ntoken_file: {token_file}\n")
    env = {"HOME": str(tmp_path / "home")}
    got = resolve_settings(None, None, str(client_cfg), env)
    assert (got.url, got.token) == ("http://file:1", "from-file")
    env_set = {**env, "REPLWATCH_URL": "http://env:2", "REPLWATCH_TOKEN": "env-tok"}
    got = resolve_settings(None, None, str(client_cfg), env_set)
    assert (got.url, got.token) == ("http://env:2", "env-tok")
    got = resolve_settings("http://flag:3", "flag-tok", None, env_set)
    assert (got.url, got.token) == ("http://flag:3", "flag-tok")
    # the default client config lives under XDG_CONFIG_HOME
    xdg = tmp_path / "xdg"
    (xdg / "replwatch").mkdir(parents=True)
    (xdg / "replwatch" / "client.yaml").write_text("url: http://xdg:4\ntoken: x\n")
    got = resolve_settings(None, None, None, {"XDG_CONFIG_HOME": str(xdg)})
    assert (got.url, got.token) == ("http://xdg:4", "x")
    assert resolve_settings(None, None, None, env).url is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("url: [1]\n", "url: must be a string"),
        ("colour: red\n", "colour: unknown key"),
        ("- a\n", "must be a mapping"),
        ("url: [\n", r"line 2, column 1: .*"),  # a syntax error, with where
        ("url: http://a:1\nurl: http://b:2\n", "url: given twice"),
        # an alias bomb: refused before it is expanded (as the daemon's config is)
        (
            "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(
                f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n"
                for i in range(8)
            ),
            "an alias bomb",
        ),
    ],
)
def test_client_config_problems(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "client.yaml"
    path.write_text(text)
    with pytest.raises(ClientError, match=problem) as err:
        resolve_settings(None, None, str(path), {})
    assert err.value.exit_code == 2
    with pytest.raises(ClientError, match="no such file"):
        resolve_settings(None, None, str(tmp_path / "missing.yaml"), {})


def test_state_json_is_stable() -> None:
    data = json.loads(TaskState({"b": BODY, "a": BODY}, frozenset({"z", "a"})).to_json())
    assert data == {"version": 1, "created": {"a": BODY, "b": BODY}, "stopped": ["a", "z"]}
