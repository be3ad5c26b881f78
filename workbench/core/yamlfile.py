"""YAML the workbench reads from users: safe loading only, bounded in size and in what aliases expand to
(a "billion laughs" file is a few lines that expand to billions of values), with tags kept as data where
a format needs to see them (lm-eval task files)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from workbench.core.errors import InputError

MAX_BYTES = 1 << 20
MAX_VALUES = 100_000  # after aliases are expanded; a large recipe has a few hundred
MAX_DEPTH = 64


class YamlError(InputError, ValueError):
    pass


class TagError(YamlError):
    """A tag (`!function`, `!!python/...`) where only plain data may be."""


@dataclass(frozen=True)
class Tagged:
    """A value written with a tag such as `!function utils.process`, kept as data (never constructed)."""

    tag: str
    value: Any


class _TooDeep(Exception):
    def __init__(self, mark: yaml.Mark | None):
        self.mark = mark


class BoundedLoader(yaml.SafeLoader):
    """The safe loader, refusing nesting past MAX_DEPTH as it composes: PyYAML composes and constructs by
    recursion, so 5000 levels would end in a RecursionError before the value could be checked."""

    depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH + 1:  # the document's root is level 0
                raise _TooDeep(self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class TagKeepingLoader(BoundedLoader):
    pass


def _tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Tagged:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return Tagged("!" + suffix, value)


TagKeepingLoader.add_multi_constructor("!", _tagged)


class TagKeepingDumper(yaml.SafeDumper):
    pass


def _represent_tagged(dumper: yaml.SafeDumper, data: Tagged) -> yaml.Node:
    if isinstance(data.value, dict):
        return dumper.represent_mapping(data.tag, data.value)
    if isinstance(data.value, list):
        return dumper.represent_sequence(data.tag, data.value)
    return dumper.represent_scalar(data.tag, str(data.value))


TagKeepingDumper.add_representer(Tagged, _represent_tagged)


def load(text: str, source: str, *, keep_tags: bool = False, max_bytes: int = MAX_BYTES) -> Any:
    """Parse `text` (from `source`, named in errors). Unknown tags are refused unless `keep_tags`, when
    they become `Tagged` values. Refused too: more than `max_bytes`, or aliases that expand beyond
    MAX_VALUES values or MAX_DEPTH levels."""
    if len(text.encode("utf-8", errors="replace")) > max_bytes:
        raise YamlError(f"{source}: larger than {max_bytes // 1024} KiB; is this the right file?")
    try:
        data = yaml.load(text, Loader=TagKeepingLoader if keep_tags else BoundedLoader)  # noqa: S506 - safe loaders
    except _TooDeep as exc:
        where = f"line {exc.mark.line + 1}: " if exc.mark else ""
        raise YamlError(f"{source}: {where}nested more than {MAX_DEPTH} levels deep") from None
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        tag = getattr(exc, "problem", "") or ""
        raise TagError(f"{source}: {where}{tag.replace('could not determine a constructor for ', '')}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise YamlError(f"{source}: {where}not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    _check_size(data, source)
    return data


def _check_size(data: Any, source: str) -> None:
    """Walk the value as a reader would see it (aliases expanded), giving up past the limits."""
    budget = MAX_VALUES
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        budget -= 1
        if budget < 0:
            raise YamlError(f"{source}: expands to more than {MAX_VALUES} values (aliases of aliases?)")
        if depth > MAX_DEPTH:
            raise YamlError(f"{source}: nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for pair in value.items() for item in pair)
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, Tagged):
            stack.append((value.value, depth + 1))


def dump(data: Any, source: str) -> str:
    """YAML text for `data`, tags kept."""
    try:
        return yaml.dump(data, Dumper=TagKeepingDumper, sort_keys=False, allow_unicode=True)
    except yaml.YAMLError as exc:  # e.g. a tuple from !!pairs holding a tagged value
        raise YamlError(f"{source}: cannot be written back as plain YAML ({exc})") from None
