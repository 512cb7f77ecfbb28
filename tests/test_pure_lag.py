"""Table tests for the pure parts: offset clock, heartbeat lag, config scalars and errors."""

from __future__ import annotations

import pytest

from replwatch.config import config_from_data, parse_duration, parse_size
from replwatch.errors import ConfigError
from replwatch.lag.heartbeat import HeartbeatHistory, parse_heartbeat
from replwatch.lag.offset_clock import OffsetClock

# ----------------------------------------------------------------- offset clock

# samples: (offset, time); query: (offset, now) → (lag, exact)
CLOCK_CASES = [
    ("empty table", [], (100, 10.0), (0.0, True)),
    ("at newest offset", [(100, 0.0), (200, 1.0)], (200, 5.0), (0.0, True)),
    ("ahead of newest", [(100, 0.0)], (150, 5.0), (0.0, True)),
    ("midway interpolation", [(100, 0.0), (200, 1.0)], (150, 3.0), (2.5, True)),
    ("exactly at older entry", [(100, 0.0), (200, 1.0)], (100, 3.0), (3.0, True)),
    # idle: 100 seen from t=0 to t=50, then 114 at t=51 → master left 100 at t=50
    (
        "idle master",
        [(100, float(t)) for t in range(51)] + [(114, 51.0)],
        (100, 60.0),
        (10.0, True),
    ),
    ("older than table", [(100, 5.0), (200, 6.0)], (50, 10.0), (5.0, False)),
]


@pytest.mark.parametrize(
    ("samples", "query", "expected"), [c[1:] for c in CLOCK_CASES], ids=[c[0] for c in CLOCK_CASES]
)
def test_offset_clock(
    samples: list[tuple[int, float]], query: tuple[int, float], expected: tuple[float, bool]
) -> None:
    clock = OffsetClock()
    for offset, when in samples:
        clock.observe(offset, when, "id")
    lag, exact = clock.lag_of(*query)
    assert lag == pytest.approx(expected[0])
    assert exact is expected[1]


def test_idle_runs_fold_into_one_entry() -> None:
    clock = OffsetClock()
    for t in range(100):
        clock.observe(500, float(t), "id")
    assert len(clock) == 1


@pytest.mark.parametrize(
    ("second", "reset"),
    [
        ((50, 2.0, "id", ""), True),  # offset went backwards (restart)
        ((300, 2.0, "other", ""), True),  # new replid, not continuing
        ((300, 2.0, "new", "id"), False),  # failover: replid2 continues the old stream
        ((300, 2.0, "id", ""), False),
    ],
    ids=["backwards", "replid-changed", "failover-continues", "same-stream"],
)
def test_offset_clock_resets(second: tuple[int, float, str, str], reset: bool) -> None:
    clock = OffsetClock()
    clock.observe(100, 0.0, "id")
    clock.observe(200, 1.0, "id")
    assert clock.observe(*second) is reset
    assert clock.resets == (1 if reset else 0)
    assert len(clock) == (1 if reset else 3)


def test_offset_clock_trims_by_window_and_points() -> None:
    clock = OffsetClock(window=10.0, max_points=8)
    for t in range(100):
        clock.observe(t * 10, float(t), "id")
    assert len(clock) <= 8
    # an offset from before the window is only a lower bound now
    _, exact = clock.lag_of(0, 100.0)
    assert exact is False


# ----------------------------------------------------------------- heartbeat


def test_heartbeat_clock_offset_prefers_lowest_rtt() -> None:
    h = HeartbeatHistory()
    h.record(1000.0, 10.0, 10.4)  # rtt 0.4: offset 1000 - 10.2 = 989.8
    h.record(1001.0, 11.0, 11.02)  # rtt 0.02: offset 1001 - 11.01 = 989.99
    h.record(1002.0, 12.0, 12.5)  # slow again: keep the better one
    assert h.clock_offset == pytest.approx(989.99)


HB_CASES = [
    # written master times; seen; mono now → lag (clock offset fixed at 1000)
    ("has newest", [1010.0, 1010.25, 1010.5], 1010.5, 11.0, 0.0),
    ("lacks the last one", [1010.0, 1010.25, 1010.5], 1010.25, 11.0, 0.5),
    ("lacks two", [1010.0, 1010.25, 1010.5], 1010.0, 11.0, 0.75),
    ("older than history", [1010.0, 1010.25], 1005.0, 11.0, 6.0),
]


@pytest.mark.parametrize(
    ("written", "seen", "now", "lag"), [c[1:] for c in HB_CASES], ids=[c[0] for c in HB_CASES]
)
def test_heartbeat_lag(written: list[float], seen: float, now: float, lag: float) -> None:
    h = HeartbeatHistory()
    for w in written:
        h.record(w, w - 1000.0, w - 1000.0)  # zero RTT: offset exactly 1000
    assert h.lag_of(seen, now, 0.0) == pytest.approx(lag)


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b"1700000000123456", 1700000000.123456),
        ("5", 0.000005),
        (None, None),
        (b"x", None),
        (b"0", None),
        (b"-3", None),
    ],
)
def test_parse_heartbeat(raw: bytes | str | None, value: float | None) -> None:
    assert parse_heartbeat(raw) == (pytest.approx(value) if value is not None else None)


# ----------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("250ms", 0.25),
        ("1s", 1.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        (0.5, 0.5),
        (3, 3.0),
        (" 10 s ", 10.0),
    ],
)
def test_durations(raw: object, seconds: float) -> None:
    assert parse_duration(raw) == seconds


@pytest.mark.parametrize(
    ("raw", "size"),
    [
        ("10MB", 10 * 1024**2),
        ("512kb", 512 * 1024),
        ("1GiB", 1024**3),
        (1024, 1024),
        ("100", 100),
        ("2g", 2 * 1024**3),
    ],
)
def test_sizes(raw: object, size: int) -> None:
    assert parse_size(raw) == size


G = {"name": "g", "master": "redis://127.0.0.1:6379"}
BAD_CONFIGS = [
    (
        {"groups": [{**G, "replicas": ["redis://h:70000"]}]},
        "groups[0].replicas[0]: port must be 1-65535",
    ),
    (
        {"poll": {"interval": "1s", "timeout": "2s"}},
        "poll.timeout: must not exceed interval (a slow node would delay the next cycle)",
    ),
    ({"poll": {"interval": "50ms", "timeout": "10ms"}}, "poll.interval: must be at least 100ms"),
    (
        {"poll": {"interval": "soon"}},
        "poll.interval: invalid duration 'soon': use 250ms, 1s, 2m, 1h or seconds",
    ),
    ({"poll": {"interval": -1}}, "poll.interval: duration must not be negative"),
    ({"heartbeat": {"interval": "10ms"}}, "heartbeat.interval: must be at least 50ms"),
    ({"heartbeat": {"key": "has space"}}, "heartbeat.key: must be a non-empty key without spaces"),
    (
        {"routing": {"trip": {"lag_bytes": "lots"}}},
        "routing.trip.lag_bytes: invalid size 'lots': use 10MB, 512kb or a number of bytes",
    ),
    ({"nope": 1}, "nope: unknown key"),
    ({"groups": [{**G, "colour": "red"}]}, "groups[0].colour: unknown key"),
    (
        {"groups": [{"name": "g"}]},
        "groups[0].master: required (or give sentinel: or cluster: instead)",
    ),
    ({"groups": [{**G, "name": "a b"}]}, "groups[0].name: must be letters, digits, _ . : - only"),
    ({"groups": [G, G]}, "groups: group name 'g' is used twice"),
    (
        {"groups": [{**G, "replicas": [G["master"]]}]},
        "groups[0].replicas: node 127.0.0.1:6379 is listed twice",
    ),
    (
        {"groups": [{**G, "master": "http://h:1"}]},
        "groups[0].master: unsupported scheme 'http': use redis:// or rediss://",
    ),
    (
        {"groups": [{**G, "master": "redis://h:1/x"}]},
        "groups[0].master: database must be a number, got 'x'",
    ),
    ({"groups": [{**G, "master": "redis://:1"}]}, "groups[0].master: URL has no host"),
    (
        {"groups": [{**G, "master": 5}]},
        "groups[0].master: must be a node address, a redis:// or rediss:// URL or host:port, "
        "e.g. redis://127.0.0.1:6379 or 127.0.0.1:6379; got a number (a port alone? write "
        "host:port)",
    ),
    (
        {"groups": [{**G, "master": "redis://${NOPE}:1"}]},
        "groups[0].master: environment variable NOPE is not set",
    ),
    (
        {"groups": [{**G, "sentinel": {"addresses": []}}]},
        "groups[0].sentinel.addresses: must not be empty (a list of Sentinel addresses, like "
        "[10.0.0.1:26379, 10.0.0.2:26379])",
    ),
    (
        {"groups": [{**G, "cluster": {"startup_nodes": []}}]},
        "groups[0].cluster.startup_nodes: must not be empty (a list of node addresses, like "
        "[10.0.1.1:7000, 10.0.1.2:7000])",
    ),
    (
        {"exporter": {"listen": "nowhere"}},
        "exporter.listen: must be host:port, e.g. 127.0.0.1:9750",
    ),
    ({"exporter": {"listen": "1.2.3.4:99999"}}, "exporter.listen: port must be 0-65535"),
    (
        {"exporter": {"web_config": "/x.yml"}},
        "exporter.web_config: /x.yml: <file>: cannot read: No such file or directory",
    ),
    (
        {"groups": [{**G, "auth": {"password_file": "/nonexistent/pw"}}]},
        "groups[0].auth.password_file: cannot read /nonexistent/pw: No such file or directory",
    ),
    (
        {"lag": {"offset_clock_max_points": 2}},
        "lag.offset_clock_max_points: must be at least 8",
    ),
    (
        {"sync": {"tasks": [{"name": "t", "source": "redis://a:1"}]}},
        "sync.tasks[0].target: required",
    ),
    (
        {"groups": "cache"},
        "groups: must be a list of groups, each a mapping (- name: cache …); got a string",
    ),
    (
        {"heartbeat": {"enabled": "maybe"}},
        "heartbeat.enabled: must be true or false; got a string",
    ),
    (
        {"admin": {"token_file": "/nonexistent/token"}},
        "admin.token_file: cannot read /nonexistent/token: No such file or directory",
    ),
    ([1, 2], "<root>: must be a mapping of sections (exporter, groups, …)"),
]


@pytest.mark.parametrize(("data", "problem"), BAD_CONFIGS, ids=[p for _, p in BAD_CONFIGS])
def test_bad_config_names_the_field(data: object, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_data(data, "c.yaml", env={})
    assert problem in err.value.problems


def test_secrets_never_in_errors_or_reprs(tmp_path: object) -> None:
    cfg = config_from_data(
        {
            "groups": [
                {
                    **G,
                    "master": "redis://u:hunter2@h:1",
                    "replicas": ["redis://h:2"],
                    "auth": {"password": "${PW}"},
                }
            ]
        },
        env={"PW": "fromenv99"},
    )
    text = repr(cfg) + str(cfg.groups[0].master) + cfg.groups[0].master.redacted_url()
    assert "hunter2" not in text and "fromenv99" not in text
    assert cfg.groups[0].replicas[0].password is not None
    assert cfg.groups[0].replicas[0].password.get_secret_value() == "fromenv99"
    with pytest.raises(ConfigError) as err:
        config_from_data({"groups": [{**G, "master": "redis://:hunter2@h:99999"}]}, env={})
    assert "hunter2" not in str(err.value)


def test_env_default_and_password_file(tmp_path: object) -> None:
    from pathlib import Path

    pw = Path(str(tmp_path)) / "pw"
    pw.write_text("filepw\n")
    cfg = config_from_data(
        {
            "groups": [
                {**G, "master": "redis://${HOST:-10.1.1.1}:1", "auth": {"password_file": str(pw)}}
            ]
        },
        env={},
    )
    assert cfg.groups[0].master.host == "10.1.1.1"
    assert cfg.groups[0].master.password is not None
    assert cfg.groups[0].master.password.get_secret_value() == "filepw"


def test_shipped_config_is_valid() -> None:
    from pathlib import Path

    from replwatch.config import load_config

    cfg = load_config(Path(__file__).resolve().parent.parent / "config.yaml", env={})
    assert [g.name for g in cfg.groups] == ["cache"]  # the local pair (issue 21)
