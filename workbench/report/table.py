"""The comparison as one table: column definitions shared by the Markdown, HTML, CSV and terminal forms."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workbench.core import safe
from workbench.report.compare import Comparison, ComparisonRow, best_goodput


@dataclass
class Column:
    header: str
    value: Callable[[ComparisonRow], Any]
    digits: int = 1
    signed: bool = False


MARKS = {"passed": "pass", "failed": "FAIL", "skipped": "skipped"}


def _speed(target: str, field: str) -> Callable[[ComparisonRow], Any]:
    return lambda row: getattr(row.speed[target], field) if target in row.speed else None


def probe_value(name: str) -> Callable[[ComparisonRow], Any]:
    return lambda row: row.probes.get(name)


def columns(comparison: Comparison) -> list[Column]:
    rows = comparison.rows
    task = f"{comparison.task} {comparison.metric}" if comparison.task else "task score"
    cols = [
        Column("variant", lambda r: r.label),
        Column("format", lambda r: r.format),
        Column("size MiB", lambda r: r.size_mb, 0),
        Column(task, lambda r: r.score if r.status == "done" else "failed", 3),
        Column("Δ vs merged", lambda r: r.delta, 3, signed=True),
        Column("kept %", lambda r: r.keep_pct, 1),
    ]
    if any(r.paired for r in rows):  # paired per-item outcomes: interval and verdict against the merged model
        cols += [Column("kept 95% CI", interval), Column("vs merged", lambda r: r.paired.verdict if r.paired else None)]
    probes = list(dict.fromkeys(name for row in rows for name in row.probes))
    cols += [Column(name, probe_value(name), 3) for name in probes]
    cols += [
        Column("KLD", lambda r: r.kld, 4),
        Column("top-1", lambda r: r.top1, 3),
        Column("parity", lambda r: MARKS.get(r.parity or "")),
    ]
    if any(r.moved for r in rows):
        cols.append(Column("moved", lambda r: r.moved))
    if any(r.grid for r in rows):  # a quantization-aware run: its file holds what training rounded to
        cols.append(Column("grid", lambda r: {"passed": "pass", "failed": "FAIL"}.get(r.grid or "")))
    if any("cpu" in r.speed for r in rows):
        cols += [
            Column("CPU pp tok/s", _speed("cpu", "pp_tps")),
            Column("CPU tg tok/s", _speed("cpu", "tg_tps")),
            Column("CPU TTFT ms", _speed("cpu", "ttft_ms"), 0),
            Column("CPU peak RSS MiB", _speed("cpu", "peak_rss_mb"), 0),
        ]
    if any("gpu" in r.speed for r in rows):
        cols += [
            Column("GPU tg tok/s", _speed("gpu", "tg_tps")),
            Column("GPU peak VRAM MiB", _speed("gpu", "peak_vram_mb"), 0),
        ]
    if any("gpu" in r.speed and r.speed["gpu"].throughput for r in rows):
        cols.append(Column("vLLM tok/s by concurrency", lambda r: throughput(r)))
    if any(r.served_parity for r in rows):
        cols.append(Column("served parity", lambda r: MARKS.get(r.served_parity or "")))
    if any(r.served for r in rows):
        cols.append(Column("served tok/s (TTFT p95 ms) by clients", served_cell))
    if any(r.slo for r in rows):
        cols.append(Column("goodput req/s at the SLO", goodput_cell))
    cols.append(Column("Pareto", lambda r: pareto_marks(comparison, r)))
    return cols


def interval(row: ComparisonRow) -> str | None:
    if row.paired is None or row.paired.low is None or row.paired.high is None:
        return None
    return f"{row.paired.low:.1f}-{row.paired.high:.1f}"


def throughput(row: ComparisonRow) -> str | None:
    levels = row.speed["gpu"].throughput if "gpu" in row.speed else {}
    return " ".join(f"x{level}:{tps:.0f}" for level, tps in levels.items()) or None


def served_cell(row: ComparisonRow) -> str | None:
    parts = []
    for clients, numbers in row.served.items():
        ttft = numbers.get("ttft_p95_ms")
        part = f"x{clients}:{numbers['output_tps']:.0f}" + (f" ({ttft:.0f})" if ttft is not None else "")
        parts.append(part + (f" {numbers['errors']} err" if numbers.get("errors") else ""))
    return " ".join(parts) or None


def goodput_cell(row: ComparisonRow) -> str | None:
    """The best goodput at a level that holds the SLO, and where (clients xN, or an offered rate)."""
    found = best_goodput(row)
    if found is None:
        return "none holds it" if row.slo else None
    unit, level, numbers = found
    return f"{numbers['goodput_rps']:.2f} ({'x' + level if unit == 'clients' else level + ' req/s'})"


def pareto_marks(comparison: Comparison, row: ComparisonRow) -> str:
    marks = ["size"] if row.name in comparison.pareto_size else []
    marks += [f"{target} speed" for target, names in comparison.pareto_speed.items() if row.name in names]
    return ", ".join(marks)


def cell(value: Any, column: Column) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:+.{column.digits}f}" if column.signed else f"{value:.{column.digits}f}"
    return str(value)


def text_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    cols = columns(comparison)
    body = [[cell(col.value(row), col) for col in cols] for row in comparison.rows]
    return [c.header for c in cols], body


def raw_rows(comparison: Comparison) -> tuple[list[str], list[list[Any]]]:
    cols = columns(comparison)
    return [c.header for c in cols], [[c.value(row) for c in cols] for row in comparison.rows]


def markdown(comparison: Comparison) -> str:
    headers, body = text_rows(comparison)
    lines = [safe.markdown_row(headers), "|" + "|".join("---" for _ in headers) + "|"]
    lines += [safe.markdown_row(cells) for cells in body]
    return "\n".join(lines)


def plain(comparison: Comparison) -> str:
    """Aligned columns for a terminal."""
    headers, body = text_rows(comparison)
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) for cells in body]
    return "\n".join(lines)
