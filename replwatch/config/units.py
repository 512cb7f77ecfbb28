"""Durations and sizes as a config file writes them ("250ms", "2m", "10MB", "512kb" or a plain
number): pure parsers, and the annotated types the schema uses for them. A bad value is a
PydanticCustomError whose message is the config problem's reason."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator
from pydantic_core import PydanticCustomError

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_duration(value: Any) -> float:
    """'250ms', '1s', '2m', '1h' or a number of seconds → seconds (float)."""
    if isinstance(value, bool):
        raise PydanticCustomError("duration", "duration must be like 250ms, 1s, 2m or seconds")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise PydanticCustomError("duration", "duration must be a finite number of seconds")
        if value < 0:
            raise PydanticCustomError("duration", "duration must not be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            return float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    raise PydanticCustomError(
        "duration", "invalid duration '{value}': use 250ms, 1s, 2m, 1h or seconds", {"value": value}
    )


def parse_size(value: Any) -> int:
    """'10MB', '512kb', '1gib' or a number of bytes → bytes (int). Units are powers of 1024,
    as in redis.conf."""
    if isinstance(value, bool):
        raise PydanticCustomError("size", "size must be like 10MB, 512kb or bytes")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise PydanticCustomError("size", "size must be a finite number of bytes")
        if value < 0:
            raise PydanticCustomError("size", "size must not be negative")
        return int(value)
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match:
            unit = (match.group(2) or "").lower().replace("i", "").rstrip("b")
            return int(float(match.group(1)) * _SIZE_UNITS[unit])
    raise PydanticCustomError(
        "size", "invalid size '{value}': use 10MB, 512kb or a number of bytes", {"value": value}
    )


def above_zero(value: float) -> float:
    """A duration that must be above 0 (a timeout)."""
    if value <= 0:
        raise PydanticCustomError("duration", "must be above 0")
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), AfterValidator(above_zero)]
Size = Annotated[int, BeforeValidator(parse_size)]
