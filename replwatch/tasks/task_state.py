"""The persisted part of the sync task lifecycle: tasks created through the admin API and the
desired state (running / stopped) of every task, in `<state dir>/tasks.json`.

The state directory is `sync.state_dir` of the config (relative to the config file's
directory), by default `<config dir>/replwatch-state`. Only `replwatch run` writes the file;
`replwatch sync run --task NAME` (a task process) reads it to find a task created through the
API. Writes are atomic (replwatch/atomic_file.py): a temporary file in the same directory,
fsync, rename over the old file, fsync of the directory, so a crash leaves the old file or the
new one, never half of one. The file holds the task definitions as they were sent (source and
target URLs with their passwords: the task processes need them), so it is created mode 0600 in
a 0700 directory.

File format (version 1):

    {"version": 1,
     "created": {"<task>": {<the task definition, as sent>}, …},
     "stopped": ["<task>", …]}          # config tasks and created tasks alike
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replwatch.atomic_file import write_atomic
from replwatch.config import Config, SyncTask, sync_task_from_data
from replwatch.errors import ConfigError, ReplwatchError

STATE_VERSION = 1
STATE_FILE = "tasks.json"
DEFAULT_STATE_DIR = "replwatch-state"


class StateFileError(ReplwatchError):
    """The state file cannot be read, parsed or written (one line, names the file)."""


def state_dir_of(cfg: Config, config_path: str | Path) -> Path:
    """The state directory: sync.state_dir (relative to the config file's directory), else
    <config dir>/replwatch-state."""
    base = Path(config_path).absolute().parent
    configured = cfg.sync.state_dir
    if configured is None:
        return base / DEFAULT_STATE_DIR
    configured = configured.expanduser()
    return configured if configured.is_absolute() else base / configured


@dataclass(frozen=True)
class TaskState:
    """What the state file holds. `created` maps a task name to its definition as sent (a
    JSON object); `stopped` names the tasks an operator stopped."""

    created: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    stopped: frozenset[str] = frozenset()

    def to_json(self) -> bytes:
        data = {
            "version": STATE_VERSION,
            "created": {name: dict(body) for name, body in sorted(self.created.items())},
            "stopped": sorted(self.stopped),
        }
        return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, text: bytes | str, where: str) -> TaskState:
        """Parse the file's text; StateFileError naming `where` when it is not a state file."""
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise StateFileError(f"{where}: not valid JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise StateFileError(f"{where}: not a version {STATE_VERSION} task state file")
        created = data.get("created", {})
        stopped = data.get("stopped", [])
        if not isinstance(created, dict) or not all(
            isinstance(k, str) and isinstance(v, dict) for k, v in created.items()
        ):
            raise StateFileError(f"{where}: created: must map task names to definitions")
        if not isinstance(stopped, list) or not all(isinstance(n, str) for n in stopped):
            raise StateFileError(f"{where}: stopped: must be a list of task names")
        return cls(created, frozenset(stopped))

    def with_created(self, name: str, body: Mapping[str, Any]) -> TaskState:
        return TaskState({**self.created, name: dict(body)}, self.stopped)

    def without(self, name: str) -> TaskState:
        """The task forgotten: its definition and its stopped mark."""
        created = {k: v for k, v in self.created.items() if k != name}
        return TaskState(created, self.stopped - {name})

    def with_desired(self, name: str, running: bool) -> TaskState:
        stopped = self.stopped - {name} if running else self.stopped | {name}
        return TaskState(self.created, stopped)

    def created_tasks(self, where: str) -> tuple[list[SyncTask], list[str]]:
        """The created tasks validated with the SyncTask model, and one problem line per
        definition that no longer validates (e.g. after an upgrade)."""
        tasks: list[SyncTask] = []
        problems: list[str] = []
        for name, body in sorted(self.created.items()):
            try:
                tasks.append(sync_task_from_data(dict(body), f"created.{name}"))
            except ConfigError as exc:
                problems.extend(f"{where}: {p}" for p in exc.problems)
        return tasks, problems


class TaskStateFile:
    """The state file of one state directory: load() and save(). Not locked: only the daemon
    writes it (its lifecycle serialises the writes)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / STATE_FILE

    def load(self) -> TaskState:
        """The saved state; an empty one when the file does not exist yet."""
        try:
            text = self.path.read_bytes()
        except FileNotFoundError:
            return TaskState()
        except OSError as exc:
            raise StateFileError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        return TaskState.from_json(text, str(self.path))

    def save(self, state: TaskState) -> None:
        try:
            write_atomic(self.path, state.to_json())
        except OSError as exc:
            raise StateFileError(f"{self.path}: cannot write: {exc.strerror or exc}") from None


def find_task(cfg: Config, config_path: str | Path, name: str) -> SyncTask | None:
    """A task by name: from sync.tasks of the config, else created through the admin API
    (the state file of the config's state directory). StateFileError / ConfigError when the
    state file or that task's stored definition is bad."""
    task = cfg.sync.task(name)
    if task is not None:
        return task
    state_file = TaskStateFile(state_dir_of(cfg, config_path))
    body = state_file.load().created.get(name)
    if body is None:
        return None
    return sync_task_from_data(dict(body), f"{state_file.path}: created.{name}")
