"""The stream's target rewrites, pure and table-driven: expiries a grace later
(replwatch/sync/expiry.py), replwatch's own keys left out and the checkpoint kept in db 0
(replwatch/sync/own_keys.py), and both together (replwatch/sync/target_rewrite.py). What
these rewrites do on real servers is in tests/test_sync_own_keys_expiry.py."""

from __future__ import annotations

import pytest

from replwatch.observe.connection import encode_command
from replwatch.sync.expiry import (
    EXPIRY_COMMANDS,
    LAST_ARGUMENT_FORMS,
    delay_expiry,
    later_last_argument,
    with_last_argument,
)
from replwatch.sync.filters import Verdict
from replwatch.sync.own_keys import PRESERVE_SCRIPT, guard_checkpoint, own_keys_verdict
from replwatch.sync.target_rewrite import Rewrite, TargetRewriter

G = 300_000  # grace, ms


def argv(text: str) -> list[bytes]:
    return [part.encode() for part in text.split()]


EXPIRY_CASES = [
    # what the sources put in their streams (7.0+: absolute; 6.2: relative)
    ("SET k v PXAT 1700000000000", "SET k v PXAT 1700000300000"),
    ("SET k v PX 300", "SET k v PX 300300"),
    ("SET k v EX 100", "SET k v PX 400000"),
    ("SET k v EXAT 1700000000", "SET k v PXAT 1700000300000"),
    ("set k v nx get px 5", "set k v nx get PX 300005"),
    ("SET k v KEEPTTL", None),
    ("SET k v NX", None),
    ("SET k v", None),
    ("SET k EX", None),  # the value is "EX", no option
    ("SET k v IFEQ PX PX 10", "SET k v IFEQ PX PX 300010"),  # IFEQ's value is not an option
    ("SET k v PX 0", None),  # the source refuses it: never in a stream
    ("SET k v PX soon", None),
    ("SETEX k 100 v", "PSETEX k 400000 v"),
    ("PSETEX k 5 v", "PSETEX k 300005 v"),
    ("EXPIRE k 50", "PEXPIRE k 350000"),
    ("EXPIRE k 50 GT", "PEXPIRE k 350000 GT"),
    ("EXPIRE k -1", None),  # delete now: left alone
    ("EXPIRE k 0", None),
    ("PEXPIRE k 5000", "PEXPIRE k 305000"),
    ("EXPIREAT k 1700000000", "PEXPIREAT k 1700000300000"),
    ("PEXPIREAT k 1700000000000", "PEXPIREAT k 1700000300000"),
    ("PEXPIREAT k 5", "PEXPIREAT k 300005"),  # absolute, long past: still later
    ("GETEX k EX 10", "GETEX k PX 310000"),
    ("GETEX k PERSIST", None),
    ("GETEX k", None),
    ("RESTORE k 0 payload REPLACE", None),
    ("RESTORE k 1000 payload", "RESTORE k 301000 payload"),
    ("RESTORE k 1700000000000 payload ABSTTL", "RESTORE k 1700000300000 payload ABSTTL"),
    ("HPEXPIREAT h 1700000000000 FIELDS 1 f", "HPEXPIREAT h 1700000300000 FIELDS 1 f"),
    ("HEXPIRE h 100 NX FIELDS 1 f", "HPEXPIRE h 400000 NX FIELDS 1 f"),
    ("HEXPIREAT h 1700000000 FIELDS 2 f g", "HPEXPIREAT h 1700000300000 FIELDS 2 f g"),
    (
        "HSETEX h PXAT 1700000000000 FIELDS 1 f v",
        "HSETEX h PXAT 1700000300000 FIELDS 1 f v",
    ),
    ("HSETEX h FNX EX 5 FIELDS 1 f v", "HSETEX h FNX PX 305000 FIELDS 1 f v"),
    ("HSETEX h KEEPTTL FIELDS 1 EX 5", None),  # after FIELDS: field names and values
    ("HGETEX h PX 5000 FIELDS 1 g", "HGETEX h PX 305000 FIELDS 1 g"),
    ("HPERSIST h FIELDS 1 f", None),
    ("INCR k", None),
    ("PERSIST k", None),
]


@pytest.mark.parametrize(("command", "expected"), EXPIRY_CASES)
def test_delay_expiry(command: str, expected: str | None) -> None:
    got = delay_expiry(argv(command), G)
    assert got == (None if expected is None else argv(expected))


@pytest.mark.parametrize(("command", "expected"), EXPIRY_CASES)
def test_the_fast_path_agrees_with_delay_expiry(command: str, expected: str | None) -> None:
    """later_last_argument (the stream's fast path) takes the forms whose last argument
    alone moves and gives what delay_expiry gives there; with_last_argument re-encodes."""
    args = argv(command)
    later = later_last_argument(args, G) if args[0].upper() in LAST_ARGUMENT_FORMS else None
    if later is None:
        return
    assert expected is not None and argv(expected)[:-1] == args[:-1]
    assert later == argv(expected)[-1]
    raw = bytearray(b"*1\r\n$4\r\nPING\r\n" + encode_command(args) + b"*1\r\n$4\r\nPING\r\n")
    start = 14
    end = start + len(encode_command(args))
    assert with_last_argument(raw, start, end, args[-1], later) == encode_command(argv(expected))


def test_the_fast_path_takes_the_streams_forms() -> None:
    for command in ("SET k v PXAT 1700000000000", "set k v px 300", "PEXPIREAT k 5", "PEXPIRE k 5"):
        assert later_last_argument(argv(command), G) is not None, command
    for command in ("SET k v EX 100", "SET k v NX", "SET k v PX 0", "EXPIRE k 5", "SET k v"):
        assert later_last_argument(argv(command), G) is None, command


def test_no_grace_changes_nothing() -> None:
    assert delay_expiry(argv("SET k v PXAT 1700000000000"), 0) is None


def test_every_rewritten_name_is_an_expiry_command() -> None:
    for command, expected in EXPIRY_CASES:
        if expected is not None:
            assert argv(command)[0].upper() in EXPIRY_COMMANDS
            assert argv(expected)[0].upper() in EXPIRY_COMMANDS


OWN_CASES = [
    ("SET __replwatch:heartbeat 1 PX 5", Verdict(False)),
    ("HSET __replwatch:sync:other offset 5", Verdict(False)),
    ("DEL __replwatch:probe", Verdict(False)),
    ("SET user __replwatch:x", None),  # a value, not a key
    ("DEL a __replwatch:x b", Verdict(False, ((b"DEL", b"a", b"b"),))),
    ("MSET a 1 __replwatch:x 2", Verdict(False, ((b"MSET", b"a", b"1"),))),
    ("RENAME user __replwatch:sync:t", Verdict(False, (), (("mixed_keys", 1),))),
    ("COPY __replwatch:sync:t user", Verdict(False, (), (("mixed_keys", 1),))),
    ("FLUSHALL", None),
    ("SET user v", None),
]


@pytest.mark.parametrize(("command", "expected"), OWN_CASES)
def test_own_keys_verdict(command: str, expected: Verdict | None) -> None:
    assert own_keys_verdict(argv(command)) == expected


CP = b"__replwatch:sync:t"
SCRIPT = PRESERVE_SCRIPT.encode()
GUARD_CASES = [
    ("FLUSHALL", 0, [(b"EVAL", SCRIPT, b"1", CP, b"FLUSHALL")]),
    ("FLUSHALL ASYNC", 0, [(b"EVAL", SCRIPT, b"1", CP, b"FLUSHALL", b"ASYNC")]),
    (
        "FLUSHALL",
        3,
        [(b"SELECT", b"0"), (b"EVAL", SCRIPT, b"1", CP, b"FLUSHALL"), (b"SELECT", b"3")],
    ),
    ("FLUSHDB", 0, [(b"EVAL", SCRIPT, b"1", CP, b"FLUSHDB")]),
    ("FLUSHDB", 2, None),  # the checkpoint is not in db 2
    (
        "SWAPDB 0 5",
        7,
        [(b"SWAPDB", b"0", b"5"), (b"SELECT", b"5"), (b"MOVE", CP, b"0"), (b"SELECT", b"7")],
    ),
    (
        "SWAPDB 4 0",
        0,
        [(b"SWAPDB", b"4", b"0"), (b"SELECT", b"4"), (b"MOVE", CP, b"0"), (b"SELECT", b"0")],
    ),
    ("SWAPDB 1 2", 0, None),
    ("SWAPDB 0 0", 0, None),
    ("SWAPDB 0 x", 0, None),
    ("SET k v", 0, None),
]


@pytest.mark.parametrize(("command", "db", "expected"), GUARD_CASES)
def test_guard_checkpoint(command: str, db: int, expected: list[tuple[bytes, ...]] | None) -> None:
    assert guard_checkpoint(argv(command), db, CP) == expected


def test_rewriter_combines_the_rules() -> None:
    rewriter = TargetRewriter(CP, G)
    assert rewriter.rewrite(argv("SET k v"), 0) is None
    assert rewriter.rewrite(argv("INCR k"), 0) is None
    assert rewriter.rewrite(argv("SET __replwatch:heartbeat 1"), 0) == Rewrite(())
    assert rewriter.rewrite(argv("SET k v PXAT 10"), 0) == Rewrite(
        ((b"SET", b"k", b"v", b"PXAT", b"300010"),)
    )
    # own keys first, then the grace on what is left
    assert rewriter.rewrite(argv("DEL k __replwatch:x"), 0) == Rewrite(((b"DEL", b"k"),))
    swapped = rewriter.rewrite(argv("SWAPDB 0 1"), 0)
    assert swapped is not None and swapped.commands[2] == (b"MOVE", CP, b"0")
    for name in (b"SET", b"PEXPIREAT", b"FLUSHALL", b"SWAPDB", b"DEL", b"RENAME"):
        assert name in rewriter.watched


def test_which_commands_need_a_look() -> None:
    """`DEL key` (the source's expiry) and `SET key value` stay on the fast path; a second
    key, a time, a flush do not."""
    rewriter = TargetRewriter(CP, G)
    for name, n in ((b"DEL", 2), (b"UNLINK", 2), (b"SET", 3), (b"SET", 4), (b"HSET", 4)):
        assert not rewriter.needs_look(name, n), (name, n)
    for name, n in ((b"DEL", 3), (b"SET", 5), (b"PEXPIREAT", 3), (b"FLUSHALL", 1)):
        assert rewriter.needs_look(name, n), (name, n)
    assert not TargetRewriter(None, G).needs_look(b"FLUSHALL", 1)


def test_rewriter_without_grace_or_guard() -> None:
    rewriter = TargetRewriter(None, 0)
    assert rewriter.rewrite(argv("SET k v PXAT 10"), 0) is None
    assert rewriter.rewrite(argv("FLUSHALL"), 0) is None
    assert b"PEXPIREAT" not in rewriter.watched and b"FLUSHALL" not in rewriter.watched
    assert rewriter.rewrite(argv("HSET __replwatch:sync:x a 1"), 0) == Rewrite(())


def test_rewrite_verdict_follows_the_filters_selects() -> None:
    rewriter = TargetRewriter(CP, G)
    # a filter's FLUSHALL for copied dbs 0 and 3, back in db 3: db 0's FLUSHDB is guarded
    verdict = Verdict(
        False,
        (
            (b"SELECT", b"0"),
            (b"FLUSHDB",),
            (b"SELECT", b"3"),
            (b"FLUSHDB",),
            (b"SELECT", b"3"),
        ),
    )
    out = rewriter.rewrite_verdict(verdict, argv("FLUSHALL"), 3)
    assert out.commands == (
        (b"SELECT", b"0"),
        (b"EVAL", SCRIPT, b"1", CP, b"FLUSHDB"),
        (b"SELECT", b"3"),
        (b"FLUSHDB",),
        (b"SELECT", b"3"),
    )
    kept = rewriter.rewrite_verdict(Verdict(True), argv("SET k v PX 5"), 0)
    assert kept.commands == ((b"SET", b"k", b"v", b"PX", b"300005"),)
