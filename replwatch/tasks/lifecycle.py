"""The sync task lifecycle of `replwatch run`: create, start, stop, remove, list, status.

Owned by the daemon; the admin API (replwatch/admin/api.py) calls it from the HTTP server's
threads. Each change is persisted first (replwatch/tasks/task_state.py: created tasks and which
tasks are stopped, so both survive a restart), then applied: the SyncSupervisor adds, starts,
stops or removes the task's process, and the WatcherSet adds or drops the watcher that reads
the task's checkpoint for the metrics and the status.

Tasks come from two places: `sync.tasks` of the config (origin "config": they can be stopped
and started here, the stop persisted, but not removed or redefined: 409) and the API (origin
"api"). Names are unique across both.

- stop: SIGTERM to the task process; it finishes its batch, writes state `stopped` into its
  checkpoint and exits. The call returns once the process is gone.
- start: the process is started (again); `afresh` passes `--afresh` to that one start (a
  full sync even though the checkpoint could be continued). A running task is stopped first
  when `afresh` is asked for, else left alone.
- remove: stop, then the task is forgotten. Its checkpoint stays on the target (a task
  created again under the same name continues from it) unless `purge` is asked for: then the
  checkpoint key is deleted on the target (the synced data always stays).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from replwatch.config import (
    Config,
    RedisEndpoint,
    SyncTask,
    TLSConfig,
    sync_task_from_data,
    tls_over,
)
from replwatch.errors import ConfigError, RedisError, ReplwatchError
from replwatch.observe.connection import Connection
from replwatch.sync.checkpoint import CHECKPOINT_DB, checkpoint_key
from replwatch.tasks.supervisor import ProcessStatus, SyncSupervisor
from replwatch.tasks.task_state import TaskState, TaskStateFile, state_dir_of
from replwatch.tasks.watch import SyncStore, SyncTaskView, SyncWatcher, task_watchers

log = logging.getLogger("replwatch.sync.lifecycle")  # name kept: log lines unchanged

Origin = Literal["config", "api"]
PURGE_TIMEOUT = 5.0


class LifecycleError(ReplwatchError):
    """A lifecycle request that cannot be done; `status` is its HTTP status."""

    status = 500


class BadTaskDefinition(LifecycleError):
    status = 400


class UnknownTask(LifecycleError):
    status = 404


class TaskConflict(LifecycleError):
    status = 409


# --------------------------------------------------------------------------- watchers


class WatcherSet:
    """The sync watchers of the daemon, changed at run time from other threads. add/remove
    take effect at the next poll; a removed watcher's connections are closed by the poll, in
    the event loop that owns them. A task has one watcher, a cluster-source task one per
    master shard (found by a lookup; while the cluster cannot be asked, none: the next poll
    asks again). ready(): every task looked at once (the daemon's readiness)."""

    def __init__(
        self, make: Callable[[SyncTask], list[SyncWatcher]], tasks: Sequence[SyncTask]
    ) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._tasks = {t.name: t for t in tasks}
        self._watchers = {t.name: make(t) for t in tasks}
        self._retired: list[SyncWatcher] = []
        self._looked: set[str] = set()  # tasks whose current watchers a poll has been through

    def names(self) -> list[str]:
        with self._lock:
            return list(self._watchers)

    def ready(self) -> bool:
        """Every task has been looked at once since it was added or redefined: its watchers
        polled (the view says what was found, a side down included), or for a cluster source
        that cannot be asked, its shards looked up (True when there is no task)."""
        with self._lock:
            return self._looked.issuperset(self._watchers)

    def add(self, task: SyncTask) -> None:
        watchers = self._make(task)
        with self._lock:
            self._retired.extend(self._watchers.get(task.name, []))
            self._watchers[task.name] = watchers
            self._tasks[task.name] = task
            self._looked.discard(task.name)

    def remove(self, name: str) -> None:
        with self._lock:
            self._retired.extend(self._watchers.pop(name, []))
            self._tasks.pop(name, None)
            self._looked.discard(name)

    def _take(
        self,
    ) -> tuple[list[SyncWatcher], list[SyncWatcher], dict[str, list[SyncWatcher]]]:
        """The current watchers (flat, and by task), and the retired ones to close."""
        with self._lock:
            retired, self._retired = self._retired, []
            by_task = dict(self._watchers)
            current = [w for watchers in by_task.values() for w in watchers]
            return current, retired, by_task

    async def _fill_empty(self) -> None:
        """Ask again for the watchers of tasks that have none (a cluster that could not be
        asked), off the event loop: the lookup blocks up to the poll timeout per node."""
        with self._lock:
            empty = [self._tasks[n] for n, ws in self._watchers.items() if not ws]
        for task in empty:
            watchers = await asyncio.to_thread(self._make, task)
            with self._lock:
                if self._watchers.get(task.name) == [] and self._tasks.get(task.name) is task:
                    self._watchers[task.name] = watchers
                else:
                    self._retired.extend(watchers)

    async def poll_into(self, store: SyncStore) -> list[SyncTaskView]:
        """Poll every current watcher concurrently into `store` (a scheduler job)."""
        await self._fill_empty()
        watchers, retired, by_task = self._take()
        for watcher in retired:
            watcher.close()
        views = list(await asyncio.gather(*(w.poll() for w in watchers)))
        for view in views:
            store.put(view)
        with self._lock:  # a task added or redefined meanwhile waits for the next poll
            self._looked.update(n for n, ws in by_task.items() if self._watchers.get(n) is ws)
        return views

    def close(self) -> None:
        """Close every watcher (at shutdown, in the event loop)."""
        watchers, retired, _ = self._take()
        for watcher in [*watchers, *retired]:
            watcher.close()


def make_watcher_factory(
    cfg: Config, state_dir: Path | None = None
) -> Callable[[SyncTask], list[SyncWatcher]]:
    """The watchers of a task; with the config's `state_dir` they merge the task processes'
    local reports (replwatch/sync/task_report.py)."""

    def make(task: SyncTask) -> list[SyncWatcher]:
        return task_watchers(cfg, task, state_dir=state_dir)

    return make


# --------------------------------------------------------------------------- rendering


def _public(value: Any, dumped: Any) -> Any:
    if isinstance(value, RedisEndpoint):
        return value.redacted_url()
    if isinstance(value, list | tuple) and isinstance(dumped, list):
        return [_public(v, d) for v, d in zip(value, dumped, strict=False)]
    return dumped


def public_definition(task: SyncTask) -> dict[str, Any]:
    """The task's fields as JSON, endpoints as redacted URLs (secrets render as ********)."""
    dumped = task.model_dump(mode="json", by_alias=True)
    return {
        key: _public(getattr(task, name, None), dumped.get(key))
        for name, key in ((n, f.alias or n) for n, f in type(task).model_fields.items())
        if key in dumped
    }


def task_record(
    task: SyncTask, origin: Origin, process: ProcessStatus | None, view: SyncTaskView | None
) -> dict[str, Any]:
    """One task as the API shows it: never a password."""
    desired = "running" if process is None or process.enabled else "stopped"
    return {
        "name": task.name,
        "origin": origin,
        "desired": desired,
        "source": task.source.redacted_url(),
        "target": task.target.redacted_url(),
        "definition": public_definition(task),
        "process": None
        if process is None
        else {
            "running": process.running,
            "pid": process.pid,
            "restarts": process.restarts,
            "last_exit": process.last_exit,
        },
        "sync": view.to_dict() if view is not None else None,
    }


# --------------------------------------------------------------------------- lifecycle


@dataclass
class _Entry:
    task: SyncTask
    origin: Origin


class TaskLifecycle:
    """See the module docstring. Changes are serialised (one at a time); reads are not
    blocked by a change in progress (a stop waits for its process)."""

    def __init__(
        self,
        cfg: Config,
        state_file: TaskStateFile,
        supervisor: SyncSupervisor,
        watchers: WatcherSet,
        views: SyncStore,
        state: TaskState,
        entries: dict[str, _Entry],
    ) -> None:
        self.cfg = cfg
        self.state_file = state_file
        self.supervisor = supervisor
        self.watchers = watchers
        self.views = views
        self._state = state
        self._entries = entries
        self._change = threading.Lock()  # one change at a time
        self._lock = threading.Lock()  # guards _entries and _state

    @classmethod
    def load(cls, cfg: Config, config_path: str, log_level: str = "info") -> TaskLifecycle:
        """Config tasks plus the created tasks and stopped marks of the state directory.
        StateFileError when the state file cannot be read (refusing beats overwriting it)."""
        state_file = TaskStateFile(state_dir_of(cfg, config_path))
        state = state_file.load()
        entries: dict[str, _Entry] = {t.name: _Entry(t, "config") for t in cfg.sync.tasks}
        created, problems = state.created_tasks(str(state_file.path))
        for problem in problems:
            log.error("task not started: %s", problem)
        for task in created:
            if task.name in entries:
                log.warning(
                    "sync task %s: defined in %s and created through the API: the config's "
                    "definition is used",
                    task.name,
                    config_path,
                )
                continue
            entries[task.name] = _Entry(task, "api")
        tasks = [e.task for e in entries.values()]
        stopped = [name for name in state.stopped if name in entries]
        supervisor = SyncSupervisor(tasks, config_path, log_level, stopped=stopped)
        watchers = WatcherSet(make_watcher_factory(cfg, state_file.directory), tasks)
        views = SyncStore()
        views.expect(entries)
        return cls(cfg, state_file, supervisor, watchers, views, state, entries)

    # ----------------------------------------------------------------- reads

    def names(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def _record(self, entry: _Entry) -> dict[str, Any]:
        name = entry.task.name
        return task_record(
            entry.task, entry.origin, self.supervisor.process_of(name), self.views.get(name)
        )

    def _entry(self, name: str) -> _Entry:
        with self._lock:
            entry = self._entries.get(name)
        if entry is None:
            raise UnknownTask(f"no sync task named {name!r}")
        return entry

    def list_tasks(self) -> list[dict[str, Any]]:
        with self._lock:
            entries = [self._entries[k] for k in sorted(self._entries)]
        return [self._record(e) for e in entries]

    def task_status(self, name: str) -> dict[str, Any]:
        return self._record(self._entry(name))

    # ----------------------------------------------------------------- changes

    def _save(self, state: TaskState) -> None:
        """Persist, then adopt `state` (a write failure changes nothing)."""
        self.state_file.save(state)
        with self._lock:
            self._state = state

    def create(self, body: Any) -> dict[str, Any]:
        """Validate `body` with the SyncTask model, persist it, start the task."""
        try:
            task = sync_task_from_data(body, "tasks")
        except ConfigError as exc:
            raise BadTaskDefinition("; ".join(exc.problems)) from None
        assert isinstance(body, dict)
        with self._change:
            with self._lock:
                existing = self._entries.get(task.name)
                state = self._state
            if existing is not None:
                if existing.origin == "config":
                    raise TaskConflict(
                        f"sync task {task.name!r} is defined in config.yaml: "
                        "change it there, or create the task under another name"
                    )
                raise TaskConflict(
                    f"sync task {task.name!r} exists already (created through the API): "
                    "remove it first to redefine it"
                )
            self._save(state.with_created(task.name, body).with_desired(task.name, True))
            with self._lock:
                self._entries[task.name] = _Entry(task, "api")
                self.views.expect(self._entries)
            self.watchers.add(task)
            self.supervisor.add(task.name, enabled=True)
            log.info("sync task %s: created through the admin API", task.name)
        return self.task_status(task.name)

    def start(self, name: str, afresh: bool = False) -> dict[str, Any]:
        with self._change:
            self._entry(name)
            with self._lock:
                state = self._state
            if name in state.stopped:
                self._save(state.with_desired(name, True))
            if afresh:
                self.supervisor.stop_task(name)
            self.supervisor.start_task(name, afresh=afresh)
            log.info("sync task %s: started%s through the admin API", name, " afresh" * afresh)
        return self.task_status(name)

    def stop(self, name: str) -> dict[str, Any]:
        with self._change:
            self._entry(name)
            with self._lock:
                state = self._state
            if name not in state.stopped:
                self._save(state.with_desired(name, False))
            self.supervisor.stop_task(name)
            log.info("sync task %s: stopped through the admin API", name)
        return self.task_status(name)

    def remove(self, name: str, purge: bool = False) -> dict[str, Any]:
        with self._change:
            entry = self._entry(name)
            if entry.origin == "config":
                raise TaskConflict(
                    f"sync task {name!r} is defined in config.yaml: it cannot be removed "
                    "through the API (stop it, or delete it from the config)"
                )
            with self._lock:
                state = self._state
            self._save(state.without(name))
            self.supervisor.remove(name)
            self.watchers.remove(name)
            with self._lock:
                self._entries.pop(name, None)
                self.views.expect(self._entries)
            purged = False
            purge_error = None
            if purge:
                try:
                    purged = asyncio.run(purge_checkpoint(entry.task, self.cfg.tls))
                except RedisError as exc:
                    purge_error = f"the checkpoint on {entry.task.target.label} stays: {exc}"
            log.info("sync task %s: removed through the admin API", name)
        result: dict[str, Any] = {"removed": name, "purged": purged}
        if purge_error is not None:
            result["purge_error"] = purge_error
        return result

    def close(self) -> None:
        """Stop every task process (daemon shutdown)."""
        self.supervisor.stop()


async def purge_checkpoint(task: SyncTask, tls: TLSConfig) -> bool:
    """Delete the task's checkpoint key on its target; True when there was one."""
    target = task.target.model_copy(update={"db": CHECKPOINT_DB})
    conn = await Connection.open(target, PURGE_TIMEOUT, tls_over(tls, task.tls))
    try:
        replies = await conn.execute([("DEL", checkpoint_key(task.name))], PURGE_TIMEOUT)
    finally:
        conn.close()
    return bool(replies and replies[0])
