"""The stream splitter (replwatch/sync/stream_split.py), pure: byte lengths accounted a read
at a time, the commands a rule must look at, and what is not a stream of commands."""

from __future__ import annotations

import pytest

from replwatch.errors import ProtocolFailure
from replwatch.observe.connection import encode_command
from replwatch.sync.stream_split import (
    NO_COMMAND,
    command_length,
    command_reader,
    counted_limits,
    encoded_length,
    marked,
    take_commands,
)

ALWAYS = frozenset((b"MULTI", b"EXEC", b"SELECT", b"PING", b"REPLCONF", b"FLUSHALL"))
COUNTED = frozenset((b"SET", b"PEXPIRE", b"EXPIRE", b"RENAME"))
OWN = b"__replwatch:"

COMMANDS = [
    [b"PING"],
    [b"SET", b"k", b"v"],
    [b"SET", b"k" * 9, b"v" * 10, b"PX", b"100"],
    [b"HSET", b"h", b"f", b""],
    [b"LPUSH", b"l", *[b"x" * n for n in (0, 1, 9, 10, 99, 100, 999, 1000, 100_000)]],
    [b"x" * 12_345],
]


@pytest.mark.parametrize("commands", [COMMANDS[:i] + COMMANDS[i + 1 :] for i in range(6)])
def test_encoded_length_is_the_bytes_on_the_wire(commands: list[list[bytes]]) -> None:
    wire = b"".join(encode_command(c) for c in commands)
    assert encoded_length(commands) == len(wire)
    assert sum(command_length(c) for c in commands) == len(wire)


def test_encoded_length_of_nothing_is_zero() -> None:
    assert encoded_length([]) == 0


def read(data: bytes) -> list[list[bytes]]:
    reader = command_reader()
    reader.feed(data)
    return take_commands(reader, "source:1")


def test_take_commands_takes_every_whole_command_and_leaves_the_rest() -> None:
    wire = b"".join(encode_command(c) for c in COMMANDS)
    reader = command_reader()
    reader.feed(wire + b"*2\r\n$3\r\nGET")
    assert take_commands(reader, "s") == COMMANDS
    assert reader.gets() is NO_COMMAND and reader.has_data()  # the tail stays
    reader.feed(b"\r\n$1\r\nk\r\n")
    assert take_commands(reader, "s") == [[b"GET", b"k"]]


def test_an_integer_zero_reply_does_not_end_the_read() -> None:
    """(iter(gets, False) would stop there: 0 == False.)"""
    with pytest.raises(ProtocolFailure, match="non-command reply"):
        read(b":0\r\n" + encode_command(("PING",)))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"+OK\r\n", "non-command reply"),
        (b"-ERR no\r\n", "non-command reply"),
        (b"*0\r\n", "non-command reply"),
        (b"*-1\r\n", "non-command reply"),
        (b"*2\r\n$3\r\nSET\r\n:1\r\n", "not all bulk strings"),
        (b"*2\r\n$3\r\nSET\r\n$-1\r\n", "not all bulk strings"),
        (b"*2\r\n$3\r\nSET\r\n*1\r\n$1\r\na\r\n", "not all bulk strings"),
        (b"?what\r\n", "bad replication stream"),
    ],
)
def test_what_is_not_a_command_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolFailure, match=message):
        read(data)


def names(commands: list[list[bytes]], own: bytes | None = OWN) -> list[bytes]:
    return [b" ".join(commands[i]) for i in marked(commands, ALWAYS, COUNTED, own)]


@pytest.mark.parametrize(
    ("command", "looked_at"),
    [
        ([b"SET", b"k", b"v"], False),  # the plain form goes as it is
        ([b"set", b"k", b"v", b"EX", b"5"], True),  # a time: any case
        ([b"Set", b"k", b"v", b"NX"], False),  # 4 arguments: no time to move
        ([b"PEXPIRE", b"k", b"100"], True),
        ([b"EXPIRE", b"k"], False),
        ([b"RENAME", b"a", b"b"], True),
        ([b"INCR", b"n"], False),
        ([b"multi"], True),
        ([b"Exec"], True),
        ([b"SELECT", b"3"], True),
        ([b"PING"], True),
        ([b"REPLCONF", b"GETACK", b"*"], True),
        ([b"FLUSHALL"], True),
        ([b"GET", b"__replwatch:heartbeat"], True),  # replwatch's own key
        ([b"GET", b"x__replwatch:"], False),
        ([b"__replwatch:x"], False),  # a name is not a key
        ([b"MULTIPLY", b"k"], False),
    ],
)
def test_marked_names_what_a_rule_looks_at(command: list[bytes], looked_at: bool) -> None:
    commands = [[b"INCR", b"a"], command, [b"INCR", b"b"]]
    assert names(commands) == ([b" ".join(command)] if looked_at else [])


def test_own_keys_are_looked_for_only_when_asked() -> None:
    """The applier asks only for a read that holds the prefix's bytes at all."""
    commands = [[b"SET", b"__replwatch:sync:t", b"1"]]
    assert names(commands) == [b"SET __replwatch:sync:t 1"]
    assert names(commands, own=None) == []


def test_marked_is_in_stream_order_and_finds_every_occurrence() -> None:
    commands = [[b"PING"], [b"INCR", b"a"], [b"PING"], [b"SET", b"k", b"v", b"PX", b"1"]] * 3
    assert marked(commands, ALWAYS, COUNTED, None) == [0, 2, 3, 4, 6, 7, 8, 10, 11]


def test_counted_limits_are_the_plain_forms() -> None:
    assert counted_limits(frozenset((b"SET", b"PEXPIRE"))) == ((b"PEXPIRE", 2), (b"SET", 4))
