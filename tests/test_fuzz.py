"""Generated rows and recipes thrown at the data loaders and the recipe validator: every outcome is either
accepted or a WorkbenchError that names the row or field, never another exception, and no row is lost."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench.data.dataset import load_data
from workbench.data.formats import NORMALISERS
from workbench.errors import WorkbenchError
from workbench.recipe import Recipe, RecipeError, apply_overrides, load_recipe, parse_recipe

FIELDS = ["messages", "conversations", "role", "content", "from", "value", "instruction", "input", "output",
          "question", "answer", "prompt", "completion", "chosen", "rejected", "text", "system"]  # fmt: skip
ROLES = ["user", "assistant", "system", "human", "gpt", "tool", ""]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.sampled_from(ROLES),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=6)), inner, max_size=4),
    ),
    max_leaves=12,
)
rows = st.one_of(st.dictionaries(st.sampled_from(FIELDS), values, max_size=5), values)
FUZZ = settings(
    max_examples=int(os.environ.get("WORKBENCH_FUZZ_EXAMPLES", 150)),
    deadline=None,
    derandomize="WORKBENCH_FUZZ_EXAMPLES" not in os.environ,  # the same examples in CI; random when asked
    suppress_health_check=[HealthCheck.too_slow],
)


def write_rows(folder: Path, kind: str, data: list[Any]) -> Path:
    path = folder / f"rows.{kind}"
    if kind == "json":
        path.write_text(json.dumps(data))
    elif kind == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in data))
    else:
        handle = io.StringIO()
        names = sorted({key for row in data if isinstance(row, dict) for key in row}) or ["text"]
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        writer.writerows([{key: json.dumps(v) if isinstance(v, list | dict) else v for key, v in row.items()}
                          if isinstance(row, dict) else {} for row in data])  # fmt: skip
        path.write_text(handle.getvalue())
    return path


@FUZZ
@given(
    data=st.lists(rows, min_size=1, max_size=8),
    kind=st.sampled_from(["json", "jsonl", "csv"]),
    fmt=st.sampled_from(["auto", *NORMALISERS]),
)
def test_any_rows_load_or_are_refused_by_name_and_none_is_lost(data: list[Any], kind: str, fmt: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = write_rows(Path(folder), kind, data)
        try:
            loaded = load_data(path, fmt)
        except WorkbenchError as exc:
            assert str(path) in str(exc)  # says which file
            return
    assert loaded.total == len(data)  # every row is either used or reported, none dropped
    assert all(info.label.split()[0] in ("row", "line") and info.reason for info in loaded.bad)
    numbers = sorted([n for n, _ in loaded.rows] + [info.number for info in loaded.bad])
    assert numbers == list(range(1, len(data) + 1))


@FUZZ
@given(text=st.binary(max_size=200), kind=st.sampled_from(["json", "jsonl", "csv"]))
def test_any_bytes_load_or_are_refused_by_name(text: bytes, kind: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"rows.{kind}"
        path.write_bytes(text)
        try:
            load_data(path)
        except WorkbenchError as exc:
            assert str(path) in str(exc)


SECTIONS = {name: list(field.annotation.model_fields) for name, field in Recipe.model_fields.items()
            if isinstance(field.annotation, type) and hasattr(field.annotation, "model_fields")}  # fmt: skip
section_keys = st.one_of(st.sampled_from(sorted({k for keys in SECTIONS.values() for k in keys})), st.text(max_size=8))
recipes = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.text(max_size=12), values),
        "base_model": st.one_of(st.text(max_size=12), values),
        **{section: st.one_of(st.dictionaries(section_keys, values, max_size=5), values) for section in SECTIONS},
    },
)


def named_problems(exc: RecipeError) -> bool:
    return all(":" in problem for problem in exc.problems) and bool(exc.problems)


@FUZZ
@given(data=st.one_of(recipes, values))
def test_any_recipe_validates_or_names_the_field(data: Any) -> None:
    try:
        parse_recipe(data, "fuzz.yaml")
    except RecipeError as exc:
        assert named_problems(exc) and len(exc.message()) < 20_000
    except WorkbenchError:
        pass


@FUZZ
@given(text=st.text(max_size=300))
def test_any_recipe_text_validates_or_names_the_problem(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.yaml"
        path.write_text(text)
        try:
            load_recipe(path)
        except RecipeError as exc:
            assert exc.source == str(path) and named_problems(exc) or exc.problems == ["file is empty"]


@FUZZ
@given(overrides=st.lists(st.text(max_size=30), max_size=4))
def test_any_overrides_apply_or_name_the_override(overrides: list[str]) -> None:
    base = yaml.safe_load("name: x\nbase_model: m\ndata: {path: d.json}\n")
    try:
        data = apply_overrides(base, overrides, "r.yaml")
        parse_recipe(data, "r.yaml")
    except RecipeError as exc:
        assert named_problems(exc)
