"""Config validation: every problem is one exact 'path: reason' line; valid forms of durations,
sizes, ${ENV} interpolation and password files; secrets never appear in errors or reprs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from replwatch.config import (
    ClusterSource,
    Config,
    SentinelSource,
    config_from_data,
    iter_secrets,
    load_config,
    parse_duration,
    parse_size,
)
from replwatch.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
M = "redis://127.0.0.1:6379"
SECRET = "Zx9-hunter2-q"


def group(**kw: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"name": "a", "master": M}
    data.update(kw)
    return data


def problems_of(data: Any, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_data(data, env={} if env is None else env)
    return info.value.problems


# ------------------------------------------------------------------ invalid configs

# (id, data, env, exact problem lines in order)
INVALID: list[tuple[str, Any, dict[str, str], list[str]]] = [
    (
        "replica-port-too-big",
        {"groups": [group(), group(name="b", replicas=["redis://h:70000"])]},
        {},
        ["groups[1].replicas[0]: port must be 1-65535"],
    ),
    (
        "master-port-zero",
        {"groups": [group(master="redis://h:0")]},
        {},
        ["groups[0].master: port must be 1-65535"],
    ),
    (
        "port-not-a-number",
        {"groups": [group(master="redis://h:63x79")]},
        {},
        ["groups[0].master: port must be 1-65535"],
    ),
    (
        "poll-timeout-exceeds-interval",
        {"poll": {"interval": "1s", "timeout": "2s"}},
        {},
        ["poll.timeout: must not exceed interval (a slow node would delay the next cycle)"],
    ),
    (
        # the timeout's default follows a short interval; a timeout given is taken as given
        "poll-timeout-given-exceeds-short-interval",
        {"poll": {"interval": "250ms", "timeout": "500ms"}},
        {},
        ["poll.timeout: must not exceed interval (a slow node would delay the next cycle)"],
    ),
    (
        "poll-interval-below-100ms",
        {"poll": {"interval": "50ms", "timeout": "10ms"}},
        {},
        ["poll.interval: must be at least 100ms"],
    ),
    ("poll-timeout-zero", {"poll": {"timeout": 0}}, {}, ["poll.timeout: must be above 0"]),
    (
        "unknown-root-key",
        {"exporterz": {}},
        {},
        ["exporterz: unknown key (did you mean exporter?)"],
    ),
    (
        "unknown-section-key",
        {"poll": {"intervall": "1s"}},
        {},
        ["poll.intervall: unknown key (did you mean interval?)"],
    ),
    (
        "unknown-group-key",
        {"groups": [group(replica=["h:1"])]},
        {},
        ["groups[0].replica: unknown key (did you mean replicas?)"],
    ),
    (
        "unknown-auth-key",
        {"groups": [group(auth={"pass": "x"})]},
        {},
        ["groups[0].auth.pass: unknown key"],
    ),
    (
        "bad-duration-unit",
        {"poll": {"interval": "1 fortnight"}},
        {},
        ["poll.interval: invalid duration '1 fortnight': use 250ms, 1s, 2m, 1h or seconds"],
    ),
    (
        "negative-duration-string",
        {"heartbeat": {"interval": "-1s"}},
        {},
        ["heartbeat.interval: duration must not be negative"],
    ),
    (
        "negative-duration-number",
        {"heartbeat": {"ttl": -5}},
        {},
        ["heartbeat.ttl: duration must not be negative"],
    ),
    (
        "boolean-duration",
        {"heartbeat": {"ttl": True}},
        {},
        ["heartbeat.ttl: duration must be like 250ms, 1s, 2m or seconds"],
    ),
    (
        "bad-duration-in-routing",
        {"routing": {"trip": {"lag_seconds": "soon"}}},
        {},
        ["routing.trip.lag_seconds: invalid duration 'soon': use 250ms, 1s, 2m, 1h or seconds"],
    ),
    (
        "bad-size-unit",
        {"routing": {"trip": {"lag_bytes": "10XB"}}},
        {},
        ["routing.trip.lag_bytes: invalid size '10XB': use 10MB, 512kb or a number of bytes"],
    ),
    (
        "negative-size",
        {"routing": {"trip": {"lag_bytes": -1}}},
        {},
        ["routing.trip.lag_bytes: size must not be negative"],
    ),
    (
        "infinite-size",
        {"routing": {"trip": {"lag_bytes": float("inf")}}},
        {},
        ["routing.trip.lag_bytes: size must be a finite number of bytes"],
    ),
    (
        "nan-duration",
        {"poll": {"interval": float("nan")}},
        {},
        ["poll.interval: duration must be a finite number of seconds"],
    ),
    (
        "duplicate-group-names",
        {"groups": [group(), group()]},
        {},
        ["groups: group name 'a' is used twice"],
    ),
    (
        "replica-is-the-master",
        {"groups": [group(replicas=[M])]},
        {},
        ["groups[0].replicas: node 127.0.0.1:6379 is listed twice"],
    ),
    (
        "same-replica-twice-in-two-spellings",
        {"groups": [group(replicas=["redis://h:1", "h:1"])]},
        {},
        ["groups[0].replicas: node h:1 is listed twice"],
    ),
    (
        "bad-scheme",
        {"groups": [group(master="http://h:1")]},
        {},
        ["groups[0].master: unsupported scheme 'http': use redis:// or rediss://"],
    ),
    (
        "url-without-host",
        {"groups": [group(master="redis://:pw@:6379")]},
        {},
        ["groups[0].master: URL has no host"],
    ),
    (
        "master-not-a-string",
        {"groups": [group(master=5)]},
        {},
        [
            "groups[0].master: must be a node address, a redis:// or rediss:// URL or "
            "host:port, e.g. redis://127.0.0.1:6379 or 127.0.0.1:6379; got a number (a port "
            "alone? write host:port)"
        ],
    ),
    (
        "db-not-a-number",
        {"groups": [group(master="redis://h:1/zero")]},
        {},
        ["groups[0].master: database must be a number, got 'zero'"],
    ),
    (
        "missing-env-var",
        {"groups": [group(master="redis://:${REDIS_PW}@h:1")]},
        {},
        ["groups[0].master: environment variable REDIS_PW is not set"],
    ),
    (
        "missing-env-var-in-list",
        {"heartbeat": {"key": "hb-${WHO}"}, "groups": [group(replicas=["h:2"])]},
        {"OTHER": "x"},
        ["heartbeat.key: environment variable WHO is not set"],
    ),
    (
        "sentinel-without-addresses",
        {"groups": [{"name": "a", "sentinel": {"master_name": "x"}}]},
        {},
        ["groups[0].sentinel.addresses: required"],
    ),
    (
        "sentinel-empty-master-name",
        {"groups": [{"name": "a", "sentinel": {"addresses": ["h:26379"], "master_name": ""}}]},
        {},
        ["groups[0].sentinel.master_name: must not be empty"],
    ),
    (
        "sentinel-and-master",
        {"groups": [group(sentinel={"addresses": ["h:26379"], "master_name": "x"})]},
        {},
        ["groups[0].sentinel: give one of master, sentinel, cluster (not master and sentinel)"],
    ),
    (
        "sentinel-with-listed-replicas",
        {
            "groups": [
                {
                    "name": "a",
                    "sentinel": {"addresses": ["h:26379"], "master_name": "x"},
                    "replicas": ["h:6380"],
                }
            ]
        },
        {},
        ["groups[0].replicas: the Sentinels names the replicas (discover: true adds chained ones)"],
    ),
    (
        "cluster-without-startup-nodes",
        {"groups": [{"name": "a", "cluster": {"startup_nodes": []}}]},
        {},
        [
            "groups[0].cluster.startup_nodes: must not be empty (a list of node addresses, "
            "like [10.0.1.1:7000, 10.0.1.2:7000])"
        ],
    ),
    (
        "cluster-unknown-key",
        {"groups": [{"name": "a", "cluster": {"seeds": ["h:1"]}}]},
        {},
        ["groups[0].cluster.startup_nodes: required", "groups[0].cluster.seeds: unknown key"],
    ),
    (
        "cluster-auth-twice",
        {
            "groups": [
                {
                    "name": "a",
                    "cluster": {"startup_nodes": ["h:7000"], "auth": {"password": "x"}},
                    "auth": {"password": "y"},
                }
            ]
        },
        {},
        ["groups[0].auth: give the nodes' credentials once (auth or cluster.auth)"],
    ),
    (
        "address-map-bad-key",
        {"address_map": {"10.0.0.1:99999": "127.0.0.1:7000"}},
        {},
        ["address_map: '10.0.0.1:99999' is not host:port or host"],
    ),
    (
        "address-map-mixed-forms",
        {"groups": [group(address_map={"10.0.0.1:6379": "127.0.0.1"})]},
        {},
        ["groups[0].address_map: '10.0.0.1:6379': map host:port to host:port, or host to host"],
    ),
    (
        "web-config-missing",
        {"exporter": {"web_config": "/nonexistent/replwatch/web.yml"}},
        {},
        [
            "exporter.web_config: /nonexistent/replwatch/web.yml: <file>: cannot read: "
            "No such file or directory"
        ],
    ),
    (
        "listen-without-port",
        {"exporter": {"listen": "localhost"}},
        {},
        ["exporter.listen: must be host:port, e.g. 127.0.0.1:9750"],
    ),
    (
        "listen-port-too-big",
        {"exporter": {"listen": "127.0.0.1:99999"}},
        {},
        ["exporter.listen: port must be 0-65535"],
    ),
    (
        "listen-port-name",
        {"exporter": {"listen": "127.0.0.1:http"}},
        {},
        ["exporter.listen: port must be 0-65535"],
    ),
    (
        "listen-a-number",
        {"exporter": {"listen": 9750}},
        {},
        ["exporter.listen: must be host:port, e.g. 127.0.0.1:9750"],
    ),
    (
        "group-name-with-space",
        {"groups": [group(name="my group")]},
        {},
        ["groups[0].name: must be letters, digits, _ . : - only"],
    ),
    (
        "group-name-empty",
        {"groups": [group(name="")]},
        {},
        ["groups[0].name: must be letters, digits, _ . : - only"],
    ),
    (
        "heartbeat-interval-below-50ms",
        {"heartbeat": {"interval": "10ms"}},
        {},
        ["heartbeat.interval: must be at least 50ms"],
    ),
    (
        "heartbeat-key-with-space",
        {"heartbeat": {"key": "a b"}},
        {},
        ["heartbeat.key: must be a non-empty key without spaces"],
    ),
    (
        "groups-not-a-list",
        {"groups": {"name": "a"}},
        {},
        [
            "groups: must be a list of groups, each a mapping (- name: cache …); got a mapping "
            "(each item starts with '- ')"
        ],
    ),
    (
        "group-without-master",
        {"groups": [{"name": "a"}]},
        {},
        ["groups[0].master: required (or give sentinel: or cluster: instead)"],
    ),
    (
        "non-mapping-root-list",
        [1, 2],
        {},
        ["<root>: must be a mapping of sections (exporter, groups, …)"],
    ),
    (
        "non-mapping-root-str",
        "hello",
        {},
        ["<root>: must be a mapping of sections (exporter, groups, …)"],
    ),
    (
        "clock-max-points-too-small",
        {"lag": {"offset_clock_max_points": 3}},
        {},
        ["lag.offset_clock_max_points: must be at least 8"],
    ),
    (
        "routing-recover-above-trip",
        {"routing": {"trip": {"lag_seconds": 1}, "recover": {"lag_seconds": 2}}},
        {},
        ["routing.recover.lag_seconds: must not exceed trip.lag_seconds (hysteresis)"],
    ),
    (
        "group-routing-override-checked",
        {"groups": [group(routing={"trip": {"lag_seconds": 1}, "recover": {"lag_seconds": 3}})]},
        {},
        ["groups[0].routing.recover.lag_seconds: must not exceed trip.lag_seconds (hysteresis)"],
    ),
    (
        "probe-timeout-above-interval",
        {"probe": {"interval": "1s", "timeout": "2s"}},
        {},
        ["probe.timeout: must be above 0 and not exceed interval"],
    ),
    (
        "probe-replicas-word",
        {"probe": {"replicas": "some"}},
        {},
        ["probe.replicas: must be a count >= 0 or 'all'"],
    ),
    (
        "probe-replicas-negative",
        {"probe": {"replicas": -1}},
        {},
        ["probe.replicas: must be a count >= 0 or 'all'"],
    ),
    (
        "mapping-endpoint-port-too-big",
        {"groups": [group(replicas=[{"host": "h", "port": 70000}])]},
        {},
        ["groups[0].replicas[0].port: port must be 1-65535"],
    ),
    (
        "several-problems-each-on-its-own-line",
        {
            "poll": {"interval": "x"},
            "heartbeat": {"interval": "1ms"},
            "groups": [group(master="redis://h:0", extra=1)],
        },
        {},
        [
            "poll.interval: invalid duration 'x': use 250ms, 1s, 2m, 1h or seconds",
            "heartbeat.interval: must be at least 50ms",
            "groups[0].master: port must be 1-65535",
            "groups[0].extra: unknown key",
        ],
    ),
    (
        "sentinel-source-problems",
        {
            "sync": {
                "tasks": [
                    {
                        "name": "t",
                        "source": {
                            "sentinel": {"addresses": ["h:70000"], "timeout": "soon"},
                            "passwd": "x",
                        },
                        "target": M,
                    }
                ]
            }
        },
        {},
        [
            "sync.tasks[0].source.sentinel.addresses[0]: port must be 1-65535",
            "sync.tasks[0].source.sentinel.master_name: required",
            "sync.tasks[0].source.sentinel.timeout: invalid duration 'soon': use 250ms, 1s, "
            "2m, 1h or seconds",
            "sync.tasks[0].source.passwd: unknown key (did you mean password?)",
        ],
    ),
    (
        "cluster-source-without-nodes",
        {
            "sync": {
                "tasks": [{"name": "t", "source": {"cluster": {"startup_nodes": []}}, "target": M}]
            }
        },
        {},
        [
            "sync.tasks[0].source.cluster.startup_nodes: must not be empty (a list of node "
            "addresses, like [10.0.1.1:7000, 10.0.1.2:7000])"
        ],
    ),
]


@pytest.mark.parametrize(
    ("data", "env", "expected"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_config_problem_lines(data: Any, env: dict[str, str], expected: list[str]) -> None:
    assert problems_of(data, env) == expected


def test_invalid_table_is_large_enough() -> None:
    assert len(INVALID) >= 30
    assert len({c[0] for c in INVALID}) == len(INVALID)


def test_config_error_message_names_source_and_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_data(
            {"poll": {"interval": "1s", "timeout": "2s"}, "bogus": 1}, "my.yaml", env={}
        )
    err = info.value
    assert err.source == "my.yaml"
    text = str(err)
    assert text.startswith("my.yaml: ")
    for line in err.problems:
        assert line in text


# ------------------------------------------------------------------ password files


def test_unreadable_password_file(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-secret"
    assert problems_of({"groups": [group(auth={"password_file": str(missing)})]}) == [
        f"groups[0].auth.password_file: cannot read {missing}: No such file or directory"
    ]


def test_password_file_that_is_a_directory(tmp_path: Path) -> None:
    assert problems_of({"groups": [group(auth={"password_file": str(tmp_path)})]}) == [
        f"groups[0].auth.password_file: cannot read {tmp_path}: Is a directory"
    ]


def test_empty_password_file(tmp_path: Path) -> None:
    empty = tmp_path / "pw"
    empty.write_text("  \n\n")
    assert problems_of(
        {"groups": [group(), group(name="b", auth={"password_file": str(empty)})]}
    ) == [f"groups[1].auth.password_file: {empty} is empty"]


def test_empty_admin_token_file(tmp_path: Path) -> None:
    empty = tmp_path / "token"
    empty.write_text("")
    assert problems_of({"admin": {"token_file": str(empty)}}) == [
        f"admin.token_file: {empty} is empty"
    ]


def test_password_file_applies_to_endpoints_without_password(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text(f"  {SECRET}\n")
    cfg = config_from_data(
        {
            "groups": [
                group(
                    master="redis://127.0.0.1:6379",
                    replicas=["redis://:own-pw-1@127.0.0.1:6380", "127.0.0.1:6381"],
                    auth={"username": "mon", "password_file": str(pw)},
                )
            ]
        },
        env={},
    )
    g = cfg.groups[0]
    assert g.master is not None and g.master.password is not None
    assert g.master.password.get_secret_value() == SECRET  # stripped
    assert g.master.username == "mon"
    own = g.replicas[0]
    assert own.password is not None and own.password.get_secret_value() == "own-pw-1"
    assert own.username is None  # an endpoint with its own credentials is left alone
    assert g.replicas[1].password is not None
    assert g.replicas[1].password.get_secret_value() == SECRET
    assert sorted(iter_secrets(cfg)) == sorted([SECRET, "own-pw-1"])  # each once
    assert SECRET not in repr(cfg) and SECRET not in str(cfg)


def test_password_file_beats_inline_password(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("from-file")
    cfg = config_from_data(
        {"groups": [group(auth={"password": "inline", "password_file": str(pw)})]}, env={}
    )
    assert cfg.groups[0].master.password is not None
    assert cfg.groups[0].master.password.get_secret_value() == "from-file"


# ------------------------------------------------------------------ valid scalars

DURATIONS = [
    ("250ms", 0.25),
    ("1s", 1.0),
    ("2m", 120.0),
    ("1h", 3600.0),
    ("1.5s", 1.5),
    (" 3s ", 3.0),
    ("7", 7.0),
    (0.5, 0.5),
    (2, 2.0),
    (0, 0.0),
]


@pytest.mark.parametrize(("value", "seconds"), DURATIONS)
def test_duration_forms(value: Any, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "seconds"), [("250ms", 0.25), ("1s", 1.0), ("2m", 120.0), (0.5, 0.5)]
)
def test_durations_in_config(value: Any, seconds: float) -> None:
    cfg = config_from_data(
        {"heartbeat": {"ttl": value}, "routing": {"trip": {"lag_seconds": 5, "for": value}}}, env={}
    )
    assert cfg.heartbeat.ttl == pytest.approx(seconds)
    assert cfg.routing.trip.for_ == pytest.approx(seconds)


SIZES = [
    ("10MB", 10 * 1024 * 1024),
    ("512kb", 512 * 1024),
    ("1GiB", 1024**3),
    ("2k", 2048),
    ("100b", 100),
    ("100", 100),
    (1024, 1024),
    (0, 0),
]


@pytest.mark.parametrize(("value", "size"), SIZES)
def test_size_forms(value: Any, size: int) -> None:
    assert parse_size(value) == size
    cfg = config_from_data({"routing": {"trip": {"lag_bytes": value}}}, env={})
    assert cfg.routing.trip.lag_bytes == size


@pytest.mark.parametrize(
    ("value", "replicas"), [("all", "all"), (0, 0), (2, 2), ("${N:-3}", 3), ("${N}", 1)]
)
def test_probe_replicas_forms(value: Any, replicas: int | str) -> None:
    cfg = config_from_data(
        {"probe": {"replicas": value}}, env={"N": "1"} if value == "${N}" else {}
    )
    assert cfg.probe.replicas == replicas


def test_defaults() -> None:
    cfg = config_from_data(None, env={})
    assert isinstance(cfg, Config)
    assert cfg.poll.interval == 1.0 and cfg.poll.timeout == 0.5
    assert cfg.heartbeat.interval == 0.25
    assert cfg.exporter.listen == "127.0.0.1:9750"
    assert (cfg.exporter.host, cfg.exporter.port) == ("127.0.0.1", 9750)
    assert cfg.groups == []


# (poll settings given, interval and timeout in effect): the timeout, when not given, is the
# smaller of 500ms and the interval (Prometheus's scrape_timeout follows its interval too)
POLL_TIMEOUTS: list[tuple[dict[str, Any], float, float]] = [
    ({}, 1.0, 0.5),
    ({"interval": "250ms"}, 0.25, 0.25),
    ({"interval": "100ms"}, 0.1, 0.1),
    ({"interval": 0.3}, 0.3, 0.3),
    ({"interval": "500ms"}, 0.5, 0.5),
    ({"interval": "2s"}, 2.0, 0.5),
    ({"interval": "250ms", "timeout": "100ms"}, 0.25, 0.1),
    ({"interval": "250ms", "timeout": "250ms"}, 0.25, 0.25),
    ({"interval": "2s", "timeout": "1500ms"}, 2.0, 1.5),
    ({"timeout": "800ms"}, 1.0, 0.8),
]


@pytest.mark.parametrize(("poll", "interval", "timeout"), POLL_TIMEOUTS)
def test_poll_timeout_default_follows_a_short_interval(
    poll: dict[str, Any], interval: float, timeout: float
) -> None:
    cfg = config_from_data({"poll": poll}, env={})
    assert (cfg.poll.interval, cfg.poll.timeout) == (interval, timeout)


# ------------------------------------------------------------------ interpolation

INTERPOLATION = [
    ("${HOST}:6380", {"HOST": "10.1.2.3"}, "10.1.2.3:6380"),
    ("${HOST:-127.0.0.1}:6380", {}, "127.0.0.1:6380"),
    ("${HOST:-127.0.0.1}:6380", {"HOST": "db1"}, "db1:6380"),
    ("${HOST}:${PORT:-6390}", {"HOST": "db2"}, "db2:6390"),
    ("${HOST:-}db3:6380", {}, "db3:6380"),
]


@pytest.mark.parametrize(("template", "env", "label"), INTERPOLATION)
def test_env_interpolation(template: str, env: dict[str, str], label: str) -> None:
    cfg = config_from_data({"groups": [group(replicas=[template])]}, env=env)
    assert cfg.groups[0].replicas[0].label == label


def test_env_interpolation_of_secret_is_redacted() -> None:
    cfg = config_from_data(
        {"groups": [group(master="redis://:${PW}@127.0.0.1:6379")]}, env={"PW": SECRET}
    )
    master = cfg.groups[0].master
    assert master.password is not None and master.password.get_secret_value() == SECRET
    assert SECRET not in repr(cfg)
    assert master.redacted_url() == "redis://:***@127.0.0.1:6379/0"


# ------------------------------------------------------------------ URLs and redaction

URLS = [
    ("redis://127.0.0.1:6380", "redis://127.0.0.1:6380/0", "127.0.0.1:6380"),
    ("127.0.0.1:6380", "redis://127.0.0.1:6380/0", "127.0.0.1:6380"),
    ("redis://db.example", "redis://db.example:6379/0", "db.example:6379"),
    ("rediss://u:pw@h:6390/3", "rediss://u:***@h:6390/3", "h:6390"),
    ("redis://[::1]:6380", "redis://[::1]:6380/0", "[::1]:6380"),
    ("redis://:p%40ss@h:1", "redis://:***@h:1/0", "h:1"),
]


@pytest.mark.parametrize(("url", "redacted", "label"), URLS)
def test_url_forms(url: str, redacted: str, label: str) -> None:
    ep = config_from_data({"groups": [group(master=url)]}, env={}).groups[0].master
    assert ep.redacted_url() == redacted
    assert ep.label == label


def test_url_password_decoded() -> None:
    ep = config_from_data({"groups": [group(master="redis://:p%40ss@h:1")]}, env={})
    password = ep.groups[0].master.password
    assert password is not None and password.get_secret_value() == "p@ss"


SECRET_URLS = [
    # valid URLs: the secret must not show in repr / redacted_url / str
    f"redis://user:{SECRET}@127.0.0.1:6379/0",
    f"rediss://:{SECRET}@db.example:6380",
    f"redis://default:{SECRET}@h:1",
]


@pytest.mark.parametrize("url", SECRET_URLS)
def test_secret_not_in_repr_or_redacted_url(url: str) -> None:
    cfg = config_from_data({"groups": [group(master=url, replicas=["h:2"])]}, env={})
    assert SECRET not in repr(cfg) and SECRET not in str(cfg)
    assert SECRET not in cfg.model_dump_json()
    for ep in cfg.nodes_of(cfg.groups[0]):
        assert SECRET not in ep.redacted_url()
        assert SECRET not in repr(ep)
    assert list(iter_secrets(cfg)) == [SECRET]


BAD_SECRET_URLS = [
    # invalid URLs carrying a password: the error names the problem, never the secret
    (f"redis://user:{SECRET}@h:99999", "groups[0].master: port must be 1-65535"),
    (f"http://user:{SECRET}@h:1", "groups[0].master: unsupported scheme 'http'"),
    # an unescaped '/' in a password whose first part looks like a port: the rest of the
    # password is parsed as the database path
    (f"redis://default:6379/{SECRET}@redis.internal:6380/0", "groups[0].master: "),
    (f"redis://:{SECRET}/x@h:1", "groups[0].master: "),
]


@pytest.mark.parametrize(("url", "starts"), BAD_SECRET_URLS)
def test_secret_not_in_config_error(url: str, starts: str | None) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_data({"groups": [group(name="ok", master=url)]}, "c.yaml", env={})
    err = info.value
    assert len(err.problems) == 1
    if starts is not None:
        assert err.problems[0].startswith(starts)
    assert SECRET not in str(err)
    assert SECRET not in repr(err)


# ------------------------------------------------------------------ files


YAML_ERRORS = [
    ("poll:\n  interval: 1s\n timeout: 2s\n", "line 3, column 2: expected <block end>"),
    ("groups: [\n  {name: a}\n", "line 3, column 1: expected ',' or ']'"),
    ("key: @bad\n", "line 1, column 6: found character '@' that cannot start any token"),
]


@pytest.mark.parametrize(("text", "starts"), YAML_ERRORS)
def test_yaml_syntax_error_has_line_and_column(tmp_path: Path, text: str, starts: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.source == str(path)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(starts), info.value.problems


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.problems == ["<file>: no such file"]
    assert str(info.value) == f"{path}: <file>: no such file"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, env={})
    assert info.value.problems == ["<file>: cannot read: Is a directory"]


def test_load_config_from_file_reports_source_and_validates(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "poll: {interval: 250ms, timeout: 200ms}\n"
        "groups:\n"
        "  - name: cache\n"
        '    master: "redis://:${PW}@127.0.0.1:6379"\n'
        '    replicas: ["127.0.0.1:6380"]\n'
    )
    cfg = load_config(path, env={"PW": SECRET})
    assert cfg.poll.interval == 0.25 and cfg.poll.timeout == 0.2
    assert [r.label for r in cfg.groups[0].replicas] == ["127.0.0.1:6380"]
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.problems == ["groups[0].master: environment variable PW is not set"]


def test_empty_file_is_a_default_config(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n")
    assert load_config(path, env={}).groups == []


def test_checked_in_example_config_is_valid() -> None:
    path = REPO / "config.yaml"
    assert path.is_file(), f"{path} is missing"
    cfg = load_config(path, env={})
    assert cfg.groups, "the example config should show at least one group"
    for g in cfg.groups:
        assert g.master.label
    # the example's passwords are redacted like any other
    for secret in iter_secrets(cfg):
        assert secret not in repr(cfg)


def test_example_sync_task_in_config_yaml_is_valid() -> None:
    """The commented sync task in config.yaml, uncommented, is a valid task with the
    documented defaults."""
    text = (REPO / "config.yaml").read_text()
    block = re.search(r"^  tasks: \[\]\n((?:  #.*\n)+)", text, re.M)
    assert block is not None, "config.yaml should show a commented sync task"
    lines = [line.replace("  #", "  ", 1) for line in block.group(1).splitlines()]
    data = {"sync": {"tasks": yaml.safe_load("\n".join(lines))}}
    cfg = config_from_data(data, env={"TARGET_PASSWORD": "pw"})
    task = cfg.sync.tasks[0]
    assert task.name == "a_to_b" and task.target.port == 6479
    assert task.existing_keys == "refuse" and task.on_module_key == "fail"
    assert task.big_key_bytes == 16 * 1024 * 1024 and task.reconnect_max == 30


def test_example_sentinel_and_cluster_sources_in_config_yaml_are_valid() -> None:
    """The commented Sentinel and Cluster source examples in config.yaml, uncommented."""
    text = (REPO / "config.yaml").read_text()
    block = re.search(r"^  #  - name: from_sentinel\n((?:  #.*\n)+)", text, re.M)
    assert block is not None, "config.yaml should show a Sentinel source example"
    lines = ["    - name: from_sentinel"]
    lines += [line.replace("  #", "  ", 1) for line in block.group(1).splitlines()]
    data = {"sync": {"tasks": yaml.safe_load("\n".join(lines))}}
    cfg = config_from_data(data, env={"SENTINEL_PASSWORD": "s1", "SOURCE_PASSWORD": "s2"})
    sentinel, cluster = (task.source for task in cfg.sync.tasks)
    assert isinstance(sentinel, SentinelSource) and isinstance(cluster, ClusterSource)
    assert sentinel.sentinel.master_name == "mymaster" and len(sentinel.sentinel.addresses) == 3
    assert sentinel.label == "sentinel:mymaster"
    assert [n.port for n in cluster.cluster.startup_nodes] == [7000, 7000]
    secrets = set(iter_secrets(cfg))
    assert {"s1", "s2"} <= secrets
    for secret in secrets:
        assert secret not in repr(cfg)
