"""Issue 21's config errors, table-driven, each as the exact `path: reason` line: a node
address's slips named (`redis//h` is a missing ':', not a database) and one rule for node
addresses wherever the config takes one; durations that say what is wrong; pydantic's own
wording replaced by replwatch's; every independent problem reported in one pass (a bad field
no longer hides a task's `source == target`); the advice on secrets written in plain text.
The operator-facing side (the CLI, exit codes, one line per problem) is in
tests/test_invalid_configs.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel

from replwatch.config import Config, config_from_data, load_config, read_config
from replwatch.config.advice import plain_secrets
from replwatch.config.endpoints import ENDPOINT_FIELDS, RedisEndpoint, parse_endpoint
from replwatch.config.web import WebConfig
from replwatch.config.wording import LIST_ITEMS, MAPPING_ITEMS
from replwatch.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SECRET = "Qv7-not-shown"
FORMS = (
    "must be a node address, a redis:// or rediss:// URL or host:port, e.g. "
    "redis://127.0.0.1:6379 or 127.0.0.1:6379"
)
TASK = {"name": "t", "source": "127.0.0.1:6379", "target": "127.0.0.1:6380"}


def problems_of(data: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_data(data, env={})
    return info.value.problems


def master(value: Any) -> dict[str, Any]:
    return {"groups": [{"name": "a", "master": value}]}


# ------------------------------------------------------------------ node address slips

# (written as the master, the reason given): finding 1 and its neighbours
URL_SLIPS: list[tuple[Any, str]] = [
    (
        "redis//127.0.0.1:6379",
        "not a redis:// URL ('redis//' should be 'redis://'): did you mean redis://127.0.0.1:6379?",
    ),
    (
        "redis:/127.0.0.1:6379",
        "not a redis:// URL ('redis:/' should be 'redis://'): did you mean redis://127.0.0.1:6379?",
    ),
    (
        "redis:127.0.0.1:6379",
        "not a redis:// URL ('redis:' should be 'redis://'): did you mean redis://127.0.0.1:6379?",
    ),
    (
        "redis:///127.0.0.1:6379/2",
        "not a redis:// URL ('redis:///' should be 'redis://'): did you mean "
        "redis://127.0.0.1:6379/2?",
    ),
    (
        "rediss//db.example:6380",
        "not a rediss:// URL ('rediss//' should be 'rediss://'): did you mean "
        "rediss://db.example:6380?",
    ),
    (
        "Redis//h:1",
        "not a redis:// URL ('Redis//' should be 'redis://'): did you mean redis://h:1?",
    ),
    # credentials are never repeated, not even a user name
    (
        f"redis//app:{SECRET}@h:1",
        "not a redis:// URL ('redis//' should be 'redis://'): did you mean redis://***@h:1?",
    ),
    (
        f"redis:/:{SECRET}@h:1",
        "not a redis:// URL ('redis:/' should be 'redis://'): did you mean redis://***@h:1?",
    ),
    # not a plain address after the slip: named, no suggestion
    ("redis//h:1?db=2", "not a redis:// URL ('redis//' should be 'redis://')"),
    (
        "//127.0.0.1:6379",
        "not a redis:// URL (no scheme before '//'): did you mean redis://127.0.0.1:6379?",
    ),
    ("redis://redis://h:1", "the scheme is written twice: write it once (redis://host:port)"),
    ("http://127.0.0.1:6379", "unsupported scheme 'http': use redis:// or rediss://"),
    ("http//127.0.0.1:6379", "unsupported scheme 'http': use redis:// or rediss://"),
    ("unix:///var/run/redis.sock", "unsupported scheme 'unix': use redis:// or rediss://"),
    (
        "/var/run/redis.sock",
        "a file path is not a node address (unix sockets are not supported): use "
        "redis://host:port or host:port",
    ),
    (
        "127.0.0.1:6379,127.0.0.1:6380",
        "one node per address: ',' joins several (list them one per item instead)",
    ),
    ("::1", "an IPv6 address goes in brackets: [::1]:6379 or redis://[::1]:6379"),
    ("fe80::1:6379", "an IPv6 address goes in brackets: [::1]:6379 or redis://[::1]:6379"),
    ("6379", "'6379' is a port alone: write host:port, e.g. 127.0.0.1:6379"),
    ("redis://6380", "'6380' is a port alone: write host:port, e.g. 127.0.0.1:6380"),
    # unchanged (already named the mistake)
    ("redis://127.0.0.1:6379/cache", "database must be a number, got 'cache'"),
    ("redis://127.0.0.1:70000", "port must be 1-65535"),
    ("redis://[::1:6379", "malformed URL (an IPv6 address goes in brackets: redis://[::1]:6379)"),
    # not a string: the accepted forms, and what was given
    (6379, f"{FORMS}; got a number (a port alone? write host:port)"),
    (["127.0.0.1:6379"], f"{FORMS}; got a list (one address here)"),
    (True, f"{FORMS}; got true/false"),
    ("  ", f"{FORMS}; got an empty string"),
]


@pytest.mark.parametrize(("written", "reason"), URL_SLIPS, ids=[str(w) for w, _ in URL_SLIPS])
def test_node_address_slips_are_named(written: Any, reason: str) -> None:
    assert problems_of(master(written)) == [f"groups[0].master: {reason}"]


def test_a_slip_never_shows_the_password() -> None:
    for written in (f"redis//:{SECRET}@h:1", f"redis:{SECRET}@h:1", f"redis//u:{SECRET}/x@h"):
        lines = problems_of(master(written))
        assert len(lines) == 1 and SECRET not in lines[0], lines


# ------------------------------------------------------------------ one rule for node addresses

# every place a config names a node, as (name, data with the address at `value`, its path)
PLACES: list[tuple[str, Callable[[Any], dict[str, Any]], str]] = [
    ("master", master, "groups[0].master"),
    (
        "replica",
        lambda v: {"groups": [{"name": "a", "master": "m:1", "replicas": [v]}]},
        "groups[0].replicas[0]",
    ),
    (
        "sentinel",
        lambda v: {"groups": [{"name": "a", "sentinel": {"addresses": [v], "master_name": "m"}}]},
        "groups[0].sentinel.addresses[0]",
    ),
    (
        "cluster",
        lambda v: {"groups": [{"name": "a", "cluster": {"startup_nodes": [v]}}]},
        "groups[0].cluster.startup_nodes[0]",
    ),
    ("source", lambda v: {"sync": {"tasks": [{**TASK, "source": v}]}}, "sync.tasks[0].source"),
    (
        "target",
        lambda v: {"sync": {"tasks": [{**TASK, "source": "src:1", "target": v}]}},
        "sync.tasks[0].target",
    ),
    (
        "source-sentinel",
        lambda v: {
            "sync": {
                "tasks": [{**TASK, "source": {"sentinel": {"addresses": [v], "master_name": "m"}}}]
            }
        },
        "sync.tasks[0].source.sentinel.addresses[0]",
    ),
    (
        "source-cluster",
        lambda v: {"sync": {"tasks": [{**TASK, "source": {"cluster": {"startup_nodes": [v]}}}]}},
        "sync.tasks[0].source.cluster.startup_nodes[0]",
    ),
    (
        "target-cluster",
        lambda v: {
            "sync": {
                "tasks": [
                    {**TASK, "source": "src:1", "target": {"cluster": {"startup_nodes": [v]}}}
                ]
            }
        },
        "sync.tasks[0].target.cluster.startup_nodes[0]",
    ),
    ("publish", lambda v: {"publish": {"url": v}}, "publish.url"),
]
# accepted everywhere (what was accepted before issue 21 still is)
ACCEPTED: list[Any] = [
    "redis://127.0.0.1:6390",
    "rediss://db.example:6390/0",
    "127.0.0.1:6390",
    "127.0.0.1:6390/0",
    "db.example",
    "redis",  # a host named redis (docker compose)
    "redis:6390",
    "[::1]:6390",
    "user:pw@127.0.0.1:6390",
    "  redis://127.0.0.1:6390  ",  # spaces around: ignored, as at the start before
    {"host": "127.0.0.1", "port": 6390},
]
REFUSED: list[tuple[Any, str]] = [
    ("redis//127.0.0.1:6390", "not a redis:// URL ('redis//' should be 'redis://')"),
    (6390, f"{FORMS}; got a number (a port alone? write host:port)"),
    ([], f"{FORMS}; got a list (one address here)"),
]


@pytest.mark.parametrize(("place", "make", "path"), PLACES, ids=[p[0] for p in PLACES])
def test_every_place_takes_the_same_address_forms(
    place: str, make: Callable[[Any], dict[str, Any]], path: str
) -> None:
    for value in ACCEPTED:
        config_from_data(make(value), env={})
    for value, reason in REFUSED:
        (line,) = problems_of(make(value))
        assert line.startswith(f"{path}: {reason}"), (place, value, line)


def _models(root: type[BaseModel]) -> Iterator[type[BaseModel]]:
    seen: set[type[BaseModel]] = set()
    todo = [root]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        yield model
        for field in model.model_fields.values():
            todo.extend(_inner_models(field.annotation))


def _inner_models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation, *(c for c in annotation.__subclasses__())]
    return [m for arg in get_args(annotation) for m in _inner_models(arg)]


def _takes_an_address(annotation: Any, metadata: tuple[Any, ...] = ()) -> bool:
    """A field whose value (or its items, or one of its forms) goes through parse_endpoint."""
    found = (*metadata, *getattr(annotation, "__metadata__", ()))
    if any(getattr(m, "func", None) is parse_endpoint for m in found):
        return True
    return any(_takes_an_address(arg) for arg in get_args(annotation) if not isinstance(arg, str))


def test_endpoint_fields_are_the_schemas() -> None:
    """ENDPOINT_FIELDS (the settings the address rule covers, and whose URLs the plain-text
    advice looks at) is every field of the schema that takes a node address."""
    found = {
        name
        for model in _models(Config)
        for name, field in model.model_fields.items()
        if _takes_an_address(field.annotation, tuple(field.metadata))
    }
    assert found == ENDPOINT_FIELDS


# ------------------------------------------------------------------ durations and sizes

DURATIONS: list[tuple[Any, str]] = [
    ("-1s", "duration must not be negative"),
    ("-250ms", "duration must not be negative"),
    ("-5", "duration must not be negative"),
    (-5, "duration must not be negative"),
    ("1sec", "invalid duration '1sec': did you mean 1s? (units: ms, s, m, h)"),
    ("2 hours", "invalid duration '2 hours': did you mean 2h? (units: ms, s, m, h)"),
    ("10min", "invalid duration '10min': did you mean 10m? (units: ms, s, m, h)"),
    ("1S", "invalid duration '1S': did you mean 1s? (units: ms, s, m, h)"),
    ("1,5s", "invalid duration '1,5s': did you mean 1.5s? (units: ms, s, m, h)"),
    ("1h30m", "invalid duration '1h30m': did you mean 90m? (units: ms, s, m, h)"),
    ("2d", "invalid duration '2d': did you mean 48h? (units: ms, s, m, h)"),
    ("500us", "invalid duration '500us': did you mean 0.5ms? (units: ms, s, m, h)"),
    ("5x", "invalid duration '5x': use 250ms, 1s, 2m, 1h or seconds"),
    ("", "duration is empty: use 250ms, 1s, 2m, 1h or seconds"),
    (None, "duration is empty: use 250ms, 1s, 2m, 1h or seconds"),
    ([1], "duration must be like 250ms, 1s, 2m, 1h or a number of seconds"),
    ("100000h", "duration must be at most 8760h (a year)"),
    (1e12, "duration must be at most 8760h (a year)"),
]


@pytest.mark.parametrize(("written", "reason"), DURATIONS, ids=[repr(d) for d, _ in DURATIONS])
def test_durations_name_the_problem(written: Any, reason: str) -> None:
    assert problems_of({"heartbeat": {"ttl": written}}) == [f"heartbeat.ttl: {reason}"]


@pytest.mark.parametrize(("written", "seconds"), [("1 s", 1.0), ("8760h", 8760 * 3600.0), (0, 0)])
def test_durations_still_accepted(written: Any, seconds: float) -> None:
    cfg = config_from_data({"routing": {"trip": {"lag_seconds": 5, "for": written}}}, env={})
    assert cfg.routing.trip.for_ == seconds


SIZES: list[tuple[Any, str]] = [
    ("-1MB", "size must not be negative"),
    ("", "size is empty: use 10MB, 512kb or a number of bytes"),
    ([1], "size must be like 10MB, 512kb or a number of bytes"),
]


@pytest.mark.parametrize(("written", "reason"), SIZES, ids=[repr(s) for s, _ in SIZES])
def test_sizes_name_the_problem(written: Any, reason: str) -> None:
    data = {"routing": {"trip": {"lag_bytes": written}}}
    assert problems_of(data) == [f"routing.trip.lag_bytes: {reason}"]


# ------------------------------------------------------------------ pydantic's words, replaced

WORDING: list[tuple[str, Any, str]] = [
    (
        "replicas-a-string",
        {"groups": [{"name": "a", "master": "m:1", "replicas": "127.0.0.1:6380"}]},
        "groups[0].replicas: must be a list of node addresses, like "
        "[redis://10.0.0.2:6379]; got a string",
    ),
    (
        "replicas-empty",
        {"groups": [{"name": "a", "master": "m:1", "replicas": None}]},
        "groups[0].replicas: must be a list of node addresses, like "
        "[redis://10.0.0.2:6379]; got nothing (an empty value) (write [] for none)",
    ),
    (
        "groups-a-mapping",
        {"groups": {"name": "a"}},
        "groups: must be a list of groups, each a mapping (- name: cache …); got a mapping "
        "(each item starts with '- ')",
    ),
    (
        "tasks-a-string",
        {"sync": {"tasks": "a_to_b"}},
        "sync.tasks: must be a list of sync tasks, each a mapping (- name: a_to_b …); got a string",
    ),
    (
        "sentinel-addresses-a-string",
        {"groups": [{"name": "a", "sentinel": {"addresses": "h:26379", "master_name": "m"}}]},
        "groups[0].sentinel.addresses: must be a list of Sentinel addresses, like "
        "[10.0.0.1:26379, 10.0.0.2:26379]; got a string",
    ),
    (
        "deny-prefixes-a-string",
        {"sync": {"tasks": [{**TASK, "filters": {"keys": {"deny_prefixes": "tmp:"}}}]}},
        "sync.tasks[0].filters.keys.deny_prefixes: must be a list of key prefixes, like "
        "['session:']; got a string",
    ),
    (
        "command-deny-a-string",
        {"sync": {"tasks": [{**TASK, "filters": {"commands": {"deny": "FLUSHALL"}}}]}},
        "sync.tasks[0].filters.commands.deny: must be a list of command names, like "
        "[FLUSHALL, FLUSHDB]; got a string",
    ),
    (
        "dbs-allow-a-number",
        {"sync": {"tasks": [{**TASK, "filters": {"dbs": {"allow": 0}}}]}},
        "sync.tasks[0].filters.dbs.allow: must be a list of database numbers, like [0, 1]; "
        "got a number",
    ),
    (
        "address-map-a-list",
        {"address_map": ["10.0.0.5:6379"]},
        "address_map: must be a mapping of announced to reachable addresses, like "
        "{'10.0.0.5:6379': '203.0.113.5:16379'}; got a list",
    ),
    (
        "db-map-a-list",
        {"sync": {"tasks": [{**TASK, "db_map": [0, 3]}]}},
        "sync.tasks[0].db_map: must be a mapping of source db to target db, like {0: 3}; got "
        "a list",
    ),
    (
        "db-map-key-a-word",
        {"sync": {"tasks": [{**TASK, "db_map": {"zero": 3}}]}},
        "sync.tasks[0].db_map: each key must be a whole number; got a string",
    ),
    (
        "section-empty",
        {"poll": None},
        "poll: must be a mapping of settings (key: value); got nothing (an empty value)",
    ),
    (
        "group-a-string",
        {"groups": ["cache"]},
        "groups[0]: must be a mapping of settings (key: value); got a string",
    ),
    (
        "name-a-number",
        {"groups": [{"name": 5, "master": "m:1"}]},
        "groups[0].name: must be a string; got a number (put it in quotes)",
    ),
    (
        "password-a-number",
        {"groups": [{"name": "a", "master": "m:1", "auth": {"password": 123456}}]},
        "groups[0].auth.password: must be a string; got a number (put it in quotes)",
    ),
    (
        "boolean-a-word",
        {"heartbeat": {"enabled": "sometimes"}},
        "heartbeat.enabled: must be true or false; got a string",
    ),
    (
        "whole-number-a-word",
        {"sync": {"tasks": [{**TASK, "batch_size": "lots"}]}},
        "sync.tasks[0].batch_size: must be a whole number; got a string",
    ),
    (
        "whole-number-a-fraction",
        {"lag": {"offset_clock_max_points": 10.5}},
        "lag.offset_clock_max_points: must be a whole number, not a fraction",
    ),
    (
        "number-a-word",
        {"routing": {"max_out_ratio": "half"}},
        "routing.max_out_ratio: must be a number; got a string",
    ),
    (
        "at-least",
        {"sync": {"tasks": [{**TASK, "batch_size": 0}]}},
        "sync.tasks[0].batch_size: must be at least 1",
    ),
    ("at-most", {"routing": {"max_out_ratio": 2}}, "routing.max_out_ratio: must be at most 1.0"),
    (
        "not-negative",
        {"routing": {"min_in_rotation": -1}},
        "routing.min_in_rotation: must not be negative",
    ),
    (
        "one-of",
        {"sync": {"tasks": [{**TASK, "existing_keys": "keep"}]}},
        "sync.tasks[0].existing_keys: must be 'refuse', 'flush' or 'overwrite'",
    ),
    (
        "required",
        {"sync": {"tasks": [{"name": "t", "source": "h:1"}]}},
        "sync.tasks[0].target: required",
    ),
    (
        "list-empty",
        {"groups": [{"name": "a", "cluster": {"startup_nodes": []}}]},
        "groups[0].cluster.startup_nodes: must not be empty (a list of node addresses, like "
        "[10.0.1.1:7000, 10.0.1.2:7000])",
    ),
    (
        "string-empty",
        {"groups": [{"name": "a", "sentinel": {"addresses": ["h:1"], "master_name": ""}}]},
        "groups[0].sentinel.master_name: must not be empty",
    ),
]


@pytest.mark.parametrize(("data", "line"), [c[1:] for c in WORDING], ids=[c[0] for c in WORDING])
def test_pydantic_wording_is_replaced(data: Any, line: str) -> None:
    assert problems_of(data) == [line]


def test_no_python_wording_reaches_the_user() -> None:
    """Every message of the tables above, and of a config wrong in every section at once,
    is free of pydantic's phrases."""
    everything = {
        "exporter": {"listen": 1, "web_config": 2},
        "poll": {"interval": [], "timeout": {}},
        "heartbeat": {"enabled": "x", "key": 5, "ttl": "x"},
        "lag": {"offset_clock_window": None, "offset_clock_max_points": "x"},
        "tls": {"ca_file": 1, "insecure_skip_verify": "x", "server_name": 5},
        "groups": [
            {"name": 1, "master": 2, "replicas": 3, "discover": "x", "auth": 4},
            {"name": "b", "sentinel": {"addresses": 1, "master_name": 2, "timeout": "x"}},
            {"name": "c", "cluster": {"startup_nodes": "x", "auth": [], "timeout": []}},
        ],
        "address_map": "x",
        "routing": {"trip": "x", "recover": {"for": "x"}, "min_in_rotation": "x"},
        "probe": {"enabled": 3, "replicas": [], "key": 1},
        "publish": {"url": 1, "auth": {"username": 1, "password_file": []}, "interval": "x"},
        "sync": {
            "state_dir": 1,
            "tasks": [
                {
                    "name": 1,
                    "source": {"sentinel": {"addresses": "x"}, "db": "x"},
                    "target": {"cluster": {"startup_nodes": 1}},
                    "pair": 1,
                    "snapshot": "x",
                    "afresh": "x",
                    "batch_size": 1.5,
                    "filters": {"keys": "x", "commands": {"allow": 1}, "dbs": {"allow": ["x"]}},
                    "db_map": {"x": "y"},
                    "ha": "x",
                }
            ],
        },
        "admin": {"token": 1, "token_file": 2},
        "shard": [],
    }
    lines = problems_of(everything)
    assert len(lines) > 40
    for line in lines:
        for phrase in ("Input should", "Field required", "should have", "valid list", "[key]"):
            assert phrase not in line, line


def _list_and_mapping_fields(root: type[BaseModel]) -> set[tuple[str, str, str]]:
    found = set()
    for model in _models(root):
        for name, field in model.model_fields.items():
            annotation = field.annotation
            options = get_args(annotation) if get_origin(annotation) is not list else ()
            for kind in (annotation, *options):
                if get_origin(kind) is list:
                    found.add(("list", model.__name__, name))
                elif get_origin(kind) is dict:
                    found.add(("dict", model.__name__, name))
    return found


def test_every_list_and_mapping_field_says_what_it_holds() -> None:
    """A list or mapping given the wrong kind of value names what it holds: every such field
    of the config and the web config has words in wording.py."""
    parents = {"CommandFilterConfig": "commands", "DbFilterConfig": "dbs"}
    for kind, model, name in _list_and_mapping_fields(Config) | _list_and_mapping_fields(WebConfig):
        table = LIST_ITEMS if kind == "list" else MAPPING_ITEMS
        key = f"{parents[model]}.{name}" if model in parents else name
        assert key in table, (kind, model, name)


# ------------------------------------------------------------------ every problem in one pass

ONE_PASS: list[tuple[str, Any, list[str]]] = [
    (
        # the finding: a bad existing_keys hid source == target
        "task-bad-field-and-source-is-target",
        {"sync": {"tasks": [{**TASK, "target": TASK["source"], "existing_keys": "keep"}]}},
        [
            "sync.tasks[0].existing_keys: must be 'refuse', 'flush' or 'overwrite'",
            "sync.tasks[0].target: must not be the source itself",
        ],
    ),
    (
        # each check of a task on its own: the first no longer hides the others
        "task-every-check",
        {
            "sync": {
                "tasks": [
                    {
                        **TASK,
                        "target": TASK["source"],
                        "lease": "500ms",
                        "source_timeout": "500ms",
                        "reconnect_min": "10s",
                        "reconnect_max": "1s",
                        "pair": "t",
                    }
                ]
            }
        },
        [
            "sync.tasks[0].target: must not be the source itself",
            "sync.tasks[0].source_timeout: must be at least 1s",
            "sync.tasks[0].lease: must be at least 1s",
            "sync.tasks[0].reconnect_max: must not be less than reconnect_min",
            "sync.tasks[0].pair: must name the reverse task, not itself",
        ],
    ),
    (
        # a check that reads a field which failed is skipped: no consequence reported
        "task-no-double-report",
        {"sync": {"tasks": [{**TASK, "reconnect_min": "soon", "reconnect_max": "1s"}]}},
        ["sync.tasks[0].reconnect_min: invalid duration 'soon': use 250ms, 1s, 2m, 1h or seconds"],
    ),
    (
        "cluster-target-mapped-twice-reported-once",
        {
            "sync": {
                "tasks": [
                    {
                        **TASK,
                        "target": {"cluster": {"startup_nodes": ["127.0.0.1:7000"]}},
                        "db_map": {0: 1, 1: 1},
                    }
                ]
            }
        },
        ["sync.tasks[0].db_map: a cluster target has database 0 only; map to 0 (got 1)"],
    ),
    (
        "duplicate-task-names-and-a-bad-task",
        {"sync": {"tasks": [TASK, {**TASK, "source": "h:1", "batch_size": 0}]}},
        [
            "sync.tasks[1].batch_size: must be at least 1",
            "sync.tasks: task name 't' is used twice",
        ],
    ),
    (
        "duplicate-group-names-and-a-bad-field",
        {
            "groups": [
                {"name": "a", "master": "redis//127.0.0.1:6379"},
                {"name": "a", "master": "127.0.0.1:6390", "discover": "sometimes"},
            ]
        },
        [
            "groups[0].master: not a redis:// URL ('redis//' should be 'redis://'): did you "
            "mean redis://127.0.0.1:6379?",
            "groups[1].discover: must be true or false; got a string",
            "groups: group name 'a' is used twice",
        ],
    ),
    (
        # a name that is itself wrong is not also counted twice
        "bad-names-are-not-duplicates",
        {"groups": [{"name": "a b", "master": "h:1"}, {"name": "a b", "master": "h:2"}]},
        [
            "groups[0].name: must be letters, digits, _ . : - only",
            "groups[1].name: must be letters, digits, _ . : - only",
        ],
    ),
    (
        "group-bad-field-and-replica-twice",
        {
            "groups": [
                {
                    "name": "a",
                    "master": "127.0.0.1:6379",
                    "replicas": ["127.0.0.1:6380", "redis://127.0.0.1:6380/0"],
                    "probe": {"replicas": "most"},
                }
            ]
        },
        [
            "groups[0].probe.replicas: must be a count >= 0 or 'all'",
            "groups[0].replicas: node 127.0.0.1:6380 is listed twice",
        ],
    ),
    (
        # a master that fails is not also "required"
        "group-bad-master-not-also-missing",
        {"groups": [{"name": "a", "master": "redis://h:0", "replicas": ["h:1", "h:1"]}]},
        ["groups[0].master: port must be 1-65535"],
    ),
    (
        "group-two-sources-and-a-bad-field",
        {
            "groups": [
                {
                    "name": "a",
                    "master": "h:1",
                    "sentinel": {"addresses": ["h:26379"], "master_name": "m"},
                    "discover": "x",
                }
            ]
        },
        [
            "groups[0].discover: must be true or false; got a string",
            "groups[0].sentinel: give one of master, sentinel, cluster (not master and sentinel)",
        ],
    ),
    (
        # a value emptied by an unset ${VAR} is that variable's problem alone
        "unset-variable-not-also-an-empty-address",
        {"groups": [{"name": "a", "master": "${NOPE}"}], "poll": {"interval": "${NOPE}"}},
        [
            "groups[0].master: environment variable NOPE is not set",
            "poll.interval: environment variable NOPE is not set",
        ],
    ),
    (
        "sections-checked-across-a-bad-group",
        {
            "groups": [{"name": "a", "master": "h:0"}],
            "lag": {"offset_clock_window": "1s"},
            "shard": "2/3",
            "publish": {"url": "h:1"},
        },
        [
            "groups[0].master: port must be 1-65535",
            "lag.offset_clock_window: must be at least twice poll.interval (the offset clock "
            "needs two samples to tell a follower's age)",
            "publish.key: must contain {shard} when the fleet is split into shards (shard 2/3): "
            "each shard publishes the routing table of its own groups, e.g. "
            "replwatch:routing:{shard}",
        ],
    ),
]


@pytest.mark.parametrize(("data", "lines"), [c[1:] for c in ONE_PASS], ids=[c[0] for c in ONE_PASS])
def test_every_independent_problem_in_one_pass(data: Any, lines: list[str]) -> None:
    assert problems_of(data) == lines


# ------------------------------------------------------------------ secrets in plain text

ADVICE: list[tuple[str, str, list[str]]] = [
    (
        "url-password",
        f"groups: [{{name: a, master: 'redis://app:{SECRET}@127.0.0.1:6379'}}]\n",
        [
            "groups[0].master: the URL holds a password in plain text; keep it out of the "
            "file with the group's auth: {password_file: …}, or an environment variable "
            "(${NAME})"
        ],
    ),
    (
        "host-port-password",
        f"groups: [{{name: a, master: 'm:1', replicas: ['app:{SECRET}@127.0.0.1:6380']}}]\n",
        [
            "groups[0].replicas[0]: the URL holds a password in plain text; keep it out of "
            "the file with the group's auth: {password_file: …}, or an environment variable "
            "(${NAME})"
        ],
    ),
    (
        "auth-password",
        f"groups: [{{name: a, master: 'm:1', auth: {{password: {SECRET}}}}}]\n",
        [
            "groups[0].auth.password: a password written in plain text; keep it out of the "
            "file with password_file: in the same block, or an environment variable (${NAME})"
        ],
    ),
    (
        "sentinel-url",
        f"groups: [{{name: a, sentinel: {{addresses: ['redis://:{SECRET}@h:26379'], "
        "master_name: m}}]\n",
        [
            "groups[0].sentinel.addresses[0]: the URL holds a password in plain text; keep it "
            "out of the file with sentinel.auth: {password_file: …}, or an environment "
            "variable (${NAME})"
        ],
    ),
    (
        "sync-sides",
        f"sync: {{tasks: [{{name: t, source: {{sentinel: {{addresses: ['h:26379'], "
        f"master_name: m, password: {SECRET}}}, password: {SECRET}}}, "
        f"target: 'rediss://u:{SECRET}@h:6380', target_auth: {{password: {SECRET}}}}}]}}\n",
        [
            "sync.tasks[0].source.sentinel.password: a password written in plain text; keep "
            "it out of the file with an environment variable (${NAME})",
            "sync.tasks[0].source.password: a password written in plain text; keep it out of "
            "the file with source_auth: {password_file: …}, or an environment variable "
            "(${NAME})",
            "sync.tasks[0].target: the URL holds a password in plain text; keep it out of the "
            "file with target_auth: {password_file: …}, or an environment variable (${NAME})",
            "sync.tasks[0].target_auth.password: a password written in plain text; keep it "
            "out of the file with password_file: in the same block, or an environment "
            "variable (${NAME})",
        ],
    ),
    (
        "publish-and-admin",
        f"publish: {{url: 'redis://:{SECRET}@h:1'}}\nadmin: {{token: {SECRET}}}\n",
        [
            "publish.url: the URL holds a password in plain text; keep it out of the file "
            "with publish.auth: {password_file: …}, or an environment variable (${NAME})",
            "admin.token: the admin token is written in plain text; keep it out of the file "
            "with admin.token_file, or an environment variable (${NAME})",
        ],
    ),
    # from the environment or a file: nothing to say
    (
        "from-env-and-files",
        "groups:\n"
        "  - name: a\n"
        "    master: 'redis://app:${PW}@127.0.0.1:6379'\n"
        "    replicas: ['redis://:${PW:-default}@127.0.0.1:6380', '127.0.0.1:6381']\n"
        "    auth: {username: u, password_file: '@DIR@/pw'}\n"
        "admin: {token: '${TOKEN}'}\n"
        "sync: {tasks: [{name: t, source: 'u@h:1', target: 'redis://:@h:2', "
        "target_auth: {password: ''}}]}\n",
        [],
    ),
]


@pytest.mark.parametrize(("text", "lines"), [c[1:] for c in ADVICE], ids=[c[0] for c in ADVICE])
def test_secrets_in_plain_text_are_pointed_out(tmp_path: Path, text: str, lines: list[str]) -> None:
    text = text.replace("@DIR@", str(tmp_path))
    assert plain_secrets(yaml.safe_load(text)) == lines
    (tmp_path / "pw").write_text(SECRET)
    path = tmp_path / "c.yaml"
    path.write_text(text)
    _, advice = read_config(path, env={"PW": SECRET, "TOKEN": SECRET})
    assert advice == lines
    assert SECRET not in "".join(advice)


def test_the_example_config_is_honest() -> None:
    """config.yaml watches the local pair a quick start runs (127.0.0.1:6379 and its
    replica 127.0.0.1:6380) and teaches no password in plain text."""
    path = REPO / "config.yaml"
    cfg, advice = read_config(path, env={})
    assert [(g.name, [n.label for n in cfg.nodes_of(g)]) for g in cfg.groups] == [
        ("cache", ["127.0.0.1:6379", "127.0.0.1:6380"])
    ]
    assert advice == []
    text = path.read_text()
    for route in ("/metrics", "/status.json", "status page at /", "/-/ready"):
        assert route in text, route
    assert load_config(path, env={}) == cfg


def test_an_endpoint_passes_through_unchanged() -> None:
    endpoint = RedisEndpoint(host="h", port=1)
    assert parse_endpoint(endpoint) is endpoint
