"""Publishes the routing table to a Redis the user names: SET <key> <json> and
PUBLISH <channel> <json>, on change and every interval. Applications follow it with
replwatch.routing.client.ReadRouter."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from replwatch.config import PublishConfig, TLSConfig
from replwatch.errors import RedisError
from replwatch.observe.connection import Connection
from replwatch.routing.policy import RoutingTable

log = logging.getLogger("replwatch.routing.publish")


def table_document(tables: list[RoutingTable], now: float) -> str:
    return json.dumps(
        {"published_at": now, "groups": {t.group: t.to_dict() for t in tables}},
        sort_keys=True,
    )


class RoutingPublisher:
    def __init__(
        self,
        config: PublishConfig,
        tables: Callable[[], list[RoutingTable]],
        tls: TLSConfig | None = None,
        timeout: float = 1.0,
    ) -> None:
        if config.url is None:
            raise ValueError("publish.url is not set")
        self.config = config
        self.endpoint = config.url
        self.tables = tables
        self.tls = tls
        self.timeout = timeout
        self._conn: Connection | None = None
        self._signature: tuple[object, ...] | None = None
        self.published = 0
        self.failed = 0
        self.last_error: str | None = None

    def changed(self) -> bool:
        signature = tuple(t.signature() for t in self.tables())
        return signature != self._signature

    async def publish(self) -> bool:
        tables = self.tables()
        document = table_document(tables, time.time())
        try:
            if self._conn is None or self._conn.closed:
                self._conn = await Connection.open(
                    self.endpoint, self.timeout, self.tls, client_name="replwatch-publish"
                )
            await self._conn.execute(
                [("SET", self.config.key, document), ("PUBLISH", self.config.channel, document)],
                self.timeout,
            )
        except RedisError as exc:
            self.failed += 1
            self.last_error = exc.reason
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            log.warning(
                "publishing the routing table to %s failed: %s", self.endpoint.label, exc.reason
            )
            return False
        self._signature = tuple(t.signature() for t in tables)
        self.published += 1
        self.last_error = None
        return True

    async def publish_if_changed(self) -> bool | None:
        if not self.changed():
            return None
        return await self.publish()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
