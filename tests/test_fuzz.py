"""Generated rows, recipes, YAML and store rows thrown at the data loaders, the recipe validator, the YAML
reader and the run store: every outcome is either accepted or a WorkbenchError that names the file, row,
field or column, never another exception, and no row is lost. Nesting depth, field sizes and encodings
(BOMs, invalid bytes, the wrong codec) are generated too."""

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

from workbench.core import yamlfile
from workbench.core.errors import WorkbenchError
from workbench.core.recipe import Recipe, RecipeError, apply_overrides, load_recipe, parse_recipe
from workbench.core.records import Artifact, BenchResult, Server, Variant
from workbench.core.store import Store, StoreError
from workbench.data.dataset import load_data
from workbench.data.files import Limits
from workbench.data.formats import NORMALISERS

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
FUZZ_SLOW = settings(FUZZ, max_examples=int(os.environ.get("WORKBENCH_FUZZ_EXAMPLES", 40)))  # files or a store each


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


# nesting depth, field sizes, encodings, store rows


def nested_text(depth: int, opener: str, closer: str, inner: str) -> str:
    return opener * depth + inner + closer * depth


@FUZZ
@given(
    depth=st.integers(min_value=0, max_value=3000),
    kind=st.sampled_from(["json", "jsonl", "wrapped"]),
    opener=st.sampled_from(["[", '{"a": ']),
)
def test_any_nesting_depth_loads_or_is_refused_by_name(depth: int, kind: str, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    row = '{"question": ' + nested_text(depth, opener, closer, '"q"') + ', "answer": "a"}'
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"rows.{'json' if kind == 'wrapped' else kind}"
        good = '{"question": "q", "answer": "a"}'
        text = {"json": f"[{good}, {row}]", "jsonl": f"{good}\n{row}\n", "wrapped": f'{{"rows": [{good}, {row}]}}'}
        path.write_text(text[kind])
        try:
            loaded = load_data(path)
        except WorkbenchError as exc:
            assert str(path) in str(exc) and "64 levels" in str(exc) and depth + 1 > 64
            return
    deep = depth + 1 > 64  # the row object, then the `depth` levels of its question
    assert [info.number for info in loaded.bad] == ([2] if deep else [2] if depth else [])
    assert not deep or "nested more than 64 levels deep" in loaded.bad[0].reason


@FUZZ
@given(
    size=st.one_of(st.integers(min_value=0, max_value=300_000), st.sampled_from([131_071, 131_072, 131_073])),
    kind=st.sampled_from(["csv", "jsonl", "json"]),
    max_length=st.sampled_from([None, 1024, 8192, 32_768]),
)
def test_any_field_size_loads_or_is_refused_naming_the_row_and_limit(
    size: int, kind: str, max_length: int | None
) -> None:
    limits = Limits(max_length=max_length)
    rows = [{"question": "q", "answer": "a"}, {"question": "x" * size, "answer": "a"}]
    with tempfile.TemporaryDirectory() as folder:
        path = write_rows(Path(folder), kind, rows)
        try:
            loaded = load_data(path, limits=limits)
        except WorkbenchError as exc:
            assert kind == "csv" and size > limits.max_cell and f"{path}: row 2 (line 3)" in str(exc)
            assert f"longer than {limits.max_cell} characters" in str(exc)
            return
    assert kind != "csv" or size <= limits.max_cell
    assert loaded.total == 2
    if size:
        assert len(loaded.rows[1][1]["messages"][0]["content"]) == size
    else:
        assert [info.number for info in loaded.bad] == [2]  # an empty question


ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "latin-1", "cp1252", "gbk", "utf-32"]


@FUZZ_SLOW
@given(
    rows=st.lists(
        st.fixed_dictionaries({"question": st.text(max_size=20), "answer": st.text(max_size=20)}),
        min_size=1,
        max_size=5,
    ),  # fmt: skip
    written=st.sampled_from(ENCODINGS),
    read=st.sampled_from(ENCODINGS),
    bom=st.booleans(),
    garbage=st.binary(max_size=4),
    kind=st.sampled_from(["json", "jsonl", "csv"]),
    cut=st.integers(min_value=0, max_value=400),
)
def test_any_encoding_loads_or_is_refused_by_name(
    rows: list[dict[str, str]], written: str, read: str, bom: bool, garbage: bytes, kind: str, cut: int
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = write_rows(Path(folder), kind, rows)
        text = path.read_text(encoding="utf-8")
        data = ("\ufeff" if bom else "").join(["", text]).encode(written, errors="replace")
        path.write_bytes(data[:cut] + garbage + data[cut:])  # bytes that may not decode, anywhere
        try:
            loaded = load_data(path, encoding=read)
        except WorkbenchError as exc:
            assert str(path) in str(exc)
            return
    assert loaded.total >= 1


@FUZZ_SLOW
@given(
    depth=st.integers(min_value=0, max_value=1200),
    style=st.sampled_from(["flow", "block", "mapping"]),
    keep_tags=st.booleans(),
)
def test_any_yaml_nesting_loads_or_is_refused_by_name(depth: int, style: str, keep_tags: bool) -> None:
    if style == "flow":
        text = "a: " + nested_text(depth, "[", "]", "1")
    elif style == "block":
        text = "a:\n" + "".join(" " * i + "-\n" for i in range(1, depth + 1))
    else:
        text = nested_text(depth, "{a: ", "}", "1")
    try:
        yamlfile.load(text, "fuzz.yaml", keep_tags=keep_tags)
    except yamlfile.YamlError as exc:
        assert str(exc).startswith("fuzz.yaml: ") and len(str(exc)) < 300


json_texts = st.one_of(
    st.text(max_size=40),
    st.builds(json.dumps, values),
    st.builds(
        json.dumps,
        st.dictionaries(
            st.sampled_from(
                [
                    "name",
                    "format",
                    "path",
                    "bits",
                    "variant",
                    "device",
                    "backend",
                    "meta",
                    "tg_tps",
                    "id",
                    "run_id",
                    "port",
                    "pid",
                    "step",
                ]
            ),
            values,
            max_size=6,
        ),
    ),  # fmt: skip
    st.integers(min_value=0, max_value=2000).map(lambda depth: "[" * depth + "]" * depth),
    st.binary(max_size=20),
)
STORE_COLUMNS = [("runs", "recipe"), ("events", "data"), ("artifacts", "meta"), ("variants", "data"),
                 ("bench", "data"), ("servers", "data")]  # fmt: skip


@FUZZ_SLOW
@given(column=st.sampled_from(STORE_COLUMNS), value=json_texts)
def test_any_store_json_column_reads_as_a_value_or_a_store_error(column: tuple[str, str], value: Any) -> None:
    table, name = column
    with tempfile.TemporaryDirectory() as folder:
        store = Store(Path(folder) / "workbench.db")
        try:
            store.upsert_run("r1", "r1", {"name": "r1"}, None, os.getpid())
            store.add_event("r1", "train", "train_log", {"step": 1})
            store.replace_artifacts("r1", "train", [Artifact("adapter", "adapter", "train/adapter", 1)])
            store.replace_variants("r1", ["hf"], [Variant("m", "hf", "merge/model", 16.0)])
            store.replace_bench("r1", [BenchResult("m", "cpu", "torch")])
            store.add_server(Server("r1-1", "r1", "m", "llama.cpp", "127.0.0.1", 8080, "m", 1, None, 0.0, "log"))
            store.db.execute(f"UPDATE {table} SET {name}=?", (value,))  # noqa: S608 - test tables
            readers = [lambda: store.recipe(store.run("r1")), lambda: store.events("r1"),
                       lambda: store.last_event("r1", "train", "train_log"), lambda: store.artifacts("r1"),
                       lambda: store.variants("r1"), lambda: store.bench("r1"), store.servers]  # fmt: skip
            for read in readers:
                try:
                    read()
                except StoreError as exc:
                    assert f"table {table}, " in str(exc) and f"column {name}: " in str(exc)
        finally:
            store.close()
