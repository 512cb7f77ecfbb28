"""Holding a task's lease (`ha: true`, lease.py): stand by until it can be taken, keep it
renewed from a thread, release it on a clean stop.

The runner asks `hold()` before each session and reads `fence` (what every write batch is
checked against) and `lost` (the renewal was refused: the session ends, back to standby).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from replwatch.config import SyncTask
from replwatch.errors import RedisError
from replwatch.sync.checkpoint import CHECKPOINT_DB
from replwatch.sync.fatal import FatalTaskError
from replwatch.sync.lease import (
    ACQUIRE_SCRIPT,
    RELEASE_SCRIPT,
    Fence,
    LeaseKeeper,
    new_holder_id,
    parse_acquire,
)
from replwatch.sync.preflight import ServerFacts, readonly_message, refusal_kind
from replwatch.sync.writer import TargetLink

log = logging.getLogger("replwatch.sync")


class LeaseHolder:
    """One task's lease, held by this process or waited for."""

    def __init__(
        self,
        task: SyncTask,
        key: str,
        connect: Callable[[], TargetLink],
        stop_event: threading.Event,
        io_timeout: float,
        on_standby: Callable[[], None],
    ) -> None:
        self.task = task
        self.key = key
        self.connect = connect  # a connection to the target (any db)
        self.stop_event = stop_event
        self.io_timeout = io_timeout
        self.on_standby = on_standby
        self.holder = new_holder_id()
        self.fence: Fence | None = None
        self._keeper: LeaseKeeper | None = None
        self.leases_taken = 0

    @property
    def lost(self) -> bool:
        return self._keeper is not None and self._keeper.lost.is_set()

    def hold(self) -> bool:
        """Wait until this process holds the task's lease (True), or stop() (False). While
        another holder has it, the task stands by and tries again as its lease runs out."""
        task = self.task
        announced = False
        while not self.stop_event.is_set():
            try:
                link = self.connect()
                try:
                    link.select(CHECKPOINT_DB)
                    got = parse_acquire(
                        link.call(
                            "EVAL", ACQUIRE_SCRIPT, 1, self.key, self.holder, int(task.lease * 1000)
                        )
                    )
                finally:
                    link.close()
            except FatalTaskError:
                raise  # not a Redis server at all (its PING answer)
            except (RedisError, OSError) as exc:
                if refusal_kind(str(exc)) == "readonly":  # a replica: waiting cannot fix it
                    message = readonly_message(task.target.label, ServerFacts())
                    raise FatalTaskError(message) from None
                log.warning("task %s: cannot reach the lease: %s", task.name, exc)
                if self.stop_event.wait(min(task.lease / 3, task.reconnect_max)):
                    return False
                continue
            if got.acquired:
                self.fence = Fence(self.key, got.token, self.holder, got.until_ms)
                self._keeper = LeaseKeeper(
                    self._renew_link, self.fence, task.lease, self.io_timeout
                )
                self._keeper.start()
                self.leases_taken += 1
                log.info(
                    "task %s: holding the lease (token %d) as %s",
                    task.name,
                    got.token,
                    self.holder,
                )
                return True
            if not announced:
                log.info(
                    "task %s: standing by: %s holds the lease (%.1fs left)",
                    task.name,
                    got.holder,
                    got.remaining,
                )
                announced = True
            self.on_standby()
            wait = min(max(got.remaining, 0.05), task.lease / 3)
            if self.stop_event.wait(wait):
                return False
        return False

    def _renew_link(self) -> TargetLink:
        """The lease keeper's connection: the target, in the checkpoint's db."""
        link = self.connect()
        link.select(CHECKPOINT_DB)
        return link

    def drop(self, release: bool) -> None:
        """Stop renewing; with `release`, end the lease now (a clean stop: another daemon
        takes over at once)."""
        fence, keeper = self.fence, self._keeper
        self.fence, self._keeper = None, None
        if keeper is not None:
            keeper.stop()
        if fence is None or not release:
            return
        try:
            link = self.connect()
        except (RedisError, OSError):
            return
        try:
            link.select(CHECKPOINT_DB)
            link.call("EVAL", RELEASE_SCRIPT, 1, self.key, fence.holder, fence.token)
        except (RedisError, OSError):
            pass
        finally:
            link.close()
