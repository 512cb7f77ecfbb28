"""Invalid configs as an operator meets them: `replwatch check-config --config FILE` and
`replwatch run --config FILE` each refuse every file of the table with exit code 2, nothing on
stdout and exactly one line on stderr, `<config path>: <field path>: <reason>`, the same line
for both commands, no traceback, no password, and `run` starts nothing (no daemon, no file
written). Most cases go through the in-process entry point `main(argv)` (a subprocess costs
~1 s); a handful run as real subprocesses, the YAML alias bomb among them with its time and
memory measured. A file with several independent problems gets every one of them, once, in one
run; a valid file with a password written in plain text passes, with a warning naming where.

tests/test_config.py checks exact problem lines of config_from_data; this file is the
operator-facing suite over whole files (YAML, encoding, file system) and the CLI.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from replwatch.cli import main
from replwatch.config import load_config

SECRET_URL = "Url-Secret-4f1x"  # written in URLs of the files below
SECRET_FILE = "File-Secret-9q2z"  # the content of the password file @DIR@/pw
SECRET_ENV = "Env-Secret-7k3w"  # an environment variable some files use as password
SECRETS = (SECRET_URL, SECRET_FILE, SECRET_ENV)
UNSET_ENV = "REPLWATCH_TEST_NEVER_SET"
SECRET_ENV_NAME = "REPLWATCH_TEST_PASSWORD"

MISSING = "<no file at this path>"
DIRECTORY = "<a directory at this path>"

# a group that is valid on its own, for files whose problem is elsewhere
G = "groups: [{name: cache, master: '127.0.0.1:6379'}]\n"


def _billion_laughs(levels: int = 9, width: int = 9) -> str:
    """The classic alias bomb: width**levels strings from a few hundred bytes."""
    lines = ["groups:", "  - name: a", "    master: '127.0.0.1:6379'", "    address_map:"]
    lines.append("      x0: &a0 [" + ", ".join(['"lol"'] * width) + "]")
    for i in range(1, levels + 1):
        lines.append(f"      x{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


# (name, file content, field path the line must name, reason it must give). Content: str
# (written as UTF-8; @DIR@ is the test's directory, which holds the password files pw
# (SECRET_FILE), pw-latin1 (not UTF-8), pw-empty and pw-dir/), bytes (written as is),
# MISSING or DIRECTORY.
CASES: list[tuple[str, Any, str, str]] = [
    # ---- the file itself
    ("no-such-file", MISSING, "<file>", "no such file"),
    ("directory-as-config", DIRECTORY, "<file>", "cannot read: Is a directory"),
    ("empty-file", "", "groups", "at least one group (or one sync task, or admin.token)"),
    ("only-comments", "# all commented out\n# groups: []\n", "groups", "at least one group"),
    (
        "not-utf-8",
        b"groups:\n  - name: caf\xe9\n    master: '127.0.0.1:6379'\n",
        "line 2, column 14",
        "not UTF-8 text (byte 0xe9); save the file as UTF-8",
    ),
    ("utf-16", "poll: {interval: 1s}\n".encode("utf-16"), "line 1, column 1", "not UTF-8 text"),
    # ---- YAML syntax
    ("tab-indent", "poll:\n\tinterval: 1s\n", "line 2, column 1", "'\\t' that cannot start"),
    (
        "unclosed-flow-list",
        "groups: [{name: a, master: '127.0.0.1:6379'}\npoll: {}\n",
        "line 2, column 1",
        "expected ',' or ']'",
    ),
    (
        "unterminated-quote",
        f'groups:\n  - name: a\n    master: "redis://:{SECRET_URL}@127.0.0.1:6379\n',
        "line 4, column 1",
        "found unexpected end of stream",
    ),
    ("two-documents", G + "---\npoll: {}\n", "line 2, column 1", "expected a single document"),
    ("undefined-alias", "groups: *defaults\n", "line 1, column 9", "undefined alias"),
    # ---- YAML that would silently mean something else, or blow up
    (
        "duplicate-section",
        "poll: {interval: 1s}\n" + G + "poll: {interval: 2s}\n",
        "poll",
        "given twice (on lines 1 and 3); YAML would silently keep only the second",
    ),
    (
        "duplicate-nested-key",
        "groups:\n  - name: a\n    master: '127.0.0.1:6379'\n    master: '127.0.0.1:6380'\n",
        "groups[0].master",
        "given twice (on lines 3 and 4)",
    ),
    ("billion-laughs", _billion_laughs(), "<file>", "YAML aliases (*name) expand the document"),
    (
        "recursive-alias",
        "groups:\n  - &g {name: a, master: '127.0.0.1:6379', replicas: [*g]}\n",
        "groups[0].replicas[0]",
        "used inside its own anchor",
    ),
    ("nested-too-deep", "groups: " + "[" * 60 + "]" * 60 + "\n", "line 1, column ", "deeper than"),
    # ---- shape
    ("top-level-list", "- name: a\n  master: '127.0.0.1:6379'\n", "<root>", "must be a mapping"),
    ("top-level-string", "replwatch\n", "<root>", "must be a mapping of sections"),
    ("group-is-a-string", "groups: [cache]\n", "groups[0]", "must be a mapping of settings"),
    (
        "groups-is-a-mapping",
        "groups: {name: a}\n",
        "groups",
        "must be a list of groups, each a mapping (- name: cache …); got a mapping (each item "
        "starts with '- ')",
    ),
    ("empty-section", "poll:\n" + G, "poll", "must be a mapping of settings"),
    (
        "replicas-is-a-string",
        "groups: [{name: a, master: '127.0.0.1:6379', replicas: '127.0.0.1:6380'}]\n",
        "groups[0].replicas",
        "must be a list of node addresses, like [redis://10.0.0.2:6379]; got a string",
    ),
    (
        "discover-not-a-boolean",
        "groups: [{name: a, master: '127.0.0.1:6379', discover: sometimes}]\n",
        "groups[0].discover",
        "must be true or false; got a string",
    ),
    ("state-dir-a-number", G + "sync: {state_dir: 5}\n", "sync.state_dir", "must be a file path"),
    # ---- unknown keys
    ("unknown-top-level", "grups: []\n", "grups", "unknown key (did you mean groups?)"),
    (
        "unknown-nested",
        G + "routing: {trip: {lag_second: 2}}\n",
        "routing.trip.lag_second",
        "unknown key (did you mean lag_seconds?)",
    ),
    (
        "unknown-group-key",
        "groups: [{name: a, master: '127.0.0.1:6379', colour: red}]\n",
        "groups[0].colour",
        "unknown key",
    ),
    ("tls-unknown-key", G + "tls: {cafile: /etc/ca.pem}\n", "tls.cafile", "did you mean ca_file?"),
    (
        "group-tls-unknown-key",
        "groups: [{name: a, master: 'rediss://127.0.0.1:6379', tls: {verify: false}}]\n",
        "groups[0].tls.verify",
        "unknown key",
    ),
    (
        "sentinel-source-typo",
        "sync:\n  tasks:\n    - name: t\n      target: '127.0.0.1:6380'\n"
        "      source: {sentinel: {addresses: ['127.0.0.1:26379'], master_name: m, timout: 1s}}\n",
        "sync.tasks[0].source.sentinel.timout",
        "did you mean timeout?",
    ),
    (
        "no-space-after-colon",
        f"groups: [{{name: a, master: '127.0.0.1:6379', auth: {{password:{SECRET_URL}}}}}]\n",
        "groups[0].auth",
        "unknown key (not shown",
    ),
    # ---- URLs
    (
        "url-scheme",
        "groups: [{name: a, master: 'http://127.0.0.1:6379'}]\n",
        "groups[0].master",
        "unsupported scheme 'http': use redis:// or rediss://",
    ),
    (
        "url-port-zero",
        "groups: [{name: a, master: 'redis://127.0.0.1:0'}]\n",
        "groups[0].master",
        "port must be 1-65535",
    ),
    (
        "url-port-70000",
        "groups:\n  - name: a\n    master: '127.0.0.1:6379'\n"
        "    replicas: ['127.0.0.1:6380', 'redis://127.0.0.1:70000']\n",
        "groups[0].replicas[1]",
        "port must be 1-65535",
    ),
    (
        "url-db-not-a-number",
        "groups: [{name: a, master: 'redis://127.0.0.1:6379/cache'}]\n",
        "groups[0].master",
        "database must be a number, got 'cache'",
    ),
    (
        "url-no-host",
        f"groups: [{{name: a, master: 'redis://:{SECRET_URL}@:6379'}}]\n",
        "groups[0].master",
        "URL has no host",
    ),
    (
        "url-query-string",
        "groups: [{name: a, master: 'redis://127.0.0.1:6379?db=2'}]\n",
        "groups[0].master",
        "'?…' and '#…' are not supported in the URL",
    ),
    (
        "url-host-with-space",
        "groups: [{name: a, master: 'redis://redis primary:6379'}]\n",
        "groups[0].master",
        "the host must not contain spaces",
    ),
    (
        "url-ipv6-without-bracket",
        "groups: [{name: a, master: 'redis://[::1:6379'}]\n",
        "groups[0].master",
        "malformed URL",
    ),
    (
        "sentinel-address-scheme",
        "groups: [{name: a, sentinel: {addresses: ['http://127.0.0.1:26379'], master_name: m}}]\n",
        "groups[0].sentinel.addresses[0]",
        "unsupported scheme",
    ),
    (
        "url-missing-colon",
        "groups: [{name: a, master: 'redis//127.0.0.1:6379'}]\n",
        "groups[0].master",
        "not a redis:// URL ('redis//' should be 'redis://'): did you mean redis://127.0.0.1:6379?",
    ),
    (
        "url-one-slash-with-password",
        f"groups: [{{name: a, master: 'redis:/:{SECRET_URL}@127.0.0.1:6379'}}]\n",
        "groups[0].master",
        "not a redis:// URL ('redis:/' should be 'redis://'): did you mean "
        "redis://***@127.0.0.1:6379?",
    ),
    (
        "master-a-number",
        "groups: [{name: a, master: 6379}]\n",
        "groups[0].master",
        "must be a node address, a redis:// or rediss:// URL or host:port, e.g. "
        "redis://127.0.0.1:6379 or 127.0.0.1:6379; got a number (a port alone? write host:port)",
    ),
    (
        "replica-a-port-alone",
        "groups: [{name: a, master: '127.0.0.1:6379', replicas: ['6380']}]\n",
        "groups[0].replicas[0]",
        "'6380' is a port alone: write host:port, e.g. 127.0.0.1:6380",
    ),
    (
        "two-nodes-in-one-address",
        "groups: [{name: a, master: '127.0.0.1:6379, 127.0.0.1:6380'}]\n",
        "groups[0].master",
        "one node per address: ',' joins several (list them one per item instead)",
    ),
    (
        "sync-target-missing-colon",
        "sync: {tasks: [{name: t, source: '127.0.0.1:6379', target: 'rediss//dr.example:6380'}]}\n",
        "sync.tasks[0].target",
        "not a rediss:// URL ('rediss//' should be 'rediss://'): did you mean "
        "rediss://dr.example:6380?",
    ),
    (
        "sentinel-addresses-a-string",
        "groups: [{name: a, sentinel: {addresses: '10.0.0.1:26379', master_name: m}}]\n",
        "groups[0].sentinel.addresses",
        "must be a list of Sentinel addresses, like [10.0.0.1:26379, 10.0.0.2:26379]; got a string",
    ),
    (
        "password-a-number",
        "groups: [{name: a, master: '127.0.0.1:6379', auth: {password: 123456}}]\n",
        "groups[0].auth.password",
        "must be a string; got a number (put it in quotes)",
    ),
    (
        "db-map-a-list",
        "sync: {tasks: [{name: t, source: '127.0.0.1:6379', target: '127.0.0.1:6380', "
        "db_map: [0, 3]}]}\n",
        "sync.tasks[0].db_map",
        "must be a mapping of source db to target db, like {0: 3}; got a list",
    ),
    (
        "existing-keys-choice",
        "sync: {tasks: [{name: t, source: '127.0.0.1:6379', target: '127.0.0.1:6380', "
        "existing_keys: keep}]}\n",
        "sync.tasks[0].existing_keys",
        "must be 'refuse', 'flush' or 'overwrite'",
    ),
    (
        "address-map-port",
        G + "address_map: {'10.0.0.1:6379': '127.0.0.1:99999'}\n",
        "address_map",
        "'127.0.0.1:99999' is not host:port or host",
    ),
    # ---- durations, sizes, intervals
    ("duration-unit", G + "poll: {interval: 1 sec}\n", "poll.interval", "invalid duration"),
    (
        "size-unit",
        G + "routing: {trip: {lag_bytes: 10 megabytes}}\n",
        "routing.trip.lag_bytes",
        "invalid size '10 megabytes'",
    ),
    ("poll-interval-zero", G + "poll: {interval: 0}\n", "poll.interval", "at least 100ms"),
    ("poll-timeout-zero", G + "poll: {timeout: 0s}\n", "poll.timeout", "must be above 0"),
    (
        "poll-timeout-over-interval",
        G + "poll: {interval: 1s, timeout: 2s}\n",
        "poll.timeout",
        "must not exceed interval",
    ),
    (
        # the default timeout follows a short interval down; a timeout given does not
        "poll-timeout-over-short-interval",
        G + "poll: {interval: 250ms, timeout: 500ms}\n",
        "poll.timeout",
        "must not exceed interval",
    ),
    (
        "heartbeat-negative",
        G + "heartbeat: {interval: -1s}\n",
        "heartbeat.interval",
        "duration must not be negative",
    ),
    (
        "duration-spelled-out",
        G + "poll: {interval: 2sec}\n",
        "poll.interval",
        "invalid duration '2sec': did you mean 2s? (units: ms, s, m, h)",
    ),
    (
        "duration-two-units",
        G + "heartbeat: {ttl: 1h30m}\n",
        "heartbeat.ttl",
        "invalid duration '1h30m': did you mean 90m? (units: ms, s, m, h)",
    ),
    (
        "duration-in-days",
        G + "lag: {offset_clock_window: 1d}\n",
        "lag.offset_clock_window",
        "invalid duration '1d': did you mean 24h? (units: ms, s, m, h)",
    ),
    ("duration-huge", G + "heartbeat: {ttl: 100000h}\n", "heartbeat.ttl", "at most 8760h"),
    ("duration-empty", G + "probe: {interval: ''}\n", "probe.interval", "duration is empty"),
    (
        "heartbeat-ttl-below-interval",
        G + "heartbeat: {interval: 5s, ttl: 2s}\n",
        "heartbeat.ttl",
        "must not be shorter than interval",
    ),
    (
        "offset-clock-window-zero",
        G + "lag: {offset_clock_window: 0}\n",
        "lag.offset_clock_window",
        "at least twice poll.interval",
    ),
    ("probe-interval-zero", G + "probe: {interval: 0}\n", "probe.interval", "at least 100ms"),
    ("publish-interval-zero", G + "publish: {interval: 0}\n", "publish.interval", "100ms"),
    (
        "sentinel-timeout-zero",
        "groups: [{name: a, sentinel: {addresses: ['127.0.0.1:26379'], master_name: m, "
        "timeout: 0}}]\n",
        "groups[0].sentinel.timeout",
        "must be above 0",
    ),
    (
        "cluster-timeout-zero",
        "groups: [{name: a, cluster: {startup_nodes: ['127.0.0.1:7000'], timeout: 0ms}}]\n",
        "groups[0].cluster.timeout",
        "must be above 0",
    ),
    # ---- routing and probe settings
    (
        "recover-above-trip-bytes",
        G + "routing: {trip: {lag_bytes: 1MB}, recover: {lag_bytes: 2MB}}\n",
        "routing.recover.lag_bytes",
        "must not exceed trip.lag_bytes (hysteresis)",
    ),
    (
        "trip-without-threshold",
        G + "routing: {trip: {lag_seconds: null, lag_bytes: null, for: 1s}}\n",
        "routing.trip",
        "needs lag_seconds and/or lag_bytes",
    ),
    (
        "max-out-ratio",
        G + "routing: {max_out_ratio: 1.5}\n",
        "routing.max_out_ratio",
        "must be at most 1.0",
    ),
    (
        "min-in-rotation",
        G + "routing: {min_in_rotation: -1}\n",
        "routing.min_in_rotation",
        "must not be negative",
    ),
    ("probe-replicas", G + "probe: {replicas: most}\n", "probe.replicas", "a count >= 0 or 'all'"),
    (
        "group-probe-timeout",
        "groups: [{name: a, master: '127.0.0.1:6379', probe: {timeout: 0}}]\n",
        "groups[0].probe.timeout",
        "must be above 0",
    ),
    # ---- groups
    (
        "duplicate-group-names",
        "groups:\n  - {name: a, master: '127.0.0.1:6379'}\n"
        "  - {name: a, master: '127.0.0.1:6390'}\n",
        "groups",
        "group name 'a' is used twice",
    ),
    (
        "group-without-source",
        "groups: [{name: a, replicas: ['127.0.0.1:6380']}]\n",
        "groups[0].master",
        "required (or give sentinel: or cluster: instead)",
    ),
    (
        "sentinel-and-cluster",
        "groups: [{name: a, sentinel: {addresses: ['127.0.0.1:26379'], master_name: m}, "
        "cluster: {startup_nodes: ['127.0.0.1:7000']}}]\n",
        "groups[0].cluster",
        "give one of master, sentinel, cluster (not sentinel and cluster)",
    ),
    (
        "replica-listed-twice",
        "groups: [{name: a, master: '127.0.0.1:6379', "
        "replicas: ['127.0.0.1:6380', 'redis://127.0.0.1:6380/0']}]\n",
        "groups[0].replicas",
        "node 127.0.0.1:6380 is listed twice",
    ),
    # ---- secrets
    (
        "password-file-missing",
        "groups: [{name: a, master: '127.0.0.1:6379', auth: {password_file: '@DIR@/nope'}}]\n",
        "groups[0].auth.password_file",
        "cannot read @DIR@/nope: No such file or directory",
    ),
    (
        "password-file-a-directory",
        "groups: [{name: a, master: '127.0.0.1:6379', auth: {password_file: '@DIR@/pw-dir'}}]\n",
        "groups[0].auth.password_file",
        "Is a directory",
    ),
    (
        "password-file-not-utf-8",
        "groups: [{name: a, master: '127.0.0.1:6379', auth: {password_file: '@DIR@/pw-latin1'}}]\n",
        "groups[0].auth.password_file",
        "@DIR@/pw-latin1 is not UTF-8 text",
    ),
    (
        "password-file-empty",
        "groups: [{name: a, sentinel: {addresses: ['127.0.0.1:26379'], master_name: m, "
        "auth: {password_file: '@DIR@/pw-empty'}}}]\n",
        "groups[0].sentinel.auth.password_file",
        "@DIR@/pw-empty is empty",
    ),
    (
        "env-unset",
        f"groups: [{{name: a, master: 'redis://:${{{UNSET_ENV}}}@127.0.0.1:6379'}}]\n",
        "groups[0].master",
        f"environment variable {UNSET_ENV} is not set",
    ),
    ("admin-token-empty", "admin: {token: ''}\n", "admin.token", "must not be empty"),
    (
        "admin-token-env-default-empty",
        f"admin: {{token: '${{{UNSET_ENV}:-}}'}}\n",
        "admin.token",
        "must not be empty",
    ),
    (
        "sync-target-auth-password-file",
        "sync: {tasks: [{name: t, source: '127.0.0.1:6379', target: '127.0.0.1:6380', "
        "target_auth: {password_file: '@DIR@/nope'}}]}\n",
        "sync.tasks[0].target_auth.password_file",
        "cannot read @DIR@/nope: No such file or directory",
    ),
    # ---- TLS
    (
        "tls-key-without-cert",
        G + "tls: {key_file: '@DIR@/pw'}\n",
        "tls.key_file",
        "given without cert_file",
    ),
    ("tls-ca-file-missing", G + "tls: {ca_file: '@DIR@/ca.pem'}\n", "tls.ca_file", "cannot read"),
    (
        "tls-ca-file-not-pem",
        G + "tls: {ca_file: '@DIR@/pw'}\n",
        "tls.ca_file",
        "@DIR@/pw holds no PEM certificate",
    ),
    (
        "group-tls-cert-not-pem",
        "groups: [{name: a, master: 'rediss://127.0.0.1:6379', tls: {cert_file: '@DIR@/pw'}}]\n",
        "groups[0].tls.cert_file",
        "is not a PEM certificate with its key",
    ),
    (
        "web-config-missing",
        G + "exporter: {web_config: '@DIR@/web.yml'}\n",
        "exporter.web_config",
        "cannot read",
    ),
    # ---- shard and listen address
    ("shard-out-of-range", G + "shard: 4/3\n", "shard", "must be i/n with 1 <= i <= n"),
    ("shard-a-number", G + "shard: 3\n", "shard", 'must be a string i/n, e.g. "2/3"'),
    (
        "shard-publish-key",
        G + "shard: 2/3\npublish: {url: '127.0.0.1:6379'}\n",
        "publish.key",
        "must contain {shard}",
    ),
    ("listen-no-port", G + "exporter: {listen: localhost}\n", "exporter.listen", "host:port"),
    (
        "listen-port-range",
        G + "exporter: {listen: '127.0.0.1:99999'}\n",
        "exporter.listen",
        "port must be 0-65535",
    ),
    (
        "listen-host-with-space",
        G + "exporter: {listen: 'my host:9750'}\n",
        "exporter.listen",
        "'my host' is not a host name or IP address",
    ),
    # ---- sync tasks
    (
        "sync-source-is-target",
        "sync: {tasks: [{name: t, source: 'redis://127.0.0.1:6379/0', "
        "target: '127.0.0.1:6379'}]}\n",
        "sync.tasks[0].target",
        "must not be the source itself",
    ),
    (
        "sync-bad-regex",
        "sync: {tasks: [{name: t, source: '127.0.0.1:6379', target: '127.0.0.1:6380', "
        "filters: {keys: {deny_regex: ['^session:(']}}}]}\n",
        "sync.tasks[0].filters.keys.deny_regex[0]",
        "invalid regex: missing ), unterminated subpattern",
    ),
    (
        "sync-filter-multi",
        "sync: {tasks: [{name: t, source: '127.0.0.1:6379', target: '127.0.0.1:6380', "
        "filters: {commands: {deny: [exec]}}}]}\n",
        "sync.tasks[0].filters.commands.deny[0]",
        "EXEC is part of how the stream is applied",
    ),
    (
        "sync-reconnect-zero",
        "sync: {tasks: [{name: t, source: '127.0.0.1:6379', target: '127.0.0.1:6380', "
        "reconnect_min: 0}]}\n",
        "sync.tasks[0].reconnect_min",
        "must be above 0",
    ),
    (
        "sync-reconnect-order",
        "sync: {tasks: [{name: t, source: '127.0.0.1:6379', target: '127.0.0.1:6380', "
        "reconnect_min: 10s, reconnect_max: 1s}]}\n",
        "sync.tasks[0].reconnect_max",
        "must not be less than reconnect_min",
    ),
    (
        "sync-duplicate-task",
        "sync:\n  tasks:\n    - {name: t, source: '127.0.0.1:6379', target: '127.0.0.1:6380'}\n"
        "    - {name: t, source: '127.0.0.1:6381', target: '127.0.0.1:6382'}\n",
        "sync.tasks",
        "task name 't' is used twice",
    ),
    (
        "sync-batch-bytes",
        "sync: {tasks: [{name: t, source: '127.0.0.1:6379', target: '127.0.0.1:6380', "
        "batch_bytes: 100}]}\n",
        "sync.tasks[0].batch_bytes",
        "must be at least 1kb",
    ),
    (
        "sync-db-map-collision",
        "sync: {tasks: [{name: t, source: '127.0.0.1:6379', target: '127.0.0.1:6380', "
        "db_map: {0: 1, 1: 1}}]}\n",
        "sync.tasks[0].db_map",
        "would both go to target db 1",
    ),
]


def make_secret_files(directory: Path) -> None:
    (directory / "pw").write_text(SECRET_FILE + "\n")
    (directory / "pw-latin1").write_bytes(b"caf\xe9-" + SECRET_FILE.encode() + b"\n")
    (directory / "pw-empty").write_text("\n")
    (directory / "pw-dir").mkdir()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test's directory with the password files the table refers to; the environment
    without UNSET_ENV and with SECRET_ENV; `run` may never start the daemon."""
    make_secret_files(tmp_path)
    monkeypatch.delenv(UNSET_ENV, raising=False)
    monkeypatch.setenv(SECRET_ENV_NAME, SECRET_ENV)

    def no_daemon(*args: object, **kwargs: object) -> None:
        raise AssertionError("replwatch run started the daemon on an invalid config")

    monkeypatch.setattr("replwatch.app.run_daemon", no_daemon)
    return tmp_path


def write_case(workdir: Path, name: str, content: Any) -> Path:
    path = workdir / f"{name}.yaml"
    if content is DIRECTORY:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not MISSING:
        path.write_text(content.replace("@DIR@", str(workdir)), encoding="utf-8")
    return path


def files_under(directory: Path) -> set[Path]:
    return set(directory.rglob("*"))


def run_main(
    capsys: pytest.CaptureFixture[str], command: str, config: Path
) -> tuple[Path, int, str, str]:
    """`replwatch <command> --config <config>` in this process: config, exit code, stdout,
    stderr."""
    code = main([command, "--config", str(config)])
    out, err = capsys.readouterr()
    return config, code, out, err


def assert_refused(
    config: Path, code: int, out: str, err: str, field: str, reason: str, workdir: Path
) -> str:
    """Exit 2, nothing on stdout, one line `<config>: <field path>: <reason>`; the line."""
    assert code == 2, (code, out, err)
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, lines
    line = lines[0]
    prefix = f"{config}: "
    assert line.startswith(prefix), line
    path, sep, why = line[len(prefix) :].partition(": ")
    assert sep, line
    assert field.replace("@DIR@", str(workdir)) in path, line
    assert reason.replace("@DIR@", str(workdir)) in why, line
    for secret in SECRETS:
        assert secret not in err
    return line


@pytest.mark.parametrize(("name", "content", "field", "reason"), CASES, ids=[c[0] for c in CASES])
def test_check_config_and_run_refuse(
    workdir: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    content: Any,
    field: str,
    reason: str,
) -> None:
    config = write_case(workdir, name, content)
    before = files_under(workdir)
    checked = assert_refused(*run_main(capsys, "check-config", config), field, reason, workdir)
    ran = assert_refused(*run_main(capsys, "run", config), field, reason, workdir)
    assert ran == checked  # run refuses exactly as check-config does
    assert files_under(workdir) == before  # nothing written: no state dir, no pid file


def test_table_is_large_and_names_are_unique() -> None:
    assert len(CASES) >= 100
    assert len({c[0] for c in CASES}) == len(CASES)


# ------------------------------------------------------------------ passwords never shown

# files with passwords in a URL, in a password file and in an environment variable, and a
# problem somewhere: in the URL that holds the password, next to it, or elsewhere
LEAKS: list[tuple[str, str, str]] = [
    (
        "problem-elsewhere",
        f"poll: {{interval: 1s, timeout: 3s}}\n"
        f"groups:\n  - name: a\n    master: 'redis://app:{SECRET_URL}@127.0.0.1:6379'\n"
        f"    replicas: ['redis://:${{{SECRET_ENV_NAME}}}@127.0.0.1:6380']\n"
        f"    auth: {{password_file: '@DIR@/pw'}}\n",
        "poll.timeout",
    ),
    (
        "bad-port-in-password-url",
        f"groups: [{{name: a, master: 'redis://app:{SECRET_URL}@127.0.0.1:99999', "
        f"auth: {{password_file: '@DIR@/pw'}}}}]\n",
        "groups[0].master",
    ),
    (
        "query-after-password",
        f"groups: [{{name: a, master: 'redis://:{SECRET_URL}@127.0.0.1:6379?password={SECRET_URL}'"
        "}]\n",
        "groups[0].master",
    ),
    (
        "question-mark-in-password",
        f"groups: [{{name: a, master: 'redis://:{SECRET_URL}?{SECRET_URL}@127.0.0.1:6379'}}]\n",
        "groups[0].master",
    ),
    (
        "slash-in-password",
        f"groups: [{{name: a, master: 'redis://default:6379/{SECRET_URL}@redis.internal:6380/0'"
        "}]\n",
        "groups[0].master",
    ),
    (
        "scheme-with-password",
        f"sync: {{tasks: [{{name: t, source: 'http://:{SECRET_URL}@127.0.0.1:6379', "
        f"target: 'redis://:${{{SECRET_ENV_NAME}}}@127.0.0.1:6380'}}]}}\n",
        "sync.tasks[0].source",
    ),
    (
        "password-as-key",
        f"groups: [{{name: a, master: '127.0.0.1:6379', auth: {{password:{SECRET_URL}}}}}]\n",
        "groups[0].auth",
    ),
    (
        "password-wrong-type",
        f"groups: [{{name: a, master: '127.0.0.1:6379', auth: {{password: [{SECRET_URL}]}}}}]\n",
        "groups[0].auth.password",
    ),
    (
        "password-file-not-utf-8",
        f"groups: [{{name: a, master: 'redis://:{SECRET_URL}@127.0.0.1:6379'}}, "
        "{name: b, master: '127.0.0.1:6390', auth: {password_file: '@DIR@/pw-latin1'}}]\n",
        "groups[1].auth.password_file",
    ),
    (
        "password-file-read-then-another-fails",
        f"groups:\n  - {{name: a, master: 'redis://:{SECRET_URL}@127.0.0.1:6379', "
        "auth: {password_file: '@DIR@/pw'}}\n"
        "  - {name: b, master: '127.0.0.1:6390', auth: {password_file: '@DIR@/missing'}}\n",
        "groups[1].auth.password_file",
    ),
    (
        "password-file-read-then-tls-fails",
        "groups: [{name: a, master: 'rediss://127.0.0.1:6379', "
        "auth: {password_file: '@DIR@/pw'}, tls: {ca_file: '@DIR@/pw'}}]\n",
        "groups[0].tls.ca_file",
    ),
    (
        "yaml-error-in-password-url",
        f"groups: [{{name: a, master: 'redis://:{SECRET_URL}@127.0.0.1:6379}}]\n",
        "line ",
    ),
    (
        "admin-token-and-bad-publish",
        f"admin: {{token: {SECRET_URL}}}\n"
        + G
        + f"publish: {{url: 'redis://:{SECRET_URL}@h:0'}}\n",
        "publish.url",
    ),
]


@pytest.mark.parametrize(("name", "text", "field"), LEAKS, ids=[c[0] for c in LEAKS])
def test_passwords_never_printed(
    workdir: Path, capsys: pytest.CaptureFixture[str], name: str, text: str, field: str
) -> None:
    # the file holds a password: in a URL, through the password file pw or the environment
    assert SECRET_URL in text or "@DIR@/pw'" in text or SECRET_ENV_NAME in text
    config = write_case(workdir, name, text)
    for command in ("check-config", "run"):
        _, code, out, err = run_main(capsys, command, config)
        assert code == 2, err
        assert len(err.splitlines()) == 1, err
        assert err.startswith(f"{config}: {field}"), err
        for secret in SECRETS:
            assert secret not in out + err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file of mode 000")
def test_unreadable_password_file(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = workdir / "pw"
    secret.chmod(0)
    config = write_case(
        workdir,
        "c",
        "groups: [{name: a, master: '127.0.0.1:6379', auth: {password_file: '@DIR@/pw'}}]\n",
    )
    for command in ("check-config", "run"):
        assert_refused(
            *run_main(capsys, command, config),
            "groups[0].auth.password_file",
            f"cannot read {secret}: Permission denied",
            workdir,
        )


# ------------------------------------------------------------------ every problem at once

# independent problems of one file: a task's bad field next to its source == target, two
# groups with one name next to their own problems; each once (issue 21)
EVERY_PROBLEM = (
    "groups:\n"
    "  - {name: cache, master: 'redis//127.0.0.1:6379'}\n"
    "  - {name: cache, master: '127.0.0.1:6390', discover: sometimes}\n"
    "sync:\n"
    "  tasks:\n"
    "    - {name: t, source: '127.0.0.1:6379', target: 'redis://127.0.0.1:6379/0', "
    "existing_keys: keep, lease: 500ms}\n"
)
EVERY_PROBLEM_LINES = [
    "groups[0].master: not a redis:// URL ('redis//' should be 'redis://'): did you mean "
    "redis://127.0.0.1:6379?",
    "groups[1].discover: must be true or false; got a string",
    "groups: group name 'cache' is used twice",
    "sync.tasks[0].existing_keys: must be 'refuse', 'flush' or 'overwrite'",
    "sync.tasks[0].target: must not be the source itself",
    "sync.tasks[0].lease: must be at least 1s",
]


def test_every_independent_problem_in_one_run(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_case(workdir, "every-problem", EVERY_PROBLEM)
    before = files_under(workdir)
    outputs = []
    for command in ("check-config", "run"):
        _, code, out, err = run_main(capsys, command, config)
        assert (code, out) == (2, ""), err
        assert "Traceback" not in err
        assert err.splitlines() == [f"{config}: {line}" for line in EVERY_PROBLEM_LINES]
        outputs.append(err)
    assert outputs[0] == outputs[1]
    assert files_under(workdir) == before


# ------------------------------------------------------------------ plain-text passwords

PLAIN_PASSWORDS = (
    "groups:\n"
    "  - name: a\n"
    f"    master: 'redis://app:{SECRET_URL}@127.0.0.1:6379'\n"
    f"    replicas: ['redis://:${{{SECRET_ENV_NAME}}}@127.0.0.1:6380']\n"
    "    auth: {password_file: '@DIR@/pw'}\n"
    f"admin: {{token: {SECRET_URL}}}\n"
)
PLAIN_PASSWORD_WARNINGS = [
    "groups[0].master: warning: the URL holds a password in plain text; keep it out of the "
    "file with the group's auth: {password_file: …}, or an environment variable (${NAME})",
    "admin.token: warning: the admin token is written in plain text; keep it out of the file "
    "with admin.token_file, or an environment variable (${NAME})",
]


def test_a_password_in_plain_text_is_a_warning_not_an_error(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config accepts the file (exit 0, the OK line on stdout) and says, on stderr,
    where a secret is written in plain text and where else it can come from; the password
    from the environment and the one from a file are not mentioned; no secret is printed."""
    config = write_case(workdir, "plain", PLAIN_PASSWORDS)
    _, code, out, err = run_main(capsys, "check-config", config)
    assert code == 0, err
    assert out == f"{config}: OK (1 group(s), 2 node(s) configured)\n"
    assert err.splitlines() == [f"{config}: {line}" for line in PLAIN_PASSWORD_WARNINGS]
    for secret in SECRETS:
        assert secret not in out + err


def test_run_logs_the_plain_text_warning_once_at_start(
    workdir: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[object] = []
    monkeypatch.setattr("replwatch.app.run_daemon", lambda cfg, **kw: started.append(cfg))
    config = write_case(workdir, "plain", PLAIN_PASSWORDS)
    with caplog.at_level(logging.WARNING, logger="replwatch"):
        assert main(["run", "--config", str(config)]) == 0
    assert len(started) == 1  # a warning, not a refusal
    warned = [r.getMessage() for r in caplog.records if "plain text" in r.getMessage()]
    assert warned == [
        f"{config}: {line.replace(': warning:', ':', 1)}" for line in PLAIN_PASSWORD_WARNINGS
    ]
    for secret in SECRETS:
        assert secret not in caplog.text + "".join(capsys.readouterr())


# ------------------------------------------------------------------ what stays valid


def test_aliases_and_merge_keys_stay_valid(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The guards refuse bombs and duplicate keys, not ordinary YAML reuse: an anchored group
    merged into others (`<<: *base`), its keys overridden."""
    config = write_case(
        workdir,
        "anchors",
        "groups:\n"
        "  - &base\n"
        "    name: a\n"
        "    master: '127.0.0.1:6379'\n"
        "    probe: &probe {interval: 2s, timeout: 1s}\n"
        "  - <<: *base\n"
        "    name: b\n"
        "    master: '127.0.0.1:6390'\n"
        "  - {name: c, master: '127.0.0.1:6391', probe: *probe}\n",
    )
    _, code, out, err = run_main(capsys, "check-config", config)
    assert (code, err) == (0, "")
    assert out.strip() == f"{config}: OK (3 group(s), 3 node(s) configured)"
    a, b, c = load_config(config, env={}).groups
    assert (b.name, b.master is not None and b.master.port) == ("b", 6390)  # overridden
    for group in (a, b, c):
        assert group.probe is not None and (group.probe.interval, group.probe.timeout) == (2, 1)


def test_short_poll_interval_alone_is_valid(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`poll: {interval: 250ms}` with no timeout: the timeout's default (500ms) comes down to
    the interval instead of refusing the file."""
    config = write_case(workdir, "short-interval", G + "poll: {interval: 250ms}\n")
    _, code, out, err = run_main(capsys, "check-config", config)
    assert (code, err) == (0, "")
    assert out.strip() == f"{config}: OK (1 group(s), 1 node(s) configured)"
    poll = load_config(config, env={}).poll
    assert (poll.interval, poll.timeout) == (0.25, 0.25)


# ------------------------------------------------------------------ real subprocesses


# table cases run as real processes (`python -m replwatch`), and the first LEAKS file
SUBPROCESS_CASES = ["not-utf-8", "unknown-nested", "env-unset", "password-file-not-utf-8"]
COMMANDS = ("check-config", "run")


@dataclass(frozen=True)
class RealRuns:
    workdir: Path
    results: dict[tuple[str, str], tuple[Path, int, str, str]]  # config, exit, stdout, stderr
    files_before: set[Path]
    files_after: set[Path]


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealRuns]:
    """Every (case, command) of SUBPROCESS_CASES + "leak" run as a real process, all at
    once (each costs ~1 s of interpreter start-up); every process is gone on return."""
    workdir = tmp_path_factory.mktemp("real-cli")
    make_secret_files(workdir)
    env = {k: v for k, v in os.environ.items() if k != UNSET_ENV}
    env[SECRET_ENV_NAME] = SECRET_ENV
    configs = {name: write_case(workdir, name, case_content(name)) for name in SUBPROCESS_CASES}
    configs["leak"] = write_case(workdir, "leak", LEAKS[0][1])
    before = files_under(workdir)
    procs: dict[tuple[str, str], subprocess.Popen[str]] = {}
    try:
        for name, config in configs.items():
            for command in COMMANDS:
                procs[(name, command)] = subprocess.Popen(
                    [sys.executable, "-m", "replwatch", command, "--config", str(config)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=env,
                )
        results = {}
        for (name, command), proc in procs.items():
            out, err = proc.communicate(timeout=60)
            results[(name, command)] = (configs[name], proc.returncode, out, err)
        yield RealRuns(workdir, results, before, files_under(workdir))
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def case_content(name: str) -> Any:
    return next(c[1] for c in CASES if c[0] == name)


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_real_cli_refuses(real_runs: RealRuns, name: str) -> None:
    _, _, field, reason = next(c for c in CASES if c[0] == name)
    lines = [
        assert_refused(*real_runs.results[(name, c)], field, reason, real_runs.workdir)
        for c in COMMANDS
    ]
    assert lines[0] == lines[1]


def test_real_cli_writes_nothing(real_runs: RealRuns) -> None:
    assert real_runs.files_after == real_runs.files_before


def test_real_cli_never_prints_the_passwords(real_runs: RealRuns) -> None:
    field = LEAKS[0][2]
    for command in COMMANDS:
        config, code, out, err = real_runs.results[("leak", command)]
        assert code == 2, err
        assert err.startswith(f"{config}: {field}: ")
        for secret in SECRETS:
            assert secret not in out + err


def run_measured(args: list[str], out: Path, timeout: float) -> tuple[int, str, float, int]:
    """Run a command; its exit code, stderr, wall seconds and peak RSS in KiB (that child's
    own, from wait4)."""
    started = time.monotonic()
    with (out / "stderr").open("wb") as stderr:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=stderr)
    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
    while pid == 0 and time.monotonic() - started < timeout:
        time.sleep(0.02)  # a child's end cannot be waited for with a timeout otherwise
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
    if pid == 0:
        proc.kill()
        pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return (
        proc.returncode,
        (out / "stderr").read_text(),
        time.monotonic() - started,
        usage.ru_maxrss,
    )


def test_alias_bomb_is_refused_fast_and_small(
    workdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A billion laughs (9**9 strings from ~600 bytes) is refused by the real CLI about as
    fast, and in about as much memory, as a one-line mistake."""
    small = write_case(workdir, "small", G + "poll: {timeout: 0}\n")
    bomb = write_case(workdir, "bomb", _billion_laughs())
    outdir = tmp_path_factory.mktemp("out")
    argv = [sys.executable, "-m", "replwatch", "check-config", "-c"]
    code, err, base_seconds, base_rss = run_measured([*argv, str(small)], outdir, 30)
    assert code == 2, err
    code, err, seconds, rss = run_measured([*argv, str(bomb)], outdir, 30)
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(
        f"{bomb}: <file>: YAML aliases (*name) expand the document to more than 100,000 values"
    )
    assert lines[0].endswith("refused (an alias bomb?)")
    assert seconds < base_seconds + 5.0, (seconds, base_seconds)  # unguarded: never ends
    assert rss < base_rss + 20 * 1024, (rss, base_rss)  # KiB


@pytest.mark.parametrize(("levels", "width"), [(9, 9), (30, 2), (6, 100)])
def test_alias_bombs_in_process(
    workdir: Path, capsys: pytest.CaptureFixture[str], levels: int, width: int
) -> None:
    config = write_case(workdir, "bomb", _billion_laughs(levels, width))
    warm_up = write_case(workdir, "small", G + "poll: {timeout: 0}\n")
    assert run_main(capsys, "check-config", warm_up)[1] == 2  # the CLI's imports done
    tracemalloc.start()
    started = time.monotonic()
    try:
        _, code, _, err = run_main(capsys, "check-config", config)
        seconds = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 2
    assert "YAML aliases (*name) expand the document" in err
    assert seconds < 2.0  # unguarded: minutes, then out of memory
    assert peak < 5 * 1024 * 1024, peak
