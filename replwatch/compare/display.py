"""How keys, scores and TTLs are written for people in compare's details and reports.

Kept apart so the rules, the report's JSON and the text rendering write them alike.
"""

from __future__ import annotations

from typing import Any


def display_key(key: bytes) -> str:
    """A key (or member, field) for people: its text when it is printable UTF-8, else a Python
    bytes literal (b'\\xff\\x00k')."""
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        return repr(key)
    if text.isprintable() and not text.startswith(("b'", 'b"')):
        return text
    return repr(key)


def reply_text(value: Any) -> str:
    """A raw reply (bytes, int …) as text; undecodable bytes become U+FFFD."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def format_ttl(ms: int) -> str:
    """A PTTL in milliseconds as seconds with one decimal (12345 → 12.3s)."""
    return f"{ms / 1000:.1f}s"


def format_score(score: float) -> str:
    """A zset score: whole numbers without a decimal point, others as Python prints them."""
    return str(int(score)) if score.is_integer() and abs(score) < 1e15 else repr(score)


def count_phrase(count: int, singular: str, plural: str) -> str:
    """1 member, 2 members."""
    return f"{count} {singular if count == 1 else plural}"
