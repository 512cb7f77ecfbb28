"""Expiry on the target a grace period later than on the source (pure).

A native replica never expires a key on its own: it waits for its master's DEL. A sync
target is a master, and expires keys by its own clock. A key written with its TTL exactly
as on the source is then gone from the target when the source, a moment before its expiry,
made it persistent (PERSIST, GETEX PERSIST, a new EXPIRE, SET over it) and the syncer had
not yet brought that command across (a restart, a pause, the full sync's window): the late
PERSIST finds nothing, a late INCR starts again from 1. So every expiry the task writes is
moved `grace` later (task option `expire_grace`): while the task is less than that behind,
the source's own DEL (its active or lazy expiry, replicated) removes the key from the target
first. The price: a stopped task leaves keys that live up to `grace` longer than on the
source, and TTL on the target reads that much more.

`delay_expiry` rewrites one command of the stream (stream_apply.py, cluster_stream.py);
snapshot keys get the grace on their absolute expiry times (snapshot_load.py). Relative
times that are not positive mean "delete now" on the source and are left alone. Verbatim
script replication (EVAL with EXPIRE inside, only with Redis 6.2's non-default
`lua-replicate-commands no`) is not rewritten.
"""

from __future__ import annotations

from collections.abc import Sequence

# stream commands that can set an expiry (argv[0] upper case)
EXPIRY_COMMANDS = frozenset(
    (
        b"SET",
        b"SETEX",
        b"PSETEX",
        b"EXPIRE",
        b"PEXPIRE",
        b"EXPIREAT",
        b"PEXPIREAT",
        b"GETEX",
        b"RESTORE",
        b"HEXPIRE",
        b"HPEXPIRE",
        b"HEXPIREAT",
        b"HPEXPIREAT",
        b"HSETEX",
        b"HGETEX",
    )
)

# option -> (its name in milliseconds, seconds to ms factor, absolute)
_TIME_OPTIONS: dict[bytes, tuple[bytes, int, bool]] = {
    b"EX": (b"PX", 1000, False),
    b"PX": (b"PX", 1, False),
    b"EXAT": (b"PXAT", 1000, True),
    b"PXAT": (b"PXAT", 1, True),
}
# SET options followed by a value that is not a time (Valkey 8.1 IFEQ; Redis 8.4 IFNE …)
_SET_VALUE_OPTIONS = frozenset((b"IFEQ", b"IFNE", b"IFDEQ", b"IFDNE"))
# EXPIRE family: name -> (name in milliseconds, factor, absolute)
_EXPIRE_FORMS: dict[bytes, tuple[bytes, int, bool]] = {
    b"EXPIRE": (b"PEXPIRE", 1000, False),
    b"PEXPIRE": (b"PEXPIRE", 1, False),
    b"EXPIREAT": (b"PEXPIREAT", 1000, True),
    b"PEXPIREAT": (b"PEXPIREAT", 1, True),
    b"HEXPIRE": (b"HPEXPIRE", 1000, False),
    b"HPEXPIRE": (b"HPEXPIRE", 1, False),
    b"HEXPIREAT": (b"HPEXPIREAT", 1000, True),
    b"HPEXPIREAT": (b"HPEXPIREAT", 1, True),
}


def _later(value: bytes, factor: int, absolute: bool, grace_ms: int) -> bytes | None:
    """The time in milliseconds moved `grace_ms` later; None to leave the command as it
    is (not a number, or a relative time that is not positive: deleted at once)."""
    try:
        number = int(value)
    except ValueError:
        return None
    if not absolute and number <= 0:
        return None
    return b"%d" % (number * factor + grace_ms)


def _options(
    argv: Sequence[bytes], first: int, stop: bytes | None, grace_ms: int
) -> list[bytes] | None:
    """SET / GETEX / HSETEX / HGETEX: the time option from argv[first] on (up to `stop`,
    e.g. FIELDS) moved later, as PX / PXAT."""
    i = first
    n = len(argv)
    while i < n:
        token = argv[i].upper()
        if stop is not None and token == stop:
            return None
        if token in _SET_VALUE_OPTIONS:
            i += 2
            continue
        form = _TIME_OPTIONS.get(token)
        if form is not None and i + 1 < n:
            name, factor, absolute = form
            later = _later(argv[i + 1], factor, absolute, grace_ms)
            if later is None:
                return None
            out = list(argv)
            out[i], out[i + 1] = name, later
            return out
        i += 1
    return None


# the forms the sources put in their streams (7.0+: SET … PXAT, PEXPIREAT; 6.2: SET … PX,
# PEXPIRE): their last argument alone moves (later_last_argument, the stream's fast path)
LAST_ARGUMENT_FORMS = frozenset((b"SET", b"PEXPIREAT", b"PEXPIRE"))


# SET's time option in the stream's spellings -> absolute; PEXPIRE forms -> absolute
PX_UNITS = {b"PXAT": True, b"pxat": True, b"PX": False, b"px": False}
PEXPIRE_FORMS = {b"PEXPIREAT": True, b"PEXPIRE": False}


def later_last_argument(
    argv: Sequence[bytes], grace_ms: int, name: bytes | None = None
) -> bytes | None:
    """`SET key value PX|PXAT n`, `PEXPIREAT key n`, `PEXPIRE key n`: the last argument
    moved `grace_ms` later (what delay_expiry would put there); None for any other form.
    `name`: argv[0] upper-cased, when the caller has it."""
    n = len(argv)
    if name is None:
        name = argv[0].upper()
    if n == 5:
        if name != b"SET":
            return None
        absolute = PX_UNITS.get(argv[3])
        if absolute is None:
            absolute = PX_UNITS.get(argv[3].upper())
            if absolute is None:
                return None
    elif n == 3:
        absolute = PEXPIRE_FORMS.get(name)
        if absolute is None:
            return None
    else:
        return None
    return _later(argv[-1], 1, absolute, grace_ms)


def with_last_argument(raw: bytearray, start: int, end: int, last: bytes, new: bytes) -> bytes:
    """The command raw[start:end] (RESP, its last argument `last`) with `new` as its last
    argument instead: the bytes up to it, then `$<len>\r\n<new>\r\n`."""
    cut = end - len(last) - len(str(len(last))) - 5
    return bytes(raw[start:cut]) + b"$%d\r\n%b\r\n" % (len(new), new)


def delay_expiry(argv: Sequence[bytes], grace_ms: int) -> list[bytes] | None:
    """The command with every expiry it sets moved `grace_ms` later (in the millisecond
    form of the same command); None when it sets none (forward it as it is)."""
    if grace_ms <= 0 or len(argv) < 2:
        return None
    name = argv[0].upper()
    n = len(argv)
    if name == b"SET":
        return _options(argv, 3, None, grace_ms) if n > 3 else None
    if name == b"GETEX":
        return _options(argv, 2, None, grace_ms)
    if name == b"HSETEX" or name == b"HGETEX":
        return _options(argv, 2, b"FIELDS", grace_ms)
    if name == b"SETEX" or name == b"PSETEX":
        if n != 4:
            return None
        later = _later(argv[2], 1000 if name == b"SETEX" else 1, False, grace_ms)
        return None if later is None else [b"PSETEX", argv[1], later, argv[3]]
    form = _EXPIRE_FORMS.get(name)
    if form is not None:
        if n < 3:
            return None
        new_name, factor, absolute = form
        later = _later(argv[2], factor, absolute, grace_ms)
        return None if later is None else [new_name, argv[1], later, *argv[3:]]
    if name == b"RESTORE":
        # RESTORE key ttl payload [REPLACE] [ABSTTL] …: ttl 0 is no expiry; relative or
        # absolute, both in milliseconds
        if n < 4 or argv[2] == b"0":
            return None
        absolute = any(arg.upper() == b"ABSTTL" for arg in argv[4:])
        later = _later(argv[2], 1, absolute, grace_ms)
        if later is None:
            return None
        out = list(argv)
        out[2] = later
        return out
    return None
