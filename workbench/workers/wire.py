"""What crosses a worker's boundary. A task's job and result are dataclasses, declared by its function's
annotations (`def evaluate_job(job: EvalJob, channel: Channel) -> EvalResult`); between the processes they
travel as JSON. `encode` and `decode` are the only two ways across, so a field a side does not know, or a
value of the wrong type, is an error naming the task and the field, not a KeyError deep in a model load."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from workbench.core.common import type_adapter

T = TypeVar("T")


class WireError(ValueError):
    """A job or a result that does not match its declared type."""


def encode(value: object) -> Any:
    """A job or a result as JSON-able data (a dataclass's fields, paths as strings, tuples as lists). A dict
    goes as it is: raw data, which the other side checks on arrival all the same."""
    if isinstance(value, dict):
        return value
    return type_adapter(type(value)).dump_python(value, mode="json")


def decode(kind: type[T], data: Any, what: str) -> T:
    """`data` (from the wire) as a `kind`, or WireError naming `what` ("eval.model job") and the field."""
    from pydantic import ValidationError

    if dataclasses.is_dataclass(kind) and isinstance(data, dict):
        unknown = sorted(set(data) - {field.name for field in dataclasses.fields(kind)})
        if unknown:  # pydantic would drop them silently
            raise WireError(f"{what} is not a {kind.__name__}: unknown field(s) {', '.join(unknown)}")
    try:
        return typing.cast(T, type_adapter(kind).validate_python(data))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(top)'}: {error['msg']}" for error in exc.errors()
        )
        raise WireError(f"{what} is not a {kind.__name__}: {problems}") from None


def signature(function: Callable[..., Any]) -> tuple[Any, Any]:
    """(job type, result type) of a task function, from its annotations."""
    hints = typing.get_type_hints(function)
    parameters = [name for name in hints if name != "return"]
    if not parameters or "return" not in hints:
        raise WireError(f"task function {function.__qualname__} does not declare its job and result types")
    return hints[parameters[0]], hints["return"]
