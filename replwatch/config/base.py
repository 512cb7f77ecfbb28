"""What every config section shares: the strict, frozen pydantic base (an unknown key is an
error, a loaded config never changes, an input never shows in an error) and the check that
names in a list are unique."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticCustomError


class StrictModel(BaseModel):
    """Base of every config section: unknown keys refused, frozen, inputs kept out of
    errors (a mistyped secret must not be echoed)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


def require_unique(names: list[str], field: str, what: str) -> None:
    """Refuse a name used twice: '<field>: <what> name '<name>' is used twice'."""
    for name in names:
        if names.count(name) > 1:
            raise PydanticCustomError(
                "dup", "{f}: {w} name '{n}' is used twice", {"f": field, "w": what, "n": name}
            )
