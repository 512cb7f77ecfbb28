"""`replwatch compare` on the command line: its options, their validation (one line naming
the option), and the exit codes.

Exit codes extend replwatch.cli's 0 ok / 1 failure / 2 config:
    0  the databases are equal
    1  they differ (the report lists how)
    2  usage error: bad URL or option (one line on stderr naming the option)
    3  the compare could not complete: refused, timeout, authentication, server error (one
       line on stderr); 1 is kept for "differ" so a script can tell the two apart.
Passwords never appear in output or errors: servers are named by their host:port label.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from pydantic import ValidationError
from pydantic_core import PydanticCustomError

from replwatch.compare.model import DEFAULT_IGNORE, CompareOptions, CompareUsageError
from replwatch.compare.render import render_json, render_text
from replwatch.compare.run import compare_databases
from replwatch.config import RedisEndpoint, TLSConfig, parse_duration, parse_redis_url
from replwatch.errors import ConfigError, RedisError
from replwatch.usage import UsageParser

EXIT_EQUAL: Final = 0
EXIT_DIFFERENT: Final = 1
EXIT_USAGE: Final = 2
EXIT_INCOMPLETE: Final = 3


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """The compare options. Values are validated by options_from_args (one-line errors)."""
    add = parser.add_argument
    add("--source", metavar="URL", help="source redis:// or rediss:// URL (required)")
    add("--target", metavar="URL", help="target redis:// or rediss:// URL (required)")
    add("--tls-ca-file", metavar="FILE", help="rediss://: the CA bundle to verify servers with")
    add("--tls-cert-file", metavar="FILE", help="rediss://: client certificate (PEM)")
    add("--tls-key-file", metavar="FILE", help="rediss://: the client certificate's key (PEM)")
    add(
        "--tls-insecure-skip-verify",
        action="store_true",
        help="rediss://: do not verify the servers' certificates (testing only)",
    )
    add("--db", metavar="N", help="compare db N on both (default: the db in each URL, else 0)")
    add("--all-dbs", action="store_true", help="compare every db that has keys on either side")
    add("--sample", metavar="N", help="check N random source keys per db; skips extra keys")
    add("--rate", metavar="KEYS_PER_S", help="key reads per second over both servers")
    add(
        "--ttl-tolerance",
        metavar="DURATION",
        default="2s",
        help="TTLs closer than this are equal (default: 2s)",
    )
    add(
        "--expire-grace",
        metavar="DURATION",
        help="target TTLs may be this much longer than the source's (a sync task's "
        "expire_grace; default: the largest one a sync checkpoint on the target records)",
    )
    add(
        "--recheck",
        metavar="N",
        default="1",
        help="re-read a differing key N times before reporting it (default: 1)",
    )
    add(
        "--recheck-delay",
        metavar="DURATION",
        default="500ms",
        help="wait this long before each re-read (default: 500ms)",
    )
    add("--batch", metavar="N", default="200", help="keys per SCAN and pipeline (default: 200)")
    add(
        "--chunk",
        metavar="N",
        default="500",
        help="elements per read of a large list/set/hash/zset/stream (default: 500)",
    )
    add("--timeout", metavar="DURATION", default="10s", help="per command (default: 10s)")
    add(
        "--max-differences",
        metavar="N",
        default="100",
        help="differences listed, 0 for all (default: 100; the counts are always exact)",
    )
    add(
        "--ignore",
        metavar="GLOB",
        action="append",
        default=[],
        help="skip keys matching GLOB (repeatable; __replwatch:* is always skipped)",
    )
    add("--json", action="store_true", help="print one JSON object")


def add_compare_parser(
    subparsers: argparse._SubParsersAction[UsageParser],
) -> argparse.ArgumentParser:
    """Add `compare` to the replwatch CLI; its handler is run_compare(args) -> exit code."""
    parser = subparsers.add_parser(
        "compare",
        help="verify that two Redis databases hold the same keys, values and TTLs",
        description=(
            "Compare a source and a target Redis: missing, extra, type, value and TTL "
            "differences. Exit 0 equal, 1 different, 2 usage error, 3 could not complete."
        ),
    )
    add_compare_arguments(parser)
    return parser


def _endpoint(option: str, value: str | None) -> RedisEndpoint:
    if not value:
        raise CompareUsageError(option, "required: a redis:// or rediss:// URL")
    try:
        return parse_redis_url(value)
    except PydanticCustomError as exc:
        raise CompareUsageError(option, str(exc)) from None
    except ValidationError as exc:
        problem = exc.errors()[0]["msg"] if exc.errors() else "invalid URL"
        raise CompareUsageError(option, problem) from None


def _whole_number(option: str, value: str, minimum: int) -> int:
    text = value.strip()
    if not text.isdigit() or int(text) < minimum:
        raise CompareUsageError(option, f"must be a whole number >= {minimum}, got {value!r}")
    return int(text)


def _duration(option: str, value: str, *, positive: bool = False) -> float:
    try:
        seconds = parse_duration(value)
    except PydanticCustomError as exc:
        raise CompareUsageError(option, str(exc)) from None
    if positive and seconds <= 0:
        raise CompareUsageError(option, "must be above 0")
    return seconds


def _rate(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        rate = float(value)
    except ValueError:
        rate = -1.0
    if not rate > 0 or rate == float("inf"):
        raise CompareUsageError(
            "--rate", f"must be a positive number of keys per second, got {value!r}"
        )
    return rate


def options_from_args(
    args: argparse.Namespace,
) -> tuple[RedisEndpoint, RedisEndpoint, CompareOptions]:
    """Validate parsed arguments; raises CompareUsageError naming the option."""
    source = _endpoint("--source", args.source)
    target = _endpoint("--target", args.target)
    db = None if args.db is None else _whole_number("--db", args.db, 0)
    if db is not None and args.all_dbs:
        raise CompareUsageError("--all-dbs", "cannot be combined with --db")
    options = CompareOptions(
        db=db,
        all_dbs=bool(args.all_dbs),
        sample=None if args.sample is None else _whole_number("--sample", args.sample, 1),
        rate=_rate(args.rate),
        ttl_tolerance=_duration("--ttl-tolerance", args.ttl_tolerance),
        expire_grace=(
            None
            if getattr(args, "expire_grace", None) is None
            else _duration("--expire-grace", args.expire_grace)
        ),
        recheck=_whole_number("--recheck", args.recheck, 0),
        recheck_delay=_duration("--recheck-delay", args.recheck_delay),
        batch=_whole_number("--batch", args.batch, 1),
        chunk=_whole_number("--chunk", args.chunk, 1),
        timeout=_duration("--timeout", args.timeout, positive=True),
        max_differences=_whole_number("--max-differences", args.max_differences, 0),
        ignore=(*DEFAULT_IGNORE, *args.ignore),
    )
    return source, target, options


def tls_from_args(args: argparse.Namespace) -> TLSConfig:
    """The --tls-* options as a TLSConfig; a file that cannot be read is a usage error."""
    files = {
        "ca_file": getattr(args, "tls_ca_file", None),
        "cert_file": getattr(args, "tls_cert_file", None),
        "key_file": getattr(args, "tls_key_file", None),
    }
    for name, path in files.items():
        if path is not None and not Path(path).is_file():
            flag = "--tls-" + name.replace("_", "-")
            raise ConfigError(flag, [f"{path}: no such file"])
    if files["key_file"] and not files["cert_file"]:
        raise ConfigError("--tls-key-file", ["given without --tls-cert-file"])
    return TLSConfig(
        ca_file=files["ca_file"],
        cert_file=files["cert_file"],
        key_file=files["key_file"],
        insecure_skip_verify=bool(getattr(args, "tls_insecure_skip_verify", False)),
    )


def run_compare(args: argparse.Namespace) -> int:
    """The `compare` command: prints the report (or one error line) and returns the exit
    code. It handles its own errors, so the caller must not map them to its own codes."""
    try:
        source, target, options = options_from_args(args)
    except ConfigError as exc:
        print(f"replwatch compare: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        tls = tls_from_args(args)
    except ConfigError as exc:
        print(f"replwatch compare: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        report = compare_databases(source, target, options, tls=tls)
    except RedisError as exc:
        print(f"replwatch compare: error: {exc}", file=sys.stderr)
        return EXIT_INCOMPLETE
    print(render_json(report) if args.json else render_text(report, options))
    return EXIT_EQUAL if report.equal else EXIT_DIFFERENT


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry: `python -m replwatch.compare --source URL --target URL …`."""
    parser = UsageParser(
        prog="replwatch compare",
        description="Verify that two Redis databases hold the same keys, values and TTLs.",
    )
    add_compare_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_compare(args)
    except KeyboardInterrupt:
        return 130
