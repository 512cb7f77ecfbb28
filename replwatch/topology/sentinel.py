"""Ask the Sentinels who a group's master and replicas are now.

Every Sentinel is asked at once (one connection each, opened and closed per call: the
daemon asks once per poll interval per Sentinel group, a few round trips a second), one
pipeline: `SENTINEL MASTER <name>` and `SENTINEL REPLICAS <name>` (`SENTINEL SLAVES` before
5.0). The answer with the highest `config-epoch` wins — a Sentinel partitioned on the old
side of a failover still names the old master, with the old epoch — and among equal epochs
the address most Sentinels name. Replicas are every replica the winning Sentinel lists, down
ones included: a replica that is down must be reported down, not forgotten.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import hiredis

from replwatch.config import RedisEndpoint, TLSConfig
from replwatch.decimal_text import is_decimal
from replwatch.errors import DiscoveryError, RedisError
from replwatch.observe.connection import Connection, classify_reply_error
from replwatch.topology.model import Address, DiscoveredGroup

DOWN_FLAGS = frozenset({"s_down", "o_down", "disconnected"})


def _is_integer(text: str) -> bool:
    """ASCII digits with an optional leading '-' (str.isdigit also takes '²', which int()
    refuses)."""
    digits = text[1:] if text.startswith("-") else text
    return is_decimal(digits)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def fields_of(entry: Any) -> dict[str, str]:
    """One SENTINEL MASTER / REPLICAS entry: a flat [name, value, …] list (RESP2) or a map
    (RESP3) → {name: value} as text."""
    if isinstance(entry, dict):
        return {_text(k): _text(v) for k, v in entry.items()}
    if not isinstance(entry, list) or len(entry) % 2:
        raise ValueError("not a name/value list")
    return {_text(k): _text(v) for k, v in zip(entry[0::2], entry[1::2], strict=True)}


def _address(fields: dict[str, str]) -> Address:
    ip, port = fields.get("ip", ""), fields.get("port", "")
    if not ip or not is_decimal(port) or not 1 <= int(port) <= 65535:
        raise ValueError(f"no usable address ({ip!r}, {port!r})")
    return Address(ip, int(port))


@dataclass(frozen=True, slots=True)
class SentinelView:
    """What one Sentinel says about the master."""

    master: Address
    epoch: int
    master_down: bool
    replicas: tuple[Address, ...]


def parse_sentinel_view(master_reply: Any, replicas_reply: Any) -> SentinelView:
    """SENTINEL MASTER's and SENTINEL REPLICAS's replies → SentinelView (ValueError when
    they are not what a Sentinel sends)."""
    master = fields_of(master_reply)
    epoch_text = master.get("config-epoch", "0")
    flags = set(master.get("flags", "").split(","))
    if not isinstance(replicas_reply, list):
        raise ValueError("SENTINEL REPLICAS returned no list")
    replicas = []
    for entry in replicas_reply:
        fields = fields_of(entry)
        try:
            replicas.append(_address(fields))
        except ValueError:
            continue  # a replica Sentinel knows no address of yet
    return SentinelView(
        master=_address(master),
        epoch=int(epoch_text) if _is_integer(epoch_text) else 0,
        master_down=bool(flags & DOWN_FLAGS),
        replicas=tuple(replicas),
    )


def choose(views: Sequence[SentinelView]) -> SentinelView:
    """The highest config epoch; among equal epochs the master most Sentinels name."""
    top = max(v.epoch for v in views)
    newest = [v for v in views if v.epoch == top]
    votes = Counter(v.master for v in newest)
    best = max(votes.values())
    winner = next(v for v in newest if votes[v.master] == best)
    return winner


async def _ask(
    sentinel: RedisEndpoint, name: str, tls: TLSConfig | None, timeout: float
) -> SentinelView:
    conn = await Connection.open(sentinel, timeout, tls)
    try:
        replies = await conn.execute(
            [("SENTINEL", "MASTER", name), ("SENTINEL", "REPLICAS", name)],
            timeout,
            raise_errors=False,
        )
        master_reply, replicas_reply = replies
        if isinstance(master_reply, hiredis.ReplyError):
            raise classify_reply_error(str(master_reply))
        if isinstance(replicas_reply, hiredis.ReplyError):
            # before 5.0 the subcommand is SLAVES
            (replicas_reply,) = await conn.execute([("SENTINEL", "SLAVES", name)], timeout)
    finally:
        conn.close()
    try:
        return parse_sentinel_view(master_reply, replicas_reply)
    except ValueError as exc:
        raise RedisError(f"unexpected SENTINEL reply: {exc}", "protocol") from None


async def resolve_sentinel(
    sentinels: Sequence[RedisEndpoint], master_name: str, tls: TLSConfig | None, timeout: float
) -> DiscoveredGroup:
    """The group the Sentinels watch under `master_name`, as the newest of them sees it.
    DiscoveryError when no Sentinel answered about it."""

    async def one(sentinel: RedisEndpoint) -> SentinelView | str:
        try:
            return await asyncio.wait_for(_ask(sentinel, master_name, tls, timeout), timeout)
        except TimeoutError:
            return f"{sentinel.label}: no answer within {timeout:g}s"
        except (RedisError, OSError) as exc:
            return f"{sentinel.label}: {exc}"

    outcomes = await asyncio.gather(*(one(s) for s in sentinels))
    views = [o for o in outcomes if isinstance(o, SentinelView)]
    if not views:
        problems = "; ".join(o for o in outcomes if isinstance(o, str))
        raise DiscoveryError(f"no Sentinel described master {master_name!r}: {problems}")
    view = choose(views)
    return DiscoveredGroup(
        key="",
        master=view.master,
        replicas=tuple(r for r in view.replicas if r != view.master),
        epoch=view.epoch,
        master_down=view.master_down,
    )
