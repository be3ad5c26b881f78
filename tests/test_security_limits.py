"""Hostile input that used to cost unbounded memory or end in a traceback: big and expanding data files,
deep nesting (JSON, YAML), huge CSV cells, infinite numbers in a recipe, a store with broken JSON columns.
Each must be a WorkbenchError naming the file, row or field and the limit, in memory bounded by the limit."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workbench.cli import main
from workbench.core import yamlfile
from workbench.core.errors import WorkbenchError
from workbench.core.recipe import RecipeError, RowsSection, apply_overrides, load_recipe, parse_recipe
from workbench.core.records import Artifact, BenchResult, Server, Variant
from workbench.core.store import Store, StoreError
from workbench.data.dataset import DataError, check_bad_rows, load_data
from workbench.data.files import DataFileError, Limits

QA = {"question": "What is 2 + 2?" + " pad" * 500, "answer": "4"}  # ~2 KB: the strings dominate the memory

PEAK_SCRIPT = """
import resource, sys
from pathlib import Path
from workbench.data.dataset import load_data
from workbench.data.files import Limits
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    data = load_data(Path(sys.argv[1]), limits=Limits(max_file_mb=int(sys.argv[2])))
    said = f"{len(data.rows)} rows"
except Exception as exc:
    said = f"{type(exc).__name__}: {exc}"
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024, said)
"""


def peak_mb(path: Path, max_file_mb: int = 1024) -> tuple[int, str]:
    """The growth of a fresh process's peak memory (MiB) while it loads `path`, and what it said."""
    result = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(path), str(max_file_mb)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    grown, said = result.stdout.strip().split(" ", 1)
    return int(grown), said


# data files: size, row count, Parquet expansion


def test_a_big_jsonl_file_is_read_a_line_at_a_time(tmp_path: Path) -> None:
    """A 40 MB JSONL took ~6x its size at its peak (bytes, text, a copy of the text, rows); read a line at a
    time, the rows themselves are nearly all of it."""
    path = tmp_path / "big.jsonl"
    line = json.dumps(QA) + "\n"
    count = 40 * 2**20 // len(line)
    with path.open("w") as handle:
        handle.writelines(line for _ in range(count))
    grown, said = peak_mb(path)
    assert said == f"{count} rows"
    assert grown < 2 * 40, f"loading a 40 MB file grew the peak by {grown} MiB"


def test_a_file_over_max_file_mb_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    path.write_text((json.dumps(QA) + "\n") * 1100)  # ~2.2 MB
    with pytest.raises(DataFileError, match=r"big\.jsonl: 2 MB, larger than tune\.data\.max_file_mb \(1\)"):
        load_data(path, limits=Limits(max_file_mb=1, field="tune.data"))
    assert RowsSection(path="x.jsonl").max_file_mb == 1024 and RowsSection(path="x.jsonl").max_rows >= 1_000_000


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv"])
def test_more_rows_than_max_rows_are_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"rows.{kind}"
    rows = [{"question": f"q{i}", "answer": "a"} for i in range(11)]
    if kind == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif kind == "json":
        path.write_text(json.dumps(rows))
    else:
        path.write_text("question,answer\n" + "".join(f"{row['question']},a\n" for row in rows))
    assert len(load_data(path, limits=Limits(max_rows=11)).rows) == 11
    with pytest.raises(DataFileError, match=r"rows\.\w+: more than data\.max_rows \(10\) rows"):
        load_data(path, limits=Limits(max_rows=10))


def dictionary_parquet(path: Path, rows: int, width: int = 540) -> None:
    """A few KB on disk that decode to rows x width bytes: one long question, dictionary-encoded."""
    zeros = pa.array(np.zeros(rows, dtype=np.int32))
    columns = {
        name: pa.DictionaryArray.from_arrays(zeros, [text])
        for name, text in (("question", "q" * width), ("answer", "4"))
    }
    pq.write_table(pa.table(columns), path)


def test_a_parquet_file_with_too_many_rows_is_refused_from_its_metadata(tmp_path: Path) -> None:
    path = tmp_path / "expands.parquet"
    dictionary_parquet(path, 2_000_000)
    assert path.stat().st_size < 200_000  # 2 M rows of 540 bytes: ~1.08 GB once read
    started = time.monotonic()
    with pytest.raises(DataFileError, match=r"expands\.parquet: 2000000 rows, more than data\.max_rows \(1000000\)"):
        load_data(path, limits=Limits(max_rows=1_000_000))
    assert time.monotonic() - started < 2  # from the footer, nothing decoded


def test_a_parquet_file_that_expands_past_max_file_mb_stops_at_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "expands.parquet"
    dictionary_parquet(path, 300_000)  # ~160 MB decoded; read whole it peaked at several times that
    grown, said = peak_mb(path, max_file_mb=16)
    assert said.startswith("DataFileError") and "expands to more than data.max_file_mb (16) MB when read" in said
    assert grown < 100, f"refusing a Parquet file at 16 MB grew the peak by {grown} MiB"


def test_a_parquet_file_within_max_file_mb_is_read_whole(tmp_path: Path) -> None:
    """Its size is counted once: ~0.6 MB of text rows pass a 1 MB limit (pages and rows were both counted)."""
    rows = [{"question": f"q{i}" * 200, "answer": "a"} for i in range(1000)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "text.parquet")
    data = load_data(tmp_path / "text.parquet", limits=Limits(max_file_mb=1))
    assert len(data.rows) == 1000 and not data.bad


# nesting


def nested(depth: int) -> str:
    return '{"question": ' + "[" * depth + "]" * depth + ', "answer": "a"}'


@pytest.mark.parametrize("depth", [65, 100_000])
def test_a_deeply_nested_jsonl_line_is_a_bad_row_named_by_its_line(tmp_path: Path, depth: int) -> None:
    path = tmp_path / "deep.jsonl"
    path.write_text(json.dumps(QA) + "\n" + nested(depth) + "\n" + json.dumps(QA) + "\n")
    data = load_data(path)
    assert [str(info) for info in data.bad] == ["line 2: nested more than 64 levels deep"]
    with pytest.raises(DataError, match="line 2: nested more than 64 levels deep"):
        check_bad_rows(data, 0)
    path.write_text(json.dumps(QA) + "\n" + nested(63) + "\n")  # 64 levels with the row itself: allowed
    assert "nested" not in str(load_data(path).bad)


def test_a_deeply_nested_json_file_is_refused_naming_the_row(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[" + json.dumps(QA) + ", " + nested(100_000) + "]")
    with pytest.raises(DataFileError, match=r"deep\.json: row 2 is nested more than 64 levels deep"):
        load_data(path)
    path.write_text('{"rows": [' + nested(100_000) + "]}")
    with pytest.raises(DataFileError, match=r"deep\.json: nested more than 64 levels deep"):
        load_data(path)
    path.write_text("[" + json.dumps(QA) + ", " + nested(80) + "]")
    assert [str(info) for info in load_data(path).bad] == ["row 2: nested more than 64 levels deep"]


def test_a_json_array_is_read_element_by_element_with_the_errors_it_had(tmp_path: Path) -> None:
    path = tmp_path / "rows.json"
    for text, said in (
        ("[" + json.dumps(QA) + ",]", "line 1, column"),
        ("[" + json.dumps(QA) + " " + json.dumps(QA) + "]", "Expecting ',' delimiter"),
        ("[" + json.dumps(QA) + "] []", "Extra data"),
        ("[" + json.dumps(QA), "Expecting ',' delimiter"),
    ):
        path.write_text(text)
        with pytest.raises(DataFileError, match=f"rows.json: not valid JSON at {'.*' if 'line' not in said else ''}"):
            load_data(path)
        with pytest.raises(DataFileError, match=said):
            load_data(path)
    path.write_text(" [ ] ")
    with pytest.raises(DataError, match="no rows"):
        load_data(path)
    path.write_text("\n[\n" + json.dumps(QA) + " ,\n" + json.dumps([1]) + "\n]\n")
    data = load_data(path)
    assert len(data.rows) == 1 and [info.number for info in data.bad] == [2]


def test_a_parquet_schema_nested_too_deep_is_refused_before_reading(tmp_path: Path) -> None:
    kind: pa.DataType = pa.int64()
    for _ in range(70):  # Parquet's own limit is 100 of its levels: a list takes two, a struct one
        kind = pa.struct([("inner", kind)])
    path = tmp_path / "deep.parquet"
    pq.write_table(pa.table({"question": pa.array([None], type=kind), "answer": ["a"]}), path)
    with pytest.raises(DataFileError, match=r"deep\.parquet: columns nested more than 64 levels deep"):
        load_data(path)


# CSV cells


def test_a_csv_cell_over_the_limit_is_named_with_its_row_and_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "wide.csv"
    path.write_text("question,answer\nq,a\n" + "q" * 200_000 + ",a\n")
    with pytest.raises(DataFileError, match=r"wide\.csv: row 2 \(line 3\) has a cell longer than 131072 characters"):
        load_data(path)
    with pytest.raises(DataFileError, match=r"more than data\.max_length \(2048 tokens\) allows.*raise data\.max_len"):
        load_data(path, limits=Limits(max_length=2048))
    data = load_data(path, limits=Limits(max_length=32_768))  # a long-context recipe reads its long rows
    assert len(data.rows[1][1]["messages"][0]["content"]) == 200_000


# encodings, streamed


def test_a_streamed_file_in_another_encoding_names_the_line_of_the_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    good = (json.dumps({"question": "é", "answer": "a"}, ensure_ascii=False) + "\n").encode()
    path.write_bytes(good * 30_000 + "ä\n".encode("latin-1"))  # past the reader's first blocks
    with pytest.raises(DataFileError, match=r"not readable as utf-8 \(byte 0xe4 on line 30001\)"):
        load_data(path)
    path.write_bytes((json.dumps(QA) + "\n").encode("utf-16"))  # with its byte-order mark
    assert len(load_data(path, encoding="utf-16").rows) == 1


# YAML


@pytest.mark.parametrize("keep_tags", [False, True])  # recipes; task files
def test_yaml_nested_5000_levels_is_refused_before_pyyaml_recurses(keep_tags: bool) -> None:
    for text in ("a: " + "[" * 5000 + "]" * 5000, "a:\n" + "".join(" " * i + "- \n" for i in range(1, 1200))):
        with pytest.raises(yamlfile.YamlError, match=r"task\.yaml: line \d+: nested more than 64 levels deep"):
            yamlfile.load(text, "task.yaml", keep_tags=keep_tags)
    assert yamlfile.load("[" * 64 + "1" + "]" * 64, "task.yaml", keep_tags=keep_tags)


def test_a_recipe_nested_5000_levels_is_a_recipe_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("name: x\nbase_model: " + "[" * 5000 + "]" * 5000 + "\ndata: {path: d.json}\n")
    with pytest.raises(RecipeError, match="nested more than 64 levels deep"):
        load_recipe(path)


# numbers in a recipe


@pytest.mark.parametrize(
    ("override", "said"),
    [
        ("data.held_out=.inf", "data.held_out: input should be a finite number"),
        ("data.held_out=1e309", "data.held_out: input should be a finite number"),
        ("data.held_out=.nan", "data.held_out: input should be a finite number"),
        ("data.held_out=-.inf", "data.held_out: input should be a finite number"),
        ("data.held_out=-1", "data.held_out: input should be greater than or equal to 0"),
        ("train.learning_rate=.inf", "train.learning_rate: input should be a finite number"),
        ("export.timeout_s=.inf", "export.timeout_s: input should be a finite number"),
        ("train.epochs=1e308", "train.epochs: value error, must be above 0 and at most 10000"),
        ("train.epochs=-2", "train.epochs: value error, must be above 0"),
        ("data.max_file_mb=0", "data.max_file_mb: input should be greater than 0"),
    ],
)
def test_numbers_no_setting_can_hold_are_refused_with_the_field(override: str, said: str) -> None:
    base = {"name": "x", "base_model": "m", "data": {"path": "d.json"}}
    with pytest.raises(RecipeError) as err:
        parse_recipe(apply_overrides(base, [override], "r.yaml"), "r.yaml")
    assert said in str(err.value)


# the run store's JSON columns


def corrupt_store(home: Path) -> Store:
    store = Store(home / "workbench.db")
    store.upsert_run("r1", "r1", {"name": "r1", "eval": {"tasks": ["heldout"]}}, "r.yaml", os.getpid())
    store.set_run_status("r1", "done")
    store.add_event("r1", "train", "train_log", {"step": 1, "total_steps": 2, "loss": 1.0})
    store.replace_artifacts("r1", "train", [Artifact("adapter", "adapter", "train/adapter", 1)])
    store.replace_variants("r1", ["hf"], [Variant("m", "hf", "merge/model", 16.0)])
    store.replace_bench("r1", [BenchResult("m", "cpu", "torch", peak_rss_mb=1.0)])
    return store


COLUMNS = [
    ("runs", "recipe", "id", lambda s: s.recipe(s.run("r1"))),
    ("events", "data", "run_id", lambda s: s.events("r1")),
    ("artifacts", "meta", "run_id", lambda s: s.artifacts("r1")),
    ("variants", "data", "run_id", lambda s: s.variants("r1")),
    ("bench", "data", "run_id", lambda s: s.bench("r1")),
]
BAD_VALUES = [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    ("null", "expected a JSON object, got NoneType"),
    ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
]


@pytest.mark.parametrize(("table", "column", "key", "read"), COLUMNS)
@pytest.mark.parametrize(("value", "said"), BAD_VALUES)
def test_a_broken_json_column_is_a_store_error_naming_table_row_and_column(
    tmp_path: Path, table: str, column: str, key: str, read, value: str, said: str
) -> None:
    store = corrupt_store(tmp_path)
    read(store)  # as written, it reads
    store.db.execute(f"UPDATE {table} SET {column}=? WHERE {key}='r1'", (value,))  # noqa: S608 - test tables
    with pytest.raises(StoreError) as err:
        read(store)
    message = str(err.value)
    assert f"table {table}, run 'r1'" in message and f"column {column}: " in message and said in message
    assert "workbench.db" in message and len(message) < 500


@pytest.mark.parametrize(
    ("table", "value", "said"),
    [
        ("variants", '{"name": "m"}', "format: field required"),
        ("variants", '{"name": "m", "format": 5, "path": "p", "bits": 4}', "format: input should be a valid string"),
        ("variants", '{"name": "m", "format": "hf", "path": "p", "bits": "many"}', "bits: input should be a valid"),
        ("bench", '{"variant": "m", "device": "cpu", "backend": "torch", "tg_tps": {"median": "x"}}', "tg_tps"),
    ],
)
def test_a_json_column_of_the_wrong_shape_is_a_store_error(tmp_path: Path, table: str, value: str, said: str) -> None:
    store = corrupt_store(tmp_path)
    store.db.execute(f"UPDATE {table} SET data=?", (value,))  # noqa: S608 - test tables
    with pytest.raises(StoreError, match=f"table {table}, run 'r1', .*column data: .*{said}"):
        store.variants("r1") if table == "variants" else store.bench("r1")


def test_extra_bench_keys_and_typed_fields_survive_the_checked_read(tmp_path: Path) -> None:
    store = corrupt_store(tmp_path)
    store.replace_bench("r1", [BenchResult("m", "cpu", "torch", peak_rss_mb=1.0, extra={"dtype": "fp32"})])
    [result] = store.bench("r1")
    assert result.extra == {"dtype": "fp32"} and result.peak_rss_mb == 1.0 and result.tg_tps is None
    assert store.variants("r1") == [Variant("m", "hf", "merge/model", 16.0)]


def add_server(store: Store) -> None:
    server = Server("r1-1", "r1", "m", "llama.cpp", "127.0.0.1", 8080, "m", 1, None, 0.0, "log")
    store.add_server(server)


@pytest.mark.parametrize("command", [["show", "r1"], ["report", "r1", "--format", "json"], ["serve"]])
@pytest.mark.parametrize("table", ["runs", "variants", "bench", "servers", "artifacts"])
def test_show_report_and_serve_on_a_broken_store_say_which_row_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str], table: str
) -> None:
    store = corrupt_store(tmp_path)
    add_server(store)
    column = {"runs": "recipe", "artifacts": "meta"}.get(table, "data")
    store.db.execute(f"UPDATE {table} SET {column}='{{broken'")  # noqa: S608 - test tables
    store.close()
    try:
        code = main(["--home", str(tmp_path), *command])
    except WorkbenchError:  # pragma: no cover - main turns these into messages
        raise
    err = capsys.readouterr().err
    if code == 0:  # this command does not read that table
        assert "Traceback" not in err
        return
    assert code == 3 and f"table {table}" in err and f"column {column}: not valid JSON" in err


def test_a_runs_recipe_is_read_through_the_store() -> None:
    for path in (Path(__file__).parents[1] / "workbench").rglob("*.py"):
        assert 'json.loads(run["recipe"])' not in path.read_text(), path
        assert "json.loads(run.recipe_json)" not in path.read_text(), path


@pytest.mark.parametrize("value", [sqlite3.Binary(b"\xff\xfe"), 7])
def test_a_json_column_holding_another_type_is_a_store_error(tmp_path: Path, value: object) -> None:
    store = corrupt_store(tmp_path)
    store.db.execute("UPDATE variants SET data=?", (value,))
    with pytest.raises(StoreError, match="table variants, run 'r1', variant 'm', column data"):
        store.variants("r1")
