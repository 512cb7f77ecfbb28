"""The stream splitter: a read of the replication stream → its whole commands, accounted a
read at a time.

hiredis parses the commands (in C, until the reader holds no whole one); their byte length
in the stream comes from arithmetic over all of them at once (RESP: per command `*<n>\\r\\n`,
per argument `$<size>\\r\\n<bytes>\\r\\n`), so Python does no work per command that C
builtins can do for the whole read. `marked` names the few commands a rule must look at
(the stream's own MULTI / EXEC / SELECT / PING / REPLCONF, what the task's rewrites watch,
replwatch's own keys); everything between them is forwarded as the stream's own bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import chain, compress
from operator import itemgetter
from typing import Any, Protocol, cast

import hiredis

from replwatch.errors import ProtocolFailure
from replwatch.observe.connection import READER_ERRORS
from replwatch.sync.speedups import compiled


class _NoCommand:
    """What the command reader's gets() returns when it holds no whole command."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_COMMAND"


NO_COMMAND: Any = _NoCommand()
_first = itemgetter(0)


class CompiledSplit(Protocol):
    def __call__(
        self,
        raw: bytearray,
        pos: int,
        room: int,
        always: tuple[bytes, ...],
        counted: tuple[tuple[bytes, int], ...],
        own_prefix: bytes,
    ) -> tuple[int, int, list[bytes] | None, int]: ...


def compiled_split() -> CompiledSplit | None:
    """The stream's split in C (_speedups.c: split_stream), when it was built at install
    and REPLWATCH_PURE_PYTHON is not set: from `pos`, at most `room` whole commands no rule
    looks at (the run: where it ends, how many), then the first one a rule looks at (its
    argv and end; None when the run ended first). Raises ValueError on bytes that are not
    a stream of commands. The hiredis path here (take_commands, marked, encoded_length)
    finds the same, a read at a time."""
    return cast(CompiledSplit | None, compiled("split_stream"))


def counted_limits(counted: frozenset[bytes]) -> tuple[tuple[bytes, int], ...]:
    """`marked`'s argument-count rule as compiled_split takes it: (name, most arguments of
    its plain form)."""
    return tuple((name, 4 if name == b"SET" else 2) for name in sorted(counted))


def command_reader() -> hiredis.Reader:
    """A reader of the replication stream: gets() answers NO_COMMAND (never a reply value,
    unlike False, which equals an integer 0) when no whole command is buffered."""
    return hiredis.Reader(notEnoughData=NO_COMMAND)


def take_commands(reader: hiredis.Reader, label: str) -> list[list[bytes]]:
    """Every whole command the reader holds, checked to be arrays of bulk strings (an
    argument that is a status line shows later, as a length that does not match)."""
    try:
        commands: list[Any] = list(iter(reader.gets, NO_COMMAND))
    except READER_ERRORS as exc:
        raise ProtocolFailure(f"bad replication stream from {label}: {exc}") from None
    if not commands:
        return commands
    if set(map(type, commands)) != {list} or not all(commands):
        raise ProtocolFailure(f"replication stream from {label} holds a non-command reply")
    if set(map(type, chain.from_iterable(commands))) != {bytes}:
        raise ProtocolFailure(
            f"replication stream from {label} holds a command whose arguments are not all "
            "bulk strings"
        )
    return commands


def _digits(numbers: list[int]) -> int:
    """Decimal digits of all these non-negative numbers together."""
    return len(repr(numbers)) - 2 * len(numbers) if numbers else 0


def encoded_length(commands: Sequence[Sequence[bytes]]) -> int:
    """Bytes these commands take in the stream (arrays of bulk strings)."""
    counts = list(map(len, commands))
    sizes = list(map(len, chain.from_iterable(commands)))
    return 3 * len(counts) + _digits(counts) + 5 * len(sizes) + sum(sizes) + _digits(sizes)


def command_length(argv: Sequence[bytes]) -> int:
    """Bytes of one command in the stream."""
    sizes = list(map(len, argv))
    return 3 + len(str(len(sizes))) + 3 * len(sizes) + sum(sizes) + len(repr(sizes))


def _positions(names: list[bytes], name: bytes) -> Iterable[int]:
    at = names.index(name)
    while True:
        yield at
        try:
            at = names.index(name, at + 1)
        except ValueError:
            return


def marked(
    commands: Sequence[Sequence[bytes]],
    always: frozenset[bytes],
    counted: frozenset[bytes],
    own_prefix: bytes | None,
) -> list[int]:
    """Indices (ascending) of the commands that need more than forwarding:
    - named (in any case) in `always`;
    - named in `counted` with more arguments than its plain form (SET: more than 4, the
      others more than 2: a second key, a time);
    - with a first argument under `own_prefix` (None: the read holds no such bytes)."""
    names: list[bytes] = list(map(_first, commands))
    found: set[int] = set()
    counts: list[int] | None = None
    for name in set(names):
        upper = name.upper()
        if upper in always:
            found.update(_positions(names, name))
        elif upper in counted:
            if counts is None:
                counts = list(map(len, commands))
            limit = 4 if upper == b"SET" else 2
            if max(compress(counts, map(name.__eq__, names))) > limit:
                found.update(i for i in _positions(names, name) if counts[i] > limit)
    if own_prefix is not None:
        found.update(
            i for i, argv in enumerate(commands) if len(argv) > 1 and argv[1].startswith(own_prefix)
        )
    return sorted(found)
