"""Reading JSON, JSONL, CSV and Parquet files as a stream of rows, with 1-based row labels, within limits on
the file's size, its row count and each row's nesting: a hostile file costs memory up to the limits, not up
to what it expands to."""

from __future__ import annotations

import codecs
import csv
import itertools
import json
import math
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from workbench.core.errors import InputError

SUFFIXES = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
MB = 1 << 20
CSV_CELL_CHARS = 1 << 17  # the csv module's own default limit, kept as the floor
CHARS_PER_TOKEN = 16  # a cell this many characters a token over max_length is too long for any tokenizer
BOMS = {
    "utf-16": (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE),
    "utf-32": (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE),
}  # without one, Python's stream decoders refuse what its bytes.decode reads
_WHITESPACE = re.compile(r"[ \t\n\r]*")  # JSON's


@dataclass(frozen=True)
class Limits:
    """What reading one data file may cost. `field` is the recipe field named in errors (data, tune.data);
    `max_length` (tokens, when a recipe gives one) bounds a CSV cell."""

    max_file_mb: int = 1024
    max_rows: int = 3_000_000
    max_depth: int = 64
    max_length: int | None = None
    field: str = "data"

    @property
    def max_cell(self) -> int:
        return max(CSV_CELL_CHARS, CHARS_PER_TOKEN * (self.max_length or 0))


class DataFileError(InputError, ValueError):
    """A file that cannot be read as rows at all."""


class _Unparsable:
    """A row that cannot be parsed (a JSONL line that is not JSON); kept so the row is reported, not lost."""

    def __init__(self, reason: str):
        self.reason = reason


def read_rows(path: Path, encoding: str = "utf-8", limits: Limits | None = None) -> tuple[Iterator[Any], str]:
    """The rows of a data file, read as they are used, and the word that numbers them ("line" for JSONL,
    else "row"). Text files are decoded with `encoding`; a byte-order mark (as spreadsheets write one) is
    read, not kept. A file over `limits` is refused by name (before reading where its size or metadata tells)."""
    limits = limits or Limits()
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataFileError(f"{path}: unknown file type '{path.suffix}'; expected {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise DataFileError(f"{path}: file not found")
    size = path.stat().st_size
    if size > limits.max_file_mb * MB:
        raise DataFileError(
            f"{path}: {size / MB:.0f} MB, larger than {limits.field}.max_file_mb ({limits.max_file_mb}); raise it"
            " if this is the right file"
        )
    if kind == "parquet":
        return _counted(path, _parquet(path, limits), limits), "row"
    codec = _codec(path, encoding)
    reader = {"json": _json, "jsonl": _jsonl, "csv": _csv}[kind]
    return _counted(path, reader(path, _Text(path, codec, encoding), limits), limits), (
        "line" if kind == "jsonl" else "row"
    )


def _counted(path: Path, rows: Iterator[Any], limits: Limits) -> Iterator[Any]:
    for number, row in enumerate(rows, 1):
        if number > limits.max_rows:
            raise DataFileError(
                f"{path}: more than {limits.field}.max_rows ({limits.max_rows}) rows; raise it if this is the right"
                " file"
            )
        yield row


def _codec(path: Path, encoding: str) -> str:
    try:
        info = codecs.lookup(encoding)
    except LookupError:
        raise DataFileError(f"{path}: data.encoding {encoding!r} is not an encoding Python knows") from None
    if not getattr(info, "_is_text_encoding", True):  # base64, rot13, ...: codecs, but not for text
        raise DataFileError(f"{path}: data.encoding {encoding!r} is not a text encoding")
    if info.name in BOMS:
        with path.open("rb") as handle:
            if not handle.read(4).startswith(BOMS[info.name]):
                return f"{info.name}-{sys.byteorder[0]}e"  # as bytes.decode reads them: the machine's order
    return "utf-8-sig" if info.name == "utf-8" else info.name


@dataclass(frozen=True)
class _Text:
    path: Path
    codec: str
    encoding: str  # as the recipe spells it

    @contextmanager
    def open(self, newline: str) -> Iterator[IO[str]]:
        """The file decoded as it is read; a byte the encoding cannot read is an error naming its line."""
        try:
            with self.path.open(encoding=self.codec, newline=newline) as handle:
                yield handle
        except UnicodeError:
            raise self._undecodable() from None

    def _undecodable(self) -> DataFileError:
        """Find the first byte that does not decode (reading the file again, a block at a time)."""
        decoder = codecs.getincrementaldecoder(self.codec)()
        line, bad = 1, "?"
        with self.path.open("rb") as handle:
            for block in itertools.chain(iter(lambda: handle.read(MB), b""), [b""]):
                try:
                    decoder.decode(block, final=not block)  # the last, empty block: a sequence cut short
                except UnicodeDecodeError as exc:
                    held = len(exc.object) - len(block)  # bytes the decoder kept from the block before
                    line += block[: max(0, exc.start - held)].count(b"\n")
                    bad = f"0x{exc.object[exc.start]:02x}"
                    break
                except UnicodeError:  # no byte to blame (a stream decoder's own rule)
                    break
                line += block.count(b"\n")
        return DataFileError(
            f"{self.path}: not readable as {self.encoding} (byte {bad} on line {line}); save the file as UTF-8, or"
            " set data.encoding to the file's encoding (e.g. gbk or gb18030 for Chinese spreadsheets, cp1252 for"
            " Western ones, utf-16)"
        )


def _too_deep(value: Any, limit: int) -> bool:
    """Whether lists and objects nest more than `limit` levels (walked without recursion)."""
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _bounded(value: Any, limits: Limits) -> Any:
    if _too_deep(value, limits.max_depth):
        return _Unparsable(f"nested more than {limits.max_depth} levels deep")
    return value


def _json(path: Path, text: _Text, limits: Limits) -> Iterator[Any]:
    with text.open(newline="") as handle:
        document = handle.read()
    start = _skip(document, 0)
    if document.startswith("[", start):
        yield from _array(path, document, start + 1, limits)
        return
    try:
        data = json.loads(document)
    except json.JSONDecodeError as exc:
        raise _invalid(path, exc) from None
    except RecursionError:
        raise DataFileError(f"{path}: nested more than {limits.max_depth} levels deep") from None
    if isinstance(data, dict):  # {"data": [...]} and similar single-list wrappers
        lists = [value for value in data.values() if isinstance(value, list)]
        if len(lists) == 1:
            data = lists[0]
    if not isinstance(data, list):
        raise DataFileError(f"{path}: expected a JSON array of rows, got {type(data).__name__}")
    yield from (_bounded(row, limits) for row in data)


def _array(path: Path, document: str, index: int, limits: Limits) -> Iterator[Any]:
    """The elements of the JSON array opened just before `index`, parsed one at a time."""
    decoder = json.JSONDecoder()
    index = _skip(document, index)
    row = 0
    while row or not document.startswith("]", index):
        row += 1
        try:
            value, index = decoder.raw_decode(document, index)
        except json.JSONDecodeError as exc:
            raise _invalid(path, exc) from None
        except RecursionError:
            raise DataFileError(f"{path}: row {row} is nested more than {limits.max_depth} levels deep") from None
        yield _bounded(value, limits)
        index = _skip(document, index)
        if not document.startswith(",", index):
            break
        index = _skip(document, index + 1)
    if not document.startswith("]", index):
        raise _invalid(path, json.JSONDecodeError("Expecting ',' delimiter", document, index))
    end = _skip(document, index + 1)
    if end != len(document):
        raise _invalid(path, json.JSONDecodeError("Extra data", document, end))


def _skip(text: str, index: int) -> int:
    """Past JSON whitespace from `index`."""
    found = _WHITESPACE.match(text, index)
    return found.end() if found else index


def _invalid(path: Path, exc: json.JSONDecodeError) -> DataFileError:
    return DataFileError(f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}")


def _parsed(line: str, limits: Limits) -> Any:
    try:
        return _bounded(json.loads(line), limits)
    except json.JSONDecodeError as exc:
        return _Unparsable(f"not valid JSON ({exc.msg} at column {exc.colno})")
    except RecursionError:
        return _Unparsable(f"nested more than {limits.max_depth} levels deep")


def _jsonl(path: Path, text: _Text, limits: Limits) -> Iterator[Any]:
    blanks = 0  # trailing blank lines are file formatting, not rows: held until a row follows
    with text.open(newline="\n") as handle:
        for line in handle:
            if not line.strip():
                blanks += 1
                continue
            yield from (_Unparsable("blank line") for _ in range(blanks))
            blanks = 0
            yield _parsed(line, limits)


def _csv(path: Path, text: _Text, limits: Limits) -> Iterator[Any]:
    before = csv.field_size_limit(limits.max_cell)
    try:
        with text.open(newline="") as handle:
            reader = csv.DictReader(handle)
            for number in itertools.count(1):
                try:
                    record = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    raise _bad_csv(path, number, reader.line_num + 1, exc, limits) from None  # the line it was in
                if None in record:
                    width = len(reader.fieldnames or [])
                    yield _Unparsable(f"has more cells than the header's {width}")
                else:
                    yield record
    finally:
        csv.field_size_limit(before)


def _bad_csv(path: Path, number: int, line: int, exc: csv.Error, limits: Limits) -> DataFileError:
    if "field limit" not in str(exc):
        return DataFileError(f"{path}: row {number} (line {line}) is not valid CSV: {exc}")
    allowed = f", more than {limits.field}.max_length ({limits.max_length} tokens) allows" if limits.max_length else ""
    return DataFileError(
        f"{path}: row {number} (line {line}) has a cell longer than {limits.max_cell} characters{allowed}; shorten"
        f" it{f' or raise {limits.field}.max_length' if limits.max_length else ''}"
    )


def _parquet(path: Path, limits: Limits) -> Iterator[Any]:
    """Rows a batch at a time; the row count, nesting and page sizes are checked from the file's metadata
    first, and the decoded size as it grows: a few KB of dictionary-encoded rows can decode to gigabytes."""
    import pyarrow.parquet as pq

    try:
        source = pq.ParquetFile(path)
        meta = source.metadata
        depth = _schema_depth(source.schema_arrow)
        pages = sum(
            meta.row_group(g).column(c).total_uncompressed_size
            for g in range(meta.num_row_groups)
            for c in range(meta.num_columns)
        )
    except Exception as exc:  # pyarrow raises several types for broken files
        raise DataFileError(f"{path}: not a readable Parquet file ({exc})") from None
    if meta.num_rows > limits.max_rows:
        raise DataFileError(f"{path}: {meta.num_rows} rows, more than {limits.field}.max_rows ({limits.max_rows})")
    if depth > limits.max_depth:
        raise DataFileError(f"{path}: columns nested more than {limits.max_depth} levels deep")
    too_big = f"{path}: expands to more than {limits.field}.max_file_mb ({limits.max_file_mb}) MB when read"
    if pages > limits.max_file_mb * MB:  # its pages alone, decompressed
        raise DataFileError(too_big)
    budget = limits.max_file_mb * MB  # for the rows as they are decoded
    batches = source.iter_batches(batch_size=256)
    while budget >= 0:
        try:
            batch = next(batches, None)
        except Exception as exc:
            raise DataFileError(f"{path}: not a readable Parquet file ({exc})") from None
        if batch is None:
            return
        budget -= sum(_decoded_bytes(column) for column in batch.columns)
        if budget >= 0:
            yield from (_clean_nan(row) for row in batch.to_pylist())
    raise DataFileError(too_big)


def _decoded_bytes(column: Any) -> int:
    """A column's size once its dictionary is expanded (each row's own copy of its value), computed from
    the value lengths rather than by expanding it."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not pa.types.is_dictionary(column.type):
        return int(column.nbytes)
    values = column.dictionary
    if pa.types.is_string(values.type) or pa.types.is_binary(values.type) or pa.types.is_large_string(values.type):
        lengths = pc.take(pc.binary_length(values), column.indices)
        return int(pc.sum(lengths).as_py() or 0) + int(column.indices.nbytes)
    return int(values.nbytes) * len(column) // max(len(values), 1) + int(column.indices.nbytes)


def _schema_depth(schema: Any) -> int:
    """How deep a row of this Arrow schema nests (the row itself is level 1), walked without recursion."""
    deepest = 1
    stack = [(field.type, 2) for field in schema]
    while stack:
        kind, depth = stack.pop()
        children = [kind.field(i).type for i in range(kind.num_fields)]
        if children:
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _clean_nan(row: dict[str, Any]) -> dict[str, Any]:
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """The workbench's own row files (splits, task data): one JSON object per line, UTF-8."""
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
