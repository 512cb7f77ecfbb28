"""Stream commands of the source's replication stream as another server generation must get
them (pure). The stream appliers forward commands as they are; a command whose name is in
`StreamCompat.names` goes through `stream_command_for_target` first.

What the sources propagate (read off a replica link of Redis 6.2.14, 7.0.15, Valkey 8.1.8 and
9.1.2) and what a target does with it through a normal client:

- XREADGROUP, XCLAIM and XAUTOCLAIM reach replicas as `XCLAIM key group consumer 0 id TIME ms
  RETRYCOUNT n FORCE JUSTID LASTID id`, one per ID. An XCLAIM or XAUTOCLAIM that meets a
  pending entry whose message was deleted removes that entry on 7.0+ and Valkey, and
  propagates the removal as the same form (naming the entry's owner): on 7.0+ that XCLAIM
  removes the entry, on 6.2 it claims it. 6.2 itself claims such an entry (and propagates the
  claim), which a 7.0+ target turns into a removal; a native 7.0 replica of a 6.2 master does
  the same. Either way the pending entry list would differ with nothing logged.
- 7.0+ and Valkey propagate `XGROUP SETID … ENTRIESREAD n` (an XREADGROUP … NOACK; every
  XREADGROUP on Valkey 8+), pass `XGROUP CREATE … ENTRIESREAD n` and `XSETID … ENTRIESADDED n
  MAXDELETEDID id` through as sent: 6.2 refuses all three (a wrong-arguments error). Those
  fields do not exist on 6.2, so the commands go without them and nothing is lost.
- Every version turns an approximate trim (`MAXLEN ~ n LIMIT m`, `MINID ~ …`) into an exact
  one and keeps the LIMIT: `XADD key MAXLEN = 251 LIMIT 100 id …`, `XTRIM key MAXLEN = 151
  LIMIT 100`. Replicas accept that from their master only; any server refuses it from a
  client ("LIMIT cannot be used without the special ~ option"), so the entry would be lost.
  An exact trim ignores LIMIT on a replica, so it goes without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from replwatch.sync.commands import TargetCaps

Command = tuple[bytes, ...]

_XADD = b"XADD"
_XTRIM = b"XTRIM"
_XSETID = b"XSETID"
_XGROUP = b"XGROUP"
_XCLAIM = b"XCLAIM"
_LIMIT = b"LIMIT"
_APPROX = b"~"
_ENTRIESREAD = b"ENTRIESREAD"
_XADD_OPTIONS = frozenset((b"NOMKSTREAM", b"MAXLEN", b"MINID", _LIMIT))
_TRIM_STRATEGIES = frozenset((b"MAXLEN", b"MINID"))
_XCLAIM_OPTIONS = frozenset((b"IDLE", b"TIME", b"RETRYCOUNT", b"FORCE", b"JUSTID", b"LASTID"))

# KEYS[1] = key, ARGV = (number of IDs, group, consumer, min-idle-time, IDs …, options …):
# the XCLAIM arguments after the key, with the number of IDs in front.

# 7.0+ source, 6.2 target: an ID no longer in the stream leaves the PEL (XACK), as on 7.0;
# then the XCLAIM as sent, which on 6.2 skips an ID that is neither pending nor in the stream
# (FORCE needs the message) and still applies LASTID. The script's effects replicate, not the
# script (6.2's lua-replicate-commands is yes by default; replicate_commands() makes sure).
XCLAIM_DROPS_DELETED = (
    "if redis.replicate_commands then redis.replicate_commands() end "
    "local n = tonumber(ARGV[1]) "
    "for i = 5, n + 4 do "
    "if #redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i]) == 0 then "
    "redis.call('XACK', KEYS[1], ARGV[2], ARGV[i]) end end "
    "redis.call('XCLAIM', KEYS[1], unpack(ARGV, 2)) "
    "return 0"
)

# 6.2 source, 7.0+ target: 6.2 claimed a pending entry whose message is deleted; 7.0+ cannot
# hold that claim (its XCLAIM removes such an entry). The entry stays with its previous owner,
# time and count, the other IDs are claimed, and the reply is an error naming what was not
# carried (the applier counts and logs errors in a batch's replies). LASTID goes with the
# claimed IDs only: beyond an XREADGROUP's own claims, whose messages exist, it never moves
# the group's last ID.
XCLAIM_KEEPS_DELETED = (
    "local n = tonumber(ARGV[1]) "
    "local claim = {'XCLAIM', KEYS[1], ARGV[2], ARGV[3], ARGV[4]} "
    "local kept = {} "
    "for i = 5, n + 4 do "
    "local id = ARGV[i] "
    "if #redis.call('XRANGE', KEYS[1], id, id) == 0 "
    "and #redis.call('XPENDING', KEYS[1], ARGV[2], id, id, 1) > 0 then "
    "kept[#kept + 1] = id else claim[#claim + 1] = id end end "
    "if #claim > 5 then "
    "for i = n + 5, #ARGV do claim[#claim + 1] = ARGV[i] end "
    "redis.call(unpack(claim)) end "
    "if #kept == 0 then return 0 end "
    "return redis.error_reply('REPLWATCH stream ' .. string.gsub(string.sub(KEYS[1], 1, 100), "
    "'%c', '?') .. ' group ' .. string.gsub(string.sub(ARGV[2], 1, 100), '%c', '?') .. "
    "': pending ' .. table.concat(kept, ' ') .. ' not claimed by ' .. "
    "string.gsub(string.sub(ARGV[3], 1, 100), '%c', '?') .. "
    "': the message is deleted and a 7.0+ target cannot claim it (kept as it was)')"
)


@dataclass(frozen=True, slots=True)
class StreamCompat:
    """Which stream semantics the source and the target have: `source_stream_ids` /
    `target_stream_ids` are TargetCaps.stream_ids of each (Redis 7.0+ or Valkey). Build one
    per session with `between` and keep `names`."""

    source_stream_ids: bool
    target_stream_ids: bool

    @classmethod
    def between(cls, source: TargetCaps, target: TargetCaps) -> StreamCompat:
        """From both servers' caps (TargetCaps.of(restore_target_from_info(INFO server)))."""
        return cls(source.stream_ids, target.stream_ids)

    @property
    def names(self) -> frozenset[bytes]:
        """Command names (upper case) that stream_command_for_target must see; any other
        command goes to the target as it is. XADD and XTRIM are always in (exact trims
        with LIMIT); XSETID and XGROUP for a target older than 7.0; XCLAIM when source and
        target differ in whether an XCLAIM removes the pending entry of a deleted message."""
        names = {_XADD, _XTRIM}
        if not self.target_stream_ids:
            names |= {_XSETID, _XGROUP}
        if self.source_stream_ids != self.target_stream_ids:
            names.add(_XCLAIM)
        return frozenset(names)


def stream_command_for_target(
    argv: Sequence[bytes], compat: StreamCompat
) -> tuple[Command, ...] | None:
    """The command(s) to send instead of `argv` (a command of the source's stream whose name,
    upper-cased, is in compat.names), or None: send it as it is (the common case, decided
    after a look at an argument or two). A malformed command is left alone (the target
    refuses it as the source's clients would have been refused).

    - XADD / XTRIM with an exact trim and LIMIT: the same without LIMIT (any target).
    - XSETID without ENTRIESADDED / MAXDELETEDID, XGROUP CREATE / SETID without ENTRIESREAD
      (target older than 7.0).
    - XCLAIM → `EVAL <script> 1 key n group consumer min-idle id… options…` (source and
      target of different generations; XCLAIM_DROPS_DELETED / XCLAIM_KEEPS_DELETED). The
      second answers with an error reply naming the pending entries it could not carry."""
    name = argv[0].upper()
    if name == _XADD:
        return _exact_trim_without_limit(argv, xadd=True)
    if name == _XTRIM:
        return _exact_trim_without_limit(argv, xadd=False)
    if name == _XCLAIM:
        if compat.source_stream_ids == compat.target_stream_ids:
            return None
        script = XCLAIM_DROPS_DELETED if compat.source_stream_ids else XCLAIM_KEEPS_DELETED
        return _xclaim_script(argv, script)
    if compat.target_stream_ids:
        return None
    if name == _XSETID:
        return ((argv[0], argv[1], argv[2]),) if len(argv) > 3 else None
    if name == _XGROUP and len(argv) > 5 and argv[1].upper() in (b"CREATE", b"SETID"):
        return _without_option(argv, 5, _ENTRIESREAD)
    return None


def _exact_trim_without_limit(argv: Sequence[bytes], *, xadd: bool) -> tuple[Command, ...] | None:
    """XADD key [NOMKSTREAM] [MAXLEN|MINID [=|~] threshold [LIMIT count]] id field value …
    or XTRIM key MAXLEN|MINID [=|~] threshold [LIMIT count]: without `LIMIT count` when the
    trim is exact. XADD's options come before its ID; an argument starting with a digit or
    `*` is the ID."""
    n = len(argv)
    if n < 4:
        return None
    first = argv[2][:1]
    if xadd and (first.isdigit() or first == b"*"):  # no options: the common case
        return None
    i = 2
    limit_at = -1
    approx = False
    while i < n:
        word = argv[i].upper()
        if word in _TRIM_STRATEGIES:
            i += 1
            if i < n and argv[i] in (b"=", _APPROX):
                approx = argv[i] == _APPROX
                i += 1
            i += 1
        elif word == _LIMIT:
            limit_at = i
            i += 2
        elif xadd and word in _XADD_OPTIONS:
            i += 1
        else:
            break
    if limit_at < 0 or approx or limit_at + 1 >= n:
        return None
    return (tuple(argv[:limit_at]) + tuple(argv[limit_at + 2 :]),)


def _without_option(argv: Sequence[bytes], start: int, option: bytes) -> tuple[Command, ...] | None:
    """`argv` without `option value` (searched from `start`), or None when it has none."""
    for i in range(start, len(argv) - 1):
        if argv[i].upper() == option:
            return (tuple(argv[:i]) + tuple(argv[i + 2 :]),)
    return None


def _xclaim_script(argv: Sequence[bytes], script: str) -> tuple[Command, ...] | None:
    """XCLAIM key group consumer min-idle-time id… [options] → EVAL of `script` with the
    IDs counted (and written in full, ms-seq: XRANGE reads `5` as a range, XCLAIM as 5-0)."""
    if len(argv) < 6:
        return None
    ids: list[bytes] = []
    i = 5
    while i < len(argv) and argv[i].upper() not in _XCLAIM_OPTIONS:
        stream_id = argv[i]
        ids.append(stream_id if b"-" in stream_id else stream_id + b"-0")
        i += 1
    if not ids:
        return None
    return (
        (
            b"EVAL",
            script.encode(),
            b"1",
            argv[1],
            b"%d" % len(ids),
            argv[2],
            argv[3],
            argv[4],
            *ids,
            *argv[i:],
        ),
    )
