"""The router's table rules without a server: parsing a published document, how old a table
read from the key is, out-of-order documents and staleness."""

from __future__ import annotations

import json

import pytest
import redis

from replwatch.routing.client import MASTER, ReadRouter
from replwatch.routing.table_follower import GroupTable, parse_group_table


def _doc(published_at: float | None, in_rotation: bool = True, offset: int = 10) -> str:
    doc: dict[str, object] = {
        "groups": {
            "g": {
                "reads_on_master": not in_rotation,
                "degraded": False,
                "replicas": [
                    {"replica": "r:1", "in_rotation": in_rotation, "applied_offset": offset},
                    {"replica": "r:2", "in_rotation": False, "applied_offset": None},
                ],
            }
        }
    }
    if published_at is not None:
        doc["published_at"] = published_at
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        ("not json", None),
        ('{"groups": {}}', None),
        ('{"groups": {"g": {"replicas": "x"}}}', None),
        ("[1, 2]", None),
        (
            _doc(100.0),
            GroupTable(("r:1",), {"r:1": 10, "r:2": None}, False, False, published_at=100.0),
        ),
        (
            _doc(None, in_rotation=False),
            GroupTable((), {"r:1": 10, "r:2": None}, True, False, published_at=None),
        ),
    ],
)
def test_parse_group_table(raw: str | None, expected: GroupTable | None) -> None:
    assert parse_group_table(raw, "g") == expected


class Clocks:
    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = 5000.0

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


def _router(clocks: Clocks, **kwargs: object) -> ReadRouter:
    return ReadRouter(
        "g",
        redis.Redis(port=1),  # never connected to: these tests apply documents by hand
        redis.Redis(port=1),
        lambda label: redis.Redis(port=1),
        max_staleness=5.0,
        clock=lambda: clocks.mono,
        wall_clock=lambda: clocks.wall,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("key_age", "fresh"),
    [(0.0, True), (4.9, True), (5.1, False), (3600.0, False), (-2.0, True)],
)
def test_a_table_from_the_key_is_as_old_as_published(key_age: float, fresh: bool) -> None:
    clocks = Clocks()
    router = _router(clocks)
    assert router.apply_document(_doc(clocks.wall - key_age), live=False)
    assert (router.fresh_table() is not None) is fresh


def test_a_live_table_is_fresh_until_max_staleness() -> None:
    clocks = Clocks()
    router = _router(clocks)
    assert router.apply_document(_doc(clocks.wall - 100.0), live=True)  # skewed clocks
    assert router.fresh_table() is not None
    clocks.advance(5.1)
    assert router.fresh_table() is None


def test_an_older_document_does_not_replace_a_newer_one() -> None:
    clocks = Clocks()
    router = _router(clocks)
    assert router.apply_document(_doc(clocks.wall, in_rotation=True), live=True)
    assert not router.apply_document(_doc(clocks.wall - 1, in_rotation=False), live=False)
    table = router.fresh_table()
    assert table is not None and table.read_from == ("r:1",)
    # the same document read again from the key does not make it older
    clocks.advance(3.0)
    assert router.apply_document(_doc(clocks.wall - 3.0), live=False)
    clocks.advance(2.5)
    assert router.fresh_table() is None  # 5.5 s after it arrived live


def test_published_offsets_decide_session_reads() -> None:
    clocks = Clocks()
    router = _router(clocks)
    assert router.apply_document(_doc(clocks.wall, offset=10), live=True)
    assert router.choose(min_offset=10)[0] == "r:1"
    assert router.choose(min_offset=11)[0] == MASTER
