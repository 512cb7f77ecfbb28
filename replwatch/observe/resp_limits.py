"""Bounds on what a RESP peer may declare, checked before hiredis sees the bytes.

hiredis trusts declared sizes: `*2147483647` makes hiredis-py allocate the slots of a
2^31-element list at once (16 GiB; `*4294967295` raises MemoryError), `$9999999999` makes it
buffer until ten gigabytes have come, and a line without CRLF is buffered for ever. So every
chunk read from a peer is scanned first for a header whose size has enough digits to be over
a limit: in C, digits translated to '0' and the aggregate and bulk type bytes to '*', then
one `find` (a few percent of hiredis's own parse time). A hit is confirmed in Python, which
is rare: only sizes of eight or more digits, or such text inside data, make one.

Confirming a hit: `oversized(..., reply_start=<offset>)` walks the items from a reply
boundary up to the hit (bulk payloads are skipped, so a size inside a value is data, not a
header); without a known boundary a hit counts when it sits at the start of a line. `walk`
also finds a line longer than `max_line` (an unterminated line) in what is buffered.
"""

from __future__ import annotations

_BULK = frozenset(b"$=")  # `=`: RESP3 verbatim string
_AGGREGATE = frozenset(b"*~>|%")  # array, set, push, attribute, map
_LINE = frozenset(b"+-:,#_(")  # simple string, error, integer, double, bool, null, big number
# digits → '0', aggregate and bulk type bytes → '*': one needle finds every candidate
_MARK = bytes.maketrans(b"123456789$=~>|%", b"000000000******")
_CRLF = b"\r\n"
OVERLAP = 32  # bytes of the previous chunk scanned again: a header line split across reads
_MAX_DIGITS = 20  # hiredis refuses longer sizes; a longer digit run is over any limit


class RespLimits:
    """What a peer may declare: one bulk string's length (`max_bulk`), one aggregate's
    element count (`max_aggregate`), one header or simple line (`max_line`), and the bytes of
    one reply buffered before it is complete (`max_pending`)."""

    __slots__ = ("_needle", "max_aggregate", "max_bulk", "max_line", "max_pending")

    def __init__(
        self, *, max_bulk: int, max_aggregate: int, max_pending: int, max_line: int = 64 * 1024
    ) -> None:
        self.max_bulk = max_bulk
        self.max_aggregate = max_aggregate
        self.max_line = max_line
        self.max_pending = max_pending
        # a size over a limit has at least as many digits as the limit
        self._needle = b"*" + b"0" * min(len(str(max_bulk)), len(str(max_aggregate)))

    def size_problem(self, type_byte: int, digits: bytes | bytearray) -> str | None:
        """What is wrong with a header's declared size (None: within the limits, or not a
        number hiredis would take, which it refuses itself)."""
        if len(digits) > _MAX_DIGITS and digits.isdigit():
            return f"declares a size of {len(digits)} digits"
        try:
            size = int(digits)
        except ValueError:
            return None
        if type_byte in _BULK and size > self.max_bulk:
            return f"declares a bulk string of {size} bytes (the limit is {self.max_bulk})"
        if type_byte in _AGGREGATE and size > self.max_aggregate:
            return f"declares {size} elements (the limit is {self.max_aggregate})"
        return None

    def oversized(
        self, buf: bytes | bytearray, start: int, reply_start: int | None = None
    ) -> str | None:
        """The first header at or after `start` (less OVERLAP bytes) in `buf` that declares
        more than the limits allow, described; None when there is none. `reply_start`: an
        offset in `buf` where a reply begins, from which items are walked to confirm a hit;
        None: a hit counts when it starts a line (or `buf`)."""
        from_ = max(0, start - OVERLAP)
        marked = buf[from_:].translate(_MARK)
        needle = self._needle
        hit = marked.find(needle)
        walked = reply_start
        while hit >= 0:
            at = from_ + hit
            digits_end = at + 1
            limit = min(len(buf), at + 2 + _MAX_DIGITS)
            while digits_end < limit and 48 <= buf[digits_end] <= 57:
                digits_end += 1
            problem = self.size_problem(buf[at], buf[at + 1 : digits_end])
            if problem is not None:
                if walked is None:
                    if at == 0 or buf[at - 1] == 10:
                        return problem
                else:
                    walked, problem = self.walk(buf, walked, at + 1)
                    if problem is not None:
                        return problem
            hit = marked.find(needle, hit + 1)
        return None

    def walk(self, buf: bytes | bytearray, pos: int, stop: int) -> tuple[int, str | None]:
        """Walk the items of `buf` (headers, lines, bulk payloads) from `pos`, an item
        boundary, while they start before `stop`: (where the walk stopped, the first problem
        or None). The walk stops early at what hiredis refuses itself (an unknown type byte,
        a size that is no number) and at an item not wholly buffered; `pos` may come back
        past the end of `buf` (inside a bulk payload still to come): walk on from there."""
        end = len(buf)
        max_line = self.max_line
        find = buf.find
        while pos < stop and pos < end:
            kind = buf[pos]
            eol = find(_CRLF, pos, pos + max_line + 2)
            if eol < 0:
                if end - pos > max_line + 1:
                    return pos, f"sent a line longer than {max_line} bytes"
                if kind in _BULK or kind in _AGGREGATE:
                    return pos, self.size_problem(kind, buf[pos + 1 : end].rstrip(b"\r"))
                return pos, None
            if kind in _BULK or kind in _AGGREGATE:
                digits = buf[pos + 1 : eol]
                problem = self.size_problem(kind, digits)
                if problem is not None:
                    return pos, problem
                try:
                    size = int(digits)
                except ValueError:
                    return pos, None
                pos = eol + 2 + (size + 2 if kind in _BULK and size >= 0 else 0)
            elif kind in _LINE:
                pos = eol + 2
            else:
                return pos, None
        return pos, None


MiB = 1 << 20

# The replication stream: a value as big as the snapshot parser takes (rdb.py's
# DEFAULT_MAX_STRING_BYTES); commands of up to 16M arguments (hiredis-py allocates 8 bytes a
# slot up front: 128 MiB); a command of up to four such values pending.
STREAM_LIMITS = RespLimits(
    max_bulk=1 << 30, max_aggregate=1 << 24, max_pending=4 << 30, max_line=64 * 1024
)

# Request/response connections (polls, heartbeats, probes, discovery, checkpoints): replies
# about the servers, never user values; the biggest (CLIENT LIST, CLUSTER NODES of big
# fleets) are well under a megabyte.
REPLY_LIMITS = RespLimits(
    max_bulk=64 * MiB, max_aggregate=1 << 20, max_pending=64 * MiB, max_line=64 * 1024
)


class ReplyGuard:
    """Checks each chunk a request/response connection reads before its hiredis reader is fed
    (the reply boundaries are not known there: a hit counts at the start of a line)."""

    __slots__ = ("_tail", "limits")

    def __init__(self, limits: RespLimits = REPLY_LIMITS) -> None:
        self.limits = limits
        # the end of what was read before (a header may straddle two reads), one byte more
        # than is scanned again: a hit there has the byte before it to say it starts a line
        self._tail = b""

    def check(self, data: bytes) -> str | None:
        """The problem of the next chunk read, or None."""
        tail = self._tail
        buf = tail + data if tail else data
        self._tail = buf[-(OVERLAP + 1) :]
        return self.limits.oversized(buf, len(tail))

    def pending_problem(self, buffered: int) -> str | None:
        """After the reader has returned every complete reply: too much of an incomplete one."""
        if buffered > self.limits.max_pending:
            return (
                f"sent {buffered} bytes of a reply not yet complete "
                f"(the limit is {self.limits.max_pending})"
            )
        return None
