"""pydantic's own error messages ("Input should be a valid list", "Field required") in the
words of a config file: what the setting must be, and what kind of value was given instead
("must be a list of node addresses, like [redis://10.0.0.2:6379]; got a string"). The value
itself is never shown (it may be a password). Pure; problems.py and web.py use it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic_core import ErrorDetails

# what a list holds, by field name (a `section.field` entry wins over a `field` one)
LIST_ITEMS = {
    "groups": "groups, each a mapping (- name: cache …)",
    "replicas": "node addresses, like [redis://10.0.0.2:6379]",
    "addresses": "Sentinel addresses, like [10.0.0.1:26379, 10.0.0.2:26379]",
    "startup_nodes": "node addresses, like [10.0.1.1:7000, 10.0.1.2:7000]",
    "tasks": "sync tasks, each a mapping (- name: a_to_b …)",
    "allow_prefixes": "key prefixes, like ['session:']",
    "deny_prefixes": "key prefixes, like ['session:']",
    "allow_regex": "regular expressions, like ['^user:[0-9]+$']",
    "deny_regex": "regular expressions, like ['^user:[0-9]+$']",
    "commands.allow": "command names, like [SET, DEL]",
    "commands.deny": "command names, like [FLUSHALL, FLUSHDB]",
    "dbs.allow": "database numbers, like [0, 1]",
    "client_allowed_sans": "names, like [prometheus.example]",
}
# what a mapping holds, by field name
MAPPING_ITEMS = {
    "address_map": "announced to reachable addresses, like {'10.0.0.5:6379': '203.0.113.5:16379'}",
    "db_map": "source db to target db, like {0: 3}",
    "headers": "header names to values, like {Strict-Transport-Security: max-age=31536000}",
    "basic_auth_users": "user names to bcrypt hashes, like {prometheus: $2y$10$…}",
}


def what_it_is(value: Any) -> str:
    """The kind of a value as a YAML writer sees it ("a string", "a list"), never the value."""
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "an empty string" if not value.strip() else "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return "a value of another kind"


def _lookup(table: dict[str, str], names: tuple[str, ...]) -> str | None:
    if len(names) >= 2 and f"{names[-2]}.{names[-1]}" in table:
        return table[f"{names[-2]}.{names[-1]}"]
    return table.get(names[-1]) if names else None


def plain_reason(error: ErrorDetails, msg: str, names: tuple[str, ...]) -> str:
    """The reason for `error` (its message so far: `msg`) in a config file's words. `names`:
    the setting's path as names (no list indexes), for what a list or mapping holds."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    got = what_it_is(error.get("input"))
    if kind in ("model_type", "model_attributes_type"):
        return f"must be a mapping of settings (key: value); got {got}"
    if kind == "path_type":
        return "must be a file path (a string)"
    if kind == "list_type":
        items = _lookup(LIST_ITEMS, names)
        given = error.get("input")
        hint = " (each item starts with '- ')" if isinstance(given, Mapping) else ""
        hint = " (write [] for none)" if given is None else hint
        return f"must be a list{f' of {items}' if items else ''}; got {got}{hint}"
    if kind == "dict_type":
        items = _lookup(MAPPING_ITEMS, names)
        return f"must be a mapping{f' of {items}' if items else ' (key: value)'}; got {got}"
    if kind == "string_type":
        quote = " (put it in quotes)" if got in ("a number", "true/false") else ""
        return f"must be a string; got {got}{quote}"
    if kind in ("int_type", "int_parsing"):
        return f"must be a whole number; got {got}"
    if kind == "int_from_float":
        return "must be a whole number, not a fraction"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number; got {got}"
    if kind == "finite_number":
        return "must be a finite number"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false; got {got}"
    if kind == "missing":
        return "required"
    if kind == "too_short":
        if ctx.get("min_length") != 1:
            return f"must have at least {ctx.get('min_length')} items"
        items = _lookup(LIST_ITEMS, names)
        return f"must not be empty{f' (a list of {items})' if items else ''}"
    if kind == "string_too_short":
        return "must not be empty"
    return _bound(kind, ctx) or _choice(kind, ctx) or msg


def _bound(kind: str, ctx: dict[str, Any]) -> str | None:
    if kind == "greater_than_equal":
        return "must not be negative" if ctx.get("ge") == 0 else f"must be at least {ctx.get('ge')}"
    if kind == "greater_than":
        return f"must be above {ctx.get('gt')}"
    if kind == "less_than_equal":
        return f"must be at most {ctx.get('le')}"
    if kind == "less_than":
        return f"must be below {ctx.get('lt')}"
    return None


def _choice(kind: str, ctx: dict[str, Any]) -> str | None:
    if kind in ("literal_error", "enum"):
        return f"must be {ctx.get('expected')}"
    return None
