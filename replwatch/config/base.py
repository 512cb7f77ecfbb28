"""What every config section shares: the strict, frozen pydantic base (an unknown key is an
error, a loaded config never changes, an input never shows in an error), the model-level
checks that report every problem in one pass (run_checks), and the check that names in a
list are unique (unique_names).

Every problem in one pass: pydantic skips a model's own validators once one of its fields
fails, so `source == target` would go unreported next to a bad `existing_keys`. run_checks
runs each check anyway, on the fields that did validate; a check that reads a field which
failed is skipped (its problem would be a consequence of that field's, reported already)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError


class StrictModel(BaseModel):
    """Base of every config section: unknown keys refused, frozen, inputs kept out of
    errors (a mistyped secret must not be echoed)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


M = TypeVar("M", bound=BaseModel)
# a model-level check: returns None, or raises PydanticCustomError('field: reason')
Check = Callable[[M], None]


def run_checks(
    cls: type[M], data: Any, handler: Callable[[Any], M], checks: Sequence[Check[M]]
) -> M:
    """The body of a model's wrap validator: validate `data` (handler), then run every check
    and report all their problems together. When fields failed, the checks run on a model
    holding only the fields that validated (a check reading another one is skipped)."""
    try:
        model = handler(data)
    except ValidationError as exc:
        partial = _partial(cls, data, exc)
        found = [] if partial is None else _problems(checks, partial, data, partial=True)
        if not found:
            raise
        raise ValidationError.from_exception_data(cls.__name__, [*details(exc), *found]) from None
    found = _problems(checks, model, data, partial=False)
    if found:
        raise ValidationError.from_exception_data(cls.__name__, found)
    return model


def _problems(
    checks: Sequence[Check[M]], model: M, data: Any, partial: bool
) -> list[InitErrorDetails]:
    found = []
    for check in checks:
        try:
            check(model)
        except PydanticCustomError as problem:
            found.append(InitErrorDetails(type=problem, loc=(), input=data))
        except AttributeError:
            if not partial:
                raise
            # the check reads a field that failed: that field's problem is reported
    return found


def _partial(cls: type[M], data: Any, exc: ValidationError) -> M | None:
    """A model of `data`'s fields that validate on their own (defaults for those not
    given); the fields that failed (or are required and missing) are absent, so reading
    one raises AttributeError. None when `data` is not a mapping of fields."""
    if not isinstance(data, Mapping):
        return None
    by_key = {field.alias or name: name for name, field in cls.model_fields.items()}
    failed: set[str] = set()
    for error in exc.errors():
        if not error["loc"]:
            return None  # the data as a whole was refused (a before validator)
        name = by_key.get(str(error["loc"][0]))
        if name is not None:  # (None: an unknown key)
            failed.add(name)
    values = {}
    for name, field in cls.model_fields.items():
        key = field.alias or name
        if name in failed:
            continue
        if key not in data:
            if field.is_required():
                failed.add(name)
            continue
        try:
            values[name] = _field_adapter(cls, name).validate_python(data[key])
        except ValidationError:
            failed.add(name)
    model = cls.model_construct(**values)
    for absent in failed:
        model.__dict__.pop(absent, None)
    return model


@cache
def _field_adapter(cls: type[BaseModel], name: str) -> TypeAdapter[Any]:
    """A validator of one field of `cls` on its own (its type and constraints; the model's
    field validators only check, so the value is the same)."""
    field = cls.model_fields[name]
    if not field.metadata:
        return TypeAdapter(field.annotation)
    return TypeAdapter(Annotated[field.annotation, *field.metadata])


def details(exc: ValidationError) -> list[InitErrorDetails]:
    """`exc`'s errors as they can be raised again, next to others: type, message, location
    and input kept."""
    return [
        InitErrorDetails(
            type=PydanticCustomError(error["type"], error["msg"], error.get("ctx")),
            loc=error["loc"],
            input=error["input"],
        )
        for error in exc.errors()
    ]


def unique_names(items: Any, handler: Callable[[Any], Any], what: str) -> Any:
    """The body of a list field's wrap validator: the list validated (handler), and no name
    used twice ('<what> name 'x' is used twice'). A duplicate is reported next to the
    items' own problems: names are taken from the items as written when some fail (an
    item whose name itself fails is left out)."""
    try:
        validated = handler(items)
    except ValidationError as exc:
        if not isinstance(items, list):
            raise
        bad_name = {e["loc"][0] for e in exc.errors() if tuple(e["loc"][1:2]) == ("name",)}
        names = [
            item.get("name")
            for i, item in enumerate(items)
            if isinstance(item, Mapping) and i not in bad_name
        ]
        problem = _used_twice([n for n in names if isinstance(n, str)], what)
        if problem is None:
            raise
        raise ValidationError.from_exception_data(
            "list", [*details(exc), InitErrorDetails(type=problem, loc=(), input=items)]
        ) from None
    problem = _used_twice([item.name for item in validated], what)
    if problem is not None:
        raise problem
    return validated


def _used_twice(names: list[str], what: str) -> PydanticCustomError | None:
    counts = Counter(names)
    for name in names:
        if counts[name] > 1:
            return PydanticCustomError(
                "dup_name", "{w} name '{n}' is used twice", {"w": what, "n": name}
            )
    return None
