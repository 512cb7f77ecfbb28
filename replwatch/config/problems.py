"""A pydantic ValidationError in the words of a config file: one `path: reason` line per error
(`groups[1].replicas[0]: port must be 1-65535`), no Python type names (wording.py), no input
echoed, and a did-you-mean for a mistyped key. Pure."""

from __future__ import annotations

import difflib
import re
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from replwatch.config.wording import plain_reason

# error types of model-level checks whose message reads 'field: reason'
_FIELD_IN_MESSAGE = frozenset(
    (
        "poll",
        "dup",
        "routing",
        "probe",
        "dbmap",
        "group",
        "shard",
        "same",
        "source_timeout",
        "lease",
        "reconnect",
        "pair_flush",
        "pair_self",
        "heartbeat_ttl",
        "lag_window",
        "tls",
    )
)
_PLAIN_KEY_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_FIELD_PREFIX_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\[\]]*: ")


def join_path(path: str, key: str) -> str:
    """`path.key`, or `key` at the root."""
    return f"{path}.{key}" if path else key


def loc_to_path(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location → the config path it points at (`groups[1].master`)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "kind:")):
            continue  # validator steps and the tags of sync source forms: not config keys
        else:
            out = join_path(out, str(part))
    return out or "<root>"


def format_errors(err: ValidationError, root: type[BaseModel]) -> list[str]:
    """One 'path: reason' line per error. `root`: the model validated, for the did-you-mean
    of unknown keys."""
    lines = []
    for e in err.errors(include_url=False):
        loc = tuple(e["loc"])
        if loc and loc[-1] == "[key]":
            loc = loc[:-2]  # a mapping's key: the mapping (`db_map: key must be …`)
        path = loc_to_path(loc)
        msg = e["msg"]
        # model-level checks carry 'field: reason' in their message
        if e["type"] in _FIELD_IN_MESSAGE and ": " in msg:
            field, _, msg = msg.partition(": ")
            path = join_path(path if path != "<root>" else "", field)
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        msg = plain_reason(e, msg, _names_in(loc))
        if tuple(e["loc"])[-1:] == ("[key]",):
            msg = f"each key {msg}"
        if e["type"] == "extra_forbidden":
            key = str(loc[-1]) if loc else ""
            if not _PLAIN_KEY_RE.fullmatch(key):
                # e.g. `{password:hunter2}` (no space after ':') is one key holding a value
                path = loc_to_path(loc[:-1])
                msg = (
                    "unknown key (not shown: it is not a plain name and may hold a value; "
                    "write key: value with a space after ':')"
                )
            else:
                msg = "unknown key" + _did_you_mean(key, _keys_at(root, loc[:-1]))
        lines.append(f"{path}: {msg}")
    return lines


def _names_in(loc: tuple[int | str, ...]) -> tuple[str, ...]:
    """The config keys of a location (no list indexes, validator steps or form tags)."""
    return tuple(
        str(part)
        for part in loc
        if not isinstance(part, int) and not str(part).startswith(("function-", "kind:"))
    )


def problems_under(where: str, lines: list[str]) -> list[str]:
    """The lines of a model validated on its own (a sync task from the admin API) as paths
    under `where`: `<root>: name: …` → `where.name: …`, `source: …` → `where.source: …`."""
    problems = []
    for line in lines:
        if line.startswith("<root>: "):
            rest = line[len("<root>: ") :]
            sep = "." if _FIELD_PREFIX_RE.match(rest) else ": "
            problems.append(f"{where}{sep}{rest}")
        else:
            problems.append(f"{where}.{line}")
    return problems


def _did_you_mean(key: str, known: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models a field's type holds (through list, dict, Optional, Annotated, unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _keys_at(root: type[BaseModel], loc: tuple[int | str, ...]) -> set[str]:
    """The keys allowed at `loc` (every form's, where a field takes several models)."""
    models = [root]
    for part in loc:
        if isinstance(part, int) or str(part).startswith(("function-", "kind:")):
            continue
        models = [
            found
            for model in models
            for name, field in model.model_fields.items()
            if part in (name, field.alias)
            for found in _models_in(field.annotation)
        ]
    return {field.alias or name for model in models for name, field in model.model_fields.items()}
