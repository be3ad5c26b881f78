"""The recipe reference, generated from the schema (`Recipe` and its sections): every field with its type,
default and description, so the documentation cannot drift from what the validator accepts. The docs
site builds its "Recipe reference" page from `markdown()` (docs/hooks.py); `undocumented()` lists the
fields that still lack a description."""

from __future__ import annotations

import inspect
import re
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from workbench.core.formats import RECIPE_FORMATS
from workbench.core.recipe import Format, Recipe

TOP = ""  # the path of the recipe's top level


@dataclass(frozen=True)
class FieldDoc:
    """One field of one section, as the reference shows it."""

    path: str  # where it sits in a recipe: "train.lora.r"
    name: str
    type: str
    default: str
    description: str


@dataclass(frozen=True)
class SectionDoc:
    """One section of a recipe (a pydantic model), at the first path it appears under."""

    path: str  # "train.lora"; TOP for the recipe itself
    model: type[BaseModel]
    summary: str
    fields: tuple[FieldDoc, ...]
    same_as: str | None = None  # an earlier path of the same section, whose table this one shares

    @property
    def anchor(self) -> str:
        return anchor(self.path)


def anchor(path: str) -> str:
    """The page anchor of a section's heading (dots are not safe in attribute-list ids)."""
    return path.replace(".", "-").replace("_", "-") if path else "top-level"


def sections(model: type[BaseModel] = Recipe) -> list[SectionDoc]:
    """Every section reachable from `model`, depth first in field order. A section class met again at
    another path (the LoRA settings of train, tune and reward_model) is listed there with `same_as`."""
    found: list[SectionDoc] = []
    first: dict[type[BaseModel], str] = {}

    def visit(section: type[BaseModel], path: str) -> None:
        if section in first:
            found.append(SectionDoc(path, section, _summary(section), (), same_as=first[section]))
            return
        first[section] = path
        fields = tuple(_field(path, name, info) for name, info in _public(section))
        found.append(SectionDoc(path, section, _summary(section), fields))
        for name, info in _public(section):
            child = _section_of(info.annotation)
            if child is not None:
                visit(child, f"{path}.{name}" if path else name)

    visit(model, TOP)
    return found


def fields(model: type[BaseModel] = Recipe) -> list[FieldDoc]:
    """Every documented field, each section's once."""
    return [field for section in sections(model) for field in section.fields]


def undocumented(model: type[BaseModel] = Recipe) -> list[str]:
    """Paths of the fields that have no description (the reference would show them blank)."""
    return [field.path for field in fields(model) if not field.description]


def markdown(model: type[BaseModel] = Recipe) -> str:
    """The reference as Markdown: one heading and one table per section."""
    lines: list[str] = []
    for section in sections(model):
        title = f"`{section.path}`" if section.path else "Top level"
        lines += [f"## {title} {{ #{section.anchor} }}", ""]
        if section.summary:
            lines += [_cell(section.summary), ""]
        if section.same_as is not None:
            shared = f"`{section.same_as}`"
            lines += [f"The same fields, defaults and rules as [{shared}](#{anchor(section.same_as)}).", ""]
            continue
        lines += ["| field | type | default | description |", "|---|---|---|---|"]
        for field in section.fields:
            lines.append(f"| `{field.name}` | {field.type} | {field.default} | {_cell(field.description)} |")
        lines.append("")
    return "\n".join(lines)


def _public(section: type[BaseModel]) -> list[tuple[str, FieldInfo]]:
    """The fields a recipe may set (`exclude=True` marks internal ones, such as the recipe's own path)."""
    return [(name, info) for name, info in section.model_fields.items() if not info.exclude]


def _field(path: str, name: str, info: FieldInfo) -> FieldDoc:
    where = f"{path}.{name}" if path else name
    description = (info.description or "").strip()
    child = _section_of(info.annotation)
    if child is not None:
        kind = f"section, see [`{where}`](#{anchor(where)})"
        kind = f"{kind} (optional)" if _allows_none(info.annotation) else kind
        description = description or _first_sentence(_summary(child))  # a section says what it is in its docstring
    else:
        kind = " ".join(part for part in (_type(info.annotation), _bounds(info)) if part)
    return FieldDoc(where, name, kind, _default(info), description)


def _summary(section: type[BaseModel]) -> str:
    doc = section.__dict__.get("__doc__")  # its own docstring, never a base class's
    return " ".join(inspect.cleandoc(doc).split()) if doc else ""


def _first_sentence(text: str) -> str:
    head, dot, _ = text.partition(". ")
    return head + dot.strip() if dot else text


def _section_of(annotation: Any) -> type[BaseModel] | None:
    """The section class of a field that holds a section (or an optional one), else None."""
    for candidate in _members(annotation):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _members(annotation: Any) -> tuple[Any, ...]:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _members(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return tuple(member for arg in get_args(annotation) for member in _members(arg))
    return (annotation,)


def _allows_none(annotation: Any) -> bool:
    return type(None) in _members(annotation)


NAMES: dict[Any, str] = {int: "integer", float: "number", str: "text", bool: "true or false", Path: "path"}


def _type(annotation: Any) -> str:
    """A type as a recipe writer reads it: `one of lora, qlora, full`, `list of text`, `integer or null`."""
    origin = get_origin(annotation)
    if annotation is Format:  # a string checked against the format registry
        return "one of " + ", ".join(f"`{name}`" for name in RECIPE_FORMATS) + " (or a plugin's format)"
    if origin is Annotated:
        return _type(get_args(annotation)[0])
    if origin is Literal:
        return "one of " + ", ".join(f"`{_value(value)}`" for value in get_args(annotation))
    if origin is list or origin is tuple:
        args = [arg for arg in get_args(annotation) if arg is not Ellipsis]
        inner = _type(args[0]) if args else "values"
        return f"list, each {inner}" if inner.startswith("one of ") else f"list of {inner}"
    if origin is dict:
        return "mapping"
    if origin is Union or origin is types.UnionType:
        parts = [_type(arg) for arg in get_args(annotation) if arg is not type(None)]
        literals = [part for part in parts if part.startswith("one of ")]
        others = [part for part in parts if not part.startswith("one of ")]
        if literals and others:  # `number or auto` reads better than `number or one of auto`
            parts = others + [part.removeprefix("one of ") for part in literals]
        if _allows_none(annotation):
            parts.append("`null`")
        return " or ".join(parts)
    if annotation in NAMES:
        return NAMES[annotation]
    return f"`{getattr(annotation, '__name__', annotation)}`"


BOUNDS: tuple[tuple[type, str, str], ...] = (
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Ge, "ge", "≥"),
    (annotated_types.Lt, "lt", "<"),
    (annotated_types.Le, "le", "≤"),
)


def _bounds(info: FieldInfo) -> str:
    """A number's limits (`> 0`, `≥ 0, < 1`), from the field's constraints."""
    found = [
        f"{sign} {_value(getattr(item, attribute))}"
        for item in info.metadata
        for kind, attribute, sign in BOUNDS
        if isinstance(item, kind)
    ]
    return f"({', '.join(found)})" if found else ""


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if isinstance(value, BaseModel):
        return "(its defaults)"
    return f"`{_value(value)}`"


def _value(value: Any) -> str:
    """A value as it is written in a recipe (YAML): null, true, [f16, q8_0], 0.0002."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, float):
        return repr(value)
    return str(value)


CODE = re.compile(r"(`[^`]*`)")


def _cell(text: str) -> str:
    """Text safe in a Markdown table cell: no line breaks, no column bars, and `<run>` shown, not taken
    for an HTML tag (code spans are left as written)."""
    parts = CODE.split(" ".join(text.split()))
    escaped = [part if part.startswith("`") else part.replace("<", "&lt;") for part in parts]
    return "".join(escaped).replace("|", "\\|")
