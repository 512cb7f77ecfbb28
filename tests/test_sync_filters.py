"""The sync task filters (replwatch/sync/filters.py) and their config, table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from replwatch.config import config_from_data
from replwatch.errors import ConfigError
from replwatch.sync.checkpoint import Checkpoint
from replwatch.sync.filters import SyncFilter, Verdict, key_positions


def _task(**options: Any) -> Any:
    cfg = config_from_data(
        {
            "sync": {
                "tasks": [
                    {"name": "t", "source": "redis://h:1", "target": "redis://h:2", **options}
                ]
            }
        }
    )
    return cfg.sync.tasks[0]


def _filter(**options: Any) -> SyncFilter:
    compiled = SyncFilter.of(_task(**options))
    assert compiled is not None
    return compiled


def _argv(text: str) -> list[bytes]:
    return [part.encode() for part in text.split()]


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("options", "error"),
    [
        (
            {"filters": {"keys": {"allow_regex": ["^ok", "a("]}}},
            "sync.tasks[0].filters.keys.allow_regex[1]: invalid regex: missing ), "
            "unterminated subpattern at position 1",
        ),
        (
            {"filters": {"keys": {"deny_regex": ["[z-a]"]}}},
            "sync.tasks[0].filters.keys.deny_regex[0]: invalid regex: bad character range",
        ),
        (
            {"db_map": {0: 3, 1: 3}},
            "sync.tasks[0].db_map: source dbs 0 and 1 would both go to target db 3",
        ),
        (  # db 1 is unmapped: it keeps its number, and db 0 goes there too
            {"db_map": {0: 1}},
            "sync.tasks[0].db_map: source dbs 0 and 1 would both go to target db 1",
        ),
        ({"db_map": {0: -1}}, "sync.tasks[0].db_map[0]: must not be negative"),
        (
            {"filters": {"dbs": {"allow": [0, -2]}}},
            "sync.tasks[0].filters.dbs.allow[1]: must not be negative",
        ),
        (
            {"filters": {"commands": {"deny": ["flushall", "select"]}}},
            "sync.tasks[0].filters.commands.deny[1]: SELECT is part of how the stream is applied",
        ),
        (
            {"filters": {"commands": {"allow": ["set x"]}}},
            "sync.tasks[0].filters.commands.allow[0]: must be a command name",
        ),
        (
            {"filters": {"keys": {"prefixes": ["a"]}}},
            "sync.tasks[0].filters.keys.prefixes: unknown key",
        ),
    ],
)
def test_bad_filter_config_names_the_path(options: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _task(**options)
    assert any(problem.startswith(error) for problem in caught.value.problems), (
        caught.value.problems
    )


@pytest.mark.parametrize(
    "options",
    [
        {"db_map": {0: 1}, "filters": {"dbs": {"allow": [0]}}},  # db 1 is not copied
        {"db_map": {0: 1, 1: 0}},  # a swap
        # the example of docs/syncer.md ("Filters and db mapping"): db 3 would collide, but it
        # is not copied
        {"db_map": {0: 3, 1: 1}, "filters": {"dbs": {"allow": [0, 1]}}},
        {"filters": {"commands": {"allow": ["set", "Del"], "deny": ["FLUSHALL"]}}},
    ],
)
def test_good_filter_config(options: dict[str, Any]) -> None:
    assert SyncFilter.of(_task(**options)) is not None


def test_no_filter_means_the_fast_path() -> None:
    assert SyncFilter.of(_task()) is None
    assert SyncFilter.of(_task(filters={})) is None
    assert SyncFilter.of(_task(db_map={0: 0, 5: 5})) is None


def test_command_names_are_case_insensitive() -> None:
    f = _filter(filters={"commands": {"allow": ["set", "Del"]}})
    assert f.command_allowed(b"SET") and f.command_allowed(b"DEL")
    assert not f.command_allowed(b"HSET")


# --------------------------------------------------------------------------- keys

KEYS = {
    "allow_prefixes": ["app:", "user:"],
    "deny_prefixes": ["app:tmp:"],
    "allow_regex": ["^session-[0-9]+$"],
    "deny_regex": [":secret$"],
}


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (b"app:1", None),
        (b"user:ann", None),
        (b"session-42", None),
        (b"session-x", "key_not_allowed"),
        (b"other", "key_not_allowed"),
        (b"", "key_not_allowed"),
        (b"app:tmp:1", "key_prefix"),  # allowed by prefix, denied by a longer one: deny wins
        (b"user:ann:secret", "key_regex"),
        (b"app:tmp:secret", "key_prefix"),  # the prefix rule is looked at first
        (b"\xffapp:1", "key_not_allowed"),  # bytes keys, prefix means the start
    ],
)
def test_key_decision(key: bytes, reason: str | None) -> None:
    assert _filter(filters={"keys": KEYS}).key_reason(key) == reason


@pytest.mark.parametrize(
    ("keys", "key", "reason"),
    [
        ({"deny_prefixes": ["tmp:"]}, b"tmp:1", "key_prefix"),
        ({"deny_prefixes": ["tmp:"]}, b"x", None),  # no allow rules: everything else passes
        ({"deny_regex": ["tmp"]}, b"a:tmp:b", "key_regex"),  # searched, not anchored
        ({"allow_regex": ["^a"]}, b"ba", "key_not_allowed"),
        ({"allow_prefixes": [""]}, b"anything", None),
    ],
)
def test_key_rules_alone(keys: dict[str, Any], key: bytes, reason: str | None) -> None:
    assert _filter(filters={"keys": keys}).key_reason(key) == reason


# --------------------------------------------------------------------------- key positions


@pytest.mark.parametrize(
    ("command", "keys"),
    [
        ("SET k v", ["k"]),
        ("set k v EX 10", ["k"]),
        ("SETRANGE k 3 v", ["k"]),
        ("HSET h f v f2 v2", ["h"]),
        ("LPUSH l a b", ["l"]),
        ("XADD s * f v", ["s"]),
        ("XTRIM s MAXLEN 10", ["s"]),
        ("XACK s g 1-1", ["s"]),
        ("XCLAIM s g c 0 1-1", ["s"]),
        ("XAUTOCLAIM s g c 0 0-0", ["s"]),
        ("XSETID s 5-0", ["s"]),
        ("XGROUP CREATE s g $", ["s"]),
        ("EXPIRE k 10", ["k"]),
        ("PEXPIREAT k 100", ["k"]),
        ("PERSIST k", ["k"]),
        ("GEOADD g 1 2 m", ["g"]),
        ("PFADD h a b", ["h"]),
        ("PFMERGE d a b", ["d", "a", "b"]),
        ("RESTORE k 0 payload REPLACE", ["k"]),
        ("DEL a b c", ["a", "b", "c"]),
        ("UNLINK a", ["a"]),
        ("TOUCH a b", ["a", "b"]),
        ("MSET a 1 b 2", ["a", "b"]),
        ("MSETNX a 1 b 2", ["a", "b"]),
        ("RPOPLPUSH a b", ["a", "b"]),
        ("LMOVE a b LEFT RIGHT", ["a", "b"]),
        ("SMOVE a b m", ["a", "b"]),
        ("RENAME a b", ["a", "b"]),
        ("RENAMENX a b", ["a", "b"]),
        ("COPY a b DB 2 REPLACE", ["a", "b"]),
        ("ZUNIONSTORE d 2 a b WEIGHTS 1 2", ["d", "a", "b"]),
        ("ZINTERSTORE d 1 a", ["d", "a"]),
        ("SINTERSTORE d a b", ["d", "a", "b"]),
        ("SDIFFSTORE d a", ["d", "a"]),
        ("BITOP AND d a b", ["d", "a", "b"]),
        ("SORT src BY w STORE dst", ["src", "dst"]),
        ("SORT src", ["src"]),
        ("LMPOP 2 a b LEFT", ["a", "b"]),
        ("EVAL script 2 a b arg", ["a", "b"]),
        ("FCALL fn 0 arg", []),
        ("MOVE k 3", ["k"]),
        ("FLUSHALL", []),
        ("FLUSHDB ASYNC", []),
        ("SWAPDB 0 1", []),
        ("FUNCTION LOAD code", []),
        ("SCRIPT FLUSH", []),
        ("PUBLISH chan msg", []),
        ("SET", []),  # malformed: nothing to find
        ("ZUNIONSTORE d x a", ["d"]),  # a bad numkeys: only the destination
        ("MYMODULE.CMD k a b", ["k"]),  # unknown: the key at argument 1
    ],
)
def test_key_positions(command: str, keys: list[str]) -> None:
    argv = _argv(command)
    assert [argv[i].decode() for i in key_positions(argv)] == keys


# --------------------------------------------------------------------------- commands

FILTER = {
    "filters": {
        "keys": {"allow_prefixes": ["a:"], "deny_regex": ["secret"]},
        "commands": {"deny": ["flushall", "PUBLISH"]},
        "dbs": {"allow": [0, 1, 2]},
    },
    "db_map": {0: 3, 1: 1, 2: 5},
}


def _c(text: str) -> tuple[bytes, ...]:
    return tuple(_argv(text))


@pytest.mark.parametrize(
    ("command", "db", "verdict"),
    [
        ("SET a:1 v", 0, Verdict(True)),
        ("set a:1 v", 0, Verdict(True)),
        ("SET b:1 v", 0, Verdict(False, (), (("key_not_allowed", 1),))),
        ("SET a:secret v", 0, Verdict(False, (), (("key_regex", 1),))),
        ("SET a:1 v", 7, Verdict(False, (), (("db", 1),))),  # db 7 not copied
        ("FLUSHDB", 7, Verdict(False, (), (("db", 1),))),
        ("FLUSHDB", 0, Verdict(True)),  # keyless: runs in the mapped db selected before
        ("PUBLISH a:1 m", 0, Verdict(False, (), (("command", 1),))),
        ("FLUSHALL", 0, Verdict(False, (), (("command", 1),))),
        # splittable: the allowed keys stay, one count per key left out
        (
            "DEL a:1 b:1 a:2 a:secret",
            0,
            Verdict(False, (_c("DEL a:1 a:2"),), (("key_not_allowed", 1), ("key_regex", 1))),
        ),
        ("UNLINK b:1 a:1", 0, Verdict(False, (_c("UNLINK a:1"),), (("key_not_allowed", 1),))),
        ("TOUCH a:1 a:2", 0, Verdict(True)),
        (
            "MSET a:1 x b:1 y a:2 z",
            0,
            Verdict(False, (_c("MSET a:1 x a:2 z"),), (("key_not_allowed", 1),)),
        ),
        ("DEL b:1 b:2", 0, Verdict(False, (), (("key_not_allowed", 2),))),
        # not splittable: dropped whole
        ("MSETNX a:1 x b:1 y", 0, Verdict(False, (), (("mixed_keys", 1),))),
        ("RENAME a:1 b:1", 0, Verdict(False, (), (("mixed_keys", 1),))),
        ("RENAME b:1 b:2", 0, Verdict(False, (), (("key_not_allowed", 1),))),
        ("ZUNIONSTORE a:d 2 a:1 b:1", 0, Verdict(False, (), (("mixed_keys", 1),))),
        ("ZUNIONSTORE a:d 2 a:1 a:2", 0, Verdict(True)),
        ("LMOVE a:1 a:2 LEFT RIGHT", 0, Verdict(True)),
        ("SORT a:1 STORE b:1", 0, Verdict(False, (), (("mixed_keys", 1),))),
        # db arguments mapped
        ("SWAPDB 0 1", 0, Verdict(False, (_c("SWAPDB 3 1"),))),
        ("SWAPDB 1 1", 7, Verdict(True)),  # (run from a db that is not copied: not about it)
        ("SWAPDB 0 7", 0, Verdict(False, (), (("db", 1),))),
        ("MOVE a:1 2", 0, Verdict(False, (_c("MOVE a:1 5"),))),
        ("MOVE a:1 1", 0, Verdict(True)),
        ("MOVE a:1 9", 0, Verdict(False, (_c("DEL a:1"),))),  # leaves the copied dbs
        ("MOVE b:1 2", 0, Verdict(False, (), (("key_not_allowed", 1),))),
        ("COPY a:1 a:2 DB 0 REPLACE", 1, Verdict(False, (_c("COPY a:1 a:2 DB 3 REPLACE"),))),
        ("COPY a:1 a:2 DB 8", 1, Verdict(False, (), (("db", 1),))),
        ("COPY a:1 a:2", 1, Verdict(True)),
    ],
)
def test_command_verdict(command: str, db: int, verdict: Verdict) -> None:
    assert _filter(**FILTER).command(_argv(command), db, 3) == verdict


def test_flushall_with_a_db_allow_list_flushes_only_the_copied_dbs() -> None:
    f = _filter(filters={"dbs": {"allow": [0, 2]}}, db_map={0: 4})
    verdict = f.command(_argv("FLUSHALL ASYNC"), 2, 2)
    assert verdict == Verdict(
        False,
        (_c("SELECT 4"), _c("FLUSHDB ASYNC"), _c("SELECT 2"), _c("FLUSHDB ASYNC"), _c("SELECT 2")),
    )
    # every db copied: FLUSHALL stays FLUSHALL (the target's dbs are the source's, mapped)
    assert _filter(db_map={0: 4, 4: 0}).command(_argv("FLUSHALL"), 0, 4) == Verdict(True)


@pytest.mark.parametrize(
    ("options", "db", "selected", "snapshot"),
    [
        (FILTER, 0, 3, None),
        (FILTER, 1, 1, None),
        (FILTER, 7, None, "db"),
        ({"db_map": {0: 2, 2: 0}}, 2, 0, None),
        ({"db_map": {0: 2, 2: 0}}, 5, 5, None),  # unmapped: its own number
    ],
)
def test_select_and_snapshot_dbs(
    options: dict[str, Any], db: int, selected: int | None, snapshot: str | None
) -> None:
    f = _filter(**options)
    assert f.select(db) == selected
    assert f.snapshot_key(db, b"a:1") == snapshot
    if selected is not None:
        assert f.source_db_of(selected) == db


def test_snapshot_keys_use_the_key_rules() -> None:
    f = _filter(**FILTER)
    assert f.snapshot_key(0, b"a:1") is None
    assert f.snapshot_key(0, b"b:1") == "key_not_allowed"
    assert f.snapshot_key(1, b"a:secret") == "key_regex"


def test_checkpoint_reads_the_filtered_counts() -> None:
    cp = Checkpoint.from_hash(
        "t",
        {
            b"state": b"incremental",
            b"filtered:key_prefix": b"3",
            b"filtered:mixed_keys": b"1",
            b"filtered:bad": b"x",
            b"source_db": b"2",
            b"db": b"5",
        },
    )
    assert cp is not None
    assert cp.filtered == {"key_prefix": 3, "mixed_keys": 1}
    assert (cp.source_db, cp.db) == (2, 5)
