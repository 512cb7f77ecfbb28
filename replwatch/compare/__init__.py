"""`replwatch compare`: verify that two Redis databases hold the same data, key by key.

The source is SCANned (never KEYS) in batches and each key is read on both servers in
pipelines; values larger than one chunk are read chunk by chunk (reading.py). Every decision
about what a difference is — missing, extra, another type, another value, a TTL beyond the
tolerance — is a pure rule (rules.py for the key, value_rules.py for the value) with table
tests; run.py drives a compare, key_comparer.py wires the reads to the rules.

TTLs are equal within `ttl_tolerance`, and the target's may also be up to `expire_grace`
longer (a sync task writes TTLs that much later: replwatch/sync/expiry.py; by default the
largest grace a checkpoint on the target records); a TTL on one side only is a difference.
Then, unless sampling, the target is SCANned too and every target key missing on the source
is reported as `extra`. With `sample`, N random source keys per database (RANDOMKEY; all of
them when the database has at most N keys) are checked for missing/different, extra keys are
not checked and the report says so.

A key found different is rechecked before it is reported (recheck.py). Keys that SCAN returns
twice (it may, while a server rehashes) are compared and counted twice. `rate` limits the key
reads per second over both servers together (ratelimit.py; the costs: reading.py). Keys
matching `ignore` globs (default `__replwatch:*`: replwatch's own heartbeat and probe keys,
which differ by design while a sync runs) are skipped on both sides.

Modules: model (options, report, errors), display (keys and numbers for people), rules and
value_rules (pure), connection (one server), reading and scan (the I/O), key_comparer,
recheck, tally and run (one compare), ratelimit, render (text, JSON), cli (options, exit
codes). Stand-alone: `python -m replwatch.compare --source URL --target URL …`.
"""

from __future__ import annotations

from replwatch.compare.cli import (
    EXIT_DIFFERENT,
    EXIT_EQUAL,
    EXIT_INCOMPLETE,
    EXIT_USAGE,
    add_compare_parser,
    main,
    run_compare,
)
from replwatch.compare.model import (
    CompareIncomplete,
    CompareOptions,
    CompareReport,
    CompareUsageError,
    DbPair,
    Difference,
)
from replwatch.compare.run import compare_databases

__all__ = [
    "EXIT_DIFFERENT",
    "EXIT_EQUAL",
    "EXIT_INCOMPLETE",
    "EXIT_USAGE",
    "CompareIncomplete",
    "CompareOptions",
    "CompareReport",
    "CompareUsageError",
    "DbPair",
    "Difference",
    "add_compare_parser",
    "compare_databases",
    "main",
    "run_compare",
]
