"""Decimal text from the wire (INFO, CLUSTER NODES, Sentinel replies, HTTP headers)."""

from __future__ import annotations


def is_decimal(text: str) -> bool:
    """ASCII digits only, at least one: str.isdigit() alone also takes '²', which int()
    refuses."""
    return text.isascii() and text.isdigit()
