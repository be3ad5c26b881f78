"""Compare: a run's comparison table (sortable from the keyboard), its Pareto marks and the
recommendation per target — the same numbers as `workbench report`."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from workbench.report import table, write


def sort_key(value: Any) -> tuple[int, Any]:
    """Numbers before text, so a sort by any column reads sensibly."""
    return (0, value) if isinstance(value, int | float) else (1, str(value))


class CompareScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("s", "sort", "Sort by next column"),
        Binding("r", "reverse", "Reverse"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id
        self.sort_column = -1
        self.descending = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="recommendation")
        yield DataTable(id="comparison", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"workbench · compare {self.run_id}"
        report = write.load(self.app.store, self.run_id, self.app.home / self.run_id)  # type: ignore[attr-defined]
        comparison = report.comparison
        lines = write.recommendation_lines(comparison) + [f"({line})" for line in report.settings]
        self.query_one("#recommendation", Static).update("\n".join(lines))
        grid = self.query_one("#comparison", DataTable)
        headers, body = table.text_rows(comparison)
        _, raw = table.raw_rows(comparison)
        self.raw = {row.name: values for row, values in zip(comparison.rows, raw, strict=True)}
        self.headers = headers
        grid.add_columns(*headers)
        for row, cells in zip(comparison.rows, body, strict=True):
            grid.add_row(*cells, key=row.name)

    def action_sort(self) -> None:
        self.sort_column = (self.sort_column + 1) % len(self.headers)
        self._sort()

    def action_reverse(self) -> None:
        self.descending = not self.descending
        self._sort()

    def _sort(self) -> None:
        column = max(self.sort_column, 0)
        grid = self.query_one("#comparison", DataTable)
        present = [name for name in self.raw if self.raw[name][column] is not None]
        order = sorted(present, key=lambda name: sort_key(self.raw[name][column]), reverse=self.descending)
        order += [name for name in self.raw if name not in present]  # blanks stay last either way
        rows = {key.value: grid.get_row(key) for key in grid.rows}
        grid.clear()
        for name in order:
            grid.add_row(*rows[name], key=name)
        direction = "descending" if self.descending else "ascending"
        self.notify(f"sorted by {self.headers[column]} ({direction})", timeout=2)
