"""Following the routing table replwatch publishes (publisher.py), for ReadRouter.

`parse_group_table` is pure: one published document → one group's table, or None.
`TableFollower` keeps the newest table fresh from a thread that survives any outage of the
table Redis: it subscribes to the channel, reads the key right after subscribing (nothing
published in between is lost), reads the key again whenever the channel has been silent for
`refresh_interval`, and on any error closes, waits (0.1 s doubling to 2 s) and starts over.
Meanwhile the table only ages: the router's staleness rule decides what that means.

A table read from the key is as old as its `published_at` says (the publisher's wall
clock), so a key left behind by a replwatch that stopped is never taken for a fresh table;
one that arrives on the channel is fresh when it arrives.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

log = logging.getLogger("replwatch.routing.client")

RECONNECT_FIRST = 0.1
RECONNECT_MAX = 2.0


@dataclass(frozen=True, slots=True)
class GroupTable:
    """One group's routing table as an application needs it."""

    read_from: tuple[str, ...]
    offsets: Mapping[str, int | None]
    reads_on_master: bool
    degraded: bool
    published_at: float | None = None  # the publisher's wall clock


def parse_group_table(raw: bytes | str | None, group: str) -> GroupTable | None:
    """The table of `group` in a published document; None when there is none."""
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
        table = doc["groups"][group]
        published = doc.get("published_at")
        return GroupTable(
            read_from=tuple(r["replica"] for r in table["replicas"] if r["in_rotation"]),
            offsets={r["replica"]: r.get("applied_offset") for r in table["replicas"]},
            reads_on_master=bool(table["reads_on_master"]),
            degraded=bool(table["degraded"]),
            published_at=float(published) if isinstance(published, int | float) else None,
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class TableFollower:
    """The thread that follows one table Redis: channel first, key as backup."""

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        channel: str,
        on_table: Callable[[bytes | str | None, bool], bool],
        refresh_interval: float,
    ) -> None:
        """`on_table(raw, live)`: a document from the channel (live) or the key."""
        self.client = client
        self.key = key
        self.channel = channel
        self.on_table = on_table
        self.refresh_interval = refresh_interval
        self.reconnects = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> bool:
        """Read the table from its key now."""
        try:
            raw = self.client.get(self.key)
        except (redis.RedisError, OSError) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            return False
        return self.on_table(raw, False)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"replwatch-table-{self.channel}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        delay = RECONNECT_FIRST
        while not self._stop.is_set():
            pubsub: Any = None
            try:
                pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.channel)
                self._follow(pubsub)
                delay = RECONNECT_FIRST
            except (redis.RedisError, OSError, ValueError) as exc:
                if self._stop.is_set():
                    break
                self.reconnects += 1
                error = f"{type(exc).__name__}: {exc}"
                if error != self.last_error:
                    log.warning("routing table channel %s: %s; reconnecting", self.channel, error)
                self.last_error = error
                self._stop.wait(delay)
                delay = min(RECONNECT_MAX, delay * 2)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(redis.RedisError, OSError):
                        pubsub.close()

    def _follow(self, pubsub: Any) -> None:
        """Until stopped or an error: the key once, then the channel (and the key after
        every silence of refresh_interval)."""
        self._read_key()
        self.last_error = None
        heard = time.monotonic()
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=0.2)
            now = time.monotonic()
            if message is not None and message.get("type") == "message":
                self.on_table(message.get("data"), True)
                heard = now
            elif now - heard >= self.refresh_interval:
                # a silent channel: replwatch stopped publishing, or this subscription is
                # dead without an error; the key tells which, and raises if the server went
                self._read_key()
                heard = now

    def _read_key(self) -> None:
        """The key's document, whatever it holds; a connection error raises."""
        self.on_table(self.client.get(self.key), False)
