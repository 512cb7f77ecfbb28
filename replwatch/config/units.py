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
# a number with a word after it, and the words people write for the units
_NUMBER_AND_WORD_RE = re.compile(r"^\s*(\d+(?:[.,]\d+)?)\s*([^\W\d_]+)\s*$")
_COMPOUND_RE = re.compile(r"^\s*(?:\d+(?:\.\d+)?(?:ms|s|m|h))+\s*$")
_UNIT_WORDS = {
    "ms": ("ms", "msec", "msecs", "milli", "millis", "millisecond", "milliseconds"),
    "s": ("s", "sec", "secs", "second", "seconds"),
    "m": ("m", "min", "mins", "minute", "minutes"),
    "h": ("h", "hr", "hrs", "hour", "hours"),
}
_UNIT_OF_WORD = {word: unit for unit, words in _UNIT_WORDS.items() for word in words}
# units replwatch does not take, in seconds: written in the largest unit that fits
_SECONDS_IN = {
    **dict.fromkeys(("d", "day", "days"), 86400.0),
    **dict.fromkeys(("w", "week", "weeks"), 604800.0),
    **dict.fromkeys(("us", "µs", "usec", "microsecond", "microseconds"), 1e-6),
}
# the longest duration any setting takes: a year (a larger number is a slip, and would
# overflow the timers and Redis expiries it becomes)
MAX_DURATION = 365 * 24 * 3600.0
_DURATION_FORMS = "use 250ms, 1s, 2m, 1h or seconds"


def parse_duration(value: Any) -> float:
    """'250ms', '1s', '2m', '1h' or a number of seconds → seconds (float)."""
    if isinstance(value, bool):
        raise PydanticCustomError("duration", "duration must be like 250ms, 1s, 2m or seconds")
    if isinstance(value, int | float):
        return _in_range(float(value))
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            return _in_range(float(match.group(1)) * _DURATION_UNITS[match.group(2)])
        _explain_duration(value)
    if value is None:
        raise PydanticCustomError("duration", "duration is empty: " + _DURATION_FORMS)
    if not isinstance(value, str):
        raise PydanticCustomError(
            "duration", "duration must be like 250ms, 1s, 2m, 1h or a number of seconds"
        )
    raise PydanticCustomError(
        "duration", "invalid duration '{value}': " + _DURATION_FORMS, {"value": value}
    )


def _in_range(seconds: float) -> float:
    if not math.isfinite(seconds):
        raise PydanticCustomError("duration", "duration must be a finite number of seconds")
    if seconds < 0:
        raise PydanticCustomError("duration", "duration must not be negative")
    if seconds > MAX_DURATION:
        raise PydanticCustomError("duration", "duration must be at most 8760h (a year)")
    return seconds


def _explain_duration(text: str) -> None:
    """Raise the reason a duration string that does not parse names, when it is a slip with
    a clear fix: a sign, an empty value, a unit spelled out (1sec), a comma (1,5s), a day or
    a microsecond, two units (1h30m). Returns when it is none of these."""
    if not text.strip():
        raise PydanticCustomError("duration", "duration is empty: " + _DURATION_FORMS)
    if text.strip().startswith("-") and _DURATION_RE.match(text.strip()[1:]):
        raise PydanticCustomError("duration", "duration must not be negative")
    fix = None
    if _COMPOUND_RE.match(text):
        fix = _shortest(sum(_seconds_of(part) for part in re.findall(r"\d+(?:\.\d+)?\D+", text)))
    elif match := _NUMBER_AND_WORD_RE.match(text):
        number, word = match.group(1).replace(",", "."), match.group(2).lower()
        if word in _UNIT_OF_WORD:
            fix = f"{number}{_UNIT_OF_WORD[word]}"
        elif word in _SECONDS_IN:
            fix = _shortest(float(number) * _SECONDS_IN[word])
    elif _DURATION_RE.match(text.replace(",", ".")):
        fix = text.strip().replace(",", ".")
    if fix is not None:
        raise PydanticCustomError(
            "duration",
            "invalid duration '{value}': did you mean {fix}? (units: ms, s, m, h)",
            {"value": text, "fix": fix},
        )


def _seconds_of(part: str) -> float:
    match = _DURATION_RE.match(part)
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)] if match else 0.0


def _shortest(seconds: float) -> str:
    """`seconds` in the largest unit that writes it as a whole number (5400 → 90m)."""
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    return f"{seconds * 1000:g}ms"


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
        if value.strip().startswith("-") and _SIZE_RE.match(value.strip()[1:]):
            raise PydanticCustomError("size", "size must not be negative")
    if value is None or (isinstance(value, str) and not value.strip()):
        raise PydanticCustomError("size", "size is empty: use 10MB, 512kb or a number of bytes")
    if not isinstance(value, str):
        raise PydanticCustomError("size", "size must be like 10MB, 512kb or a number of bytes")
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
